"""GPU measurements of the CNN8 engine, for ``benchmarks/gpu_check.sh`` (one short lease).

    python benchmarks/gpu_bench.py bench --parts matmul,core,encoder,decode --json W/speed.json [--deadline EPOCH]
    python benchmarks/gpu_bench.py bench --parts agreement --store DIR --json W/agreement.json
    python benchmarks/gpu_bench.py importcheck --site SITE --json W/import.json
    python benchmarks/gpu_bench.py summarize --work W --out OUT/summary.json

Parts of ``bench`` (each is recorded on its own; one that fails does not stop the others; the JSON is rewritten
after every part, so a run killed at its time limit keeps what it had measured):

- ``matmul``: the card's matmul peak in this run (8192^3 bf16 / fp16 / TF32 / fp32 products, TFLOP/s). The brief's
  reference: an H200 bf16 product measured about 790 TFLOP/s on these machines.
- ``core``: the CNN8 core (width 384, BN folded, 451.5 GFLOP per 224x224 image) at fp32, TF32, bf16 and fp16 autocast
  over a batch sweep; images/s, TFLOP/s, % of the same-precision matmul peak measured above (and of 790 for
  bf16/fp16). bf16/fp16 use the engine's structure (block1 fp32, then autocast + channels_last); fp32/TF32 run NCHW
  as the engine's fp32 path does. cudnn.benchmark on.
- ``encoder``: ``RoiEncoder`` (all 8 subjects x 379 ROIs collapsed into one matmul), host uint8 in, host float32 out,
  batch 256 (the pipeline's GPU default), at each precision; and the reference-style path (fp32, batch 32, all
  57,051 vertices x 8 heads, then ROI means) in the same run for the ratio; the collapse time; and the engine as
  shipped (cudnn.benchmark off) against cudnn.benchmark on.
- ``decode``: ``torchvision.io.decode_jpeg(device="cuda")`` on batches of 4000x3000 and 425x425 JPEGs, against PIL
  on one CPU core; and the engine's device path as ``--decode gpu`` runs it (``screening.device_decode``: decode,
  orient, crop, resize to 224 on the GPU) against ``preprocess_bytes`` on one core.
- ``agreement``: bf16 / fp16 / TF32 (and the torch-default flags) against strict fp32 (unfolded BN, no TF32) through
  the model of a synthetic store made by ``screening make-store`` (published architecture) on the demo photos
  (``screening.demo.packaged_photos`` or the bundle's copy, JPEG q92 -> ``preprocess_bytes``, as the demo screens
  them) and on random crops of them; per (subject, ROI) Pearson r across images: min / median over all pairs, pairs below 0.999, the
  worst pair, max |diff| / max |fp32|, non-finite outputs.
- ``decode_agreement``: ``--decode gpu``'s pixels (``decode_on_device`` with nvJPEG) against the exact CPU path
  (``preprocess_bytes``) on the demo photos as JPEG q92, in levels and through the model (strict fp32 both sides):
  per (subject, ROI) r min / median. Without CUDA it runs with Pillow standing in for nvJPEG (a code check).

``summarize`` also applies the CUDA precision rule (README, "Precision on CUDA"): fp16 when its min per-ROI r on
the demo photos is at least bf16's and its best core images/s at least 0.95x bf16's, else bf16.

Without CUDA every part records ``"status": "skipped: no CUDA"`` and then runs its code path on the CPU at toy
sizes (``"cpu_smoke"``: a code check, not a measurement), so the script is exercised on a CPU-only machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SKIP_NO_CUDA = "skipped: no CUDA"
REF_BF16_TFLOPS = 790.0  # an H200 bf16 matmul on these machines (KINDS.md); this run measures its own peak too
MODES = ("fp32", "tf32", "bf16", "fp16")


# ------------------------------------------------------------------------------------------------ helpers
class Record:
    """The bench JSON: one dict per part, rewritten after every part."""

    def __init__(self, path: str | None, meta: dict):
        self.path, self.data = path, {"meta": meta, "parts": {}}

    def put(self, name: str, value: dict) -> None:
        self.data["parts"][name] = value
        self.flush()

    def flush(self) -> None:
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=1, default=_jsonable)
            os.replace(tmp, self.path)


def _jsonable(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
    except ImportError:
        pass
    return str(x)


def set_tf32(on: bool) -> None:
    """TF32 for cuBLAS matmuls and cuDNN convolutions (the new fp32_precision API where torch has it)."""
    import torch

    v = "tf32" if on else "ieee"
    try:
        torch.backends.cuda.matmul.fp32_precision = v
        torch.backends.cudnn.conv.fp32_precision = v
    except (AttributeError, RuntimeError):
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def tf32_state() -> dict:
    import torch

    out = {}
    for k, f in (("matmul.fp32_precision", lambda: torch.backends.cuda.matmul.fp32_precision),
                 ("cudnn.conv.fp32_precision", lambda: torch.backends.cudnn.conv.fp32_precision),
                 ("matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32),
                 ("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32),
                 ("float32_matmul_precision", torch.get_float32_matmul_precision),
                 ("cudnn.benchmark", lambda: torch.backends.cudnn.benchmark)):
        try:
            out[k] = f()
        except Exception as e:  # noqa: BLE001 - mixed-API states raise on read in some versions
            out[k] = f"unreadable: {e}"
    return out


@contextlib.contextmanager
def flags(tf32: bool, benchmark: bool = True):
    import torch

    old = torch.backends.cudnn.benchmark
    set_tf32(tf32)
    torch.backends.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        set_tf32(False)
        torch.backends.cudnn.benchmark = old


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, seconds: float, dev, min_reps: int = 3) -> list[float]:
    """Seconds per call: one warm-up call, then calls until ``seconds`` have passed and at least ``min_reps``."""
    import torch

    fn()
    sync(dev)
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < min_reps:
        if dev.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize(dev)
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def core_gflop_per_image(width: int = 384) -> float:
    """2 x MACs of every conv for a 224x224 input (pools, BN and ReLU are negligible)."""
    import torch

    from screening.models.core import CNN8Core

    with torch.device("meta"):
        core = CNN8Core(width)
    flop = 0.0

    def hook(m, inp, out):
        nonlocal flop
        flop += 2 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    for m in core.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    core(torch.zeros(1, 3, 224, 224, device="meta"))
    return flop / 1e9


def half_dtype(mode: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def core_forward(core, x, mode: str):
    """Core output for normalised input: bf16 / fp16 are the engine's own ``core_features`` (block1 fp32
    channels_last, then autocast); fp32/TF32 run the core as is."""
    import torch

    from screening.models.encoder import core_features

    if mode == "fp16" and x.device.type != "cuda":   # the engine refuses fp16 off CUDA; the CPU code check runs
        x = core.block1(x.contiguous(memory_format=torch.channels_last))   # the same structure here
        with torch.autocast(x.device.type, dtype=torch.float16):
            return core(x, start=1).float()
    if mode in ("bf16", "fp16"):
        return core_features(core, x, mode)
    return core(x)


def core_forward_all_layers(core, x, mode: str):
    import torch

    with torch.autocast(x.device.type, dtype=half_dtype(mode)):
        return core(x.contiguous(memory_format=torch.channels_last)).float()


def engine_forward(enc, x_u8, mode: str, all_layers: bool = False):
    """``RoiEncoder.forward`` with the core precision chosen here (bf16 = the engine's own forward)."""
    import torch

    with torch.inference_mode():
        if mode == "bf16" and not all_layers:
            return enc(x_u8)
        x = enc.normalize(x_u8)
        f = core_forward_all_layers(enc.core, x, mode) if all_layers else core_forward(enc.core, x, mode)
        out = torch.addmm(enc.roi_bias, f.float().flatten(1), enc.roi_weights_t)
        return out.view(x.shape[0], len(enc.subjects), len(enc.roi_names))


def engine_encode_numpy(enc, images_u8, mode: str):
    """``RoiEncoder.encode_numpy`` (pinned host buffer, non-blocking copy) with the core precision chosen here."""
    import numpy as np
    import torch

    if mode == "bf16":
        return enc.encode_numpy(images_u8)
    x = torch.from_numpy(np.ascontiguousarray(images_u8))
    dev = enc.roi_bias.device
    if dev.type == "cuda":
        x = x.pin_memory().to(dev, non_blocking=True)
    return engine_forward(enc, x, mode).cpu().numpy()


def random_multihead(n_vertices: int, width: int, subjects, dev, seed: int = 0):
    """A CNN8Multihead with random weights made on ``dev`` (speed does not depend on the values)."""
    import torch

    from screening.models.encoder import CNN8Multihead

    torch.manual_seed(seed)
    with torch.device(dev):
        m = CNN8Multihead(n_vertices, width=width, subjects=subjects)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "subject_readouts" in name:
                p.normal_(0.0, 0.02)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.fill_(1.0)
    return m.eval()


def pearson_per_column(ref, out):
    """Pearson r over axis 0 for every column of (N, K) arrays; NaN where the reference does not vary."""
    import numpy as np

    a = ref - ref.mean(0)
    b = out - out.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, np.nan)


