"""Images per CPU forward: speed and peak memory of the core at width 384, one fresh process per setting.

    python benchmarks/forward_chunk.py [--precisions fp32 bf16] [--chunks 1 2 4 8 16] [--images 16]

Each setting runs in its own process (ru_maxrss is a process-wide peak): BN-folded core, random weights, the encoder's
own ``core_features`` path. Prints seconds per image and the peak RSS. Set ONEDNN_MAX_CPU_ISA to see another CPU
kind's kernels on this one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import sys, time, resource, torch
from screening.models.core import CNN8Core
from screening.models.fast import fold_batchnorm
from screening.models.encoder import core_features
prec, chunk, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
core = fold_batchnorm(CNN8Core(384).eval())
if prec != "fp32":
    core = core.to(memory_format=torch.channels_last)
x = torch.randn(chunk, 3, 224, 224)
with torch.inference_mode():
    core_features(core, x, prec)
    t, k = time.perf_counter(), 0
    while k < n:
        core_features(core, x, prec)
        k += chunk
    dt = (time.perf_counter() - t) / k
print(f"| {prec} | {chunk} | {dt:.3f} | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} |")
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    p.add_argument("--chunks", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--images", type=int, default=16)
    args = p.parse_args(argv)
    print("| precision | images per forward | s/image | peak RSS (GiB) |\n|---|---|---|---|", flush=True)
    for prec in args.precisions:
        for chunk in args.chunks:
            subprocess.run([sys.executable, "-c", CHILD, prec, str(chunk), str(max(args.images, chunk))], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
