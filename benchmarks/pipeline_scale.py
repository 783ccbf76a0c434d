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
    py = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid, comm, cpu in _thread_cpu():
        name = py.get(tid, f"[native] {comm}")
        out[name] = out.get(name, 0.0) + cpu
    return out


def _thread_cpu():
    """``(native id, comm, CPU seconds)`` of each live thread of this process (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        yield int(tid), comm, (int(fields[11]) + int(fields[12])) / tick


class ThreadCpuTracker(threading.Thread):
    """Every ``period`` s: each driver thread's CPU so far (a thread that exits, e.g. Ray Data's executor thread at
    the end of ``screen()``, keeps its last reading), and the process CPU against wall time and rows received."""

    def __init__(self, exclude=(), period=1.0):
        super().__init__(daemon=True)
        self.period, self.stop = period, threading.Event()
        self.exclude = set(exclude) | {self.name}   # the benchmark's own threads: not the driver's CPU
        self.last: dict[int, tuple[str, float]] = {}
        self.series: list[tuple] = []   # (wall, driver CPU so far, rows received, CPU so far by thread)

    def run(self):
        while not self.stop.is_set():
            py = {t.native_id: t.name for t in threading.enumerate()}
            for tid, comm, cpu in _thread_cpu():
                name = py.get(tid) or self.last.get(tid, (f"[native] {comm}",))[0]
                self.last[tid] = (name, cpu)
            c = os.times()
            ours = sum(cpu for name, cpu in self.last.values() if name in self.exclude)
            self.series.append((time.perf_counter(), c.user + c.system - ours, RECEIVED[0], self.by_name()))
            self.stop.wait(self.period)

    def by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, cpu in self.last.values():
            out[name] = out.get(name, 0.0) + cpu
        return out


class GcTimer:
    """Python garbage collections in the driver process during the run: count and wall seconds per generation (Ray
    also asks every process, the driver included, to collect when its object store is under pressure)."""

    def __init__(self):
        import gc

        self.gc, self.started, self.by_gen = gc, {}, {}
        gc.callbacks.append(self)

    def __call__(self, phase, info):
        key = threading.get_ident()
        if phase == "start":
            self.started[key] = time.perf_counter()
        elif key in self.started:
            n, s = self.by_gen.get(info["generation"], (0, 0.0))
            self.by_gen[info["generation"]] = (n + 1, s + time.perf_counter() - self.started.pop(key))

    def report(self) -> dict:
        self.gc.callbacks.remove(self)
        return {f"gen{g}": {"collections": n, "seconds": round(s, 3)} for g, (n, s) in sorted(self.by_gen.items())}


RECEIVED = [0]   # rows the driver's ledger has accounted for so far (see count_received)


def count_received():
    """Wrap ``UnitLedger.add`` to count the rows it accounts for: the steady-state rate, finer than unit commits."""
    from screening.pipeline.commit import UnitLedger

    add = UnitLedger.add

    def counted(self, receipts):
        n = add(self, receipts)
        RECEIVED[0] += n
        return n

    UnitLedger.add = counted


DATASETS = []   # the plan's Dataset, kept for its execution stats (tasks and blocks per operator)


def keep_dataset():
    from screening.pipeline import run

    build = run.build_dataset

    def kept(*args, **kwargs):
        ds = build(*args, **kwargs)
        DATASETS.append(ds)
        return ds

    run.build_dataset = kept


def operator_counts(ds) -> dict:
    """Tasks and output blocks per operator, from Ray Data's stats of the finished execution."""
    import re

    out = {}
    for m in re.finditer(r"Operator \d+ ([^:]+): (\d+) tasks executed, (\d+) blocks produced", ds.stats()):
        out[m.group(1)] = {"tasks": int(m.group(2)), "blocks": int(m.group(3))}
    return out


class ThrottledNullEncoder:
    """The null encoder stage, sleeping ``throttle_s`` per 64 images (no CPU): sets the pipeline's rate for the fit,
    the same at every encoder batch size."""

    def __init__(self, *, throttle_s=0.0, **kwargs):
        from screening.pipeline.stages import NullEncoderActor

        self.inner, self.throttle_s = NullEncoderActor(**kwargs), throttle_s

    def __call__(self, batch):
        time.sleep(self.throttle_s * len(batch["row"]) / 64)
        return self.inner(batch)


