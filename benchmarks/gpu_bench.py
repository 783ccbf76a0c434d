"""GPU throughput of the CNN8 engine: core at fp32 / TF32 / bf16 over a batch sweep, achieved TFLOP/s
against peak, the ROI-collapsed encoder, and the reference-style path (fp32, batch 32, all vertices, then
ROI means) in the same run for the ratio. On a machine without CUDA it says so and exits 0.

    python benchmarks/gpu_bench.py [--peak-tflops 989] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from screening import rois as roi_lib  # noqa: E402
from screening.models._weights import SUBJECTS  # noqa: E402
from screening.models.core import CNN8Core  # noqa: E402
from screening.models.encoder import Normalize, RoiEncoder  # noqa: E402
from screening.models.fast import fold_batchnorm  # noqa: E402


def core_gflop_per_image(width: int = 384) -> float:
    """2·MACs of every conv for a 224×224 input (pools and BN are negligible)."""
    core, x, flop = CNN8Core(width), torch.zeros(1, 3, 224, 224), 0.0

    def hook(m, inp, out):
        nonlocal flop
        flop += 2 * out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1]

    for m in core.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    core(x)
    return flop / 1e9


def timed(fn, seconds: float) -> list[float]:
    fn()
    torch.cuda.synchronize()
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100 SXM: 989)")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--batches", default="32,64,128,256")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device here; GPU measurements skipped.")
        return 0
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(0)
    gflop = core_gflop_per_image()
    print(f"device: {name}; core {gflop:.1f} GFLOP/image", flush=True)
    from tests._models import random_model  # synthetic weights; speed does not depend on values

    model = random_model(57051, width=384).to(dev)
    roi_set = roi_lib.build_roi_set("all")
    rows = []
    norm = Normalize().to(dev)
    core = fold_batchnorm(model.core).to(dev)
    for mode in ("fp32", "tf32", "bf16"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.benchmark = True
        c = core.to(memory_format=torch.channels_last)
        for bs in map(int, args.batches.split(",")):
            x = norm(torch.randint(0, 256, (bs, 3, 224, 224), dtype=torch.uint8, device=dev))
            x = x.contiguous(memory_format=torch.channels_last)

            def run():
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "bf16"):
                    c(x)
            try:
                t = statistics.median(timed(run, args.seconds))
            except torch.OutOfMemoryError:
                print(f"  core {mode} batch {bs}: out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            ips = bs / t
            rows.append({"path": f"core {mode}", "batch": bs, "images_per_s": ips,
                         "tflops": ips * gflop / 1e3, "pct_peak": 100 * ips * gflop / 1e3 / args.peak_tflops})
            print(f"  core {mode} batch {bs}: {ips:.0f} img/s, {ips * gflop / 1e3:.0f} TFLOP/s", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    best_bs = max((r for r in rows if r["path"] == "core bf16"), key=lambda r: r["images_per_s"])["batch"]
    enc = RoiEncoder.from_model(model, SUBJECTS, roi_set, precision="bf16", device=dev)
    x_u8 = torch.randint(0, 256, (best_bs, 3, 224, 224), dtype=torch.uint8)
    t = statistics.median(timed(lambda: enc.encode_numpy(x_u8.numpy()), args.seconds))
    rows.append({"path": "engine: ROI-collapsed bf16, host uint8 in/out", "batch": best_bs, "images_per_s": best_bs / t})
    membership = torch.zeros(57051, len(roi_set), device=dev)
    for j, cols in enumerate(roi_set.values()):
        membership[torch.as_tensor(cols, device=dev), j] = 1.0 / len(cols)
    xr = norm(torch.randint(0, 256, (32, 3, 224, 224), dtype=torch.uint8, device=dev))

    def reference():
        with torch.inference_mode():
            f = model.core(xr)
            torch.stack([model.head(s)(f) @ membership for s in SUBJECTS], 1).cpu()
    t = statistics.median(timed(reference, args.seconds))
    ref_ips = 32 / t
    rows.append({"path": "reference-style fp32, batch 32, all vertices", "batch": 32, "images_per_s": ref_ips})
    print("\n| path | device | batch | images/s | ratio to reference | TFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tf = f"{r['tflops']:.0f}" if "tflops" in r else ""
        pk = f"{r['pct_peak']:.0f}%" if "pct_peak" in r else ""
        print(f"| {r['path']} | {name} | {r['batch']} | {r['images_per_s']:.0f} | {r['images_per_s'] / ref_ips:.1f}x | {tf} | {pk} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
