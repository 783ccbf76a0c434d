"""Does torch.compile pay for the CNN8 core on this CPU? Eager vs compiled, bf16 (block1 fp32), same inputs.

    python benchmarks/compile_cpu.py [--batch 8] [--repeats 5]

Reports compile (first-call) time and steady-state images/s; the engine keeps compile optional
(``RoiEncoder.compile()``) unless the numbers say it wins.
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
from screening.models.encoder import Normalize, core_features  # noqa: E402
from screening.models.fast import fold_batchnorm  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    core = fold_batchnorm(CNN8Core()).eval().to(memory_format=torch.channels_last)
    x = Normalize()(torch.randint(0, 256, (args.batch, 3, 224, 224), dtype=torch.uint8))
    compiled = torch.compile(core)
    with torch.inference_mode():
        t = time.perf_counter()
        ref = core_features(core, x, "bf16")
        eager_first = time.perf_counter() - t
        t = time.perf_counter()
        out = core_features(compiled, x, "bf16")
        compile_first = time.perf_counter() - t
        times = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            for name, m in (("eager", core), ("compiled", compiled)):
                t = time.perf_counter()
                core_features(m, x, "bf16")
                times[name].append(time.perf_counter() - t)
    rel = float((out - ref).abs().max() / ref.abs().max())
    e, c = (args.batch / statistics.median(times[k]) for k in ("eager", "compiled"))
    print(f"| path | first call s | images/s (median of {args.repeats}) | ratio |")
    print("|---|---|---|---|")
    print(f"| eager bf16 | {eager_first:.1f} | {e:.2f} | 1.00x |")
    print(f"| torch.compile bf16 | {compile_first:.1f} | {c:.2f} | {c / e:.2f}x |")
    print(f"compiled vs eager max rel diff: {rel:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
