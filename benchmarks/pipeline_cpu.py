"""End-to-end throughput and memory of ``screening.pipeline.screen`` vs the encoder alone, on the same images.

    nice -n 10 python benchmarks/pipeline_cpu.py --rows 100000 --width 4 --image-size 64     # the memory run
    python benchmarks/pipeline_cpu.py --quick [--num-gpus-per-encoder 1]                       # < 2 minutes
    nice -n 10 python benchmarks/pipeline_cpu.py --published STORE --images 64 --repeats 2     # pipeline vs API

``--published STORE``: the published-size model (a full-width "all" store: ``screening make-store``), all 8
subjects x every ROI, bf16, on all cores: steady-state ``screen()`` images/s against
``BERG.encode(reduce="roi_mean", precision="bf16")`` images/s on the same images (real photographs as ~425 px
JPEGs; the API gets them decoded, so its time excludes decoding), run back to back ``--repeats`` times: medians and
their ratio. One-time setup (model load + collapse, and Ray start) is reported apart.

Inputs: ``--rows / --shard-rows`` copies of one shard of small JPEGs (``--image-size``, default 64x64: decode is then
cheap, so the run measures the pipeline and its memory, not libjpeg). Model: a reduced-width synthetic visual store
(``--width``). Ray: a private local cluster (``--num-cpus``, default 2; GPUs when ``--num-gpus-per-encoder`` > 0).

Reports, from one run:
- end-to-end images/s (wall of ``screen()`` incl. Ray start and model load, and the steady rate between the first
  and the last unit commit) against ``RoiEncoder`` alone on the same decoded images (same threads / device as one
  encoder actor) -> the Ray overhead ratio;
- memory sampled every second: the driver and every Ray worker process (recursive children of our raylet):
  RSS, and private memory (smaps: private pages of every mapping except the object store's /dev/shm file). RSS - private
  is object-store (plasma) pages mapped into that process plus shared libraries; summing RSS over workers would
  count the object store several times.
  Peaks per 10% of committed rows and per half of the run: flat = memory does not grow with the number of images;
- the unit commit timeline (units must commit one after another, not all at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
ROIS = ["V1", "V2", "V3", "V4", "FFC", "group_01", "group_02", "group_03", "group_04", "group_05"]
MB = 2**20


def small_jpegs(n, size):
    """``n`` distinct smooth-ish JPEGs of ``size`` x ``size`` (a gradient plus noise, quality 85)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(n):
        base = (np.stack([xx, yy, (xx + yy) // 2], -1) * (255.0 / max(1, size)) + 40 * np.sin(i)).clip(0, 255)
        img = (base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _mem(p):
    """(rss, private) of one process, from /proc/PID/smaps: ``private`` = private pages of every mapping that is not
    the object store (plasma lives in a /dev/shm file mapped by every worker; a page of it that only one process has
    touched would count as "private" in plain USS, so USS alone does not separate the object store)."""
    try:
        rss = private = 0
        for m in p.memory_maps(grouped=True):
            rss += m.rss
            if not (m.path.startswith("/dev/shm") or "plasma" in m.path):
                private += m.private_clean + m.private_dirty
        return rss, private
    except Exception:  # noqa: BLE001
        mi = p.memory_info()
        return mi.rss, mi.rss - getattr(mi, "shared", 0)


class Sampler(threading.Thread):
    """Every ``period`` s: driver (rss, uss), Ray workers' per-process (rss, uss), rows committed so far."""

    def __init__(self, raylet_pid, committed_dir, shard_rows, period=1.0):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.raylet = psutil.Process(raylet_pid)
        self.committed_dir = committed_dir
        self.shard_rows = shard_rows
        self.period = period
        self.samples = []   # dicts
        self.commits = {}   # unit -> first time seen
        self.stop = threading.Event()

    def run(self):
        me = self.psutil.Process()
        while not self.stop.is_set():
            t = time.time()
            try:
                kids = [p for p in self.raylet.children(recursive=True)
                        if p.name().startswith("ray::") or "default_worker" in " ".join(p.cmdline())]
            except Exception:  # noqa: BLE001
                kids = []
            workers = {}
            for p in kids:
                try:
                    workers[p.pid] = (p.name(),) + _mem(p)
                except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                    pass
            try:
                names = [f for f in os.listdir(self.committed_dir) if f.endswith(".json")]
            except FileNotFoundError:
                names = []
            for f in names:
                self.commits.setdefault(f, t)
            self.samples.append({"t": t, "driver": _mem(me), "workers": workers, "units": len(names)})
            self.stop.wait(max(0.0, self.period - (time.time() - t)))


def encoder_alone(store_dir, imgs, batch_size, precision, device, seconds):
    """images/s of RoiEncoder on the decoded images, as one actor runs it (1 thread on CPU)."""
    import torch

    from screening.models.encoder import RoiEncoder
    from screening.preprocess import preprocess_bytes
    from screening.rois import build_roi_set
    from screening.store import open_store

    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    store = open_store(store_dir)
    enc = RoiEncoder.from_model(store.load_model(MODEL_ID)[0], [f"sub-{i:02d}" for i in range(1, 9)],
                                build_roi_set("visual", ROIS), precision=precision, device=device)
    x = np.stack([preprocess_bytes(imgs[i % len(imgs)]) for i in range(batch_size)])
    enc.encode_numpy(x)
    enc.encode_numpy(x)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        enc.encode_numpy(x)
        n += len(x)
    ips = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in imgs[:300]:
        preprocess_bytes(b)
    dec = min(300, len(imgs)) / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    del enc
    return ips, dec


def _fmt_mib(v):
    return f"{v / MB:.0f}"


def report(args, r, wall, sampler, enc_ips, dec_ips, device):
    s = sampler.samples
    total_units = max(1, args.rows // args.shard_rows)
    commit_t = sorted(sampler.commits.values())
    t_start = s[0]["t"] if s else time.time()
    steady = None
    if len(commit_t) >= 3 and commit_t[-1] - commit_t[0] >= 0.05 * wall:   # else units committed together
        # rows committed between the first and the last commit, over that time (no startup / model load)
        steady = (len(commit_t) - 1) * args.shard_rows / max(1e-9, commit_t[-1] - commit_t[0])
    e2e = r.counts["images"] / wall

    # per-10% buckets of committed rows; samples before the first commit belong to bucket 0
    buckets = {}
    for x in s:
        b = min(9, int(10 * x["units"] / total_units))
        d = buckets.setdefault(b, {"drv_rss": 0, "drv_uss": 0, "w_rss": 0, "w_uss": 0, "w_uss_sum": 0, "n": 0})
        d["drv_rss"] = max(d["drv_rss"], x["driver"][0])
        d["drv_uss"] = max(d["drv_uss"], x["driver"][1])
        if x["workers"]:
            d["w_rss"] = max(d["w_rss"], max(v[1] for v in x["workers"].values()))
            d["w_uss"] = max(d["w_uss"], max(v[2] for v in x["workers"].values()))
            d["w_uss_sum"] = max(d["w_uss_sum"], sum(v[2] for v in x["workers"].values()))
        d["n"] += 1
    half = len(s) // 2

    def peak(xs, f):
        return max((f(x) for x in xs), default=0)

    halves = [s[:half], s[half:]]
    drv_rss = [peak(h, lambda x: x["driver"][0]) for h in halves]
    drv_uss = [peak(h, lambda x: x["driver"][1]) for h in halves]
    w_rss = [peak(h, lambda x: max((v[1] for v in x["workers"].values()), default=0)) for h in halves]
    w_uss = [peak(h, lambda x: max((v[2] for v in x["workers"].values()), default=0)) for h in halves]
    w_uss_sum = [peak(h, lambda x: sum(v[2] for v in x["workers"].values())) for h in halves]
    w_shared = [peak(h, lambda x: max((v[1] - v[2] for v in x["workers"].values()), default=0)) for h in halves]
    # the encoder actor's own curve (the long-lived worker process whose title names the encoder)
    enc_uss = [peak(h, lambda x: max((v[2] for v in x["workers"].values() if "Encoder" in v[0]), default=0))
               for h in halves]

    print(f"\nrows={r.counts['images']} shards={total_units}x{args.shard_rows} image={args.image_size}x"
          f"{args.image_size} JPEG width={args.width} precision={args.precision} batch={r_batch(args, device)} "
          f"device={device}; machine: {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}; "
          f"Ray local num_cpus={args.num_cpus}; samples={len(s)} (1/s)")
    print("| metric | value |\n|---|---|")
    print(f"| end-to-end images/s (wall of screen(), incl. Ray start + model load) | {e2e:.1f} |")
    if steady:
        print(f"| end-to-end images/s, steady (first to last unit commit) | {steady:.1f} |")
    print(f"| encoder alone images/s (RoiEncoder, same images, {'1 thread' if device == 'cpu' else device}) "
          f"| {enc_ips:.1f} |")
    print(f"| decode alone images/s (1 thread, {args.image_size}x{args.image_size} JPEG) | {dec_ips:.0f} |")
    print(f"| end-to-end / encoder alone (wall; steady) | {e2e / enc_ips:.2f}; "
          f"{(steady or 0) / enc_ips:.2f} |")
    print(f"| driver peak RSS, 1st / 2nd half (MiB) | {_fmt_mib(drv_rss[0])} / {_fmt_mib(drv_rss[1])} |")
    print(f"| driver peak private, 1st / 2nd half (MiB) | {_fmt_mib(drv_uss[0])} / {_fmt_mib(drv_uss[1])} |")
    print(f"| encoder actor peak private, 1st / 2nd half (MiB) | {_fmt_mib(enc_uss[0])} / {_fmt_mib(enc_uss[1])} |")
    print(f"| largest worker peak private, 1st / 2nd half (MiB) | {_fmt_mib(w_uss[0])} / {_fmt_mib(w_uss[1])} |")
    print(f"| largest worker peak RSS, 1st / 2nd half (MiB) | {_fmt_mib(w_rss[0])} / {_fmt_mib(w_rss[1])} |")
    print(f"| largest worker RSS-private (shared: object store + libs), 1st / 2nd half (MiB) | "
          f"{_fmt_mib(w_shared[0])} / {_fmt_mib(w_shared[1])} |")
    print(f"| all workers peak private sum, 1st / 2nd half (MiB) | {_fmt_mib(w_uss_sum[0])} / {_fmt_mib(w_uss_sum[1])} |")
    print(f"| errors | {r.counts['errors']} |")
    print("\nper 10% of committed rows (peaks, MiB):")
    print("| rows committed | samples | driver RSS | driver private | largest worker RSS | largest worker private "
          "| workers private sum |\n|---|---|---|---|---|---|---|")
    for b in sorted(buckets):
        d = buckets[b]
        print(f"| {10 * b}-{10 * b + 10}% | {d['n']} | {_fmt_mib(d['drv_rss'])} | {_fmt_mib(d['drv_uss'])} | "
              f"{_fmt_mib(d['w_rss'])} | {_fmt_mib(d['w_uss'])} | {_fmt_mib(d['w_uss_sum'])} |")
    if commit_t:
        marks = [commit_t[min(len(commit_t) - 1, int(q * len(commit_t)))] - t_start for q in (0, .25, .5, .75)]
        print(f"\nunit commits: {len(commit_t)}/{total_units}; first at {marks[0]:.0f} s, 25% {marks[1]:.0f} s, "
              f"50% {marks[2]:.0f} s, 75% {marks[3]:.0f} s, last {commit_t[-1] - t_start:.0f} s after sampling began")
        gaps = np.diff(commit_t)
        if gaps.size:
            print(f"gap between commits: median {statistics.median(gaps):.2f} s, max {gaps.max():.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": [{**x, "workers": {str(k): v for k, v in x["workers"].items()}} for x in s],
                       "commits": sampler.commits, "wall": wall, "enc_ips": enc_ips, "dec_ips": dec_ips,
                       "e2e": e2e, "steady": steady, "args": vars(args)}, f)


def photo_jpegs(n: int, side: int = 425) -> list[bytes]:
    """``n`` JPEGs (quality 90) of scikit-image's photographs, random crops with the short side ``side`` px."""
    import io

    from PIL import Image
    from skimage import data

    photos = [getattr(data, k)() for k in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                                           "hubble_deep_field", "coins", "camera")]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(h * rng.uniform(0.7, 1)), int(w * rng.uniform(0.7, 1))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        img = Image.fromarray(np.ascontiguousarray(p[top:top + ch, left:left + cw]))
        scale = side / min(img.size)
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def api_rate(model, berg, pixels) -> float:
    """images/s of ``BERG.encode(reduce="roi_mean")`` (its collapse built beforehand: setup, not throughput)."""
    t0 = time.perf_counter()
    berg.encode(model, pixels, reduce="roi_mean")
    return len(pixels) / (time.perf_counter() - t0)


def timed_encoder_class(log_path: str):
    """The pipeline's own encoder stage, appending "end-time rows" per batch to ``log_path`` (benchmark only).

    Defined here (``__main__``), so Ray ships it by value; the base class is the real ``stages.EncoderActor``."""
    from screening.pipeline import stages

    class TimedEncoderActor(stages.EncoderActor):
        LOG = log_path

        def __call__(self, batch):
            out = super().__call__(batch)
            with open(self.LOG, "a") as f:
                f.write(f"{time.time():.6f} {len(out['stage'])}\n")
            return out

    return TimedEncoderActor


def batch_steady_rate(log_path: str) -> tuple[float, int]:
    """(images/s from the end of the first encoder batch to the end of the last, batches): the pipeline's steady
    rate, without the actor's start, the first batch's warm-up or the bursts in which units commit."""
    with open(log_path) as f:
        rows = sorted((float(t), int(n)) for t, n in (line.split() for line in f if line.strip()))
    if len(rows) < 3:
        return float("nan"), len(rows)
    return sum(n for _, n in rows[1:]) / (rows[-1][0] - rows[0][0]), len(rows)


def pipeline_rate(in_dir, store_dir, out, shard_rows, batch_size) -> tuple[float, float, float, float]:
    """(steady images/s from encoder batch ends, seconds to the first commit, wall, images/s between the first
    and the last unit commit)."""
    from screening.pipeline import screen, stages

    shutil.rmtree(out, ignore_errors=True)
    log = out.rstrip("/") + ".batches"
    if os.path.exists(log):
        os.remove(log)
    real = stages.EncoderActor
    stages.EncoderActor = timed_encoder_class(log)
    committed = os.path.join(out, "_committed")
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            for f in os.listdir(committed) if os.path.isdir(committed) else []:
                seen.setdefault(f, time.perf_counter())
            done.wait(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t0 = time.perf_counter()
    t.start()
    # one unit per Ray batch and per part: units commit one after another, so first-to-last commit is steady state
    try:
        screen(in_dir, store_dir, out, precision="bf16", batch_size=batch_size or shard_rows,
               write_batch_size=shard_rows, progress=False)
    finally:
        stages.EncoderActor = real
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    times = sorted(v for k, v in seen.items() if k.endswith(".json"))
    # Units commit when their actor task ends: with small CPU batches one task covers many units, which then
    # commit together, so this span is only meaningful when it covers a real part of the run.
    commit_span = ((len(times) - 1) * shard_rows / (times[-1] - times[0])
                   if len(times) > 1 and times[-1] - times[0] >= 0.05 * wall else float("nan"))
    steady, _batches = batch_steady_rate(log)
    return steady, (times[0] - t0) if times else wall, wall, commit_span


def published(args):
    """Pipeline vs API on the published-size model, same images, back to back, ``--repeats`` times."""
    import ray
    import torch

    from screening.api import BERG
    from screening.preprocess import preprocess_bytes

    work = args.workdir or tempfile.mkdtemp(prefix="pipebench-pub")
    jpegs = photo_jpegs(args.images)
    in_dir = os.path.join(work, "in")
    shutil.rmtree(in_dir, ignore_errors=True)
    os.makedirs(in_dir)
    for s in range(0, args.images, args.shard_rows):
        chunk = jpegs[s:s + args.shard_rows]
        pq.write_table(pa.table({"image_id": [f"img{s + i:05d}" for i in range(len(chunk))],
                                 "image": pa.array(chunk, pa.binary())}), os.path.join(in_dir, f"part-{s:05d}.parquet"))
    pixels = np.stack([preprocess_bytes(b) for b in jpegs])
    berg = BERG(args.published)
    model_id = berg.store.model_ids()[0]
    t0 = time.perf_counter()
    model = berg.get_encoding_model(model_id, subject="all", precision="bf16")
    model.roi_encoder()
    model.heads = {}  # the timed roi_mean path no longer reads the full heads: free their 1.9 GB
    api_setup = time.perf_counter() - t0
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    for r in range(args.repeats):
        a = api_rate(model, berg, pixels)
        p, first, wall, span = pipeline_rate(in_dir, args.published, os.path.join(work, f"out{r}"),
                                             args.shard_rows, args.batch_size)
        rows.append((a, p, first, wall, span))
        print(f"repeat {r}: API {a:.3f} images/s, pipeline steady {p:.3f} images/s (ratio {p / a:.2f}; encoder "
              f"batch ends); first to last commit {span:.3f} images/s (nan: committed together); whole screen() call "
              f"{args.images / wall:.3f} images/s; first commit at {first:.1f} s, wall {wall:.1f} s", flush=True)
    ray.shutdown()
    api, pipe = statistics.median(x[0] for x in rows), statistics.median(x[1] for x in rows)
    print(f"\nCPU: {_cpu_name()}, {os.cpu_count()} cores, torch threads (API) {torch.get_num_threads()}, load avg "
          f"{os.getloadavg()[0]:.1f}; {args.images} images (~425 px JPEGs), shards of {args.shard_rows}, "
          f"pipeline batch {args.batch_size}; model {model_id}, 8 subjects x {len(model.roi_names)} ROIs, bf16")
    print("| metric | value |\n|---|---|")
    print(f"| BERG.encode(reduce='roi_mean', bf16) images/s, median of {args.repeats} | {api:.3f} |")
    print(f"| screen() steady images/s (end of the first to the end of the last encoder batch), median of "
          f"{args.repeats} | {pipe:.3f} |")
    print(f"| screen() whole call images/s (plan, actor start with a warm cache, encode, commit), median | "
          f"{statistics.median(args.images / x[3] for x in rows):.3f} |")
    print(f"| pipeline / API | {pipe / api:.2f} (per repeat: {', '.join(f'{x[1] / x[0]:.2f}' for x in rows)}) |")
    print(f"| one-time: API load + collapse (s) | {api_setup:.1f} |")
    print(f"| one-time: screen() start to first commit (s; Ray start, actor load + cached collapse, first shard) | "
          f"{', '.join(f'{x[2]:.1f}' for x in rows)} |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def _cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")


def r_batch(args, device):
    return args.batch_size or (256 if device == "cuda" else 64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--shard-rows", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=None, help="encoder batch (default: the pipeline's)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "fp16"])
    ap.add_argument("--decode", default="cpu", choices=["cpu", "gpu"],
                    help="screen(decode=...): gpu = nvJPEG inside the GPU encoders")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--num-gpus-per-encoder", type=float, default=0.0,
                    help="> 0: GPU encoders (the local Ray gets the machine's GPUs)")
    ap.add_argument("--quick", action="store_true", help="a short run (a few hundred rows), < 2 minutes")
    ap.add_argument("--encoder-seconds", type=float, default=10.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the raw samples here")
    ap.add_argument("--published", default=None, metavar="STORE", help="pipeline vs API on this full-width store")
    ap.add_argument("--images", type=int, default=64, help="--published: images per run")
    ap.add_argument("--repeats", type=int, default=2, help="--published: back-to-back API / pipeline pairs")
    args = ap.parse_args()
    if args.published:
        args.shard_rows = min(args.shard_rows, 16)
        args.batch_size = args.batch_size or 16
        return published(args)
    if args.quick:
        args.rows, args.shard_rows, args.encoder_seconds = min(args.rows, 512), min(args.shard_rows, 128), 3.0

    import ray

    from screening.pipeline import screen
    from screening.store.synthetic import make_store

    device = "cpu"
    if args.num_gpus_per_encoder > 0:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--num-gpus-per-encoder > 0 but torch sees no CUDA device")
        device = "cuda"
    work = args.workdir or tempfile.mkdtemp(prefix="pipebench")
    store_dir = os.path.join(work, f"store-w{args.width}")
    if not os.path.exists(store_dir):
        make_store(store_dir, variant="visual", seed=0, width=args.width)
    n_shards = max(1, args.rows // args.shard_rows)
    imgs = small_jpegs(min(args.shard_rows, 1000), args.image_size)
    shard_imgs = [imgs[i % len(imgs)] for i in range(args.shard_rows)]
    in_dir = os.path.join(work, "in")
    shutil.rmtree(in_dir, ignore_errors=True)
    os.makedirs(in_dir)
    for s in range(n_shards):
        ids = [f"s{s:04d}-{i:05d}" for i in range(args.shard_rows)]
        pq.write_table(pa.table({"image_id": ids, "image": pa.array(shard_imgs, pa.binary())}),
                       os.path.join(in_dir, f"part-{s:04d}.parquet"))

    enc_ips, dec_ips = encoder_alone(store_dir, imgs, r_batch(args, device), args.precision, device,
                                     args.encoder_seconds)
    print(f"encoder alone: {enc_ips:.1f} images/s; decode alone: {dec_ips:.0f} images/s/core", flush=True)

    init = dict(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    if device == "cuda":
        import torch

        init["num_gpus"] = torch.cuda.device_count()
    ray.init(**init)
    import ray._private.worker as rw

    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    sampler = Sampler(rw._global_node.all_processes["raylet"][0].process.pid, os.path.join(out, "_committed"),
                      args.shard_rows)
    sampler.start()
    t0 = time.perf_counter()
    r = screen(in_dir, store_dir, out, model_id=MODEL_ID, rois=ROIS, batch_size=args.batch_size,
               precision=args.precision, num_gpus_per_encoder=args.num_gpus_per_encoder, progress=False,
               decode=args.decode)
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    report(args, r, wall, sampler, enc_ips, dec_ips, device)
    ray.shutdown()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