class NullEncoderNoDecode(ThrottledNullEncoder):
    """``--decode-actor --no-decode``: the decode='actor' plan (its pool runs two calls per actor) whose null stage
    decodes nothing, as ``--no-decode``'s: that plan's driver at rates decoding cannot feed on a small machine."""

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "decode": "gpu"})


def steady_state(series, rows, skip_s=10.0):
    """Driver CPU per wall second from ``skip_s`` after the start (imports, planning, the first tasks) to the sample
    before the last receipt (the final commits), and the run's images/s: a point of the fit
    ``driver CPU/s = a + b * rate``. (Receipts arrive in bursts as write batches fill, so the rate is the run's.)"""
    done = next((i for i, p in enumerate(series) if p[2] >= rows), len(series))
    lo = next((p for p in series if p[0] - series[0][0] >= skip_s), None)
    hi = series[done - 1] if done >= 1 else None
    if lo is None or hi is None or hi[0] - lo[0] < 5:
        return None
    dt = hi[0] - lo[0]
    rate = rows / (series[min(done, len(series) - 1)][0] - series[0][0])
    cpu = (hi[1] - lo[1]) / dt
    threads = {k: round((v - lo[3].get(k, 0.0)) / dt, 4) for k, v in hi[3].items()
               if v - lo[3].get(k, 0.0) >= 0.01 * dt}
    return {"seconds": round(dt, 1), "images_per_s": round(rate, 1), "driver_cpu_s_per_s": round(cpu, 4),
            "driver_cpu_us_per_image": round(1e6 * cpu / rate, 1) if rate else None,
            "by_thread_cpu_s_per_s": dict(sorted(threads.items(), key=lambda kv: -kv[1]))}


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
    from screening.sources import Unit as Shard
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


