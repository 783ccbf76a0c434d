"""bf16 — the core precision `auto` picks where a CPU or GPU computes it natively — against the published fp32 maths.

Per (subject, ROI) Pearson r across real photographs (the demo's packaged photos: scikit-image, scikit-learn and
matplotlib sample data), on the calibrated synthetic store, and once at the published width (``slow``). The README's
issue target is r >= 0.999 for every (subject, ROI).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from screening import rois
from screening.models.registry import SUBJECTS
from screening.models.encoder import CPU_BATCH_SIZE, CNN8Multihead, RoiEncoder, collapse_heads
from screening.models.fast import fold_batchnorm

VIS = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"
R_MIN = 0.999
#: Regression guard on the calibrated width-16 store, where the target alone cannot tell the engine from worse
#: paths. Measured here (min per-ROI r over 8 subjects x 57 ROIs, 16 photos): engine 0.99971; block1 in bf16 too
#: 0.99922; core output rounded through fp8 0.99923; block1 output through fp8 0.99907.
R_GUARD = 0.9995
#: r cannot see a gain or an offset. Largest per-ROI mean offset of bf16 from fp32, in units of the ROI's spread
#: across the photos, same store and photos (AMD EPYC, 2026-12-02): engine 0.0175; core output x 1.005 0.030,
#: x 1.01 0.043, x 1.02 0.079.
OFFSET_MAX = 0.04


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """(N, 3, 224, 224) uint8: the demo's real photographs through the one preprocessing path."""
    from screening.demo import packaged_photos
    from screening.preprocess import preprocess_array

    got = packaged_photos()
    if len(got) < 8:
        pytest.skip(f"only {len(got)} packaged photos (scikit-image / scikit-learn missing?)")
    return np.stack([preprocess_array(np.ascontiguousarray(img.transpose(2, 0, 1))) for img, _ in got.values()])


def per_roi_r(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pearson r across images (axis 0) of each (subject, ROI) column: (N, S, R) x 2 -> (S, R)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    ac, bc = a - a.mean(0), b - b.mean(0)
    r = (ac * bc).sum(0) / ((ac ** 2).sum(0) * (bc ** 2).sum(0)).sqrt()
    return r.numpy()


def bf16_agreement(model: CNN8Multihead, images: np.ndarray, subjects, roi_set) -> tuple[np.ndarray, np.ndarray]:
    """Per-(subject, ROI) r of the bf16 engine (as ``RoiEncoder.from_model`` builds it: BN folded, bf16 core)
    against the unfolded fp32 core (the published maths), through the same collapsed heads (collapsed once); and
    the mean offset |mean(bf16 - fp32)| / sd(fp32) across images, which r cannot see."""
    w, b = collapse_heads(model, subjects, roi_set)
    x = torch.from_numpy(images)
    ref_enc = RoiEncoder(model.core, w, b, subjects, list(roi_set), "fp32", model.weights).eval()
    got_enc = RoiEncoder(fold_batchnorm(model.core), w, b, subjects, list(roi_set), "bf16", model.weights).eval()
    # forwards of CPU_BATCH_SIZE images, as the engine runs them: where bf16 is emulated (AVX2), a 6-image bf16 forward
    # holds ~1 GB of im2col buffers per image
    ref = torch.cat([ref_enc(x[i:i + CPU_BATCH_SIZE]) for i in range(0, len(x), CPU_BATCH_SIZE)])
    got = torch.cat([got_enc(x[i:i + CPU_BATCH_SIZE]) for i in range(0, len(x), CPU_BATCH_SIZE)])
    assert (ref.double().std(0) > 1e-3 * ref.abs().max()).all(), "ROI means must vary across the photos"
    shape = (len(subjects), len(roi_set))
    offset = ((got.double() - ref.double()).mean(0) / ref.double().std(0)).abs().numpy().reshape(shape)
    return per_roi_r(got, ref).reshape(shape), offset


def _worst(r: np.ndarray, subjects, roi_set) -> str:
    s, j = np.unravel_index(np.argmin(r), r.shape)
    return f"min per-ROI r {r.min():.5f} at ({subjects[s]}, {list(roi_set)[j]}); median {np.median(r):.5f}"


def test_bf16_per_roi_r_on_real_photos(visual_store, photos):
    """Every (subject, ROI) of the calibrated store (8 subjects x 52 areas + 5 groups): r >= 0.999, and the
    engine's own margin over it (block1 kept in fp32) holds."""
    from screening.store import open_store

    model, _ = open_store(str(visual_store)).load_model(VIS)
    roi_set = rois.build_roi_set("visual")
    r, offset = bf16_agreement(model, photos, SUBJECTS, roi_set)
    assert r.shape == (8, 57)
    assert r.min() >= R_MIN, _worst(r, SUBJECTS, roi_set)
    assert r.min() >= R_GUARD, "regression: " + _worst(r, SUBJECTS, roi_set)
    assert offset.max() <= OFFSET_MAX, f"bf16 ROI means offset by {offset.max():.4f} of their spread"


@pytest.mark.slow
def test_bf16_per_roi_r_at_published_width(photos):
    """The same at width 384 (visual variant, calibrated synthetic weights), on six photos and two subjects: the
    fp32 reference costs ~2 s per image on two free cores. Measured here: min r 0.99970 (sub-01, L_V7) on these
    six; with only the first four, one ROI whose mean barely varies over them falls to 0.9986 (R_V2)."""
    from screening.store.synthetic import synthetic_state_dict

    model = CNN8Multihead.from_state_dict(synthetic_state_dict("visual", seed=0, width=384))
    roi_set = rois.build_roi_set("visual")
    subjects = list(SUBJECTS[:2])
    r, _ = bf16_agreement(model, photos[:6], subjects, roi_set)
    assert r.min() >= R_MIN, _worst(r, subjects, roi_set)
