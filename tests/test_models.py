import io
import os
import pickle

import numpy as np
import pytest
import torch

from screening import atlas, rois
from screening.exceptions import CheckpointError
from screening.models.registry import SUBJECTS, expected_shapes, load_checkpoint, save_checkpoint
from screening.models.encoder import CNN8Multihead, Normalize, RoiEncoder, collapse_heads
from screening.models.fast import fold_batchnorm
from tests._models import random_model, reference_forward


@pytest.fixture(scope="module")
def small():
    return random_model(40, width=8)


def _images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=g)


def _blobs(n=6, seed=0):
    """Smooth random colour fields plus grain: unlike white noise, images that differ from one another as
    photos do, so ROI means spread across them (bf16 error / spread: noise 0.5, these 0.05, photos 0.09)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=224, mode="bicubic")
    img = img + 0.15 * torch.randn(n, 3, 224, 224, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def test_published_key_format_round_trip(small, tmp_path):
    path = tmp_path / "m.pth"
    save_checkpoint(small.state_dict(), path)
    raw = torch.load(path, weights_only=True)
    assert len(raw) == 72 and all(k.startswith("module.") for k in raw)
    assert raw["module.core.block1.1.num_batches_tracked"].dtype == torch.int64
    assert raw["module.core.block1.1.num_batches_tracked"].shape == ()
    assert set(raw) == {"module." + k for k in expected_shapes(8, 40)}
    sd, info = load_checkpoint(path)
    assert (info.width, info.n_vertices) == (8, 40)
    loaded = CNN8Multihead.from_state_dict(sd, info)
    for k, v in small.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_published_shapes():
    shapes = expected_shapes(384, 57051)
    assert len(shapes) == 72
    assert shapes["core.block1.0.weight"] == (384, 3, 5, 5)
    assert shapes["core.block2.0.weight"] == (384, 384, 5, 5)
    assert shapes["core.block3.0.weight"] == (384, 384, 3, 3)
    assert shapes["subject_readouts.sub-08_NSD.spatial"] == (57051, 26, 26)
    core_params = sum(int(np.prod(s)) for k, s in shapes.items()
                      if k.startswith("core") and not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert core_params == 11_683_968


@pytest.mark.parametrize("mutation, needle", [
    ("missing", "missing keys (1): subject_readouts.sub-03_NSD.bias"),
    ("extra", "unexpected keys (1): core.block9.0.weight"),
    ("shape", "core.block4.0.weight: expected (8, 8, 3, 3), got (8, 8, 5, 5)"),
])
def test_bad_checkpoint_names_the_keys(small, tmp_path, mutation, needle):
    sd = {k: v.clone() for k, v in small.state_dict().items()}
    if mutation == "missing":
        del sd["subject_readouts.sub-03_NSD.bias"]
    elif mutation == "extra":
        sd["core.block9.0.weight"] = torch.zeros(1)
    else:
        sd["core.block4.0.weight"] = torch.zeros(8, 8, 5, 5)
    save_checkpoint(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "bad.pth")
    assert needle in str(e.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/screening-pwned",))


def test_code_running_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"module.x": _Evil()}, path)
    if os.path.exists("/tmp/screening-pwned"):
        os.remove("/tmp/screening-pwned")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/screening-pwned")


def test_outputs_equal_independent_einsum(small):
    x = _images()
    sd = small.state_dict()
    for subject in ("sub-01", "sub-08"):
        got = small(Normalize()(x), subject).double()
        want = reference_forward(sd, x, subject)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_bn_folding_is_exact_in_fp32(small):
    x = Normalize()(_images())
    a, b = small.core(x), fold_batchnorm(small.core)(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_batchnorm(small.core).modules())


@pytest.fixture(scope="module")
def calibrated():
    """BatchNorm-calibrated synthetic weights (as ``make_store`` writes them), visual variant, width 16: every core
    channel carries signal and the ROI means vary across images by ~2-30% of the whole head's largest response.
    (Random weights leave most channels dead and the ROI means nearly constant, so errors hide under the bias.)"""
    from screening.store.synthetic import synthetic_state_dict

    return CNN8Multihead.from_state_dict(synthetic_state_dict("visual", seed=0, width=16))


def spread_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Per column (ROI): max |got - want| over images / the s.d. of ``want`` across images (N, ...)."""
    got, want = got.double(), want.double()
    spread = want.std(0)
    assert (spread > 1e-3 * want.abs().amax(0)).all(), "the ROI means must vary across images to test anything"
    return (got - want).abs().amax(0) / spread