def agreement_stats(ref, out, subjects, roi_names) -> dict:
    import numpy as np

    n, s, r = ref.shape
    ref2, out2 = ref.reshape(n, s * r).astype(np.float64), out.reshape(n, s * r).astype(np.float64)
    finite = np.isfinite(out2)
    rs = pearson_per_column(ref2, np.where(finite, out2, 0.0))
    ok = np.isfinite(rs)
    worst = int(np.nanargmin(rs)) if ok.any() else -1
    return {
        "images": n, "pairs": int(s * r), "pairs_with_r": int(ok.sum()),
        "min_r": float(np.nanmin(rs)) if ok.any() else None,
        "median_r": float(np.nanmedian(rs)) if ok.any() else None,
        "pairs_below_0.999": int((rs[ok] < 0.999).sum()), "pairs_below_0.9999": int((rs[ok] < 0.9999).sum()),
        "worst_pair": (f"{subjects[worst // r]} {roi_names[worst % r]}" if worst >= 0 else None),
        "max_abs_diff_over_max_abs_ref": float(np.abs(np.where(finite, out2, 0.0) - ref2).max()
                                               / max(np.abs(ref2).max(), 1e-30)),
        "non_finite_outputs": int((~finite).sum()),
    }


# ------------------------------------------------------------------------------------------------ parts
def part_matmul(ctx) -> dict:
    import torch

    dev, n = ctx["dev"], ctx["matmul_n"]
    out = {"n": n, "tflops": {}}
    for mode in MODES:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode, torch.float32)
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        with flags(tf32=mode == "tf32"):
            t = statistics.median(timed(lambda: torch.mm(a, b), ctx["seconds"] / 2, dev))
        out["tflops"][mode] = 2 * n ** 3 / t / 1e12
        print(f"  matmul {mode} {n}^3: {out['tflops'][mode]:.1f} TFLOP/s", flush=True)
        del a, b
    ctx["peak"] = out["tflops"]
    return out