def make_receipts(unit_rows, first_unit, n_units, write_batch):
    """The receipts ``write_parts`` returns for ``n_units`` units of ``unit_rows`` rows streamed in write batches of
    ``write_batch`` rows (a batch that spans two units gives one receipt per unit), as one Arrow table per batch."""
    from screening.pipeline.parts import RECEIPT_SCHEMA

    out, batch = [], []
    total = n_units * unit_rows
    for lo in range(0, total, write_batch):
        batch = []
        hi = min(total, lo + write_batch)
        for u in range(lo // unit_rows, (hi - 1) // unit_rows + 1):
            a, b = max(lo, u * unit_rows) - u * unit_rows, min(hi, (u + 1) * unit_rows) - u * unit_rows
            idx = np.arange(a, b, dtype=np.int32)
            unit = f"u{first_unit + u:06d}"
            batch.append({"unit": unit, "responses": f"responses/{unit}/part-{a:09d}-x.parquet", "errors": "",
                          "rows": idx.tobytes(), "n_ok": idx.size, "n_err": 0, "n_read": 0,
                          "responses_rows": 9 * idx.size, "failure": ""})
        out.append(pa.Table.from_pylist(batch, schema=RECEIPT_SCHEMA))
    return out


def synthetic_driver(work, units=200, unit_rows=10_000, write_batch=8192, chunk_units=10):
    """The driver's own part at full speed, in this process on a local Ray: receipts made by Ray tasks (as
    ``write_parts`` returns them) fetched with ``ray.get``, ``UnitLedger`` accounting every row by identity, and a
    unit's compaction dispatched to a Ray task (``_RayCompactor``; the parts are not on disk, so each compaction
    fails fast and the unit commits with its parts as listed: the same driver work) before its marker is written.
    Returns the driver's CPU per image (all threads of this process) and the rate it sustained. Ray Data's executor
    is not in this loop: it is measured by the rate fit."""
    import ray

    from screening.sources import Unit as Shard
    from screening.pipeline.commit import UnitLedger
    from screening.pipeline.outputs import OutputLayout
    from screening.pipeline.run import _RayCompactor

    layout = OutputLayout(os.path.join(work, "synthetic"))
    layout.prepare()
    shards = [Shard(f"/in/u{u:06d}", f"/in/u{u:06d}", f"u{u:06d}", unit_rows, 1, "v") for u in range(units)]
    ledger = UnitLedger(layout, shards, "k", labels=9, compactor=_RayCompactor(layout, 8192 * 9))
    task = ray.remote(num_cpus=1)(make_receipts)
    refs = [task.remote(unit_rows, lo, chunk_units, write_batch) for lo in range(0, units, chunk_units)]
    ray.get(refs[:2])   # workers started: not the driver's cost
    c0, t0 = os.times(), time.perf_counter()
    n = 0
    for ref in refs:
        for receipts in ray.get(ref):
            n += ledger.add(receipts)
    stats = ledger.finish()
    wall, c1 = time.perf_counter() - t0, os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    assert n == units * unit_rows and len(stats.committed) == units and not stats.failed, stats.failed
    shutil.rmtree(os.path.join(work, "synthetic"))
    return {"images": n, "units": units, "unit_rows": unit_rows, "write_batch": write_batch,
            "driver_cpu_s": round(cpu, 3), "driver_cpu_us_per_image": round(1e6 * cpu / n, 3),
            "wall_s": round(wall, 2), "images_per_s": round(n / wall),
            "capacity_images_per_s_one_core": round(n / cpu) if cpu else None}


def _stub_read(batch, rows):
    return pa.table({"unit": pa.array([str(batch["unit"][0])] * rows), "row": pa.array(np.arange(rows))})


def _stub_pass(batch):
    return batch


class _StubEncoder:
    def __call__(self, batch):
        return batch


def _stub_write(batch):
    return {"unit": np.asarray(batch["unit"][:1]), "n": np.array([len(batch["row"])])}


def executor_cost(shards, rows, write_batch=8192):
    """One run of Ray Data's executor on the real plan's operator chain and resources (read tasks: one per shard,
    decode tasks, one encoder actor, write tasks, iterated by the driver as ``run.py`` does) with stand-in functions
    that do no work: (driver CPU s, wall s, tasks and blocks per operator)."""
    import ray

    from screening.pipeline.run import DECODE_TASK_MEMORY
    from screening.pipeline.sink import WRITE_TASK_CPUS, WRITE_TASK_MEMORY

    ds = ray.data.from_items([{"unit": f"u{i}"} for i in range(shards)], override_num_blocks=shards)
    ds = ds.map_batches(_stub_read, batch_format="pyarrow", batch_size=1, num_cpus=1, fn_kwargs={"rows": rows})
    ds = ds.map_batches(_stub_pass, batch_format="pyarrow", batch_size=32, num_cpus=1, memory=DECODE_TASK_MEMORY)
    ds = ds.map_batches(_StubEncoder, batch_format="numpy", batch_size=64, num_cpus=0,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1))
    ds = ds.map_batches(_stub_write, batch_format="numpy", batch_size=write_batch, num_cpus=WRITE_TASK_CPUS,
                        memory=WRITE_TASK_MEMORY)
    c0, t0 = os.times(), time.perf_counter()
    n = sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1))
    wall, c1 = time.perf_counter() - t0, os.times()
    assert n == -(-shards * rows // write_batch) or n >= shards, n
    return (c1.user - c0.user) + (c1.system - c0.system), wall, operator_counts(ds)


def fit_executor(runs):
    """Least squares ``driver CPU = a * wall + c * tasks`` over the runs: a (CPU s per wall s), c (CPU s per task)."""
    x = np.array([[r["wall_s"], r["tasks"]] for r in runs])
    y = np.array([r["driver_cpu_s"] for r in runs])
    (a, c), *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ np.array([a, c])
    return {"a_cpu_s_per_s": round(float(a), 4), "c_us_per_task": round(1e6 * float(c), 1),
            "max_abs_residual_s": round(float(np.abs(resid).max()), 3)}


def fit_rates(paths):
    """``driver CPU/s = a + b * rate`` over the steady states of runs at different rates (``--throttle-s``): b is the
    driver's CPU per image, a its CPU per second; one driver core then carries (1 - a) / b images/s. With b's
    standard error, the capacity at b + 2 SE is a conservative figure."""
    pts = []
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        st = steady_state([(t, c, r, {}) for t, c, r in d["series"]], d["rows"]) if d.get("series") else None
        if st:
            pts.append({"file": os.path.basename(p), "throttle_s": d.get("throttle_s"),
                        "images_per_s": st["images_per_s"], "driver_cpu_s_per_s": st["driver_cpu_s_per_s"]})
    x = np.array([[1.0, q["images_per_s"]] for q in pts])
    y = np.array([q["driver_cpu_s_per_s"] for q in pts])
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = max(1, len(pts) - 2)
    s2 = float(((y - x @ np.array([a, b])) ** 2).sum()) / dof
    se_b = float(np.sqrt(s2 * np.linalg.inv(x.T @ x)[1, 1]))
    cap = (lambda bb: round((1 - a) / bb) if bb > 0 else None)
    return {"points": pts, "a_cpu_s_per_s": round(float(a), 4), "b_us_per_image": round(1e6 * float(b), 2),
            "b_se_us": round(1e6 * se_b, 2), "capacity_images_per_s": cap(b),
            "capacity_at_b_plus_2se": cap(b + 2 * se_b)}


def memory_buckets(samples, n_units) -> dict:
    """Peaks per 10% of committed units: driver RSS, private; largest worker RSS, private; workers' private sum."""
    buckets = {}
    for x in samples:
        b = min(9, int(10 * x["units"] / n_units))
        d = buckets.setdefault(b, [0, 0, 0, 0, 0])
        d[0] = max(d[0], x["driver"][0])
        d[1] = max(d[1], x["driver"][1])
        if x["workers"]:
            d[2] = max(d[2], max(v[1] for v in x["workers"].values()))
            d[3] = max(d[3], max(v[2] for v in x["workers"].values()))
            d[4] = max(d[4], sum(v[2] for v in x["workers"].values()))
    return buckets


def print_figures(fig, buckets, args, sampler_cpu):
    images, n_units = fig["rows"], fig["units"]
    n_parts, med_part, min_part, n_written = (fig["response_files"], fig["median_row_group_rows"],
                                              fig["min_row_group_rows"], fig["parts_written_by_workers"])
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


def add_driver_detail(fig, tracker, t0, per_thread, buckets, args):
    """The steady state, Ray Data's tasks and blocks per operator, the CPU series and per-thread CPU."""
    images = fig["rows"]
    fig["steady"] = steady_state(tracker.series, images)
    try:
        fig["operators"] = operator_counts(DATASETS[-1]) if DATASETS else {}
    except Exception as exc:  # noqa: BLE001 - stats are a report, not the run
        fig["operators"] = {"error": repr(exc)}
    print("tasks and blocks per operator:", fig["operators"])
    fig["series"] = [[round(t - t0, 1), round(c, 2), u] for t, c, u, _ in tracker.series]
    fig.update(throttle_s=args.throttle_s, encoder_batch_size=args.encoder_batch_size, no_decode=args.no_decode,
               decode_actor=args.decode_actor,
               driver_core=args.driver_core,
               write_batch_size=args.write_batch_size, target_max_block_mib=args.target_max_block_mib)
    print(f"steady state (after 10 s, before the last receipt): {fig['steady']}")
    fig["driver_threads_cpu_s"] = {k: round(v, 2) for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1])
                                   if v >= 0.05}
    print("\ndriver process CPU s by thread (whole process life):", fig["driver_threads_cpu_s"])
    fig["per_10pct_MiB"] = {f"{10 * b}-{10 * b + 10}%": [round(v / MB) for v in buckets[b]] for b in sorted(buckets)}


