"""Every public method of BERG's ``BERG`` class (gifale95/BERG, berg/core/berg.py) answers on ours, with BERG's shapes."""

import inspect
import pickle

import numpy as np
import pytest

from screening import BERG, atlas, rois
from screening.exceptions import InvalidParameterError, ModelNotFoundError
from screening.models.registry import PUBLISHED

VIS = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"
ALL = "fmri-mosaic-CNN8_multihead_subNSD_verticesAll"
#: The public methods of the reference class, and the keys its describe() returns.
BERG_METHODS = ("get_model_catalog", "list_models", "get_encoding_model", "encode", "get_model_metadata",
                "describe", "get_model_variants")
DESCRIBE_KEYS = {"model_id", "model_info", "description", "input", "output", "parameters",
                 "parameters_by_function", "performance", "example_usage"}


@pytest.fixture(scope="module")
def berg(visual_store):
    return BERG(str(visual_store))


def test_every_berg_method_exists_and_takes_berg_arguments():
    for name in BERG_METHODS:
        assert callable(getattr(BERG, name, None)), name
    # keyword arguments a BERG script passes
    assert "print_format" in inspect.signature(BERG.get_model_catalog).parameters
    assert {"expand_brainscore_vision", "expand_brainscore_language"} <= set(inspect.signature(BERG.list_models).parameters)
    assert {"model_id", "subject", "selection", "device"} <= set(inspect.signature(BERG.get_encoding_model).parameters)
    assert {"model", "stimulus", "return_metadata", "show_progress"} <= set(inspect.signature(BERG.encode).parameters)


def test_a_berg_script_runs_end_to_end(berg, capsys):
    """What a BERG user's script calls, in order, on the small synthetic store."""
    assert berg.list_models() == [ALL, VIS]

    catalog = berg.get_model_catalog()
    assert catalog == {"fMRI": ["MOSAIC (NSD)"]}
    assert all(isinstance(k, str) and isinstance(v, list) for k, v in catalog.items())
    assert berg.get_model_catalog(print_format=True) == catalog
    tree = capsys.readouterr().out
    assert "• FMRI" in tree and "└─ MOSAIC (NSD)" in tree
    assert tree.index(ALL) < tree.index(VIS), "model ids are listed under their dataset, sorted"

    info = berg.describe(VIS)
    printed = capsys.readouterr().out
    assert set(info) == DESCRIBE_KEYS
    assert info["model_id"] == VIS and f"Model: {VIS}" in printed
    assert set(info["model_info"]) == {"modality", "training_dataset", "model_architecture", "creator"}
    assert set(info["parameters_by_function"]) == {"get_encoding_model", "encode"}
    flat = {n: p for params in info["parameters_by_function"].values() for n, p in params.items()}
    assert flat == info["parameters"]
    roi_valid = info["parameters"]["selection"]["properties"]["roi"]["valid_values"]
    assert roi_valid == [n for n in rois.default_roi_names("visual") if not n.startswith("group_")]
    assert len(roi_valid) == 52  # the visual variant's areas (groups 1-5, both hemispheres)
    assert info["parameters"]["selection"]["properties"]["glasser_group"]["valid_values"] == [1, 2, 3, 4, 5]
    assert "7,831" in info["output"]["dimensions"][1]["description"]
    assert VIS in info["example_usage"] and "from screening import BERG" in info["example_usage"]
    assert berg.describe(ALL)["parameters"]["selection"]["properties"]["glasser_group"]["valid_values"] == \
        list(range(1, 23))
    capsys.readouterr()

    assert berg.get_model_variants(VIS) == [] and berg.get_model_variants(ALL) == []

    meta = berg.get_model_metadata(VIS, subject=2)
    assert meta["encoding_models"]["vertex_mapping_all"].shape == (atlas.N_VERTICES_VISUAL,)
    assert meta["subject_info"]["participant_id"] == "sub-02"
    # as BERG: one subject (in any spelling, in a list too) is the dict itself; several are keyed
    for spelling in ([2], "sub-02", "02", "subj02"):
        assert berg.get_model_metadata(VIS, subject=spelling)["subject_info"]["participant_id"] == "sub-02"
    assert list(berg.get_model_metadata(VIS, subject="1,3")) == ["sub-01", "sub-03"]

    model = berg.get_encoding_model(VIS, subject="sub-02", selection={"roi": ["FFC"]}, device="cpu")
    ffc = np.union1d(atlas.roi_grayordinates()["L_FFC"], atlas.roi_grayordinates()["R_FFC"])
    assert np.array_equal(model.vertex_mapping, ffc)
    stim = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)
    res = berg.encode(model, stim)
    assert list(res) == ["NaturalScenesDataset"] and list(res["NaturalScenesDataset"]) == ["sub-02"]
    out = res["NaturalScenesDataset"]["sub-02"]
    assert out.dtype == np.float32 and out.shape == (2, ffc.size) and np.isfinite(out).all()
    res2, meta2 = berg.encode(model, stim, return_metadata=True)
    np.testing.assert_array_equal(res2["NaturalScenesDataset"]["sub-02"], out)
    np.testing.assert_array_equal(meta2["encoding_models"]["vertex_mapping_all"],
                                  meta["encoding_models"]["vertex_mapping_all"])


@pytest.mark.parametrize("call", [
    lambda b, m: b.describe(m),
    lambda b, m: b.get_model_variants(m),
    lambda b, m: b.get_model_metadata(m, subject=1),
    lambda b, m: b.get_encoding_model(m, subject=1),
])
@pytest.mark.parametrize("bad", ["fmri-mosaic-CNN9", "fmri-mosaic-cnn8_multihead_subnsd_verticesall", None])
def test_unknown_model_id(berg, call, bad):
    with pytest.raises(InvalidParameterError) as e:
        call(berg, bad)
    assert isinstance(e.value, ModelNotFoundError), "what BERG raises, so its except clauses keep working"
    msg = str(e.value)
    assert repr(bad) in msg and all(m in msg for m in PUBLISHED)
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is type(e.value) and str(again) == msg


def test_catalog_methods_do_not_need_the_model_in_the_store(berg):
    """As in BERG, the catalog is the registry: the visual-only store still lists and describes verticesAll."""
    assert ALL not in berg.store.model_ids()
    assert ALL in berg.list_models() and berg.describe(ALL)["model_id"] == ALL
