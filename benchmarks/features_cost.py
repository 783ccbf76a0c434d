"""What keeping image features costs: a CPU run with features on against the same run with them off, side by side.

    python benchmarks/features_cost.py [--images 48] [--repeats 3] [--dir /tmp/features-bench]

A synthetic store of the visual variant at the published width (384 channels: the core, what features come from,
is the published one; the heads are smaller), a folder of IMAGES photo-like PNGs (448 x 336), and runs alternating
features on / off, each in a fresh process with a fresh output. Prints the median run time and images/s of each,
their ratio, and the bytes on disk per image of ``features/`` against ``responses/``, with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # tests.image_corpus: the photo-like images


def prepare(root: str, n: int) -> tuple[str, str]:
    from screening.store.synthetic import make_store
    from tests.image_corpus import encode, photo_like

    store, images = os.path.join(root, "store"), os.path.join(root, "images")
    if not os.path.exists(store):
        make_store(store, variant="visual", width=384)
    if not os.path.exists(images):
        os.makedirs(images)
        for i in range(n):
            with open(os.path.join(images, f"p{i:03d}.png"), "wb") as f:
                f.write(encode(photo_like(448, 336, seed=i), "PNG"))
    return store, images


def one_run(store: str, images: str, out: str, features: bool) -> dict:
    from screening.pipeline import screen

    res = screen(images, store, out, subjects="all", rois=["V1", "V2", "FFC"], precision="auto", progress=False,
                 features=features)

    def size(kind):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(out, kind)) for f in fs)

    n = res.counts["images"]
    return {"features": features, "seconds": round(res.seconds, 2), "images": n,
            "images_per_s": round(n / res.seconds, 2), "precision": res.precision,
            "features_bytes_per_image": round(size("features") / n, 1),
            "responses_bytes_per_image": round(size("responses") / n, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="/tmp/features-bench")
    p.add_argument("--one", choices=("on", "off"), help=argparse.SUPPRESS)
    a = p.parse_args()
    store, images = prepare(a.dir, a.images)
    if a.one:
        out = os.path.join(a.dir, f"out-{a.one}")
        shutil.rmtree(out, ignore_errors=True)
        print(json.dumps(one_run(store, images, out, a.one == "on")))
        return
    env = dict(os.environ)
    runs: dict = {"on": [], "off": []}
    for _ in range(a.repeats):
        for mode in ("on", "off"):
            out = subprocess.run([sys.executable, __file__, "--dir", a.dir, "--images", str(a.images), "--one", mode],
                                 check=True, capture_output=True, text=True, env=env).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    from screening.hardware import cpu_model_name

    print(f"CPU: {cpu_model_name()}, {os.cpu_count()} cores; {a.images} images, precision {runs['on'][0]['precision']}")
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    for m, rs in runs.items():
        print(json.dumps({"features": m, "median_s": med[m], "runs_s": [r["seconds"] for r in rs],
                          "images_per_s": round(a.images / med[m], 2),
                          "features_bytes_per_image": rs[0]["features_bytes_per_image"],
                          "responses_bytes_per_image": rs[0]["responses_bytes_per_image"]}))
    print(json.dumps({"on_over_off": round(med["on"] / med["off"], 3)}))


if __name__ == "__main__":
    main()