def part_core(ctx) -> dict:
    import torch

    from screening.models.core import CNN8Core
    from screening.models.encoder import Normalize
    from screening.models.fast import fold_batchnorm

    dev, width = ctx["dev"], ctx["width"]
    gflop = core_gflop_per_image(width)
    torch.manual_seed(0)
    base = CNN8Core(width).to(dev).eval()
    norm = Normalize().to(dev)
    rows, peak = [], ctx.get("peak", {})
    for mode in MODES:
        core = fold_batchnorm(base)
        if mode in ("bf16", "fp16"):
            core = core.to(memory_format=torch.channels_last)
        for bs in ctx["batches"][mode]:
            if time.time() > ctx["deadline"] - ctx["reserve_s"]:
                rows.append({"mode": mode, "batch": bs, "status": "skipped: time budget"})
                continue
            row = {"mode": mode, "batch": bs}
            try:
                x = norm(torch.randint(0, 256, (bs, 3, 224, 224), dtype=torch.uint8, device=dev))

                def run():
                    with torch.inference_mode():
                        core_forward(core, x, mode)
                with flags(tf32=mode == "tf32"):
                    ts = timed(run, ctx["seconds"], dev)
                t = statistics.median(ts)
                ips = bs / t
                tf = ips * gflop / 1e3
                row.update(images_per_s=ips, ms_per_batch=1e3 * t, reps=len(ts), tflops=tf, status="ok")
                if mode in peak:
                    row["pct_of_matmul_peak"] = 100 * tf / peak[mode]
                if mode in ("bf16", "fp16"):
                    row["pct_of_790"] = 100 * tf / REF_BF16_TFLOPS
                print(f"  core {mode} batch {bs}: {ips:.0f} img/s, {tf:.1f} TFLOP/s"
                      + (f", {row['pct_of_matmul_peak']:.0f}% of the {mode} matmul peak" if mode in peak else ""),
                      flush=True)
            except Exception as e:  # noqa: BLE001
                if not is_oom(e):
                    raise
                row["status"] = "out of memory"
                print(f"  core {mode} batch {bs}: out of memory", flush=True)
            finally:
                x = None
                free_cuda()
            rows.append(row)
        del core
    best = {}
    for m in MODES:
        ok = [r for r in rows if r["mode"] == m and r.get("status") == "ok"]
        if ok:
            b = max(ok, key=lambda r: r["images_per_s"])
            best[m] = {k: b[k] for k in ("batch", "images_per_s", "tflops", "pct_of_matmul_peak", "pct_of_790")
                       if k in b}
    return {"gflop_per_image": gflop, "width": width, "rows": rows, "best": best,
            "note": "bf16/fp16: block1 fp32 + autocast + channels_last (the engine's structure); fp32/tf32: NCHW"}


def part_encoder(ctx) -> dict:
    import numpy as np
    import torch

    from screening import rois as roi_lib
    from screening.models.encoder import RoiEncoder, collapse_heads
    from screening.models.fast import fold_batchnorm

    dev, width, variant, subjects = ctx["dev"], ctx["width"], ctx["variant"], ctx["subjects"]
    from screening import atlas

    n_vertices = int(atlas.variant_vertex_mapping(variant).size)
    roi_set = roi_lib.build_roi_set(variant)
    names = list(roi_set)
    model = random_multihead(n_vertices, width, subjects, dev)
    set_tf32(False)
    sync(dev)
    t0 = time.perf_counter()
    w, b = collapse_heads(model, subjects, roi_set, device=dev)
    sync(dev)
    collapse_s = time.perf_counter() - t0
    enc32 = RoiEncoder(fold_batchnorm(model.core), w, b, subjects, names, "fp32").eval()
    enc16 = RoiEncoder(fold_batchnorm(model.core), w, b, subjects, names, "bf16").eval()
    del w, b
    bs = ctx["engine_batch"]
    x_host = np.random.default_rng(0).integers(0, 256, (bs, 3, 224, 224), dtype=np.uint8)
    rows = []

    def add(path, mode, batch, fn, **extra):
        if time.time() > ctx["deadline"] - ctx["reserve_s"]:
            rows.append({"path": path, "mode": mode, "batch": batch, "status": "skipped: time budget"})
            return
        try:
            t = statistics.median(timed(fn, ctx["seconds"], dev))
            rows.append({"path": path, "mode": mode, "batch": batch, "images_per_s": batch / t, "status": "ok",
                         **extra})
            print(f"  {path} [{mode}] batch {batch}: {batch / t:.1f} img/s", flush=True)
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            rows.append({"path": path, "mode": mode, "batch": batch, "status": "out of memory"})
            free_cuda()

    for mode in ("bf16", "fp16", "tf32", "fp32"):
        enc = enc16 if mode in ("bf16", "fp16") else enc32
        with flags(tf32=mode == "tf32", benchmark=True):
            add("engine: RoiEncoder, host uint8 in / float32 out", mode, bs,
                lambda: engine_encode_numpy(enc, x_host, mode))
    with flags(tf32=False, benchmark=False):
        ctx["restore_default_flags"]()  # torch's own TF32 defaults (cuDNN TF32 on: block1 runs in fp32)
        add("engine as shipped: torch default flags, cudnn.benchmark off", "bf16", bs,
            lambda: enc16.encode_numpy(x_host))
    # reference style: fp32 (strict), batch 32, all vertices of every head, then ROI means
    membership = torch.zeros(n_vertices, len(names), device=dev)
    for j, cols in enumerate(roi_set.values()):
        membership[torch.as_tensor(cols, device=dev), j] = 1.0 / len(cols)
    from screening.models.encoder import Normalize

    norm = Normalize().to(dev)
    rb = ctx["reference_batch"]
    xr_host = torch.from_numpy(x_host[:rb].copy())

    def reference():
        with torch.inference_mode():
            f = model.core(norm(xr_host.to(dev)))
            torch.stack([model.head(s)(f) @ membership for s in subjects], 1).cpu()
    with flags(tf32=False, benchmark=True):
        add("reference-style: all vertices x heads, then ROI means", "fp32", rb, reference)
    ref = next((r for r in rows if r["path"].startswith("reference") and r["status"] == "ok"), None)
    if ref:
        for r in rows:
            if r["status"] == "ok":
                r["ratio_to_reference"] = r["images_per_s"] / ref["images_per_s"]
    del enc32, enc16, model, membership
    free_cuda()
    return {"rows": rows, "collapse_s": collapse_s, "subjects": len(subjects), "rois": len(names),
            "vertices": n_vertices, "width": width, "note": "random weights (speed does not depend on values); "
            "reference = the BERG-style computation in strict fp32"}


