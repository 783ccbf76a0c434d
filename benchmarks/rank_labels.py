"""``screening rank --labels folder`` against ``screening rank`` on the same run, end to end through the CLI.

    python benchmarks/rank_labels.py --images 100000 1000000 [--dir /tmp/rank-labels-bench] [--repeat 2]

The run is an ImageNet-like folder of 1,000 class folders (``/data/imagenet/n00000xxx/img_N.JPEG``); its committed
outputs (responses, sources, markers, manifest) are written directly with the pipeline's own worker writer
(``screening.pipeline.parts.write_parts``, one 8,192-image write batch at a time, units of 50,000 images) and marker
I/O, because screening a million images takes days on 2 cores. Responses are random float32: the cost of ranking
and labelling does not depend on the values. Subjects ``sub-01`` .. ``sub-08`` and ``mean`` (9 rows per image), the
ROI columns of 12 bilateral visual areas (24 columns).

Each command runs in a fresh process (the CLI a user types), interleaved, ``--repeat`` times; the medians and their
ratio are printed as JSON. The issue's target: ``--labels folder`` at most 1.5x plain ``rank``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

AREAS = ("V1", "V2", "V3", "V4", "FFC", "PHA1", "PHA2", "PHA3", "VVC", "PIT", "LO1", "LO2")
SUBJECTS = tuple(f"sub-{i:02d}" for i in range(1, 9)) + ("mean",)
UNIT_IMAGES = 50_000
WRITE_BATCH = 8_192
RANK_ARGS = ("--roi", "FFC", "--roi", "V1", "--roi", "PHA1")


def write_run(out: str, n_images: int, seed: int = 0) -> None:
    """A committed run of ``n_images`` images, written as the pipeline's write stage and ledger write it."""
    import numpy as np

    from screening.pipeline.outputs import OutputLayout, utcnow
    from screening.pipeline.parts import write_parts
    from screening.pipeline.tables import STAGE_OK

    layout = OutputLayout(out)
    rng = np.random.default_rng(seed)
    roi_names = [f"{h}_{a}" for a in AREAS for h in ("L", "R")]
    for u, start in enumerate(range(0, n_images, UNIT_IMAGES)):
        unit = f"bench-{u:05d}"
        stop = min(start + UNIT_IMAGES, n_images)
        files = {"responses": [], "errors": [], "sources": [], "features": []}
        for b in range(start, stop, WRITE_BATCH):
            idx = np.arange(b, min(b + WRITE_BATCH, stop))
            batch = {"unit": [unit] * idx.size, "row": idx - start, "stage": [STAGE_OK] * idx.size,
                     "image_id": [f"{i:016x}" for i in idx],
                     "source": [f"/data/imagenet/n{i % 1000:08d}/img_{i}.JPEG" for i in idx],
                     "roi": rng.standard_normal((idx.size, len(SUBJECTS), len(roi_names)), dtype=np.float32)}
            receipts = write_parts(batch, layout=layout, labels=SUBJECTS, roi_names=roi_names,
                                   config_key="benchmark").to_pylist()
            for r in receipts:
                if r["failure"]:
                    raise OSError(r["failure"])
                for kind in files:
                    if r[kind]:
                        files[kind].append(r[kind])
        layout.write_marker(unit, {"unit": unit, "input": {"benchmark": True}, "rows": stop - start,
                                   "images_ok": stop - start, "errors": 0, "read_errors": 0,
                                   "responses_rows": (stop - start) * len(SUBJECTS), "files": files,
                                   "config_key": "benchmark", "run_id": "benchmark", "committed": utcnow()})
    layout.write_json(layout.join("manifest.json"), {
        "config": {"subjects": list(SUBJECTS[:-1])}, "shards": [],
        "note": f"benchmarks/rank_labels.py: {n_images} images of random responses, written with write_parts"})


def timed(cmd: list) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def cpu_name() -> str:
    from screening.hardware import cpu_model_name

    return cpu_model_name() or platform.processor()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dir", default="/tmp/rank-labels-bench")
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args()
    screening = [os.path.join(os.path.dirname(sys.executable), "screening")]
    for n in a.images:
        run = os.path.join(a.dir, f"run-{n}")
        if not os.path.exists(os.path.join(run, "manifest.json")):
            t = time.perf_counter()
            write_run(run, n)
            print(f"# wrote {run} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        plain, labelled = [], []
        for _ in range(a.repeat):
            plain.append(timed(screening + ["rank", f"{run}/responses", f"{run}/rk-plain", *RANK_ARGS]))
            labelled.append(timed(screening + ["rank", f"{run}/responses", f"{run}/rk-labels", *RANK_ARGS,
                                               "--labels", "folder"]))
        import pandas as pd

        e = pd.read_parquet(f"{run}/rk-labels/enrichment.parquet")
        print(json.dumps({"images": n, "rows": n * len(SUBJECTS), "rank_s": round(statistics.median(plain), 1),
                          "rank_labels_s": round(statistics.median(labelled), 1),
                          "ratio": round(statistics.median(labelled) / statistics.median(plain), 2),
                          "labels": int(e.label.nunique()), "cpu": cpu_name(), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
