"""ROI-mean screening throughput: reference-style path vs the engine's path, side by side, same images.

reference-style: fp32, batch 32, all vertices of every subject head (the published readout), then ROI means.
engine:          BN folded, all subjects × ROIs collapsed into one matmul; core in fp32, in bf16 (autocast +
                 channels_last), and in what precision="auto" resolves to on this CPU (screening.hardware).
ROIs: every area with model vertices (357 of 360; L_H, R_H, R_RSC are fully excluded by MOSAIC) + 22 groups.

    python benchmarks/encode_cpu.py [--images 32] [--repeats 3] [--store DIR] [--json OUT]

It prints the CPU model, its bf16 / AMX / AVX-512 flags and torch's CPU capability first. To see another CPU kind's
kernels on an AMX Xeon, cap oneDNN's ISA (ONEDNN_MAX_CPU_ISA=AVX2 or AVX512_CORE_BF16): the CPUID flags still say
AMX, so only auto's probe can tell (benchmarks/README.md says which rows were measured so).

Weights are synthetic (same architecture and sizes as published; speed does not depend on values).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._images import photo_batch  # noqa: E402
from screening import rois as roi_lib  # noqa: E402
from screening.models.registry import DEFAULT_MODEL_ID, SUBJECTS  # noqa: E402
from screening.models.encoder import Normalize, RoiEncoder  # noqa: E402


def reference_roi_means(model, images: np.ndarray, membership: torch.Tensor, batch: int = 32) -> np.ndarray:
    """(N, S, R): the published maths at fp32, all 57,051 vertices per subject, then the ROI mean."""
    norm = Normalize()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(images), batch):
            x = norm(torch.from_numpy(images[lo:lo + batch]))
            feats = model.core(x)
            per_subject = [model.head(s)(feats) @ membership for s in SUBJECTS]
            out.append(torch.stack(per_subject, 1))
    return torch.cat(out).numpy()


def engine_roi_means(encoder: RoiEncoder, images: np.ndarray, batch: int) -> np.ndarray:
    out = [encoder(torch.from_numpy(images[lo:lo + batch])) for lo in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def agreement(a: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(min per-ROI Pearson r over images, median r, max |a-ref| / max |ref|) across subjects × ROIs."""
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    r2 = ref.reshape(ref.shape[0], -1).astype(np.float64)
    ac, rc = a2 - a2.mean(0), r2 - r2.mean(0)
    r = (ac * rc).sum(0) / np.sqrt((ac ** 2).sum(0) * (rc ** 2).sum(0))
    return float(r.min()), float(np.median(r)), float(np.abs(a2 - r2).max() / np.abs(r2).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--engine-batch", type=int, default=None, help="default: the engine's CPU forward (CPU_BATCH_SIZE)")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--store", default=os.environ.get("SCREENING_BENCH_STORE",
                                                     str(Path.home() / ".cache/screening/bench-store-all")))
    args = p.parse_args(argv)

    from screening.store import open_store
    from screening.store.synthetic import make_store

    make_store(args.store, variant="all", seed=0, reuse=True)
    store = open_store(args.store)
    model, info = store.load_model(DEFAULT_MODEL_ID)
    roi_set = roi_lib.build_roi_set("all")
    membership = torch.zeros(info.n_vertices, len(roi_set))
    for j, cols in enumerate(roi_set.values()):
        membership[torch.as_tensor(cols), j] = 1.0 / len(cols)

    from screening.hardware import Capabilities, cpu_flags, resolve_precision
    from screening.models.encoder import CPU_BATCH_SIZE

    batch = args.engine_batch or CPU_BATCH_SIZE
    caps = Capabilities.from_this_machine("cpu")
    flags = sorted(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16"))
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    print(f"CPU: {caps.cpu_model} ({caps.arch}); flags: {' '.join(flags) or 'none of avx2/avx512/bf16/amx'}; torch "
          f"CPU capability {caps.torch_cpu_capability}" + (f"; oneDNN capped to {isa_cap}" if isa_cap else ""),
          flush=True)
    t = time.perf_counter()
    choice = resolve_precision("cpu")
    print(f"auto -> {choice.precision} in {time.perf_counter() - t:.2f} s: {choice.why}", flush=True)

    t0 = time.perf_counter()
    engine = RoiEncoder.from_model(model, SUBJECTS, roi_set, precision="bf16")
    engine_fp32 = RoiEncoder.from_model(model, SUBJECTS, roi_set, precision="fp32")
    engine_auto = RoiEncoder.from_model(model, SUBJECTS, roi_set, precision=choice.precision)
    collapse_s = (time.perf_counter() - t0) / 3
    images = photo_batch(args.images)
    print(f"model: width {info.width}, {info.n_vertices} vertices x 8 subjects, {len(roi_set)} ROIs; "
          f"{args.images} photos; torch threads {torch.get_num_threads()}; collapse {collapse_s:.1f}s per encoder",
          flush=True)

    times = {"reference": [], "engine-bf16": [], "engine-fp32": [], "engine-auto": []}
    results = {}
    for rep in range(args.repeats):  # interleaved, so machine noise hits every path alike
        for name, fn in (("reference", lambda: reference_roi_means(model, images, membership)),
                         ("engine-bf16", lambda: engine_roi_means(engine, images, batch)),
                         ("engine-fp32", lambda: engine_roi_means(engine_fp32, images, batch)),
                         ("engine-auto", lambda: engine_roi_means(engine_auto, images, batch))):
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
            print(f"  repeat {rep + 1} {name}: {args.images / times[name][-1]:.2f} img/s", flush=True)

    ref_ips = args.images / statistics.median(times["reference"])
    print("\n| path | images/s (median) | ratio to reference | min per-ROI r | median r | max rel err |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in times:
        ips = args.images / statistics.median(times[name])
        rmin, rmed, rel = agreement(results[name], results["reference"])
        label = f"engine-auto ({choice.precision})" if name == "engine-auto" else name
        print(f"| {label} | {ips:.3f} | {ips / ref_ips:.2f}x | {rmin:.5f} | {rmed:.5f} | {rel:.2e} |")
        rows.append({"path": name, "images_per_s": ips, "ratio_to_reference": ips / ref_ips, "min_r": rmin,
                     "median_r": rmed, "max_rel_err": rel, "seconds": times[name]})
    fastest = max(rows[1:3], key=lambda r: r["images_per_s"])
    auto_ratio = rows[3]["images_per_s"] / fastest["images_per_s"]
    print(f"\nauto ({choice.precision}) runs at {auto_ratio:.2f}x the fastest precision measured here "
          f"({fastest['path']}); target >= 0.9")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"cpu": caps.cpu_model, "flags": flags, "torch_cpu_capability": caps.torch_cpu_capability,
                       "onednn_max_cpu_isa": isa_cap, "threads": torch.get_num_threads(), "images": args.images,
                       "repeats": args.repeats, "engine_batch": batch, "auto": choice.record(),
                       "auto_vs_fastest": auto_ratio, "rows": rows}, f, indent=1)
    return 0



if __name__ == "__main__":
    sys.exit(main())