def _jpegs(photos, size_wh, n, quality=90):
    """``n`` JPEG byte strings of ``size_wh`` made from the demo photos (or noise if there are none)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    srcs = [p for p, _ in photos.values()] or [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)]
    unique = []
    for i in range(min(n, len(srcs), 4 if size_wh[0] * size_wh[1] > 4e6 else 32)):  # big encodes are slow
        img = Image.fromarray(srcs[i]).resize(size_wh, Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        unique.append(buf.getvalue())
    return [unique[i % len(unique)] for i in range(n)]


def device_path_rates(data, dev, seconds) -> dict:
    """Images/s of ``--decode gpu``'s whole step (decode, orient, crop, resize to 224 on the device) against the
    exact CPU path on one core."""
    from screening.device_decode import decode_on_device
    from screening.preprocess import preprocess_bytes

    decoder, _ = device_decoder(dev)
    t = statistics.median(timed(lambda: decode_on_device(data, device=dev, gpu_decode=decoder), seconds, dev))
    k = max(1, len(data) // 8)
    t0 = time.perf_counter()
    for d in data[:k]:
        preprocess_bytes(d)
    cpu = k / (time.perf_counter() - t0)
    return {"engine_device_path_images_per_s": len(data) / t, "preprocess_bytes_1core_images_per_s": cpu,
            "engine_device_path_vs_1core": len(data) / t / cpu}


def part_decode(ctx) -> dict:
    import numpy as np
    import torch

    try:
        import torchvision
        from torchvision.io import decode_jpeg
    except Exception as e:  # noqa: BLE001
        return {"status": f"skipped: no torchvision ({type(e).__name__}: {e})"}
    from PIL import Image

    from screening.preprocess import decode_image

    dev = ctx["dev"]
    photos = {name: (np.asarray(decode_image(d)), None) for name, d in demo_jpegs().items()}
    res = {"torchvision": torchvision.__version__, "sizes": {}}
    for label, wh, n in ctx["decode_sets"]:
        data = _jpegs(photos, wh, n)
        tens = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
        t0 = time.perf_counter()
        for d in data[: max(1, n // 4)]:
            np.asarray(Image.open(io.BytesIO(d)).convert("RGB"))
        pil_ips = max(1, n // 4) / (time.perf_counter() - t0)
        entry = {"images": n, "width": wh[0], "height": wh[1], "pil_1core_images_per_s": pil_ips,
                 "mean_jpeg_kb": sum(map(len, data)) / n / 1024}
        try:
            t = statistics.median(timed(lambda: decode_jpeg(tens, device=dev), ctx["seconds"], dev))
            entry["torchvision_images_per_s"] = n / t
            entry["torchvision_mpix_per_s"] = n * wh[0] * wh[1] / t / 1e6
            entry["batch_vs_pil_1core"] = entry["torchvision_images_per_s"] / pil_ips
            got = decode_jpeg(tens[0], device=dev).cpu().numpy().transpose(1, 2, 0).astype(np.int16)
            want = np.asarray(Image.open(io.BytesIO(data[0])).convert("RGB")).astype(np.int16)
            entry["mean_abs_diff_vs_pil_levels"] = float(np.abs(got - want).mean())
            entry.update(device_path_rates(data, dev, ctx["seconds"]))
            entry["status"] = "ok"
            print(f"  decode_jpeg({dev.type}) {label}: {entry['torchvision_images_per_s']:.0f} img/s "
                  f"(PIL 1 core {pil_ips:.0f} img/s)", flush=True)
        except Exception as e:  # noqa: BLE001
            entry["status"] = f"failed: {type(e).__name__}: {e}"
        res["sizes"][label] = entry
        free_cuda()
    return res


def agreement_images(n_crops: int, seed: int = 0):
    """(demo photos as the demo screens them, random crops of the same photos): uint8 (N, 3, 224, 224) each."""
    import numpy as np
    from PIL import Image

    from screening.preprocess import decode_image, preprocess_bytes

    jpegs = demo_jpegs()
    demo = [preprocess_bytes(d) for d in jpegs.values()]
    rng = np.random.default_rng(seed)
    crops = []
    srcs = [np.asarray(decode_image(d)) for d in jpegs.values()]
    for i in range(n_crops if srcs else 0):
        p = srcs[i % len(srcs)]
        h, w = p.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        a = np.asarray(Image.fromarray(p[top:top + side, left:left + side]).resize((224, 224), Image.BILINEAR))
        crops.append((a[:, ::-1] if rng.random() < 0.5 else a).transpose(2, 0, 1))
    stack = lambda xs: np.ascontiguousarray(np.stack(xs)) if xs else None  # noqa: E731
    return stack(demo), stack(crops), list(jpegs)


def store_record(store_dir):
    """The published weights record whose model the store holds (synthetic or real), or None."""
    from screening.models.registry import PUBLISHED

    return next((w for w in PUBLISHED.values() if (Path(store_dir) / w.store_dir / "synthetic.json").exists()
                 or (Path(store_dir) / w.store_dir / "encoding_models_weights" / w.filename).exists()), None)


def part_agreement(ctx) -> dict:
    import numpy as np
    import torch

    from screening import rois as roi_lib
    from screening.models.encoder import RoiEncoder, collapse_heads
    from screening.models.fast import fold_batchnorm
    from screening.store import open_store

    dev, store_dir = ctx["dev"], ctx["store"]
    if not store_dir:
        return {"status": "skipped: no --store"}
    w = store_record(store_dir)
    if w is None:
        return {"status": f"failed: no model store under {store_dir}"}
    manifest = {}
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((Path(store_dir) / w.store_dir / "synthetic.json").read_text())
    demo, crops, photo_names = agreement_images(ctx["agreement_crops"])
    if demo is None:
        return {"status": "skipped: no demo photos (scikit-image / scikit-learn / matplotlib absent)"}
    t0 = time.perf_counter()
    model, info = open_store(store_dir).load_model(w.model_id)
    load_s = time.perf_counter() - t0
    model = model.to(dev)
    subjects = list(ctx["subjects"])
    roi_set = roi_lib.build_roi_set(w.variant)
    names = list(roi_set)
    set_tf32(False)
    wts, bias = collapse_heads(model, subjects, roi_set, device=dev)
    ref_enc = RoiEncoder(model.core, wts, bias, subjects, names, "fp32").eval()      # published maths
    enc32 = RoiEncoder(fold_batchnorm(model.core), wts, bias, subjects, names, "fp32").eval()
    enc16 = RoiEncoder(fold_batchnorm(model.core), wts, bias, subjects, names, "bf16").eval()
    del wts, bias
    model.subject_readouts = None
    free_cuda()
    sets = {"demo_photos": demo, "photo_crops": crops}
    variants = [  # name, encoder, mode, all_layers, tf32, note
        ("fp32 engine (BN folded)", enc32, "fp32", False, False, "sanity: should be ~exact"),
        ("tf32", enc32, "tf32", False, True, "TF32 matmuls and convolutions"),
        ("bf16 (engine default: block1 fp32)", enc16, "bf16", False, False, "RoiEncoder precision='bf16'"),
        ("fp16 (block1 fp32, same structure)", enc16, "fp16", False, False, "float16 autocast"),
        ("bf16 all layers", enc16, "bf16", True, False, "block1 in bf16 too"),
        ("fp16 all layers", enc16, "fp16", True, False, "block1 in fp16 too"),
    ]
    if dev.type == "cuda":
        variants.insert(1, ("fp32 with torch's default flags", enc32, "default", False, None,
                            "what RoiEncoder(precision='fp32') gets on CUDA today: " + json.dumps(ctx["tf32_default"])))
    bs = ctx["agreement_batch"]

    def run(enc, images, mode, all_layers, tf32):
        outs = []
        for lo in range(0, len(images), bs):
            x = torch.from_numpy(images[lo:lo + bs]).to(dev)
            if tf32 is None:  # torch's defaults, as captured at start-up
                ctx["restore_default_flags"]()
                outs.append(engine_forward(enc, x, "fp32").cpu().numpy())
                set_tf32(False)
            else:
                with flags(tf32=tf32, benchmark=False):
                    outs.append(engine_forward(enc, x, mode if mode != "default" else "fp32", all_layers)
                                .cpu().numpy())
        return np.concatenate(outs)

    result = {"store": str(store_dir), "model_id": w.model_id, "synthetic": bool(manifest.get("synthetic", True)),
              "width": info.width if hasattr(info, "width") else manifest.get("width"),
              "checkpoint_sha256": manifest.get("checkpoint_sha256"), "load_s": load_s,
              "subjects": len(subjects), "rois": len(names), "photos": photo_names,
              "images": {k: (0 if v is None else len(v)) for k, v in sets.items()},
              "reference": "strict fp32: BN unfolded, TF32 off for matmuls and convolutions", "variants": {}}
    refs = {k: run(ref_enc, v, "fp32", False, False) for k, v in sets.items() if v is not None}
    for name, enc, mode, all_layers, tf32, note in variants:
        if time.time() > ctx["deadline"] - ctx["reserve_s"]:
            result["variants"][name] = {"status": "skipped: time budget"}
            continue
        entry = {"note": note}
        for k, images in sets.items():
            if images is None:
                continue
            entry[k] = agreement_stats(refs[k], run(enc, images, mode, all_layers, tf32), subjects, names)
        result["variants"][name] = entry
        d = entry["demo_photos"]
        print(f"  agreement {name}: demo photos min r {d['min_r']:.5f}, median {d['median_r']:.6f}, "
              f"{d['pairs_below_0.999']} of {d['pairs']} pairs < 0.999, max rel {d['max_abs_diff_over_max_abs_ref']:.1e}"
              + (f"; crops min r {entry['photo_crops']['min_r']:.5f}" if "photo_crops" in entry else ""), flush=True)
    del ref_enc, enc32, enc16, model
    free_cuda()
    return result


def device_decoder(dev):
    """(decode callable, its name): nvJPEG on CUDA; without CUDA torchvision's CPU decoder, else Pillow's."""
    from screening.device_decode import pil_decode_jpeg, torchvision_decoder

    try:
        return torchvision_decoder(), f"torchvision.io.decode_jpeg(device={dev.type!r})"
    except ImportError:
        if dev.type == "cuda":
            raise
        return pil_decode_jpeg, "Pillow stand-in (no torchvision)"


def demo_jpegs() -> dict:
    """The demo photos as JPEG q92 bytes (what ``screening demo`` writes), by name: from the packages that ship
    them, else from ``$GPU_CHECK_PHOTOS`` (the bundle's demo_photos.npz; the GPU machines lack those packages)."""
    import numpy as np
    from PIL import Image

    from screening.demo import packaged_photos

    out = {}
    for name, (img, _) in sorted(packaged_photos().items()):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=92)
        out[name] = buf.getvalue()
    if not out and os.path.exists(os.environ.get("GPU_CHECK_PHOTOS", "")):
        with np.load(os.environ["GPU_CHECK_PHOTOS"]) as z:
            out = {name: z[name].tobytes() for name in sorted(z.files)}
    return out


