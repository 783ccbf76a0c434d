"""The first minute of `screening run` against `BERG.encode(reduce="roi_mean")`, setup included on both sides.

    python benchmarks/first_minute.py --store STORE [--images 40 200] [--before-tree /tmp/before] [--work /tmp/fm]
                                      [--repeats R]

STORE: a published-size store (`screening make-store STORE --variant all`: width 384, 57,051 vertices, 8 subjects,
379 ROIs). Each measurement is a fresh process, precision auto (bf16 on a CPU with AMX), the same JPEGs (~425 px
crops of scikit-image's photographs):
- ``api``: a Python process that imports, opens the store, builds the model and encodes the decoded images with
  ``reduce="roi_mean"`` (8 subjects x 379 ROIs): its wall time from process start;
- ``run cold``: `screening run FOLDER --store STORE --out OUT` with an empty collapsed-matrix cache
  (``SCREENING_CACHE_DIR`` a new folder);
- ``run warm``: the same command into a new output, the cache built by the cold run (a rerun, a second job on the
  node).
The run's own setup steps come from its manifest (``run.setup``: driver steps and each encoder's load, collapse and
first batch, offsets from process start), and the machine's busy CPU-seconds during each command (all of Ray's
processes included: on 2 cores the run's extra CPU work, not its waits, sets its wall time). ``--before-tree`` runs the cold/warm commands from another checkout
(``git worktree add /tmp/before REV``), by its ``screening.cli.main``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

API = r"""
import sys, time, glob
t0 = time.time()
from screening.api import BERG
from screening.preprocess import preprocess_bytes
import numpy as np
files = sorted(glob.glob(sys.argv[2] + "/*.jpg"))
berg = BERG(sys.argv[1])
model = berg.get_encoding_model(berg.store.model_ids()[0], subject="all", precision="auto")
pixels = np.stack([preprocess_bytes(open(f, "rb").read()) for f in files])
berg.encode(model, pixels, reduce="roi_mean")
"""


def photos(folder: str, n: int) -> str:
    if not os.path.isdir(folder) or len(os.listdir(folder)) != n:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from pipeline_cpu import photo_jpegs

        os.makedirs(folder, exist_ok=True)
        for i, b in enumerate(photo_jpegs(n)):
            with open(os.path.join(folder, f"p{i:04d}.jpg"), "wb") as f:
                f.write(b)
    return folder


def _busy_cpu_s() -> float:
    """CPU-seconds the whole machine has spent busy (user, nice, system, irq, softirq; not iowait or idle)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


BUSY: dict = {}   # command (as a tuple) -> busy CPU-seconds of the machine while it ran (the last one timed)


def timed(cmd: list, env: dict) -> float:
    """Wall seconds; the machine's busy CPU-seconds meanwhile go to BUSY (on an idle machine: the run's own, Ray's
    processes included, which a process's own rusage would miss)."""
    b, t = _busy_cpu_s(), time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    BUSY[tuple(cmd)] = round(_busy_cpu_s() - b, 1)
    return time.perf_counter() - t


def run_cmd(tree: str | None, folder: str, store: str, out: str) -> list:
    args = ["run", folder, "--store", store, "--out", out]
    if tree is None:
        return [os.path.join(os.path.dirname(sys.executable), "screening"), *args]
    code = f"import sys; sys.path.insert(0, {tree!r}); from screening.cli import main; sys.exit(main({args!r}))"
    return [sys.executable, "-c", code]


def setup_of(out: str) -> dict:
    with open(os.path.join(out, "manifest.json")) as f:
        return (json.load(f).get("run") or {}).get("setup") or {}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--images", type=int, nargs="+", default=[40, 200])
    p.add_argument("--before-tree", default=None)
    p.add_argument("--work", default="/tmp/first-minute")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of (API, cold run, warm run) per tree and size; the ratios are taken within a round "
                        "(neighbours in time: this VM's speed drifts by 25%% over minutes), then their median")
    a = p.parse_args()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    rows = []
    for tree, name in ((a.before_tree, "before"), (None, "after")) if a.before_tree else ((None, "after"),):
        for n in a.images:
            folder = photos(os.path.join(a.work, f"photos{n}"), n)
            for r in range(a.repeats):
                cache = tempfile.mkdtemp(prefix="fm-cache-", dir=a.work)
                e = {**env, "SCREENING_CACHE_DIR": cache}
                api_cmd = [sys.executable, "-c", API, a.store, folder]
                api = timed(api_cmd, e)
                row = {"tree": name, "images": n, "round": r, "api_s": round(api, 1),
                       "api_busy_cpu_s": BUSY[tuple(api_cmd)]}
                for kind in ("cold", "warm"):
                    out = os.path.join(a.work, f"out-{name}-{n}-{kind}")
                    shutil.rmtree(out, ignore_errors=True)
                    cmd = run_cmd(tree, folder, a.store, out)
                    row[f"run_{kind}_s"] = round(timed(cmd, e), 1)
                    row[f"run_{kind}_busy_cpu_s"] = BUSY[tuple(cmd)]
                    row[f"ratio_{kind}"] = round(api / row[f"run_{kind}_s"], 2)   # run speed / API speed
                    row[f"setup_{kind}"] = setup_of(out)
                shutil.rmtree(cache, ignore_errors=True)
                rows.append(row)
                print(json.dumps(row), flush=True)
            mine = [x for x in rows if x["tree"] == name and x["images"] == n]
            print(json.dumps({"tree": name, "images": n, "rounds": len(mine), **{
                f"median_{k}": statistics.median(x[k] for x in mine)
                for k in ("api_s", "run_cold_s", "run_warm_s", "ratio_cold", "ratio_warm")}}), flush=True)
    from screening.hardware import cpu_model_name

    print(json.dumps({"cpu": cpu_model_name(), "cores": os.cpu_count(), "load_avg_end": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
