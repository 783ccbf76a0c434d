"""Fast decode (JPEG DCT-domain downscale) vs the exact decode, measured where it matters: per-ROI r.

Images: the demo's packaged photographs, saved as JPEG (q92) at 4000×3000-class size (upsampled so the
fast path really engages; it only acts on JPEGs far larger than 224), both paths through the same
fp32 ROI encoder (synthetic calibrated weights, published architecture, visual variant, 57 ROIs × 8 subjects).

    python benchmarks/decode_agreement.py
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.encode_cpu import agreement  # noqa: E402
from screening import rois as roi_lib  # noqa: E402
from screening.demo import packaged_photos  # noqa: E402
from screening.models.registry import SUBJECTS, weights_for_variant  # noqa: E402
from screening.models.encoder import RoiEncoder  # noqa: E402
from screening.preprocess import preprocess_bytes  # noqa: E402


def main() -> int:
    from screening.store import open_store
    from screening.store.synthetic import make_store

    root = os.environ.get("SCREENING_BENCH_VISUAL_STORE", str(Path.home() / ".cache/screening/bench-store-visual"))
    make_store(root, variant="visual", seed=0, reuse=True)
    model, _ = open_store(root).load_model(weights_for_variant("visual").model_id)
    enc = RoiEncoder.from_model(model, SUBJECTS, roi_lib.build_roi_set("visual"), precision="fp32")
    blobs = []
    for name, (img, _) in packaged_photos().items():
        pil = Image.fromarray(img)
        scale = 4000 / max(pil.size)
        buf = io.BytesIO()
        pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BICUBIC).save(buf, "JPEG", quality=92)
        blobs.append(buf.getvalue())
    exact = np.stack([preprocess_bytes(b) for b in blobs])
    fast = np.stack([preprocess_bytes(b, fast=True) for b in blobs])
    diff = np.abs(exact.astype(int) - fast.astype(int))
    with torch.inference_mode():
        a, b = enc(torch.from_numpy(exact)).numpy(), enc(torch.from_numpy(fast)).numpy()
    rmin, rmed, rel = agreement(b, a)
    print(f"{len(blobs)} photos at ~4000 px: pixel |diff| mean {diff.mean():.2f}, max {diff.max()} levels")
    print(f"| fast decode vs exact | min per-ROI r {rmin:.5f} | median r {rmed:.5f} | max rel err {rel:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