def part_decode_agreement(ctx) -> dict:
    """``--decode gpu`` against the exact CPU decode: pixels, then per-ROI r through the strict fp32 model."""
    import numpy as np
    import torch

    from screening import rois as roi_lib
    from screening.device_decode import decode_on_device
    from screening.models.encoder import RoiEncoder, collapse_heads
    from screening.preprocess import preprocess_bytes
    from screening.store import open_store

    dev, store_dir = ctx["dev"], ctx["store"]
    w = store_record(store_dir) if store_dir else None
    if w is None:
        return {"status": f"skipped: no model store (--store {store_dir})"}
    jpegs = demo_jpegs()
    if not jpegs:
        return {"status": "skipped: no demo photos (scikit-image / scikit-learn / matplotlib absent)"}
    datas = list(jpegs.values())
    decoder, decoder_name = device_decoder(dev)
    got = decode_on_device(datas, device=dev, gpu_decode=decoder)
    exact = np.stack([preprocess_bytes(d) for d in datas])
    diff = np.abs(got.pixels.cpu().numpy().astype(np.int16) - exact)
    model, _ = open_store(store_dir).load_model(w.model_id)
    model = model.to(dev)
    subjects, roi_set = list(ctx["subjects"]), roi_lib.build_roi_set(w.variant)
    set_tf32(False)
    wts, bias = collapse_heads(model, subjects, roi_set, device=dev)
    enc = RoiEncoder(model.core, wts, bias, subjects, list(roi_set), "fp32").eval()   # strict fp32, BN unfolded
    bs = ctx["agreement_batch"]
    with torch.inference_mode():
        ref = np.concatenate([enc(torch.from_numpy(exact[i:i + bs]).to(dev)).cpu().numpy()
                              for i in range(0, len(exact), bs)])
        out = np.concatenate([enc(got.pixels[i:i + bs]).cpu().numpy() for i in range(0, len(datas), bs)])
    stats = agreement_stats(ref, out, subjects, list(roi_set))
    print(f"  decode agreement ({decoder_name}): {got.how.count('device')} of {len(datas)} on the device path, "
          f"pixels mean |diff| {diff.mean():.3f} levels, max {int(diff.max())}; min per-ROI r {stats['min_r']:.5f}, "
          f"median {stats['median_r']:.6f}", flush=True)
    del enc, model
    return {"decoder": decoder_name, "model_id": w.model_id, "photos": list(jpegs), "images": len(datas),
            "device_path_images": got.how.count("device"), "errors": [e for e in got.errors if e],
            "pixel_mean_abs_diff_levels": float(diff.mean()), "pixel_max_abs_diff_levels": int(diff.max()),
            "reference": "preprocess_bytes (exact CPU path), strict fp32 model on both sides", **stats}


