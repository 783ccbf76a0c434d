"""End-to-end CPU throughput and memory of ``screening.pipeline.screen`` vs the encoder alone.

    python benchmarks/pipeline_cpu.py --rows 100000 --width 8

Writes ``--shards`` copies of one shard of tiny JPEGs (so >=100k rows cost little disk), runs the pipeline on a local
Ray (2 CPUs), and samples the RSS of the driver and of every Ray worker process (children of our raylet) every 0.5 s.
Prints a table: images/s end to end, images/s of ``RoiEncoder`` alone on the same decoded images (1 thread, as in the
actor), the ratio, and peak RSS per process in the first and second half of the run (flat = memory does not grow).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

MODEL_ID = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"


def tiny_jpegs(n, size=32):
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


class Sampler(threading.Thread):
    def __init__(self, raylet_pid):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.raylet = raylet_pid
        self.samples = []  # (t, driver_rss, max_worker_rss, sum_worker_rss)
        self.stop = threading.Event()

    def run(self):
        me = self.psutil.Process()
        while not self.stop.is_set():
            try:
                kids = [p for p in self.psutil.Process(self.raylet).children() if "ray::" in " ".join(p.cmdline())]
                rss = [p.memory_info().rss for p in kids]
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                rss = []
            self.samples.append((time.time(), me.memory_info().rss, max(rss, default=0), sum(rss)))
            self.stop.wait(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--shard-rows", type=int, default=1000)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    import ray

    import psutil  # noqa: F401  (ray ships it in thirdparty_files)
    from screening.models.encoder import RoiEncoder
    from screening.pipeline import screen
    from screening.preprocess import preprocess_bytes
    from screening.rois import build_roi_set
    from screening.store import open_store
    from screening.store.synthetic import make_store

    work = args.workdir or tempfile.mkdtemp(prefix="pipebench")
    store_dir = os.path.join(work, f"store-w{args.width}")
    if not os.path.exists(store_dir):
        make_store(store_dir, variant="visual", seed=0, width=args.width)
    n_shards = args.rows // args.shard_rows
    imgs = tiny_jpegs(args.shard_rows)
    in_dir = os.path.join(work, "in")
    shutil.rmtree(in_dir, ignore_errors=True)
    os.makedirs(in_dir)
    for s in range(n_shards):
        ids = [f"s{s:04d}-{i:05d}" for i in range(args.shard_rows)]
        pq.write_table(pa.table({"image_id": ids, "image": pa.array(imgs, pa.binary())}),
                       os.path.join(in_dir, f"part-{s:04d}.parquet"))
    rois = ["V1", "V2", "V3", "V4", "FFC", "group_01", "group_02", "group_03", "group_04", "group_05"]

    # Encoder alone, same images, 1 thread (what one CPU actor gets).
    import torch

    torch.set_num_threads(1)
    store = open_store(store_dir)
    enc = RoiEncoder.from_model(store.load_model(MODEL_ID)[0], [f"sub-{i:02d}" for i in range(1, 9)],
                                build_roi_set("visual", rois), precision=args.precision)
    x = np.stack([preprocess_bytes(b) for b in imgs[:args.batch_size]])
    enc.encode_numpy(x)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 10:
        enc.encode_numpy(x)
        n += len(x)
    enc_ips = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in imgs[:500]:
        preprocess_bytes(b)
    dec_ips = 500 / (time.perf_counter() - t0)
    torch.set_num_threads(os.cpu_count() or 1)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    import ray._private.worker as rw

    sampler = Sampler(rw._global_node.all_processes["raylet"][0].process.pid)
    sampler.start()
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    r = screen(in_dir, store_dir, out, model_id=MODEL_ID, rois=rois, batch_size=args.batch_size,
               precision=args.precision, progress=False)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    s = np.array(sampler.samples)
    half = len(s) // 2
    mb = 2**20
    e2e = r.counts["images"] / wall
    print(f"rows={r.counts['images']} shards={n_shards} width={args.width} precision={args.precision} "
          f"batch={args.batch_size} machine: {os.cpu_count()} cores, Ray local num_cpus=2")
    print("| metric | value |\n|---|---|")
    print(f"| end-to-end images/s (wall incl. startup) | {e2e:.0f} |")
    print(f"| encoder alone images/s (1 thread) | {enc_ips:.0f} |")
    print(f"| decode alone images/s (1 thread, 32x32 JPEG) | {dec_ips:.0f} |")
    print(f"| end-to-end / encoder alone | {e2e / enc_ips:.2f} |")
    print(f"| driver peak RSS, 1st half / 2nd half (MiB) | {s[:half, 1].max() / mb:.0f} / {s[half:, 1].max() / mb:.0f} |")
    print(f"| largest worker peak RSS, 1st / 2nd half (MiB) | {s[:half, 2].max() / mb:.0f} / {s[half:, 2].max() / mb:.0f} |")
    print(f"| all workers peak RSS sum, 1st / 2nd half (MiB) | {s[:half, 3].max() / mb:.0f} / {s[half:, 3].max() / mb:.0f} |")
    print(f"| errors | {r.counts['errors']} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