def _dump(fig, path):
    if path:
        with open(path, "w") as f:
            json.dump(fig, f, indent=1)


def other_mode(args, work) -> bool:
    """``--worker-costs``, ``--fit``, ``--executor-cost``, ``--synthetic-driver``: measurements without the real plan (True if one ran)."""
    import ray

    if args.worker_costs:
        costs = worker_costs(work)
        print(f"worker-side write path, {cpu_name()}: {costs}")
        _dump({"cpu": cpu_name(), **costs}, args.json)
        return True
    if args.fit:
        fig = {"cpu": cpu_name(), **fit_rates(args.fit)}
        print(json.dumps(fig, indent=1))
        _dump(fig, args.json)
        return True
    if args.executor_cost:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        executor_cost(20, 64)   # workers and the actor started once: not counted
        runs = []
        for shards in (30, 120, 360, 30, 120, 360):
            cpu, wall, ops = executor_cost(shards, 64)
            runs.append({"shards": shards, "driver_cpu_s": round(cpu, 3), "wall_s": round(wall, 2),
                         "tasks": sum(o["tasks"] for o in ops.values()), "operators": ops})
            print(runs[-1], flush=True)
        fig = {"cpu": cpu_name(), "cores": os.cpu_count(), "runs": runs, "fit": fit_executor(runs)}
        print(f"executor cost, {fig['cpu']}: {fig['fit']}")
        _dump(fig, args.json)
        ray.shutdown()
        return True
    if args.synthetic_driver:
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        runs = [synthetic_driver(work) for _ in range(3)]
        fig = {"cpu": cpu_name(), "cores": os.cpu_count(), "runs": runs,
               "median_driver_cpu_us_per_image": statistics.median(r["driver_cpu_us_per_image"] for r in runs),
               "median_images_per_s": statistics.median(r["images_per_s"] for r in runs)}
        print(f"synthetic driver, {fig['cpu']}: {json.dumps(fig, indent=1)}")
        _dump(fig, args.json)
        ray.shutdown()
        return True
    return False