PARTS = {"matmul": part_matmul, "core": part_core, "encoder": part_encoder, "decode": part_decode,
         "agreement": part_agreement, "decode_agreement": part_decode_agreement}


def cmd_bench(argv) -> int:
    p = argparse.ArgumentParser(prog="gpu_bench.py bench")
    p.add_argument("--parts", default="matmul,core,encoder,decode,agreement")
    p.add_argument("--json", default=None)
    p.add_argument("--store", default=None, help="BERG store for the agreement part (screening make-store DIR)")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per configuration (after a warm-up)")
    p.add_argument("--batches", default="32,64,128,256", help="core sweep batches at fp32 / TF32")
    p.add_argument("--half-batches", default="32,64,128,256,512", help="core sweep batches at bf16 / fp16")
    p.add_argument("--deadline", type=float, default=None, help="epoch seconds; parts left past it are skipped")
    p.add_argument("--reserve-s", type=float, default=5.0)
    p.add_argument("--agreement-crops", type=int, default=128)
    p.add_argument("--no-cpu-smoke", action="store_true", help="without CUDA, do not run the CPU code-path check")
    args = p.parse_args(argv)
    import torch

    default_flags = tf32_state()
    saved = {}
    with contextlib.suppress(Exception):
        saved["new"] = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    saved["old"] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def restore_default_flags():
        if "new" in saved:
            torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved["new"]
        else:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved["old"]

    cuda = torch.cuda.is_available()
    meta = {"python": platform.python_version(), "torch": torch.__version__, "cuda": cuda,
            "torch_default_flags": default_flags, "cpu_count": os.cpu_count()}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        meta.update(device=torch.cuda.get_device_name(0), cuda_version=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpu_memory_gib=props.total_memory / 2**30,
                    sms=props.multi_processor_count)
    print(f"gpu_bench: {json.dumps(meta)}", flush=True)
    rec = Record(args.json, meta)
    from screening.models.registry import SUBJECTS

    if cuda:
        ctx = {"dev": torch.device("cuda"), "width": 384, "variant": "all", "subjects": SUBJECTS,
               "matmul_n": 8192, "seconds": args.seconds, "engine_batch": 256, "reference_batch": 32,
               "batches": {m: [int(b) for b in (args.half_batches if m in ("bf16", "fp16") else args.batches)
                               .split(",")] for m in MODES},
               "decode_sets": [("4000x3000", (4000, 3000), 32), ("425x425", (425, 425), 256)],
               "agreement_batch": 32, "agreement_crops": args.agreement_crops}
    else:  # toy sizes: a code check of every path, not a measurement
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        ctx = {"dev": torch.device("cpu"), "width": 8, "variant": "visual", "subjects": SUBJECTS[:2],
               "matmul_n": 128, "seconds": 0.0, "engine_batch": 2, "reference_batch": 2,
               "batches": {m: [2] for m in MODES}, "decode_sets": [("425x425", (425, 425), 4)],
               "agreement_batch": 8, "agreement_crops": 8}
    ctx.update(store=args.store, deadline=args.deadline or float("inf"), reserve_s=args.reserve_s,
               tf32_default=default_flags, restore_default_flags=restore_default_flags)
    failed = 0
    for name in [x for x in args.parts.split(",") if x]:
        print(f"== gpu_bench {name}", flush=True)
        if time.time() > ctx["deadline"] - ctx["reserve_s"]:
            rec.put(name, {"status": "skipped: time budget"})
            continue
        t0 = time.perf_counter()
        try:
            res = PARTS[name](ctx)
            status = res.pop("status", "ok")
            err = None
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res, status, err = {}, f"failed: {type(e).__name__}: {e}", traceback.format_exc(limit=8)
            failed += 1
        finally:
            free_cuda()
        secs = time.perf_counter() - t0
        if cuda:
            rec.put(name, {"status": status, "seconds": secs, **res, **({"traceback": err} if err else {})})
        else:
            smoke = {"status": "ok" if status == "ok" else status, "seconds": secs,
                     "note": "CPU code-path check at toy sizes; not a measurement", **res}
            if err:
                smoke["traceback"] = err
            rec.put(name, {"status": SKIP_NO_CUDA, "cpu_smoke": smoke})
        print(f"   {name}: {status} ({secs:.1f} s)", flush=True)
    return 1 if failed else 0


