import pickle
import warnings

import numpy as np
import pytest
import torch

from screening import BERG, atlas
from screening.validation import SmallImageWarning
from screening.exceptions import InvalidParameterError, ModelNotFoundError, ScreeningError, StimulusError
from screening.models.registry import load_checkpoint
from tests._models import reference_forward

VIS = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"


@pytest.fixture(scope="module")
def berg(visual_store):
    return BERG(str(visual_store))


@pytest.fixture(scope="module")
def model(berg):
    return berg.get_encoding_model(VIS, subject=[1, 3], selection={"roi": ["R_FFC", "L_V1"], "glasser_group": 4},
                                   device="cpu", batch_size=2)


def _stim(n=3, size=224, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def test_output_layout_and_column_order(berg, model):
    res = berg.encode(model, _stim())
    assert list(res) == ["NaturalScenesDataset"]
    assert list(res["NaturalScenesDataset"]) == ["sub-01", "sub-03"]
    out = res["NaturalScenesDataset"]["sub-01"]
    assert out.dtype == np.float32
    g = model.vertex_mapping
    assert np.all(np.diff(g) > 0), "columns must come out in ascending grayordinate order"
    roi = atlas.roi_grayordinates()
    expected = np.union1d(np.union1d(roi["R_FFC"], roi["L_V1"]),
                          atlas.vertex_mapping_all()[atlas.glasser_group_id() == 4])
    assert np.array_equal(g, expected)
    assert out.shape == (3, expected.size)


def test_fp32_equals_independent_einsum(berg, visual_store, model):
    stim = _stim(2, seed=4)
    res = berg.encode(model, stim)
    path = next(visual_store.rglob("*.pth"))
    sd, _ = load_checkpoint(path)
    for s in ("sub-01", "sub-03"):
        want = reference_forward(sd, torch.from_numpy(stim), s)[:, torch.as_tensor(model.columns)].numpy()
        got = res["NaturalScenesDataset"][s]
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_streaming_does_not_change_results(berg, visual_store, model):
    stim = _stim(5, seed=2)
    a = berg.encode(model, stim)["NaturalScenesDataset"]["sub-03"]
    m1 = berg.get_encoding_model(VIS, subject=3, selection={"roi": ["R_FFC", "L_V1"], "glasser_group": 4},
                                 device="cpu", batch_size=1)
    b = berg.encode(m1, stim)["NaturalScenesDataset"]["sub-03"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_roi_mean_reduction_equals_vertex_mean(berg, model):
    stim = _stim(3, seed=5)
    full = berg.encode(model, stim)["NaturalScenesDataset"]
    red = berg.encode(model, stim, reduce="roi_mean")["NaturalScenesDataset"]
    assert model.roi_names == ["R_FFC", "L_V1", "group_04"]
    pos = {g: i for i, g in enumerate(model.vertex_mapping)}
    for s in model.subjects:
        for j, name in enumerate(model.roi_names):
            g = atlas.roi_grayordinates()[name] if name != "group_04" else \
                atlas.vertex_mapping_all()[atlas.glasser_group_id() == 4]
            want = full[s][:, [pos[x] for x in g]].mean(1)
            assert np.abs(red[s][:, j] - want).max() <= 1e-5 * np.abs(full[s]).max()


def test_the_weights_record_drives_the_normalisation(berg, visual_store, model):
    """encode() normalises with the model's EncoderWeights mean/std (both paths), not module constants."""
    import dataclasses

    rec = dataclasses.replace(model.weights, mean=(0.3, 0.5, 0.6), std=(0.3, 0.2, 0.25))
    m = dataclasses.replace(model, weights=rec, _roi_encoder=None)
    stim = _stim(2, seed=11)
    full = berg.encode(m, stim)["NaturalScenesDataset"]["sub-03"]
    red = berg.encode(m, stim, reduce="roi_mean")["NaturalScenesDataset"]["sub-03"]
    net, _ = berg.store.load_model(VIS)  # the full published-format model, fed by hand
    x = (torch.from_numpy(stim).double() / 255 - torch.tensor(rec.mean).view(1, 3, 1, 1)) / torch.tensor(rec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net(x.float(), "sub-03")[:, torch.as_tensor(model.columns)].numpy()
    assert np.abs(full - want).max() <= 1e-4 * np.abs(want).max()
    pos = {c: i for i, c in enumerate(model.columns.tolist())}
    for j, cols in enumerate(model.roi_sets.values()):
        np.testing.assert_allclose(red[:, j], want[:, [pos[c] for c in cols.tolist()]].mean(1), rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max())
    assert np.abs(full - berg.encode(model, stim)["NaturalScenesDataset"]["sub-03"]).max() > 0.01 * np.abs(want).max()


def test_larger_square_images_are_resized(berg, model):
    from screening.preprocess import preprocess_batch_array

    big = _stim(2, size=300, seed=7)
    a = berg.encode(model, big)["NaturalScenesDataset"]["sub-01"]
    b = berg.encode(model, preprocess_batch_array(big))["NaturalScenesDataset"]["sub-01"]
    np.testing.assert_array_equal(a, b)


def test_metadata(berg, model):
    res, meta = berg.encode(model, _stim(1), return_metadata=True)
    assert set(meta) == {"sub-01", "sub-03"}
    m1 = berg.get_model_metadata(VIS, subject=1)
    assert m1["encoding_models"]["vertex_mapping_all"].shape == (atlas.N_VERTICES_VISUAL,)
    assert len(m1["roi"]) == 360
    assert set(berg.get_model_metadata(VIS, subject="all")) == {f"sub-0{i}" for i in range(1, 9)}


def test_show_progress_really_shows(berg, model, capsys):
    berg.encode(model, _stim(3), show_progress=True)
    assert "3/3" in capsys.readouterr().err


def test_small_images_warn_but_work(berg, model):
    with pytest.warns(SmallImageWarning, match="64x64"):
        out = berg.encode(model, _stim(1, size=64))
    assert np.isfinite(out["NaturalScenesDataset"]["sub-01"]).all()


@pytest.mark.parametrize("stim, match", [
    ([[1, 2, 3]], "numpy.ndarray"),
    (np.zeros((3, 224, 224), np.uint8), "4-D"),
    (np.zeros((2, 4, 224, 224), np.uint8), "3 RGB channels"),
    (np.zeros((2, 224, 224, 3), np.uint8), "channels-last"),
    (np.zeros((2, 3, 224, 200), np.uint8), "square"),
    (np.zeros((0, 3, 224, 224), np.uint8), "empty batch"),
    (np.full((1, 3, 224, 224), 0.5, np.float32), "float dtype float32"),
    (np.full((1, 3, 224, 224), np.nan, np.float64), "NaN"),
    (np.full((1, 3, 224, 224), 256, np.int16), "min 256, max 256"),
    (np.full((1, 3, 224, 224), -1, np.int32), "min -1"),
    (np.zeros((1, 3, 224, 224), bool), "dtype bool"),
])
def test_stimulus_errors(berg, model, stim, match):
    with pytest.raises(StimulusError, match=match) as e:
        berg.encode(model, stim)
    assert isinstance(e.value, ScreeningError)
    assert str(pickle.loads(pickle.dumps(e.value))) == str(e.value)


def test_int_stimulus_in_range_is_accepted_without_cast_surprises(berg, model):
    a = _stim(1, seed=9)
    r8 = berg.encode(model, a)["NaturalScenesDataset"]["sub-01"]
    r64 = berg.encode(model, a.astype(np.int64))["NaturalScenesDataset"]["sub-01"]
    np.testing.assert_array_equal(r8, r64)


@pytest.mark.parametrize("kwargs, match", [
    ({"subject": 0}, r"subject 0 is not valid; valid values: 1, 2, 3, 4, 5, 6, 7, 8"),
    ({"subject": 9}, r"subject 9 is not valid"),
    ({"subject": True}, r"subject True is not valid"),
    ({"subject": "everyone"}, r"subject='everyone' is not valid"),
    ({"subject": []}, r"empty"),
    ({"subject": [1, 1]}, r"given twice"),
    ({"selection": {"roi": ["L_FFX"]}}, r"Unknown ROI 'L_FFX'; valid ROIs: areas like L_V1"),
    ({"selection": {"roi": ["L_4"]}}, r"'L_4' exists in the atlas but has no vertices in variant 'visual'"),
    ({"selection": {"glasser_group": 6}}, r"glasser_group 6 is not valid for variant 'visual'; valid groups: 1, 2, 3, 4, 5"),
    ({"selection": {"glasser_group": [1, True]}}, r"glasser_group True is not valid"),
    ({"selection": {"voxel_index": np.ones(57051, int)}}, r"length 7831 .* got shape \(57051,\)"),
    ({"selection": {"voxel_index": np.full(7831, 2)}}, r"only 0 and 1; found \[2\]"),
    ({"selection": {"voxel_index": np.zeros(7831, int)}}, r"selects no vertex"),
    ({"selection": {"rois": ["L_V1"]}}, r"unknown keys \['rois'\]; valid keys: roi, glasser_group, voxel_index"),
    ({"selection": {}}, r"selects nothing"),
    ({"device": "gpu"}, r"device='gpu' is not valid; valid devices: 'cpu', 'cuda', 'auto'"),
    ({"precision": "fp8"}, r"precision='fp8' is not valid; valid values: 'fp32', 'bf16', 'fp16'"),
    ({"batch_size": 0}, r"batch_size=0 must be a positive integer"),
])
def test_parameter_errors_name_value_and_valid_ones(berg, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        berg.get_encoding_model(VIS, **{"subject": 1, **kwargs})


def test_cuda_requested_without_cuda(berg):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidParameterError, match="no CUDA device"):
        berg.get_encoding_model(VIS, subject=1, device="cuda")


def test_unknown_model_id(berg):
    with pytest.raises(ModelNotFoundError, match="valid model ids: fmri-mosaic-CNN8_multihead_subNSD_verticesAll"):
        berg.get_encoding_model("fmri-mosaic-CNN9", subject=1)


def test_bad_reduce_and_model(berg, model):
    with pytest.raises(InvalidParameterError, match="reduce='max'"):
        berg.encode(model, _stim(1), reduce="max")
    with pytest.raises(InvalidParameterError, match="get_encoding_model"):
        berg.encode("not a model", _stim(1))


def test_voxel_index_selection(berg):
    vi = np.zeros(7831, dtype=np.int8)
    vi[[3, 10, 7000]] = 1
    m = berg.get_encoding_model(VIS, subject=2, selection={"voxel_index": vi}, device="cpu")
    out = berg.encode(m, _stim(1))["NaturalScenesDataset"]["sub-02"]
    assert out.shape == (1, 3)
    assert np.array_equal(m.vertex_mapping, atlas.variant_vertex_mapping("visual")[[3, 10, 7000]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        berg.encode(m, _stim(1))
