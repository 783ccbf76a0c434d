"""Each encoder speed step, measured alone on the same inputs (CNN8 core, width 384, CPU):
fp32 baseline → +BN folding → +channels_last → bf16 autocast (all layers) → bf16 with block1 fp32 (the engine)
→ +torch.compile. Reports images/s (median of interleaved repeats), ratio to the baseline, and max relative
difference of the core output against the fp32 baseline.

    python benchmarks/encoder_steps.py [--batch 8] [--repeats 3] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from screening.models.core import CNN8Core  # noqa: E402
from screening.store.synthetic import _init_and_calibrate_core  # noqa: E402
from screening.models.encoder import Normalize, core_features  # noqa: E402
from screening.models.fast import fold_batchnorm  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    core = CNN8Core().eval()
    with torch.no_grad():
        _init_and_calibrate_core(core, 0, 384)  # the synthetic store's calibrated weights: real BN statistics
    folded = fold_batchnorm(core)
    folded_cl = fold_batchnorm(core).to(memory_format=torch.channels_last)
    x = Normalize()(torch.randint(0, 256, (args.batch, 3, 224, 224), dtype=torch.uint8,
                                  generator=torch.Generator().manual_seed(0)))
    xcl = x.contiguous(memory_format=torch.channels_last)

    def bf16_all(m):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(xcl).float()

    steps = {
        "fp32 (reference core)": lambda: core(x),
        "+ BN folded": lambda: folded(x),
        "+ channels_last": lambda: folded_cl(xcl),
        "+ bf16 autocast, all layers": lambda: bf16_all(folded_cl),
        "bf16, block1 fp32 (engine)": lambda: core_features(folded_cl, x, "bf16"),
    }
    first = {}
    if not args.no_compile:
        compiled = torch.compile(folded_cl)
        with torch.inference_mode():
            t = time.perf_counter()
            core_features(compiled, x, "bf16")
            first["+ torch.compile (engine)"] = time.perf_counter() - t
        steps["+ torch.compile (engine)"] = lambda: core_features(compiled, x, "bf16")
    times = {k: [] for k in steps}
    outs = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, fn in steps.items():
                t = time.perf_counter()
                outs[name] = fn()
                times[name].append(time.perf_counter() - t)
    base = args.batch / statistics.median(times["fp32 (reference core)"])
    ref = outs["fp32 (reference core)"]
    print(f"| step | images/s (median of {args.repeats}) | ratio to fp32 | max rel diff vs fp32 |")
    print("|---|---|---|---|")
    for name in steps:
        ips = args.batch / statistics.median(times[name])
        rel = float((outs[name].float() - ref).abs().max() / ref.abs().max())
        extra = f" (first call {first[name]:.0f} s)" if name in first else ""
        print(f"| {name}{extra} | {ips:.2f} | {ips / base:.2f}x | {rel:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
