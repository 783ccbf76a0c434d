"""What the pipeline costs besides the model: the real plan with a zero-cost encoder stage, at scale.

    nice -n 10 python benchmarks/pipeline_scale.py --rows 1000000 --workdir /tmp/scale     # the 1M-row run
    python benchmarks/pipeline_scale.py --rows 20000                                       # a few minutes

The plan is ``screening.pipeline.screen`` exactly as ``screening run`` builds it (read tasks, decode tasks, the encoder
actor pool, the write path, the commits), except that the encoder stage is ``stages.NullEncoderActor``: random ROI
means of the real output shape, 8 subjects + ``mean`` x 379 ROIs (the published ``all`` variant's default set). No
checkpoint is loaded, so the store is a stand-in object with the published fingerprint shape (``synthetic``).

Inputs: ``--rows`` rows of small JPEGs (``--image-size``, default 16 px: decode then costs ~0.4 ms, nearly all of it
the 224x224 resize) in shards of ``--shard-rows``.

Reports, from one run:
- end-to-end images/s (wall of ``screen()``);
- driver CPU seconds per image: user + system time of the driver process (all its threads: the Ray Data executor,
  the core worker, our commit loop) over the run, divided by the images;
- driver and worker memory at every 10% of committed rows (RSS and private, see ``pipeline_cpu.py``'s sampler);
- the part files written (count, median rows), from the markers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline_cpu import MB, Sampler  # noqa: E402

MODEL_ID = "fmri-mosaic-CNN8_multihead_subNSD_verticesAll"


class StandInStore:
    """Enough of ``ModelStore`` for planning; ``load_model`` is never called with the null encoder stage."""

    location = "stand-in (no checkpoint; null encoder stage)"

    def model_ids(self):
        return [MODEL_ID]

    def fingerprint(self, model_id):
        return {"model_id": model_id, "variant": "all", "checkpoint_sha256": "0" * 64, "synthetic": True,
                "width": 0}

    def load_model(self, model_id):  # pragma: no cover - a bug if reached
        raise RuntimeError("the null encoder stage must not load a model")


def tiny_jpegs(n, size, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def write_inputs(in_dir, rows, shard_rows, size):
    os.makedirs(in_dir, exist_ok=True)
    stamp = os.path.join(in_dir, f"_complete-{rows}-{shard_rows}-{size}")
    if os.path.exists(stamp):
        return
    shutil.rmtree(in_dir)
    os.makedirs(in_dir)
    imgs = tiny_jpegs(min(shard_rows, 2000), size)
    col = pa.array([imgs[i % len(imgs)] for i in range(shard_rows)], pa.binary())
    n_shards = -(-rows // shard_rows)
    for s in range(n_shards):
        k = min(shard_rows, rows - s * shard_rows)
        ids = pa.array([f"s{s:05d}-{i:06d}" for i in range(k)], pa.string())
        pq.write_table(pa.table({"image_id": ids, "image": col.slice(0, k)}),
                       os.path.join(in_dir, f"part-{s:05d}.parquet"))
    open(stamp, "w").close()


class StackSampler(threading.Thread):
    """``--profile-driver``: every 5 ms, the innermost frames of every driver thread (where its CPU goes)."""

    def __init__(self, depth=12):
        super().__init__(daemon=True)
        self.depth, self.counts, self.stop = depth, {}, threading.Event()

    def run(self):
        import collections
        import traceback

        names = {}
        self.counts = collections.Counter()
        while not self.stop.wait(0.005):
            names.update({t.ident: t.name for t in threading.enumerate()})
            for ident, frame in sys._current_frames().items():
                if ident == self.ident:
                    continue
                stack = traceback.extract_stack(frame)[-self.depth:]
                key = (names.get(ident, "?"),) + tuple(f"{os.path.basename(f.filename)}:{f.name}" for f in stack)
                self.counts[key] += 1

    def report(self, n=25):
        total = sum(self.counts.values()) or 1
        for key, c in self.counts.most_common(n):
            print(f"{100 * c / total:5.1f}% {key[0]}: " + " <- ".join(reversed(key[1:])))


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, by name (Python's name where there is one)."""
    tick = os.sysconf("SC_CLK_TCK")
    py = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        name = py.get(int(tid), f"[native] {comm}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except Exception:  # noqa: BLE001
        return platform.processor() or "unknown CPU"


def part_stats(out):
    """(response files, median row-group rows, smallest row group, parts written by workers) over committed units."""
    groups, n_files, written = [], 0, 0
    for f in os.listdir(os.path.join(out, "_committed")):
        with open(os.path.join(out, "_committed", f)) as fh:
            m = json.load(fh)
        rels = m["files"]["responses"]
        rels = [rels] if isinstance(rels, str) else rels
        written += len(m.get("parts") or rels)
        for rel in rels:
            md = pq.read_metadata(os.path.join(out, rel))
            n_files += 1
            groups += [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    return n_files, (statistics.median(groups) if groups else 0), (min(groups) if groups else 0), written


def worker_costs(work, images=8192, n_rois=379, repeats=3):
    """CPU cost per image of the worker-side write path, in this process: ``write_parts`` on one write batch and
    ``compact_unit`` merging a 10,000-image unit written as 4 parts (local disk). Medians of ``repeats``."""
    from screening.pipeline.outputs import OutputLayout
    from screening.pipeline.parts import compact_unit, write_parts

    labels = [f"sub-{i:02d}" for i in range(1, 9)] + ["mean"]
    rois = [f"roi{j}" for j in range(n_rois)]
    rng = np.random.default_rng(0)

    def batch(unit, rows):
        n = len(rows)
        return {"unit": np.array([unit] * n, dtype=object), "row": np.asarray(rows),
                "image_id": np.array([f"{unit}-{r:06d}" for r in rows], dtype=object),
                "source": np.array([""] * n, dtype=object), "stage": np.array([""] * n, dtype=object),
                "error": np.array([""] * n, dtype=object),
                "roi": rng.standard_normal((n, len(labels), n_rois), dtype=np.float32)}

    out = {"write_parts_us_per_image": [], "compact_unit_us_per_image": []}
    for k in range(repeats):
        layout = OutputLayout(os.path.join(work, f"wc{k}"))
        b = batch("w", range(images))
        t = time.process_time()
        write_parts(b, layout=layout, labels=labels, roi_names=rois, config_key="k")
        out["write_parts_us_per_image"].append(1e6 * (time.process_time() - t) / images)
        parts = []
        for lo in range(0, 10_000, 2_500):
            r = write_parts(batch("c", range(lo, lo + 2_500)), layout=layout, labels=labels, roi_names=rois,
                            config_key="k")
            parts.append(r.column("responses")[0].as_py())
        t = time.process_time()
        res = compact_unit(layout, "c", parts, row_group_rows=8192 * len(labels))
        assert "file" in res, res
        out["compact_unit_us_per_image"].append(1e6 * (time.process_time() - t) / 10_000)
        shutil.rmtree(os.path.join(work, f"wc{k}"))
    out = {k: round(statistics.median(v), 1) for k, v in out.items()}
    out["driver_ledger_us_per_image"] = round(ledger_cost(work, labels), 4)
    return out


def ledger_cost(work, labels, units=20, rows=50_000, batch=8192):
    """Driver CPU per image of our own commit loop (``UnitLedger.add`` on receipts, the markers written), no Ray."""
    from screening.io.image_source import Shard
    from screening.pipeline.commit import UnitLedger
    from screening.pipeline.outputs import OutputLayout
    from screening.pipeline.parts import RECEIPT_SCHEMA

    layout = OutputLayout(os.path.join(work, "ledger"))
    layout.prepare()
    shards = [Shard(f"/in/u{u}", f"/in/u{u}", f"u{u}", rows, 1, "v") for u in range(units)]
    ledger = UnitLedger(layout, shards, "k", labels=len(labels))
    receipts = []
    for u in range(units):
        for lo in range(0, rows, batch):
            idx = np.arange(lo, min(rows, lo + batch), dtype=np.int32)
            receipts.append(pa.Table.from_pylist([{"unit": f"u{u}", "responses": f"responses/u{u}/p{lo}.parquet",
                                                   "errors": "", "rows": idx.tobytes(), "n_ok": idx.size,
                                                   "n_err": 0, "n_read": 0, "responses_rows": idx.size * 9,
                                                   "failure": ""}], schema=RECEIPT_SCHEMA))
    t = time.process_time()
    for r in receipts:
        ledger.add(r)
    cost = time.process_time() - t
    assert len(ledger.stats.committed) == units
    shutil.rmtree(os.path.join(work, "ledger"))
    return 1e6 * cost / (units * rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--write-batch-size", type=int, default=8192,
                    help="images per part file (the GPU default; the driver-side sink of a00df8c had no such stage)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--label", default="", help="a name for this run in the JSON (e.g. the commit)")
    ap.add_argument("--profile-driver", action="store_true", help="sample the driver's thread stacks")
    ap.add_argument("--worker-costs", action="store_true",
                    help="only measure the worker-side write path's CPU per image (no Ray), then exit")
    ap.add_argument("--json", default=None, help="write the figures (and raw samples) here")
    args = ap.parse_args()

    import psutil
    import ray

    from screening.pipeline import screen

    work = args.workdir or tempfile.mkdtemp(prefix="scalebench")
    if args.worker_costs:
        costs = worker_costs(work)
        print(f"worker-side write path, {cpu_name()}: {costs}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"cpu": cpu_name(), **costs}, f, indent=1)
        return
    in_dir = os.path.join(work, "in")
    t = time.perf_counter()
    write_inputs(in_dir, args.rows, args.shard_rows, args.image_size)
    print(f"inputs: {args.rows} rows in {-(-args.rows // args.shard_rows)} shards ({time.perf_counter() - t:.0f} s)",
          flush=True)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    import ray._private.worker as rw

    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    n_units = -(-args.rows // args.shard_rows)
    sampler = Sampler(rw._global_node.all_processes["raylet"][0].process.pid, os.path.join(out, "_committed"),
                      args.shard_rows)
    sampler.start()
    prof = StackSampler() if args.profile_driver else None
    if prof:
        prof.start()
    me = psutil.Process()
    c0 = me.cpu_times()
    t0 = time.perf_counter()
    import inspect

    extra = {"write_batch_size": args.write_batch_size} if "write_batch_size" in inspect.signature(screen).parameters \
        else {}  # the driver-side sink (before the write path) has no write stage
    r = screen(in_dir, StandInStore(), out, model_id=MODEL_ID, precision="fp32", num_encoders=1,
               num_cpus_per_encoder=0, progress=False, _encoder_stage="null", **extra)
    wall = time.perf_counter() - t0
    c1 = me.cpu_times()
    per_thread = thread_cpu()
    sampler.stop.set()
    sampler.join()
    if prof:
        prof.stop.set()
        prof.join()
        prof.report()
    # the memory sampler runs in this process but is the benchmark's, not the driver's: its CPU is left out
    sampler_cpu = sum(v for k, v in per_thread.items() if k == sampler.name)
    drv_cpu = (c1.user - c0.user) + (c1.system - c0.system) - sampler_cpu
    images = r.counts["images"]
    assert images == args.rows and r.counts["errors"] == 0, r.counts
    n_parts, med_part, min_part, n_written = part_stats(out)

    buckets = {}
    for x in sampler.samples:
        b = min(9, int(10 * x["units"] / n_units))
        d = buckets.setdefault(b, [0, 0, 0, 0, 0])
        d[0] = max(d[0], x["driver"][0])
        d[1] = max(d[1], x["driver"][1])
        if x["workers"]:
            d[2] = max(d[2], max(v[1] for v in x["workers"].values()))
            d[3] = max(d[3], max(v[2] for v in x["workers"].values()))
            d[4] = max(d[4], sum(v[2] for v in x["workers"].values()))
    fig = {"label": args.label, "cpu": cpu_name(), "cores": os.cpu_count(), "rows": images, "units": n_units,
           "wall_s": round(wall, 1), "images_per_s": round(images / wall, 1),
           "driver_cpu_s": round(drv_cpu, 1), "driver_cpu_us_per_image": round(1e6 * drv_cpu / images, 2),
           "driver_capacity_images_per_s": round(images / drv_cpu) if drv_cpu else None,
           "response_files": n_parts, "median_row_group_rows": med_part, "min_row_group_rows": min_part,
           "parts_written_by_workers": n_written,
           "load_avg_end": round(os.getloadavg()[0], 1)}
    print(f"\n{args.label or 'run'}: {images} rows, {n_units} units, image {args.image_size} px; {fig['cpu']}, "
          f"{fig['cores']} cores, Ray num_cpus={args.num_cpus}; load avg at end {fig['load_avg_end']}")
    print("| metric | value |\n|---|---|")
    print(f"| end-to-end images/s | {fig['images_per_s']} |")
    print(f"| driver CPU s (user+sys, all threads) | {fig['driver_cpu_s']} |")
    print(f"| driver CPU per image (us) | {fig['driver_cpu_us_per_image']} |")
    print(f"| driver capacity (images / driver CPU s) | {fig['driver_capacity_images_per_s']} |")
    print(f"| memory sampler CPU s (excluded above) | {sampler_cpu:.1f} |")
    print(f"| response files / row groups: median rows, smallest | {n_parts} / {med_part:.0f}, {min_part} |")
    print(f"| parts written by workers (before per-unit compaction) | {n_written} |")
    print("\n| rows committed | driver RSS | driver private | largest worker RSS | largest worker private "
          "| workers private sum |\n|---|---|---|---|---|---|")
    for b in sorted(buckets):
        d = buckets[b]
        print(f"| {10 * b}-{10 * b + 10}% | " + " | ".join(f"{v / MB:.0f}" for v in d) + " |")
    fig["sampler_cpu_s"] = round(sampler_cpu, 1)
    fig["driver_threads_cpu_s"] = {k: round(v, 2) for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1])
                                   if v >= 0.05}
    print("\ndriver process CPU s by thread (whole process life):", fig["driver_threads_cpu_s"])
    fig["per_10pct_MiB"] = {f"{10 * b}-{10 * b + 10}%": [round(v / MB) for v in buckets[b]] for b in sorted(buckets)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=1)
    ray.shutdown()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
