"""Real photographs for benchmarks: scikit-image's bundled photos, as varied 224×224 crops."""

from __future__ import annotations

import numpy as np


def photo_batch(n: int, seed: int = 0, size: int = 224) -> np.ndarray:
    """(n, 3, size, size) uint8 crops of scikit-image's data photos (random square crops and flips)."""
    from PIL import Image
    from skimage import data

    photos = [getattr(data, name)() for name in
              ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "coins",
               "camera", "moon", "page", "text")]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        img = Image.fromarray(p[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
        a = np.asarray(img)
        out[i] = (a[:, ::-1] if rng.random() < 0.5 else a).transpose(2, 0, 1)
    return out
