"""``screening run --vertex-stats`` against a plain run: time per image and the process tree's peak memory.

    python benchmarks/vertex_stats_cost.py --store STORE [--images 40] [--labels 10] [--work /tmp/vs-cost]

Same photos (~425 px JPEGs in ``--labels`` class folders), same store, precision auto, each run a fresh CLI process
into a new output with a warm collapsed-matrix cache (a first run builds it and is not counted). Per image: the
encoder's steady time, from the end of its first batch to the end of its last (the run's setup does not count),
read from the manifest (``run.setup``) and the wall time. Peak memory: the sum of the RSS of the run's process tree
(driver, raylet, workers), sampled every 0.2 s. Also: the readout's agreement with fp32 at the run's precision on 4
images (``vertex_values`` bf16 against fp32, per subject: the max relative error and the min Pearson r over
vertices).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time


def tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and every descendant (from /proc: parent links and VmRSS)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            pass
    return total


def run(cmd: list, env: dict) -> tuple[float, int]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], tree_rss(proc.pid))

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    proc.wait()
    stop.set()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with {proc.returncode}")
    return time.perf_counter() - t, peak[0]


def agreement(store: str, folder: str) -> dict:
    import glob

    import numpy as np
    import torch

    from screening.api import BERG
    from screening.preprocess import preprocess_bytes
    from screening.vertex_stats import vertex_values

    berg = BERG(store)
    model = berg.get_encoding_model(berg.store.model_ids()[0], subject="all", precision="bf16")
    pixels = np.stack([preprocess_bytes(open(f, "rb").read()) for f in sorted(glob.glob(folder + "/*/*.jpg"))[:4]])
    feats = model.features(pixels)
    heads = {s: model.heads[s] for s in model.subjects}
    exact = {(si, r.start): y for si, r, y in vertex_values(heads, model.subjects, feats, "fp32")}
    t = time.perf_counter()
    got = {(si, r.start): y for si, r, y in vertex_values(heads, model.subjects, feats, "bf16")}
    bf16_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in vertex_values(heads, model.subjects, feats, "fp32"):
        pass
    fp32_s = time.perf_counter() - t
    worst_r, worst_rel = 1.0, 0.0
    for si in range(len(model.subjects)):   # per image and subject, over all its vertices
        a = np.concatenate([got[k] for k in sorted(got) if k[0] == si], axis=1)
        b = np.concatenate([exact[k] for k in sorted(exact) if k[0] == si], axis=1)
        for i in range(a.shape[0]):
            worst_r = min(worst_r, float(np.corrcoef(a[i], b[i])[0, 1]))
            worst_rel = max(worst_rel, float(np.abs(a[i] - b[i]).max() / b[i].std()))
    return {"readout_bf16_vs_fp32_min_r_over_vertices": round(worst_r, 6),
            "readout_bf16_vs_fp32_max_abs_err_in_sd": round(worst_rel, 4),
            "readout_s_per_image_bf16": round(bf16_s / len(pixels), 2),
            "readout_s_per_image_fp32": round(fp32_s / len(pixels), 2), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--work", default="/tmp/vs-cost")
    a = p.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pipeline_cpu import photo_jpegs

    folder = os.path.join(a.work, "photos")
    shutil.rmtree(folder, ignore_errors=True)
    for i, b in enumerate(photo_jpegs(a.images)):
        d = os.path.join(folder, f"class{i % a.labels:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"p{i:04d}.jpg"), "wb") as f:
            f.write(b)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    exe = os.path.join(os.path.dirname(sys.executable), "screening")
    base = [exe, "run", folder, "--store", a.store]
    shutil.rmtree(os.path.join(a.work, "warmup"), ignore_errors=True)
    run(base + ["--out", os.path.join(a.work, "warmup")], env)   # builds the collapsed-matrix cache
    rows = {}
    for name, extra in (("plain", []), ("vertex_stats", ["--vertex-stats", "folder"])):
        out = os.path.join(a.work, name)
        shutil.rmtree(out, ignore_errors=True)
        wall, peak = run(base + ["--out", out] + extra, env)
        with open(os.path.join(out, "manifest.json")) as f:
            m = json.load(f)
        enc = m["run"]["setup"]["encoders"][0]   # one encoder on a 2-core machine; its first batch's own time
        rows[name] = {"wall_s": round(wall, 1), "s_per_image_wall": round(wall / a.images, 2),
                      "steady_s_per_image": round((enc["first_batch_done_at"] - enc["ready_at"])
                                                  / enc["first_batch_images"], 2),
                      "first_batch_images": enc["first_batch_images"], "peak_tree_rss_gib": round(peak / 2**30, 2),
                      "precision": m["config"].get("precision")}
        print(json.dumps({name: rows[name]}), flush=True)
    ratio = {k: round(rows["vertex_stats"][k] / rows["plain"][k], 2) for k in ("s_per_image_wall", "steady_s_per_image")}
    print(json.dumps({"ratio_vertex_stats_over_plain": ratio,
                      "extra_peak_gib": round(rows["vertex_stats"]["peak_tree_rss_gib"] - rows["plain"]["peak_tree_rss_gib"], 2)}))
    print(json.dumps(agreement(a.store, folder)))
    from screening.hardware import cpu_model_name

    print(json.dumps({"cpu": cpu_model_name(), "cores": os.cpu_count(), "images": a.images, "labels": a.labels}))


if __name__ == "__main__":
    main()
