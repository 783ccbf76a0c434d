"""Bounded encoder memory: forwards in chunks give the one-pass numbers, the checkpoint's pages are given back as the
heads are collapsed, a node too small for one encoder is refused with the numbers before any task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from screening.exceptions import InvalidParameterError

VIS = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_release_file_pages_drops_mapped_pages_and_keeps_the_data(tmp_path):
    from screening.models.pages import release_file_pages

    n = 64 * 2**20 // 4
    path = tmp_path / "w.f32"
    np.arange(n, dtype=np.float32).tofile(path)
    t = torch.from_file(str(path), shared=False, size=n, dtype=torch.float32)
    assert float(t.sum(dtype=torch.float64)) == pytest.approx(n * (n - 1) / 2)   # every page read: resident
    before = _rss()
    assert release_file_pages([t]) >= 60 * 2**20
    assert before - _rss() >= 48 * 2**20, "the mapped pages stayed resident"
    assert torch.equal(t[-3:], torch.arange(n - 3, n, dtype=torch.float32))     # faulted in again, unchanged
    anon = torch.arange(1000, dtype=torch.float32)
    assert release_file_pages([anon]) == 0 and float(anon[999]) == 999.0        # anonymous memory is never advised


@pytest.fixture(scope="module")
def actor_inputs(visual_store):
    from screening.rois import build_roi_set
    from screening.store import open_store

    store = open_store(str(visual_store))
    rois = build_roi_set("visual", ["V1", "FFC", "group_01"])
    rng = np.random.default_rng(3)
    return store, rois, rng.integers(0, 256, (7, 3, 224, 224), dtype=np.uint8)


@pytest.mark.parametrize("precision, exact", [("fp32", True), ("bf16", False)])
def test_chunked_forwards_equal_one_pass(actor_inputs, precision, exact):
    """The actor's forwards of ``forward_chunk`` images against one forward of the whole batch. fp32: the same
    numbers within 1e-5 relative (oneDNN may pick another kernel for another batch size); bf16: within its own
    tolerance against itself (2e-2 of the spread)."""
    from screening.pipeline.stages import EncoderActor

    store, rois, pixels = actor_inputs
    kw = dict(store=store, model_id=VIS, subjects=["sub-01", "sub-02"], rois=rois, precision=precision)
    whole = EncoderActor(**kw, forward_chunk=None)._encode(pixels)
    chunked = EncoderActor(**kw, forward_chunk=2)._encode(pixels)
    assert whole.shape == chunked.shape == (7, 3, 3)
    if exact:
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6 * np.abs(whole).max())
    else:
        assert np.abs(chunked - whole).max() <= 2e-2 * whole.std()


def test_collapse_with_released_heads_equals_the_kept_heads(visual_store):
    from screening.models.encoder import collapse_heads
    from screening.rois import build_roi_set
    from screening.store import open_store

    store = open_store(str(visual_store))
    rois = build_roi_set("visual", ["V1", "FFC", "group_01"])
    kept, _ = store.load_model(VIS)
    w, b = collapse_heads(kept, ["sub-01", "sub-03"], rois)
    released, _ = store.load_model(VIS)
    w2, b2 = collapse_heads(released, ["sub-01", "sub-03"], rois, release_heads=True)
    assert torch.equal(w, w2) and torch.equal(b, b2)
    assert "sub01" not in "".join(released.subject_readouts.keys())   # those heads are gone from the model
    assert len(released.subject_readouts) == len(kept.subject_readouts) - 2


@pytest.mark.timeout(300)
def test_a_node_too_small_for_one_encoder_is_refused_with_the_numbers(visual_store, tmp_path):
    """A local Ray whose 'memory' resource is below one CPU encoder: refused before any task, naming what one encoder
    needs, what the node has and what to change (not an OOM-kill and restart loop)."""
    import ray

    from screening.pipeline import screen
    from tests.test_pipeline import make_shards

    make_shards(tmp_path / "in", 1, 2)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, _memory=300 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(InvalidParameterError, match=r"one CPU encoder actor needs .* GiB \(its own, forwarding 1 "
                                                        r"image\(s\) at a time\), but the largest node of the Ray "
                                                        r"cluster has 0.3 GiB .*ray start --memory"):
            screen(str(tmp_path / "in"), str(visual_store), str(tmp_path / "out"), model_id=VIS, rois=["V1"],
                   progress=False, precision="fp32")
    finally:
        ray.shutdown()
    assert not list((tmp_path / "out" / "_committed").glob("*")) if (tmp_path / "out").exists() else True