def parse_args():
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
    ap.add_argument("--throttle-s", type=float, default=0.0,
                    help="the null encoder sleeps this long per 64 images: a lower rate, for the driver-cost fit")
    ap.add_argument("--encoder-batch-size", type=int, default=None, help="encoder batch (default: the CPU one, 64)")
    ap.add_argument("--target-max-block-mib", type=int, default=None,
                    help="DataContext.target_max_block_size (Ray's default 128 MiB: ~850 decoded images per block)")
    ap.add_argument("--no-memory", action="store_true",
                    help="skip the memory sampler (its smaps reads take ~0.2 CPU s/s of the driver process's GIL)")
    ap.add_argument("--synthetic-driver", action="store_true",
                    help="only drive the driver's own part (receipts, ledger, compaction dispatch, markers) with "
                         "synthetic receipts at full speed, then exit")
    ap.add_argument("--executor-cost", action="store_true",
                    help="only measure Ray Data's executor (the plan's operators, stand-in functions) at several "
                         "task counts and fit driver CPU = a * wall + c * tasks, then exit")
    ap.add_argument("--fit", nargs="+", metavar="JSON", default=None,
                    help="only fit driver CPU/s = a + b * rate over these runs' JSONs, then exit")
    ap.add_argument("--no-decode", action="store_true",
                    help="the decode='gpu' plan (read -> encoder actors -> write, no decode tasks), whose null "
                         "encoder decodes nothing: the driver at rates CPU decode cannot feed on a small machine")
    ap.add_argument("--decode-actor", action="store_true",
                    help="the decode='actor' plan (read -> encoder actors -> write): the null encoder stage decodes "
                         "each batch in its threads, as the real one does, then costs nothing; with --no-decode, "
                         "that plan (two calls per encoder actor) with a null stage that decodes nothing")
    ap.add_argument("--driver-core", action="store_true",
                    help="the driver's threads on core 0, Ray's processes (started from a thread on core 1) on the "
                         "rest, as a driver on its own head node: the workers' load does not slow the driver")
    ap.add_argument("--json", default=None, help="write the figures (and raw samples) here")
    return ap.parse_args()


def run_screen(args, in_dir, out):
    """``screen()`` as ``screening run`` builds it, with the null encoder stage."""
    from screening.pipeline import screen

    return screen(in_dir, StandInStore(), out, model_id=MODEL_ID, precision="fp32", num_encoders=1,
                  num_cpus_per_encoder=0, progress=False, encoder_stage="null", throttle_s=args.throttle_s,
                  batch_size=args.encoder_batch_size, write_batch_size=args.write_batch_size,
                  decode="actor" if args.decode_actor else "gpu" if args.no_decode else "cpu")


