"""Each ROI's response per label (``rank --labels``' ``label_means.parquet``): time and peak memory over a responses
table of IMAGES x COLS columns with LABELS labels, at two memory budgets.

    python benchmarks/label_means.py [--images 100000] [--cols 3032] [--labels 1000] [--dir /tmp/label-means-bench]

The table is written once (float32, ``subject = mean`` only, 65,536-row groups); each label is drawn for every
image at random (one label per image, plus a second for a tenth of them). Each setting runs in a fresh process (its
own peak RSS): the default budget (512 MB: one scan) and 32 MB (the ROIs split into chunks, one scan each). The
accumulators take labels x ROIs x subjects x 24 bytes, whatever the number of images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def write_table(path: str, images: int, cols: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(path, exist_ok=True)
    names = [f"ROI{j:04d}" for j in range(cols)]
    schema = pa.schema([("image_id", pa.string()), ("subject", pa.string())] + [(n, pa.float32()) for n in names])
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(os.path.join(path, "part-0.parquet"), schema, compression="none") as w:
        for start in range(0, images, 65_536):
            n = min(65_536, images - start)
            x = rng.standard_normal((n, cols), dtype=np.float32)
            arrays = [pa.array([f"{i:016x}" for i in range(start, start + n)]), pa.array(["mean"] * n)]
            w.write_table(pa.Table.from_arrays(arrays + [pa.array(x[:, j]) for j in range(cols)], schema=schema))


def measure(path: str, images: int, n_labels: int, budget: float) -> dict:
    import numpy as np
    import pandas as pd
    import pyarrow.dataset as ds

    from screening.labels import Labels
    from screening.rank._engine import RankConfig, Ranker
    from screening.rank._enrichment import label_means

    rng = np.random.default_rng(1)
    ids = np.array([f"{i:016x}" for i in range(images)], dtype=object)
    first = rng.integers(0, n_labels, images)
    extra = rng.choice(images, images // 10, replace=False)
    pairs = pd.DataFrame({"image_id": np.concatenate([ids, ids[extra]]),
                          "label": [f"label{v:04d}" for v in np.concatenate([first, rng.integers(0, n_labels,
                                                                                               extra.size)])]})
    labels = Labels("benchmark", pairs.drop_duplicates(), ids)
    ranker = Ranker(ds.dataset(path, format="parquet"), RankConfig.of(top_k=1, null_draws=0, consensus=False,
                                                                       selectivity=False, contrasts=()))
    t = time.perf_counter()
    table = label_means(ranker, labels, memory_budget_mb=budget)
    wall = time.perf_counter() - t
    return {"budget_mb": budget, "wall_s": round(wall, 1), "rows": len(table), "rois": len(ranker.ranked),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--cols", type=int, default=3032)
    p.add_argument("--labels", type=int, default=1000)
    p.add_argument("--dir", default="/tmp/label-means-bench")
    p.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    path = os.path.join(a.dir, f"{a.images}x{a.cols}")
    if a.budget is not None:
        print(json.dumps(measure(path, a.images, a.labels, a.budget)))
        return
    if not os.path.exists(os.path.join(path, "part-0.parquet")):
        t = time.perf_counter()
        write_table(path, a.images, a.cols)
        print(f"wrote {a.images:,} x {a.cols} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    from screening.hardware import cpu_model_name

    print(f"CPU: {cpu_model_name()}, {os.cpu_count()} cores; {a.images:,} images x {a.cols} ROIs x {a.labels} labels")
    for budget in (512.0, 32.0):
        out = subprocess.run([sys.executable, __file__, "--images", str(a.images), "--cols", str(a.cols), "--labels",
                              str(a.labels), "--dir", a.dir, "--budget", str(budget)], check=True, capture_output=True,
                             text=True).stdout
        print(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
