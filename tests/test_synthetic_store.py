"""``make_store``: the published layout, well-scaled random weights, determinism, atomic writes, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from screening import atlas
from screening.exceptions import InvalidParameterError
from screening.models.registry import SUBJECTS, get_weights, weights_for_variant
from screening.models.core import CNN8Core
from screening.models.encoder import Normalize
from screening.store import open_store
from screening.store.synthetic import (MANIFEST, _gen, _init_and_calibrate_core, calibration_images, is_complete,
                                       make_store)

VIS = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"
NC_KEYS = {f"{p}_{k}_noiseceiling" for p in ("test", "train", "artificial") for k in ("n-avg", "n-1")}


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SCREENING_CACHE_DIR", str(tmp_path / "cache"))


def _manifest(root) -> dict:
    return json.loads((Path(root) / get_weights(VIS).store_dir / MANIFEST).read_text())


def _eight_images() -> torch.Tensor:
    """Eight distinct uint8-valued images: noise textures, grating, checkerboard, flat grey, a disc."""
    imgs = [calibration_images(1, 224, _gen(100 + i, "test"))[0] for i in range(4)]
    yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    imgs.append((127.5 + 127.5 * torch.sin(xx / 3.0)).expand(3, -1, -1))
    imgs.append(((((xx // 28) + (yy // 28)) % 2) * 255).expand(3, -1, -1))
    imgs.append(torch.full((3, 224, 224), 128.0))
    disc = (((xx - 112) ** 2 + (yy - 80) ** 2) < 40 ** 2).float()
    imgs.append(torch.stack([disc * 255, disc * 40, 30 + disc * 0]))
    return torch.stack(imgs).round()


def test_layout_and_manifest(visual_store):
    w = get_weights(VIS)
    d = Path(visual_store) / w.store_dir
    assert (d / "encoding_models_weights" / w.filename).is_file()
    assert sorted(p.name for p in (d / "metadata" / "NSD").iterdir()) == [f"{s}.npy" for s in SUBJECTS]
    assert (d / "encoding_models_accuracy").is_dir()
    m = _manifest(visual_store)
    assert m["synthetic"] is True and m["width"] == 16 and m["variant"] == "visual" and "NOT" in m["note"]
    assert not list(d.parent.glob(".*tmp-*"))
    assert is_complete(visual_store, "visual", seed=0, width=16)
    assert not is_complete(visual_store, "visual", seed=0, width=32)
    assert not is_complete(visual_store, "all")


def test_metadata_schema_and_noise_ceilings(visual_store):
    store = open_store(visual_store)
    mapping_all = atlas.vertex_mapping_all()
    outside = np.ones(atlas.N_GRAYORDINATES, dtype=bool)
    outside[mapping_all] = False
    visual_rows = np.isin(atlas.glasser_group_id(), atlas.VISUAL_GROUPS)
    prev = None
    for i, s in enumerate(SUBJECTS, 1):
        m = store.metadata(VIS, i)
        assert {"encoding_models", "roi", "subject_info", "stimuli", "noise_ceiling"} <= set(m)
        assert m["synthetic"] is True and "NOT the published weights" in m["note"]
        np.testing.assert_array_equal(m["encoding_models"]["vertex_mapping_all"],
                                      atlas.variant_vertex_mapping("visual"))
        assert set(np.unique(m["encoding_models"]["glasser_group_id"])) == set(atlas.VISUAL_GROUPS)
        assert list(m["roi"]) == list(atlas.area_names())
        np.testing.assert_array_equal(m["roi"]["R_FFC"], atlas.roi_grayordinates()["R_FFC"])
        assert m["subject_info"]["participant_id"] == s
        st = m["stimuli"]
        assert len(st["filenames"]) == len(st["reps"]) == len(st["train_idx"]) + len(st["test_idx"])
        assert all("synthetic" in f for f in st["filenames"])
        assert set(m["noise_ceiling"]) == NC_KEYS
        for k, nc in m["noise_ceiling"].items():
            assert nc.shape == (atlas.N_GRAYORDINATES,)
            assert np.isnan(nc[outside]).all() and not np.isnan(nc[mapping_all]).any(), k
            assert nc[mapping_all].min() >= 0 and nc[mapping_all].max() <= 80
        nc = m["noise_ceiling"]["test_n-avg_noiseceiling"][mapping_all]
        # reliability filtering has something to do: visual cortex is more reliable, and thresholds split it
        assert nc[visual_rows].mean() > nc[~visual_rows].mean() + 5
        assert 0.1 < (nc[visual_rows] > 30).mean() < 0.95
        assert (m["noise_ceiling"]["test_n-1_noiseceiling"][mapping_all] <= nc + 1e-4).all()
        if prev is not None:
            assert not np.array_equal(prev, nc)
        prev = nc


def test_activations_well_scaled_and_image_driven(visual_store):
    model, info = open_store(visual_store).load_model(VIS)
    x = Normalize()(_eight_images())
    with torch.no_grad():
        feats = model.core(x)
        assert feats.shape == (8, 16, 26, 26) and torch.isfinite(feats).all()
        assert 0.05 < feats.mean().item() < 3 and 0.05 < feats.std().item() < 3
        meta = open_store(visual_store).metadata(VIS, 1)
        col = {g: i for i, g in enumerate(meta["encoding_models"]["vertex_mapping_all"])}
        for s in SUBJECTS[:3]:
            y = model.head(s)(feats).numpy()
            assert np.isfinite(y).all()
            across_images = y.std(axis=0).mean()
            across_vertices = y.mean(axis=0).std()
            assert across_images > 0.3 * across_vertices, (across_images, across_vertices)
            assert 0.05 < np.abs(y).mean() < 20
            # ROI means (what the screen ranks) also differ between images
            for roi in ("L_V1", "R_FFC"):
                cols = [col[g] for g in meta["roi"][roi] if g in col]
                roi_mean = y[:, cols].mean(axis=1)
                assert roi_mean.std() > 0.02 * np.abs(y).mean(), roi
    # every BN layer: calibrated statistics, gamma ≈ 1
    for b in range(1, 9):
        bn = getattr(model.core, f"block{b}")[1]
        assert (bn.running_var > 0).all() and (bn.weight - 1).abs().max() <= 0.1 + 1e-6
        assert int(bn.num_batches_tracked) == 1


def test_deterministic_in_seed(visual_store, tmp_path):
    again = make_store(tmp_path / "again", variant="visual", seed=0, width=16)
    w = get_weights(VIS)
    assert _manifest(again)["checkpoint_sha256"] == _manifest(visual_store)["checkpoint_sha256"]
    assert (again / w.metadata_relpath("sub-03")).read_bytes() == \
        (Path(visual_store) / w.metadata_relpath("sub-03")).read_bytes()
    assert open_store(again).fingerprint(VIS) == open_store(visual_store).fingerprint(VIS)
    cores = []
    for seed in (0, 1):
        c = CNN8Core(4)
        _init_and_calibrate_core(c, seed, 4)
        cores.append(c.block2[0].weight.clone())
    assert not torch.equal(*cores)


def test_reuse_keeps_a_complete_store(visual_store):
    ck = Path(visual_store) / get_weights(VIS).checkpoint_relpath
    before = ck.stat().st_mtime_ns
    assert make_store(visual_store, variant="visual", seed=0, width=16, reuse=True) == Path(visual_store)
    assert ck.stat().st_mtime_ns == before


def test_interrupted_make_store_never_looks_complete(tmp_path):
    root = tmp_path / "killed"
    code = ("from screening.store.synthetic import make_store; "
            f"make_store({str(root)!r}, variant='visual', seed=0, width=16)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1])
    parent = root / weights_for_variant("visual").store_dir
    parent = parent.parent
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not (parent.is_dir() and list(parent.glob(".*.tmp-*"))):
            assert proc.poll() is None, "make_store finished before it could be interrupted"
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert list(parent.glob(".*.tmp-*")), "expected the interrupted temp folder to be left behind"
    assert not (root / weights_for_variant("visual").store_dir).exists()
    assert not is_complete(root, "visual")
    assert open_store(root).model_ids() == []
    # the next run cleans up and completes
    make_store(root, variant="visual", seed=0, width=2, reuse=True)
    assert is_complete(root, "visual", seed=0, width=2)
    assert not list(parent.glob(".*.tmp-*"))
    # other settings replace the model folder (atomically: rename away, rename in)
    sha2 = _manifest(root)["checkpoint_sha256"]
    make_store(root, variant="visual", seed=0, width=3, reuse=True)
    assert _manifest(root)["width"] == 3 and _manifest(root)["checkpoint_sha256"] != sha2
    assert open_store(root).load_model(VIS)[1].width == 3
    assert not [p for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kwargs,match", [({"width": 0}, "width"), ({"width": 2.5}, "width"),
                                          ({"variant": "V1"}, "variant"), ({"seed": "x"}, "seed")])
def test_invalid_parameters(tmp_path, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        make_store(tmp_path, **{"variant": "visual", **kwargs})


def test_cli(visual_store, capsys):
    from screening.cli import main

    assert main(["make-store", str(visual_store), "--variant", "visual", "--width", "16", "--reuse"]) == 0
    out, err = capsys.readouterr()
    assert "SYNTHETIC" in err and _manifest(visual_store)["checkpoint_sha256"] in out


@pytest.mark.slow
def test_full_size_all_variant(tmp_path):
    """The published size: 72 keys, 57,051 vertices, width 384, loads through the store."""
    from screening.models.registry import expected_shapes

    t0 = time.perf_counter()
    root = make_store(tmp_path / "all", variant="all", seed=0, width=384)
    store = open_store(root)
    w = weights_for_variant("all")
    assert store.model_ids() == [w.model_id]
    size = (root / w.checkpoint_relpath).stat().st_size
    assert 1.9e9 < size < 2.1e9
    model, info = store.load_model(w.model_id)
    assert (info.width, info.n_vertices) == (384, 57_051)
    sd = model.state_dict()
    assert len(sd) == 72 and {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(384, 57_051)
    fp = store.fingerprint(w.model_id)
    assert fp["synthetic"] is True and fp["width"] == 384 and fp["variant"] == "all"
    with torch.no_grad():
        feats = model.core(Normalize()(_eight_images()[:2]))
        assert torch.isfinite(feats).all() and 0.05 < feats.std().item() < 3
        y = model.head("sub-05")(feats)
    assert torch.isfinite(y).all() and y.shape == (2, 57_051)
    print(f"full-size store written and checked in {time.perf_counter() - t0:.0f} s")