def instrument(args, raylet_pid, out):
    """The samplers (memory, stacks, per-thread CPU) started, the hooks and the run's options in place."""
    sampler = Sampler(raylet_pid, os.path.join(out, "_committed"), args.shard_rows)
    if not args.no_memory:
        sampler.start()
    prof = StackSampler() if args.profile_driver else None
    if prof:
        prof.start()
    count_received()
    keep_dataset()
    tracker = ThreadCpuTracker(exclude=[sampler.name] + ([prof.name] if prof else []))
    tracker.start()
    if args.throttle_s or (args.decode_actor and args.no_decode):
        from screening.pipeline import stages

        # defined in __main__: Ray ships them by value
        stages.NullEncoderActor = NullEncoderNoDecode if args.decode_actor and args.no_decode else ThrottledNullEncoder
    if args.target_max_block_mib:
        from ray.data import DataContext

        DataContext.get_current().target_max_block_size = args.target_max_block_mib * 2**20
    return sampler, prof, tracker


def main():
    args = parse_args()

    import psutil
    import ray

    work = args.workdir or tempfile.mkdtemp(prefix="scalebench")
    if other_mode(args, work):
        return
    in_dir = os.path.join(work, "in")
    t = time.perf_counter()
    write_inputs(in_dir, args.rows, args.shard_rows, args.image_size)
    print(f"inputs: {args.rows} rows in {-(-args.rows // args.shard_rows)} shards ({time.perf_counter() - t:.0f} s)",
          flush=True)
    if args.driver_core:   # children and new threads inherit the affinity of the thread that makes them
        os.sched_setaffinity(0, set(range(1, os.cpu_count())))
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    if args.driver_core:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), {0})
    import ray._private.worker as rw

    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    n_units = -(-args.rows // args.shard_rows)
    sampler, prof, tracker = instrument(args, rw._global_node.all_processes["raylet"][0].process.pid, out)
    me = psutil.Process()
    c0 = me.cpu_times()
    gc_timer = GcTimer()
    t0 = time.perf_counter()
    r = run_screen(args, in_dir, out)
    wall = time.perf_counter() - t0
    gc_report = gc_timer.report()
    c1 = me.cpu_times()
    per_thread = thread_cpu()
    for thread in (tracker, sampler, prof):
        if thread is not None and thread.is_alive():
            thread.stop.set()
            thread.join()
    if prof:
        prof.report()
    # the memory sampler (and the trackers) run in this process but are the benchmark's: their CPU is left out
    per_thread = {**per_thread, **tracker.by_name()}   # with the threads that exited before the end
    sampler_cpu = sum(v for k, v in per_thread.items() if k in tracker.exclude)
    drv_cpu = (c1.user - c0.user) + (c1.system - c0.system) - sampler_cpu
    images = r.counts["images"]
    assert images == args.rows and r.counts["errors"] == 0, r.counts
    n_parts, med_part, min_part, n_written = part_stats(out)

    buckets = memory_buckets(sampler.samples, n_units)
    fig = {"label": args.label, "cpu": cpu_name(), "cores": os.cpu_count(), "rows": images, "units": n_units,
           "wall_s": round(wall, 1), "images_per_s": round(images / wall, 1),
           "driver_cpu_s": round(drv_cpu, 1), "driver_cpu_us_per_image": round(1e6 * drv_cpu / images, 2),
           "driver_capacity_images_per_s": round(images / drv_cpu) if drv_cpu else None,
           "response_files": n_parts, "median_row_group_rows": med_part, "min_row_group_rows": min_part,
           "parts_written_by_workers": n_written,
           "load_avg_end": round(os.getloadavg()[0], 1)}
    print_figures(fig, buckets, args, sampler_cpu)
    add_driver_detail(fig, tracker, t0, per_thread, buckets, args)
    fig["sampler_cpu_s"] = round(sampler_cpu, 1)
    fig["driver_gc"] = gc_report
    print("driver garbage collections during the run:", gc_report)
    _dump(fig, args.json)
    ray.shutdown()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
