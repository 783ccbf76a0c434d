"""Reliability-filtered ROIs: per-subject vertex sets from the store's noise ceilings, exact through the collapse."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from screening.exceptions import InvalidParameterError
from tests.image_corpus import encode, photo_like

MODEL_ID = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"
ROIS = ["V1", "FFC", "group_02"]
SUBJECTS = ["sub-01", "sub-02", "sub-03"]
NC = "test_n-avg"


@pytest.fixture(scope="module")
def store(visual_store):
    from screening.store import open_store

    return open_store(str(visual_store))


@pytest.fixture(scope="module")
def filtered(store):
    """(threshold, roi_set, per-subject filtered sets); the threshold is the median noise ceiling over the ROIs."""
    from screening import atlas
    from screening.rois import build_roi_set, reliability_filter

    rois = build_roi_set("visual", ROIS)
    mapping = atlas.variant_vertex_mapping("visual")
    ncs = {s: np.asarray(store.metadata(MODEL_ID, s)["noise_ceiling"][f"{NC}_noiseceiling"]) for s in SUBJECTS}
    cols = np.unique(np.concatenate(list(rois.values())))
    threshold = float(np.quantile(np.concatenate([ncs[s][mapping][cols] for s in SUBJECTS]), 0.5))
    return threshold, rois, reliability_filter(rois, ncs, threshold, "visual")


def _images(n):
    from screening.preprocess import preprocess_bytes

    raw = [encode(photo_like(80, 64, seed=500 + i), "JPEG", quality=90) for i in range(n)]
    return raw, np.stack([preprocess_bytes(b) for b in raw])


def test_filter_keeps_a_real_fraction_and_differs_between_subjects(filtered):
    threshold, rois, sets = filtered
    for name, full in rois.items():
        for s in SUBJECTS:
            kept = sets[name][s]
            assert 0 < kept.size < full.size, (name, s, kept.size, full.size)
            assert np.isin(kept, full).all() and np.all(np.diff(kept) > 0)
    # the subjects' noise ceilings differ, so their kept vertex sets differ
    assert any(not np.array_equal(sets[n]["sub-01"], sets[n]["sub-02"]) for n in rois)


@pytest.mark.timeout(120)
def test_filtered_roi_mean_equals_full_vertex_mean_over_kept_vertices(store, filtered):
    """fp32 RoiEncoder with per-subject sets == mean of CNN8Multihead's full output over the kept vertices."""
    import torch

    from screening.models.encoder import Normalize, RoiEncoder

    _, _, sets = filtered
    _, x = _images(3)
    enc = RoiEncoder.from_model(store.load_model(MODEL_ID)[0], SUBJECTS, sets, precision="fp32")
    got = enc.encode_numpy(x).astype(np.float64)                     # (3, S, R)
    model = store.load_model(MODEL_ID)[0].eval()
    with torch.no_grad():
        xn = Normalize()(torch.from_numpy(x))
        for si, s in enumerate(SUBJECTS):
            verts = model(xn, s).double().numpy()                    # (3, V)
            ref = np.stack([verts[:, sets[n][s]].mean(axis=1) for n in ROIS], axis=1)
            rel = np.max(np.abs(got[:, si] - ref)) / np.max(np.abs(ref))
            assert rel <= 1e-5, (s, rel)
            # and it is not the unfiltered mean (the filter really changed what is averaged)
    full_enc = RoiEncoder.from_model(store.load_model(MODEL_ID)[0], SUBJECTS, filtered[1], precision="fp32")
    assert not np.allclose(full_enc.encode_numpy(x), got, rtol=1e-4, atol=1e-6)


@pytest.mark.timeout(180)
def test_pipeline_with_reliability_threshold(ray_local, visual_store, store, filtered, tmp_path):
    """A couple of images through screen(): same values as the filtered RoiEncoder; manifest records the filter."""
    from screening.models.encoder import RoiEncoder
    from screening.pipeline import screen

    threshold, _, sets = filtered
    raw, x = _images(4)
    ids = [f"r{i}" for i in range(len(raw))]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"image_id": ids, "image": pa.array(raw, pa.binary())}), tmp_path / "in" / "p.parquet")
    with pytest.warns(UserWarning, match="reliability filtering is meaningless"):
        result = screen(str(tmp_path / "in"), str(visual_store), str(tmp_path / "out"), model_id=MODEL_ID,
                        subjects=SUBJECTS, rois=ROIS, precision="fp32", batch_size=4, progress=False,
                        reliability_threshold=threshold, noise_ceiling=NC)
    resp = result.responses()
    enc = RoiEncoder.from_model(store.load_model(MODEL_ID)[0], SUBJECTS, sets, precision="fp32")
    direct = enc.encode_numpy(x).astype(np.float64)
    for k, iid in enumerate(ids):
        got = resp[resp.image_id == iid].set_index("subject")
        for si, s in enumerate(SUBJECTS):
            v = got.loc[s, ROIS].to_numpy(dtype=np.float64)
            assert np.max(np.abs(v - direct[k, si])) <= 1e-5 * np.max(np.abs(direct[k, si])), (s, v, direct[k, si])
        np.testing.assert_allclose(got.loc["mean", ROIS].to_numpy(dtype=np.float64), direct[k].mean(axis=0),
                                   rtol=1e-5, atol=1e-6)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["reliability"]["threshold"] == threshold and m["reliability"]["noise_ceiling"] == NC
    assert m["reliability_note"] == ("noise ceilings of a synthetic store are synthetic: reliability filtering is "
                                     "meaningless here")
    assert m["config"]["reliability_threshold"] == threshold and m["config"]["noise_ceiling"] == NC
    for n in ROIS:
        assert m["rois"][n]["n_vertices"] == {s: int(sets[n][s].size) for s in SUBJECTS}
    # an unfiltered run into the same output is a different configuration
    with pytest.raises(InvalidParameterError, match="different configuration"):
        screen(str(tmp_path / "in"), str(visual_store), str(tmp_path / "out"), model_id=MODEL_ID,
               subjects=SUBJECTS, rois=ROIS, precision="fp32", progress=False)


def test_threshold_that_empties_an_roi_raises_naming_roi_and_subject(visual_store, tmp_path, monkeypatch):
    from screening.pipeline import run as run_mod
    from screening.pipeline import screen

    monkeypatch.setattr(run_mod, "_ensure_ray", lambda: pytest.fail("Ray was touched before validation"))
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"image_id": ["a"], "image": pa.array([b"x"], pa.binary())}), tmp_path / "in" / "p.parquet")
    kw = dict(model_id=MODEL_ID, subjects=SUBJECTS, rois=ROIS, progress=False)
    with pytest.warns(UserWarning), pytest.raises(InvalidParameterError,
                                                  match=r"ROI 'V1' keeps no vertex for sub-01 at noise-ceiling "
                                                        r"threshold 1000"):
        screen(str(tmp_path / "in"), str(visual_store), str(tmp_path / "out"), reliability_threshold=1000.0, **kw)
    with pytest.raises(InvalidParameterError, match=r"noise_ceiling='test' is not valid; valid noise ceilings: "
                                                    r"test_n-avg, test_n-1, train_n-avg, train_n-1, artificial_n-avg"):
        screen(str(tmp_path / "in"), str(visual_store), str(tmp_path / "out"), reliability_threshold=10.0,
               noise_ceiling="test", **kw)
    with pytest.raises(InvalidParameterError, match="reliability_threshold must be a finite number"):
        screen(str(tmp_path / "in"), str(visual_store), str(tmp_path / "out"), reliability_threshold="high", **kw)
    assert not (tmp_path / "out").exists()