def cmd_importcheck(argv) -> int:
    """``import ray, ray.data`` and our pipeline's imports, from the unpacked bundle; where each module came from."""
    p = argparse.ArgumentParser(prog="gpu_bench.py importcheck")
    p.add_argument("--site", required=True)
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    site = os.path.realpath(args.site)
    res = {"site": site, "modules": {}}
    t0 = time.perf_counter()
    try:
        import ray
        import ray.data  # noqa: F401

        res["ray_version"] = ray.__version__
        res["ray_import_s"] = time.perf_counter() - t0
        import importlib

        for m in ("ray", "ray.data", "s3fs", "aiobotocore", "botocore", "fsspec", "jsonschema", "msgpack", "yaml",
                  "click", "requests", "aiohttp", "tqdm", "psutil", "numpy", "pandas", "pyarrow", "PIL", "torch",
                  "screening.pipeline", "screening.store", "screening.store.synthetic"):
            try:
                mod = importlib.import_module(m)
                f = os.path.realpath(getattr(mod, "__file__", "") or "")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # click / jsonschema deprecate __version__
                    version = getattr(mod, "__version__", None)
                res["modules"][m] = {"version": version, "file": f, "from_bundle": f.startswith(site + os.sep)}
            except Exception as e:  # noqa: BLE001
                res["modules"][m] = {"error": f"{type(e).__name__}: {e}"}
        import botocore.session

        botocore.session.get_session().create_client("s3", region_name="us-west-2")  # offline: models only
        import s3fs

        s3fs.S3FileSystem(anon=True)
        res["s3_client"] = "ok (botocore s3 client and s3fs.S3FileSystem built offline)"
        must = ("ray", "ray.data", "s3fs", "aiobotocore", "botocore", "fsspec", "jsonschema", "msgpack")
        bad = [m for m in must if not res["modules"].get(m, {}).get("from_bundle")]
        errs = [m for m, v in res["modules"].items() if "error" in v]
        res["status"] = ("ok" if not bad and not errs else
                         f"failed: not from the bundle: {bad}; import errors: {errs}")
    except Exception as e:  # noqa: BLE001
        res["status"] = f"failed: {type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc(limit=8)
    Path(args.json).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "modules"}, indent=1))
    for m, v in res["modules"].items():
        print(f"  {m}: {v.get('version') or ''} {'BUNDLE' if v.get('from_bundle') else ''} "
              f"{v.get('file') or v.get('error')}")
    return 0 if res["status"] == "ok" else 1


