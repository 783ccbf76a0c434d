"""Decode + preprocess throughput per core: exact path vs fast path(s), with pixel agreement.

Run from the repository root::

    python benchmarks/decode.py            # full run (about a minute)
    python benchmarks/decode.py --quick    # fewer repeats

Single process, pinned to one CPU, one thread; timed in thread CPU time (images per CPU-second),
which a busy shared machine disturbs far less than wall time. Images are the tests' photo-like JPEGs
(``tests/image_corpus.photo_like``: gradients, discs, bars, sensor-like noise; quality 90) at
NSD-like 425x425, 1024x768 and 4000x3000. For each size and method: images/s (median over
repeats of a pass over all images), the ratio to the exact path, and pixel agreement with the
exact path's uint8 output (mean and max absolute difference in levels). Prints a Markdown table.

Methods
-------
exact                    ``preprocess_bytes(data)``: full decode, centre crop, antialiased bilinear
                         resize.
fast                     ``preprocess_bytes(data, fast=True)``: Pillow ``draft`` (libjpeg scaled IDCT)
                         to the strongest 1/2, 1/4, 1/8 keeping the short side >= 448, then the same
                         crop + resize. The engine's fast path.
fast-simplejpeg          the same size rule through simplejpeg (libjpeg-turbo) + ``Image.fromarray``.
fast-simplejpeg-fastdct  as above with ``fastdct=True, fastupsample=True``.
fast-224                 Pillow ``draft`` keeping the short side >= 224 only: faster, less faithful.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from screening import preprocess as P  # noqa: E402
from tests.image_corpus import encode, photo_like  # noqa: E402


def _sj(data: bytes, min_side: int, **kw) -> np.ndarray:
    import simplejpeg
    from PIL import Image

    w, h = P.image_size(data)
    if min(w, h) < 2 * min_side:
        return P.preprocess_bytes(data)
    dim = {"min_height": min_side} if h <= w else {"min_width": min_side}
    arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_factor=2.0, **dim, **kw)
    return P._crop_resize(Image.fromarray(arr, "RGB"))


METHODS = {
    "exact": lambda d: P.preprocess_bytes(d),
    "fast": lambda d: P.preprocess_bytes(d, fast=True),
    "fast-simplejpeg": lambda d: _sj(d, P.FAST_MIN_SIDE),
    "fast-simplejpeg-fastdct": lambda d: _sj(d, P.FAST_MIN_SIDE, fastdct=True, fastupsample=True),
    "fast-224": lambda d: P._crop_resize(P._decode(d, P.DEFAULT_MAX_PIXELS, P.TARGET_SIZE)),
}

SIZES = {"425x425 (NSD-like)": (425, 425, 16), "1024x768": (1024, 768, 8), "4000x3000": (4000, 3000, 3)}


def _rates(methods: dict, images: list, repeats: int) -> dict[str, float]:
    """images per CPU-second per method: median over repeats of one pass over ``images``.

    Timed with ``time.thread_time`` (CPU time of this thread), so time the scheduler gives to
    other processes on a shared machine is not counted; all the work here runs on this thread.
    Methods are interleaved within each repeat (in rotating order), so drift in machine load
    hits them alike and the ratios stay fair on a shared machine.
    """
    names = list(methods)
    for name in names:  # warm-up: imports, allocator
        for d in images:
            methods[name](d)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = methods[name]
            t0 = time.thread_time()
            for d in images:
                fn(d)
            times[name].append(time.thread_time() - t0)
    return {n: len(images) / statistics.median(t) for n, t in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    args = ap.parse_args(argv)
    repeats = 3 if args.quick else 7
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    rows = []
    for label, (w, h, n) in SIZES.items():
        images = [encode(photo_like(w, h, seed=100 + i), "JPEG", quality=90) for i in range(n)]
        kb = np.mean([len(d) for d in images]) / 1000
        exact_out = [METHODS["exact"](d).astype(np.int16) for d in images]
        rates = _rates(METHODS, images, repeats)
        for name, fn in METHODS.items():
            diffs = [np.abs(fn(d).astype(np.int16) - e) for d, e in zip(images, exact_out)]
            mean = float(np.mean([x.mean() for x in diffs]))
            mx = int(max(x.max() for x in diffs))
            rows.append((label, f"{kb:.0f}", name, f"{rates[name]:.1f}", f"{rates[name] / rates['exact']:.2f}x",
                         f"{mean:.3f}", str(mx)))
        print(f"done {label}", file=sys.stderr)

    head = ("image", "kB/JPEG", "method", "images/s/core", "vs exact", "mean |diff|", "max |diff|")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    import PIL
    import simplejpeg

    print(f"\nPillow {PIL.__version__}, simplejpeg {simplejpeg.__version__}, numpy {np.__version__}, "
          f"{repeats} repeats, 1 core, load average at end {os.getloadavg()[0]:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
