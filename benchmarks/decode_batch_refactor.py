"""Side by side: decode_batch now (shared _decode_rows) vs before (commit 90ea2b9), CPU time per image, same process.

    git show 90ea2b9:screening/pipeline/stages.py > /tmp/stages_old.py
    python benchmarks/decode_batch_refactor.py /tmp/stages_old.py
"""
import sys, time, statistics, importlib.util, io, os
import numpy as np, pyarrow as pa
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from screening.pipeline import stages as new
if len(sys.argv) != 2 or not os.path.isfile(sys.argv[1]):
    sys.exit("usage: decode_batch_refactor.py OLD_STAGES_PY (git show 90ea2b9:screening/pipeline/stages.py > it)")
spec = importlib.util.spec_from_file_location("stages_old", sys.argv[1]); old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
from PIL import Image
rng = np.random.default_rng(0); imgs = []
for _ in range(256):
    b = io.BytesIO(); Image.fromarray(rng.integers(0, 256, (425, 425, 3), dtype=np.uint8)).save(b, "JPEG", quality=85); imgs.append(b.getvalue())
n = len(imgs)
t = pa.table({"unit": ["u"]*n, "row": np.arange(n), "image_id": [f"i{k}" for k in range(n)], "source": [""]*n,
              "data": pa.array(imgs, pa.binary()), "read_error": [""]*n})
res = {"old": [], "new": []}
for r in range(5):
    for name, mod in (("old", old), ("new", new)):
        c = time.process_time(); out = mod.decode_batch(t, image_column="image", fast=True); res[name].append(1e3*(time.process_time()-c)/n)
a = old.decode_batch(t, image_column="image", fast=True); b = new.decode_batch(t, image_column="image", fast=True)
assert all(np.array_equal(a[k], b[k]) for k in a), "outputs differ"
mo, mn = statistics.median(res["old"]), statistics.median(res["new"])
print(f"decode_batch, 256 x 425 px JPEGs, 5 alternating repeats: old {mo:.3f} ms/image, new {mn:.3f} ms/image, new/old {mn/mo:.3f}; outputs identical")