def _load(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _pipeline_summary(part: dict | None, raw: dict | None) -> dict:
    out = dict(part or {"status": "not run"})
    if raw:
        a = raw.get("args", {})
        # without CUDA the numbers are the CPU run's (a code check), so they go under cpu_run
        (out["cpu_run"] if isinstance(out.get("cpu_run"), dict) else out).update({"rows": a.get("rows"), "shard_rows": a.get("shard_rows"), "image_size": a.get("image_size"),
                    "width": a.get("width"), "num_cpus": a.get("num_cpus"),
                    "num_gpus_per_encoder": a.get("num_gpus_per_encoder"), "wall_s": raw.get("wall"),
                    "e2e_images_per_s": raw.get("e2e"), "steady_images_per_s": raw.get("steady"),
                    "encoder_alone_images_per_s": raw.get("enc_ips"), "decode_images_per_s_per_core": raw.get("dec_ips"),
                    "e2e_over_encoder_alone": (raw["e2e"] / raw["enc_ips"]) if raw.get("enc_ips") else None})
    return out


def _where(v: dict) -> str:
    if "error" in v:
        return v["error"]
    where = "from the bundle" if v.get("from_bundle") else "from " + os.path.dirname(v.get("file") or "?")
    return f"{v.get('version') or ''} {where}".strip()


def _rounded(x):
    """Floats to 6 significant digits (Pearson r keeps its 5th decimal), recursively."""
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


AGREEMENT_BF16 = "bf16 (engine default: block1 fp32)"
AGREEMENT_FP16 = "fp16 (block1 fp32, same structure)"


def precision_choice(bench_parts: dict) -> dict:
    """The README's rule for the CUDA default precision, applied to this run's measurements."""
    variants = (bench_parts.get("agreement") or {}).get("variants") or {}
    best = (bench_parts.get("core") or {}).get("best") or {}
    try:
        fp16, bf16 = variants[AGREEMENT_FP16]["demo_photos"], variants[AGREEMENT_BF16]["demo_photos"]
        r16, rb, bad = fp16["min_r"], bf16["min_r"], fp16["non_finite_outputs"]
        speed = best["fp16"]["images_per_s"] / best["bf16"]["images_per_s"]
    except (KeyError, TypeError):
        return {"status": "not measured (needs the core and agreement parts on CUDA)"}
    choice = "fp16" if r16 is not None and r16 >= rb and not bad and speed >= 0.95 else "bf16"
    return {"status": "ok", "choice": choice, "fp16_min_r": r16, "bf16_min_r": rb, "fp16_non_finite_outputs": bad,
            "fp16_over_bf16_images_per_s": speed,
            "rule": "fp16 if its min per-ROI r (demo photos) >= bf16's, no non-finite output, and its best core "
                    "images/s >= 0.95x bf16's; else bf16"}


def cmd_summarize(argv) -> int:
    """Merge what gpu_check.sh left in WORK into one summary JSON."""
    p = argparse.ArgumentParser(prog="gpu_bench.py summarize")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bench-out", default=None, help="also write the merged bench JSON here")
    args = p.parse_args(argv)
    w = Path(args.work)
    shell = {f.stem: _load(f) or {} for f in sorted((w / "parts").glob("*.json"))}
    speed, agree = _load(w / "speed.json") or {}, _load(w / "agreement.json") or {}
    imp = _load(w / "import.json") or {}
    meta = {**(speed.get("meta") or agree.get("meta") or {}), **(_load(w / "env.json") or {})}
    bench_parts = {**speed.get("parts", {}), **agree.get("parts", {})}
    parts = {}
    b = _load(w / "bundle.json") or {}
    parts["bundle_unpack"] = {**shell.get("bundle", {}), **b}
    parts["import_ray"] = {**shell.get("import", {}),
                           **{k: v for k, v in imp.items() if k not in ("modules", "traceback")},
                           "modules": {m: _where(v) for m, v in (imp.get("modules") or {}).items()}}
    if "status" in imp:
        parts["import_ray"]["status"] = imp["status"]
    for name in ("store", "bench_speed", "bench_agreement"):
        if name in shell:
            parts[name] = shell[name]

    def compact(name, v):
        if not isinstance(v, dict):
            return v
        if name == "core" and "best" in v:
            return {"status": v["status"], "gflop_per_image": v.get("gflop_per_image"), "best": v["best"],
                    "rows": [{k: r.get(k) for k in ("mode", "batch", "images_per_s", "tflops", "pct_of_matmul_peak",
                                                   "pct_of_790", "status") if k in r} for r in v["rows"]]}
        if name == "agreement" and "variants" in v:
            return {**{k: v[k] for k in ("status", "model_id", "synthetic", "subjects", "rois", "images",
                                         "reference") if k in v},
                    "variants": {n: {s: ({k: e[s][k] for k in ("min_r", "median_r", "pairs_below_0.999", "worst_pair",
                                                               "max_abs_diff_over_max_abs_ref", "non_finite_outputs")}
                                         if isinstance(e.get(s), dict) else e.get(s))
                                     for s in ("demo_photos", "photo_crops", "status") if s in e}
                                 for n, e in v["variants"].items()}}
        return v
    for name in ("matmul", "core", "encoder", "decode", "agreement", "decode_agreement"):
        v = bench_parts.get(name)
        if v is None:
            key = "bench_agreement" if name.endswith("agreement") else "bench_speed"
            st = shell.get(key, {}).get("status", "not run")
            parts[name] = {"status": st if st != "ok" else "not recorded"}
        elif "cpu_smoke" in v:
            parts[name] = {"status": v["status"], "cpu_smoke": {"status": v["cpu_smoke"]["status"],
                                                                "seconds": v["cpu_smoke"].get("seconds")}}
        else:
            parts[name] = compact(name, v)
    for name in ("pipeline_quick", "pipeline_gpu_decode", "pipeline_full"):
        parts[name] = _pipeline_summary(shell.get(name), _load(w / f"{name}.json"))
    if "pytest_gpu" in shell:
        parts["pytest_gpu"] = shell["pytest_gpu"]
    parts["cuda_precision_choice"] = precision_choice(bench_parts)
    bad = [n for n, v in parts.items() if isinstance(v, dict) and str(v.get("status", "")).startswith("failed")]
    smoke_bad = [n for n, v in parts.items() for k in ("cpu_smoke", "cpu_run") if isinstance(v, dict)
                 and isinstance(v.get(k), dict) and str(v[k].get("status", "")).startswith("failed")]
    summary = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "meta": meta,
               "elapsed_s": (_load(w / "timing.json") or {}).get("elapsed_s"),
               "budget_s": (_load(w / "timing.json") or {}).get("budget_s"),
               "parts": parts, "failed": bad + [f"{n} (CPU code check)" for n in smoke_bad],
               "ok": not bad and not smoke_bad}
    summary = _rounded(summary)
    Path(args.out).write_text(json.dumps(summary, indent=1, default=_jsonable))
    if args.bench_out:
        Path(args.bench_out).write_text(json.dumps({"meta": meta, "parts": bench_parts}, indent=1, default=_jsonable))
    print(json.dumps(summary, indent=1, default=_jsonable))
    return 0 if summary["ok"] else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmds = {"bench": cmd_bench, "importcheck": cmd_importcheck, "summarize": cmd_summarize}
    if argv and argv[0] in cmds:
        return cmds[argv[0]](argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    return cmd_bench(argv)  # the old form: gpu_bench.py [--json J] ... = bench


if __name__ == "__main__":
    sys.exit(main())
