"""One encoder actor's setup on CPU: model load + ROI collapse, time and peak memory, each way side by side.

    nice -n 10 python benchmarks/actor_setup.py --store /tmp/s9/store-all [--baseline-rev d737e62] [--repeats 2]

Each measurement runs in a fresh process (peaks are per process) doing what ``EncoderActor.__init__`` does:
``store.load_model`` then ``RoiEncoder.from_model`` for all 8 subjects x every ROI of the variant, bf16.
- ``before``: ``RoiEncoder.from_model`` of ``--baseline-rev``'s ``screening/models/encoder.py`` (list of
  per-subject matrices, ``torch.cat``, then a transposed copy in ``RoiEncoder``);
- ``memory``: this tree's collapse without the node cache (written straight into the transposed buffer);
- ``cold``: this tree with the node cache, building the entry (an empty cache directory);
- ``warm``: this tree with the node cache, mapping the entry built by ``cold``.
Times are wall and CPU (all threads of the process): on a shared machine the CPU time is the steadier figure.
Memory is sampled every 20 ms from /proc/self/status: RssAnon (private to the process) and RssFile (file pages:
the memory-mapped checkpoint and the cache entry, shared through the page cache).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 2**30


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "VmRSS"):
                out[k] = int(v.split()[0]) * 1024
    return out


class Peak(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for k, v in _status().items():
                self.peak[k] = max(self.peak[k], v)
            self.stop.wait(0.02)


def child(mode: str, store_dir: str, cache_dir: str, baseline: str | None, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from screening.models.collapsed import collapse_key
    from screening.rois import build_roi_set
    from screening.store import open_store

    if mode == "before":
        spec = importlib.util.spec_from_file_location("screening.models._encoder_before", baseline)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        from screening.models.encoder import CNN8Multihead

        mod.CNN8Multihead = CNN8Multihead  # the store builds today's class; the old collapse must recognise it
        roi_encoder = mod.RoiEncoder
    else:
        from screening.models.encoder import RoiEncoder as roi_encoder
    store = open_store(store_dir)
    model_id = store.model_ids()[0]
    variant = store.fingerprint(model_id)["variant"]
    subjects = [f"sub-{i:02d}" for i in range(1, 9)]
    rois = build_roi_set(variant)
    key = collapse_key(store.fingerprint(model_id)["checkpoint_sha256"], subjects, rois)
    peak = Peak()
    peak.start()
    t0, c0 = time.perf_counter(), time.process_time()
    model, _ = store.load_model(model_id)
    t1, c1 = time.perf_counter(), time.process_time()
    kw = {"cache_key": key, "cache_dir": cache_dir} if mode in ("cold", "warm") else {}
    enc = roi_encoder.from_model(model, subjects, rois, precision="bf16", **kw)
    del model
    t2, c2 = time.perf_counter(), time.process_time()
    peak.stop.set()
    peak.join()
    after = _status()
    return {"mode": mode, "load_s": t1 - t0, "collapse_s": t2 - t1, "setup_s": t2 - t0, "load_cpu_s": c1 - c0,
            "collapse_cpu_s": c2 - c1, "load_avg": os.getloadavg()[0],
            "peak_anon_gib": peak.peak["RssAnon"] / GIB, "peak_rss_gib": peak.peak["VmRSS"] / GIB,
            "after_anon_gib": after["RssAnon"] / GIB, "after_file_gib": after["RssFile"] / GIB,
            "source": getattr(enc, "collapse_source", "collapsed"),
            "matrix_gib": enc.roi_weights_t.numel() * 4 / GIB, "threads": threads}


def run_child(mode, args, cache_dir, baseline):
    cmd = [sys.executable, __file__, "--child", mode, "--store", args.store, "--cache-dir", cache_dir,
           "--threads", str(args.threads)] + (["--baseline-file", baseline] if baseline else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--baseline-rev", default=None, help="git revision whose encoder.py is the 'before' (optional)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--modes", default="before,memory,cold,warm", help="which of before, memory, cold, warm")
    ap.add_argument("--child", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--baseline-file", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.store, args.cache_dir, args.baseline_file, args.threads)))
        return
    work = tempfile.mkdtemp(prefix="actor-setup")
    baseline = None
    if args.baseline_rev:
        baseline = os.path.join(work, "encoder_before.py")
        src = subprocess.run(["git", "show", f"{args.baseline_rev}:screening/models/encoder.py"], check=True,
                             capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
        with open(baseline, "w") as f:
            f.write(src.stdout)
    rows = []
    for r in range(args.repeats):
        cache = os.path.join(work, f"cache{r}")
        modes = [m for m in args.modes.split(",") if baseline or m != "before"]
        for mode in modes:
            rows.append(run_child(mode, args, cache, baseline))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nCPU: {_cpu()}, {os.cpu_count()} cores, torch threads {args.threads}; store {args.store}")
    print("| setup | load s (CPU s) | collapse s (CPU s) | peak RssAnon GiB | peak RSS GiB | after: anon / file GiB "
          "| load avg |")
    print("|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['mode']} ({x['source']}) | {x['load_s']:.1f} ({x['load_cpu_s']:.1f}) | {x['collapse_s']:.1f} "
              f"({x['collapse_cpu_s']:.1f}) | "
              f"{x['peak_anon_gib']:.2f} | {x['peak_rss_gib']:.2f} | {x['after_anon_gib']:.2f} / "
              f"{x['after_file_gib']:.2f} | {x['load_avg']:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