def test_collapse_equals_mean_of_full_vertex_outputs(calibrated):
    """ROI collapse is exact: single areas, a bilateral area, groups and a custom vertex set."""
    mapping = atlas.variant_vertex_mapping("visual")
    custom = mapping[[5, 17, 400, 3000, 7830]]
    roi_set = rois.build_roi_set("visual", ["L_V1", "R_FFC", "FFC", "group_01", "group_04"], custom={"mine": custom})
    enc = RoiEncoder.from_model(calibrated, SUBJECTS[:2], roi_set, precision="fp32", fold_bn=False)
    x = _blobs(4)
    got = enc(x)
    for si, s in enumerate(SUBJECTS[:2]):
        full = calibrated(Normalize()(x), s).detach()
        want = torch.stack([full[:, torch.as_tensor(cols)].mean(1) for cols in roi_set.values()], 1)
        err = spread_error(got[:, si], want)
        assert err.max() <= 1e-4, (s, dict(zip(roi_set, err.tolist())))  # fp32 rounding: ~5e-6 of the spread
    assert roi_set["mine"].tolist() == [5, 17, 400, 3000, 7830]
    assert roi_set["FFC"].size == roi_set["R_FFC"].size + rois.resolve_roi("L_FFC", "visual").size


def test_collapse_per_subject_sets(calibrated):
    sets = {"r": {"sub-01": np.arange(0, 50), "sub-02": np.arange(10, 20)}}
    w, b = collapse_heads(calibrated, SUBJECTS[:2], sets)
    x = Normalize()(_blobs(4, seed=1))
    feats = calibrated.core(x).flatten(1)
    got = feats @ w.T + b
    for si, (s, cols) in enumerate(sets["r"].items()):
        want = calibrated(x, s)[:, cols].mean(1)
        assert spread_error(got[:, si], want) <= 1e-4


def test_bf16_path_agrees_with_fp32(calibrated):
    roi_set = rois.build_roi_set("visual", ["L_V1", "R_V2", "FFC", "group_04"])
    x = _blobs(6, seed=3)
    a = RoiEncoder.from_model(calibrated, SUBJECTS[:2], roi_set, precision="fp32")(x)
    b = RoiEncoder.from_model(calibrated, SUBJECTS[:2], roi_set, precision="bf16")(x)
    err = spread_error(b, a)
    # bf16 rounding moves a ROI mean by ~5% of its spread across these images (per-ROI r: tests/test_bf16.py)
    assert err.max() <= 0.2, err


def test_the_weights_record_drives_the_encoder(small):
    """Normalisation and the input size come from the model's EncoderWeights record, not module constants."""
    import dataclasses

    from screening.exceptions import InvalidParameterError
    from screening.models.registry import PUBLISHED

    assert small.weights.model_id == "unregistered" and small.input_size == 224
    rec = dataclasses.replace(small.weights, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    model = CNN8Multihead.from_state_dict(small.state_dict(), weights=rec)
    enc = RoiEncoder.from_model(model, ["sub-01"], {"r": np.arange(10)}, fold_bn=False)
    assert (enc.normalize.mean, enc.normalize.std, enc.input_size) == (rec.mean, rec.std, 224)
    x = _images(2)
    xn = (x.double() / 255 - torch.tensor(rec.mean).view(1, 3, 1, 1)) / torch.tensor(rec.std).view(1, 3, 1, 1)
    want = model(xn.float(), "sub-01")[:, :10].mean(1)
    assert torch.allclose(enc(x)[:, 0, 0], want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    with pytest.raises(InvalidParameterError, match=r"images must have shape \(N, 3, 224, 224\).*got \(1, 3, 200, 200\)"):
        enc(torch.zeros(1, 3, 200, 200, dtype=torch.uint8))
    vis = PUBLISHED["fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"]
    with pytest.raises(InvalidParameterError, match="says 7831 vertices; the model has 40"):
        CNN8Multihead(40, width=8, weights=vis)
    assert vis.input_shape == (3, 224, 224)


def test_vertex_space_facts():
    assert atlas.vertex_mapping_all().size == 57051
    assert np.bincount(atlas.glasser_group_id())[1:].tolist()[:5] == [1603, 2547, 1116, 1220, 1345]
    assert atlas.roi_grayordinates()["L_V1"].size == 816 and atlas.roi_grayordinates()["R_FFC"].size == 167
    assert len(atlas.roi_grayordinates()) == 360
    out = atlas.expand_to_91k(np.ones((2, 7831), np.float32), atlas.variant_vertex_mapping("visual"))
    assert out.shape == (2, 91282) and int(np.isfinite(out[0]).sum()) == 7831


def test_all_exceptions_pickle():
    from screening import exceptions

    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        e = pickle.loads(pickle.dumps(cls(f"bad value {name}")))
        assert type(e) is cls and str(e) == f"bad value {name}"
