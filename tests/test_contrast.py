"""``screening contrast``: Welch statistics equal scipy's, a planted selectivity is found (AP ~ 1, a balanced control
at chance), the CIFTI outputs round-trip and feed ``--parcellation``, refusals exit 2, AP equals its definition."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats as sps

from screening import atlas
from screening.contrast import contrast, contrast_stats, parse_contrast, pool
from screening.exceptions import InvalidParameterError
from screening.localizer import average_precision, dice, keep_clusters, mesh_adjacency
from screening.vertex_stats import VertexStats

SUBJECTS = ["sub-01", "sub-02"]
V_VISUAL = atlas.N_VERTICES_VISUAL


def _one_hot(groups, n_labels):
    m = np.zeros((len(groups), n_labels), dtype=np.int64)
    m[np.arange(len(groups)), groups] = 1
    return m


# --------------------------------------------------------------------------- statistics against scipy

def test_welch_d_p_q_equal_scipy_on_the_raw_values():
    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1, 2, 3], [9, 6, 7, 1])                  # d has a single image
    values = rng.normal(size=(groups.size, 2, 40)) * rng.uniform(0.5, 3, (1, 2, 40))
    values[groups == 0, :, :10] += 1.5
    labels = ["a", "b", "c", "d"]
    vs = VertexStats.of_values(values, _one_hot(groups, 4), labels, SUBJECTS)
    got = contrast_stats(vs, parse_contrast("a>b,c", labels))
    xa, xb = values[groups == 0], values[np.isin(groups, [1, 2])]
    ref = sps.ttest_ind(xa, xb, equal_var=False, axis=0)
    assert got["n_a"] == 9 and got["n_b"] == 13
    np.testing.assert_allclose(got["t"], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(got["df"], ref.df, rtol=1e-10)
    np.testing.assert_allclose(got["p"], ref.pvalue, rtol=1e-8, atol=1e-300)
    np.testing.assert_allclose(got["q"], sps.false_discovery_control(ref.pvalue, axis=-1), rtol=1e-10)
    sd = np.sqrt(((9 - 1) * xa.var(0, ddof=1) + (13 - 1) * xb.var(0, ddof=1)) / (9 + 13 - 2))
    np.testing.assert_allclose(got["d"], (xa.mean(0) - xb.mean(0)) / sd, rtol=1e-10)
    np.testing.assert_allclose(got["mean_b"], xb.mean(0), rtol=1e-12)
    with pytest.raises(InvalidParameterError, match=r"side B \(d\) has 1 image; Welch's t needs at least 2"):
        contrast_stats(vs, parse_contrast("a>d", labels))


def test_pooling_disjoint_labels_equals_the_statistics_of_their_union():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 3, 30)
    values = rng.normal(3.0, 2.0, size=(30, 2, 25))
    parts = VertexStats.of_values(values, _one_hot(groups, 3), ["x", "y", "z"], SUBJECTS)
    union = VertexStats.of_values(values, (groups > 0)[:, None].astype(int), ["yz"], SUBJECTS)
    n, total, m2 = pool((parts.n[i], parts.sum[i], parts.m2[i]) for i in (1, 2))
    assert n == union.n[0]
    np.testing.assert_allclose(total, union.sum[0], rtol=1e-12)
    np.testing.assert_allclose(m2, union.m2[0], rtol=1e-10)


def test_bh_q_equals_the_rank_module_and_scipy_with_nans():
    from screening.contrast import bh_q
    from screening.rank._enrichment import bh_q as rank_bh_q

    p = np.random.default_rng(3).uniform(size=(2, 200)) ** 3
    p[1, [5, 17]] = np.nan
    q = bh_q(p)
    np.testing.assert_allclose(q[0], rank_bh_q(p[0]), rtol=1e-12)
    ok = np.isfinite(p[1])
    np.testing.assert_allclose(q[1][ok], sps.false_discovery_control(p[1][ok]), rtol=1e-12)
    assert np.isnan(q[1][~ok]).all()


# --------------------------------------------------------------------------- AP and clusters

def _ap_brute_force(scores, truth):
    """Mean over the positives of the precision at that positive's score (every vertex scoring >= it is in)."""
    scores, truth = np.asarray(scores, float), np.asarray(truth, bool)
    precisions = [(truth & (scores >= s)).sum() / (scores >= s).sum() for s in scores[truth]]
    return float(np.mean(precisions))


def test_average_precision_equals_brute_force_with_ties():
    assert average_precision([3, 3, 2, 1], [1, 0, 1, 0]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    rng = np.random.default_rng(4)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        scores = rng.integers(0, 6, n).astype(float)           # many ties
        truth = rng.uniform(size=n) < 0.3
        truth[0] = True
        assert average_precision(scores, truth) == pytest.approx(_ap_brute_force(scores, truth), rel=1e-12)
    assert average_precision([1, 2, 3], [0, 0, 1]) == 1.0 and np.isnan(average_precision([1, 2], [0, 0]))
    assert dice([1, 2, 3], [2, 3, 4]) == pytest.approx(4 / 6)


def test_clusters_keep_connected_patches_and_drop_isolated_vertices():
    adj = mesh_adjacency()
    patch, frontier = {1000}, [1000]
    while len(patch) < 60:                                      # breadth-first: one connected patch
        v = frontier.pop(0)
        for w in adj.indices[adj.indptr[v]:adj.indptr[v + 1]]:
            if len(patch) < 60 and w not in patch:
                patch.add(int(w))
                frontier.append(int(w))
    lonely = [40000, 45000, 50000]                              # right cortex, far from the patch and each other
    assert all(adj[v][:, lonely].nnz == 0 for v in lonely)
    kept, n = keep_clusters(sorted(patch) + lonely, 20)
    assert n == 1 and np.array_equal(kept, sorted(patch))
    assert keep_clusters(sorted(patch), 61)[1] == 0


# --------------------------------------------------------------------------- a planted selectivity, end to end

PLANTED_AREA = "L_FFC"


@pytest.fixture(scope="module")
def planted(tmp_path_factory, visual_store):
    """Real responses of the visual store to 24 real JPEGs, with a known offset added to the vertices of L_FFC for
    the 8 'faces' images; a balanced control split ('ctl_a' / 'ctl_b': half of each category) carries no signal."""
    from screening.api import BERG
    from screening.preprocess import decode_image
    from screening.rois import resolve_roi
    from tests.image_corpus import encode, photo_like

    images = np.stack([np.asarray(decode_image(encode(photo_like(224, 224, seed=i), "JPEG"))).transpose(2, 0, 1)
                       for i in range(24)])
    berg = BERG(str(visual_store))
    model = berg.get_encoding_model(berg.store.model_ids()[0], subject=[1, 2], device="cpu")
    out = berg.encode(model, images)["NaturalScenesDataset"]
    values = np.stack([out[s] for s in SUBJECTS], axis=1).astype(np.float64)     # (N, S, V)
    cols = resolve_roi(PLANTED_AREA, "visual")
    category = np.repeat([0, 1, 2], 8)                                          # faces, objects, places
    values[np.ix_(category == 0, [0, 1], cols)] += 3 * values.std(axis=0).mean()
    control = np.tile([0, 1], 12)                                               # 4 of each category per half
    memberships = np.c_[_one_hot(category, 3), control == 0, control == 1]
    vs = VertexStats.of_values(values, memberships, ["faces", "objects", "places", "ctl_a", "ctl_b"], SUBJECTS,
                               variant="visual", model_id=model.model_id)
    run = tmp_path_factory.mktemp("planted-run")
    vs.save(str(run / "vertex_stats"))
    truth = np.zeros(atlas.N_GRAYORDINATES, np.int64)
    truth[atlas.variant_vertex_mapping("visual")[cols]] = 1
    from tests.test_parcellation import write_dlabel

    for s in ("01", "02"):
        write_dlabel(run / f"sub-{s}_floc-faces.dlabel.nii", truth, {1: "FFA"})
    return {"run": run, "values": values, "cols": cols, "store": visual_store, "model_id": model.model_id}


@pytest.fixture(scope="module")
def cli_run(planted):
    from screening.cli import main

    share = planted["cols"].size / V_VISUAL
    argv = ["contrast", str(planted["run"]), "--contrast", "faces>objects,places", "--contrast", "ctl_a>ctl_b",
            "--roi-from", "faces", "--threshold", f"top={share}", "--compare",
            str(planted["run"] / "sub-{subject}_floc-faces.dlabel.nii")]
    assert main(argv) == 0
    return planted["run"] / "contrasts"


def test_the_planted_vertices_are_found_and_the_control_is_at_chance(planted, cli_run):
    import pandas as pd

    cmp = pd.read_csv(cli_run / "compare.csv")
    faces = cmp[cmp.contrast == "faces_vs_objects_places"]
    ctl = cmp[cmp.contrast == "ctl_a_vs_ctl_b"]
    chance = planted["cols"].size / V_VISUAL
    assert np.allclose(cmp.chance, chance)
    assert (faces.ap > 0.98).all(), faces
    assert (ctl.ap < chance + 0.1).all(), ctl
    assert (faces.dice > 0.95).all() and ctl.dice.isna().all()


def test_a_clustered_q_roi_within_named_areas_is_the_planted_area(planted):
    res = contrast(str(planted["run"]), "faces>objects,places", roi_from="faces", threshold="q=0.05",
                   within="FFC,VVC", cluster=True, min_cluster=20, write=False)
    truth = atlas.variant_vertex_mapping("visual")[planted["cols"]]
    for s in SUBJECTS:
        assert dice(res.roi_grayordinates[s], truth) > 0.95
    assert (res.rois.clusters >= 1).all() and res.rois.attrs["threshold"] == "q < 0.05 and A > B"


def test_the_dscalar_round_trips_to_the_table_with_the_empty_grayordinates_nan(cli_run):
    import nibabel as nib
    import pandas as pd

    img = nib.load(str(cli_run / "faces_vs_objects_places_sub-02.dscalar.nii"))
    assert list(img.header.get_axis(0).name) == ["mean_a", "mean_b", "diff", "t", "df", "d", "p", "q"]
    data = np.asarray(img.get_fdata())
    assert data.shape == (8, atlas.N_GRAYORDINATES)
    table = pd.read_parquet(cli_run / "contrasts.parquet")
    rows = table[(table.contrast == "faces_vs_objects_places") & (table.subject == "sub-02")]
    mapping = atlas.variant_vertex_mapping("visual")
    assert np.array_equal(rows.grayordinate.to_numpy(), mapping)
    np.testing.assert_allclose(data[3, mapping], rows.t.to_numpy(), rtol=1e-6)      # float32 in the file
    np.testing.assert_allclose(data[7, mapping], rows.q.to_numpy(), rtol=1e-6)
    empty = np.setdiff1d(np.arange(atlas.N_GRAYORDINATES), mapping)
    assert np.isnan(data[:, empty]).all()
    assert np.isin(atlas.excluded_grayordinates(), empty).all()
    for name in ("faces_vs_objects_places_mean_t.png", "faces_vs_objects_places_sub-01_t.png"):
        assert (cli_run / name).stat().st_size > 10_000


def test_the_derived_dlabel_is_the_thresholded_vertices_and_a_parcellation(planted, cli_run):
    import pandas as pd

    from screening.parcellation import load_parcellation

    table = pd.read_parquet(cli_run / "contrasts.parquet")
    parc = load_parcellation(str(cli_run / "sub-{subject}_faces.dlabel.nii"), SUBJECTS)
    assert parc.columns() == ["faces_faces_vs_objects_places"]
    k = planted["cols"].size
    for s in SUBJECTS:
        t = table[(table.contrast == "faces_vs_objects_places") & (table.subject == s)]
        top = np.sort(t.sort_values(["t", "vertex"], ascending=[False, True]).grayordinate.to_numpy()[:k])
        assert np.array_equal(parc.labels["faces_faces_vs_objects_places"][s], top)
    rois = pd.read_csv(cli_run / "rois.csv")
    assert rois.vertices.tolist() == [k, k]


def test_the_api_parcellation_column_is_the_mean_of_the_roi_vertices(planted, cli_run):
    from screening.api import BERG
    from screening.parcellation import load_parcellation

    berg = BERG(str(planted["store"]))
    pattern = str(cli_run / "sub-{subject}_faces.dlabel.nii")
    x = np.random.default_rng(5).integers(0, 255, (3, 3, 224, 224), dtype=np.uint8)
    parc = berg.get_encoding_model(planted["model_id"], subject=[1, 2], selection={"parcellation": pattern},
                                   device="cpu")
    means = berg.encode(parc, x, reduce="roi_mean")["NaturalScenesDataset"]
    full = berg.encode(berg.get_encoding_model(planted["model_id"], subject=[1, 2], device="cpu"), x)
    mapping = atlas.variant_vertex_mapping("visual")
    p = parc.roi_names.index("faces_faces_vs_objects_places")
    for s in SUBJECTS:
        g = load_parcellation(pattern, [s]).labels["faces_faces_vs_objects_places"][s]
        cols = np.searchsorted(mapping, g)
        np.testing.assert_allclose(means[s][:, p], full["NaturalScenesDataset"][s][:, cols].mean(axis=1),
                                   rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- refusals and notes

@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    rng = np.random.default_rng(6)
    groups = np.repeat([0, 1, 2], [5, 5, 4])
    memberships = np.c_[_one_hot(groups, 3), np.zeros(groups.size, int)]            # 'empty' has no image
    memberships[:2, 1] = 1                                                           # 2 faces are also bodies
    vs = VertexStats.of_values(rng.normal(size=(groups.size, 2, V_VISUAL)), memberships,
                               ["faces", "bodies", "places", "empty"], SUBJECTS, variant="visual")
    run = tmp_path_factory.mktemp("small-run")
    vs.save(str(run / "vertex_stats"))
    return run


@pytest.mark.parametrize("extra, message", [
    (["--contrast", "faces>bodys"], "label 'bodys' has no vertex statistics; labels: faces, bodies, places, empty"),
    (["--contrast", "faces>empty"], r"side B \(empty\) has no images"),
    (["--contrast", "faces>>bodies"], "is not valid; write A>B1,B2"),
    (["--contrast", "faces>rest", "--roi-from", "faces", "--threshold", "t5"], "--threshold 't5' is not valid"),
    (["--contrast", "faces>rest", "--roi-from", "faces", "--threshold", "top=2"], r"top must be in \(0, 1\]"),
    (["--contrast", "faces>rest", "--roi-from", "food", "--threshold", "t=1"], "'food' names no contrast"),
    (["--contrast", "faces>rest", "--roi-from", "faces", "--threshold", "t=1", "--within", "FFA"],
     "Unknown ROI 'FFA'"),
])
def test_a_users_mistake_exits_2_with_a_short_message(small_run, capsys, extra, message):
    from screening.cli import main

    assert main(["contrast", str(small_run), "--no-flatmaps"] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("screening contrast: error: ") and len(err.strip().splitlines()) <= 2
    assert re.search(message, err), err


def test_an_empty_roi_is_named_not_written_and_overlap_is_noted(small_run, tmp_path, capsys):
    from screening.cli import main

    out = tmp_path / "out"
    assert main(["contrast", str(small_run / "vertex_stats"), "--contrast", "faces>bodies,places", "--no-flatmaps",
                 "--out", str(out), "--roi-from", "faces", "--threshold", "t=1000"]) == 0
    err = capsys.readouterr().err
    assert "sub-01: no vertex passes t > 1000" in err and "sub-02: no vertex passes" in err
    assert "at least 2 image(s) carry two of its labels" in err
    assert not list(out.glob("*.dlabel.nii")) and (out / "rois.csv").is_file()
    res = contrast(str(small_run), ["faces>bodies,places"], roi_from="faces", threshold="t=1000", write=False)
    assert res.rois.vertices.tolist() == [0, 0] and res.maps["faces_vs_bodies_places"]["mean"].shape == (91282,)


def test_rest_is_every_other_label_and_names_are_file_safe():
    spec = parse_contrast(" food , drink > rest ", ["food", "drink", "faces", "places"])
    assert spec.a == ("food", "drink") and spec.b == ("faces", "places") and spec.name == "food_drink_vs_rest"
    with pytest.raises(InvalidParameterError, match="'rest' stands alone"):
        parse_contrast("food>rest,faces", ["food", "faces"])
    with pytest.raises(InvalidParameterError, match="food on both sides"):
        parse_contrast("food>faces,food", ["food", "faces"])


# --------------------------------------------------------------------------- a selectivity planted in the model itself

RED_GAIN = 4.0        # block1's red channel: RED_GAIN * ((R - (G + B) / 2) / 255 - RED_THRESHOLD), then ReLU
RED_THRESHOLD = 0.1
PLANT_GAIN = 2.0      # the planted vertices' readout weight on that channel (0 for every other vertex)


def plant_red_channel(store_root, planted_cols, *, width: int):
    """Rewrite a synthetic store's checkpoint (published format, same 72 keys) so that core channel 0 carries the red
    excess ``ReLU(R - (G + B) / 2 - threshold)`` of every pixel through all eight blocks and four pools, while every
    other channel is colour-blind (its block1 kernel sees R + G + B only, and no channel reads channel 0); the
    vertices ``planted_cols`` of every subject's readout load on channel 0, no other vertex does. BN statistics of
    the other channels are calibrated again for the new kernels."""
    import os

    import torch

    from screening.models.core import STAGE_ORDER
    from screening.models.encoder import CNN8Multihead, Normalize
    from screening.models.registry import (IMAGENET_MEAN, IMAGENET_STD, load_checkpoint, save_checkpoint,
                                           weights_for_variant)
    from screening.store.synthetic import calibration_images

    w = weights_for_variant("visual")
    ckpt = store_root / w.store_dir / "encoding_models_weights" / w.filename
    sd, _ = load_checkpoint(str(ckpt))
    model = CNN8Multihead(w.n_vertices, width=width)
    model.load_state_dict(sd)
    del sd
    model.eval().requires_grad_(False)
    core, std, mean = model.core, torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
    alpha = torch.tensor([1.0, -0.5, -0.5])
    w1 = core.block1[0].weight                                   # (C, 3, 5, 5) on normalised input
    w1[1:] = w1[1:].mean(dim=1, keepdim=True) * (std / std.mean()).view(1, 3, 1, 1)   # R + G + B in pixel units
    w1[0] = 0
    w1[0, :, 2, 2] = RED_GAIN * alpha * std                       # RED_GAIN * ((R - (G+B)/2) / 255 - alpha . mean)
    for b in range(2, 9):
        conv = getattr(core, f"block{b}")[0].weight
        conv[0], conv[1:, 0] = 0, 0                               # channel 0 reads only itself; nobody reads it
        k = conv.shape[-1] // 2
        conv[0, 0, k, k] = 1.0
    x = Normalize()(calibration_images(4, 224, torch.Generator().manual_seed(11)))
    for name in STAGE_ORDER:                                      # BN of channels 1.. calibrated again
        mod = getattr(core, name)
        if name.startswith("block"):
            conv, bn, relu = mod
            y = conv(x)
            bn.running_mean[1:] = y[:, 1:].mean(dim=(0, 2, 3))
            bn.running_var[1:] = y[:, 1:].var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-4)
            bn.running_mean[0], bn.running_var[0], bn.weight[0], bn.bias[0] = 0.0, 1.0, 1.0, 0.0
            if name == "block1":                                  # the threshold, and the normalisation's offset
                bn.running_mean[0] = RED_GAIN * (RED_THRESHOLD - float((alpha * mean).sum()))
            x = relu(bn(y))
        else:
            x = mod(x)
    for s in model.subject_readouts.values():
        s._features[:, 0] = 0.0
        s._features[planted_cols, 0] = PLANT_GAIN
    tmp = str(ckpt) + ".tmp"
    save_checkpoint(model.state_dict(), tmp)
    os.replace(tmp, ckpt)


def _tinted_jpeg(seed: int, tint: str) -> bytes:
    """A grey photo-like texture, tinted at constant R + G + B (what the colour-blind channels see is unchanged)."""
    from PIL import Image

    from tests.image_corpus import encode, photo_like

    lum = 60.0 + 100.0 * np.asarray(photo_like(160, 160, seed=seed).convert("L"), np.float64) / 255.0
    shift = {"grey": (0, 0, 0), "red": (60, -30, -30), "green": (-30, 60, -30), "blue": (-30, -30, 60)}[tint]
    rgb = lum[..., None] + np.asarray(shift, np.float64)
    return encode(Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8)), "JPEG", quality=92)


def test_a_selectivity_planted_in_the_model_is_found_by_run_and_contrast(tmp_path, capsys):
    """A width-8 synthetic model whose readout makes a random 5% of the vertices respond to red (channel 0 of the core
    carries the red excess through every layer): ``screening run --vertex-stats`` then ``screening contrast`` rank
    those vertices first for red > not red (AP > 0.9 against them), and a random split of the not-red images ranks
    them at chance."""
    import pandas as pd

    from screening.cli import main
    from screening.store.synthetic import make_store
    from tests.test_parcellation import write_dlabel

    rng = np.random.default_rng(12)
    planted_cols = np.flatnonzero(rng.uniform(size=V_VISUAL) < 0.05)
    store = make_store(tmp_path / "store", variant="visual", seed=3, width=8)
    plant_red_channel(store, planted_cols, width=8)
    imgs, rows = tmp_path / "imgs", []
    imgs.mkdir()
    plain = ["grey"] * 4 + ["green"] * 2 + ["blue"] * 2        # the same textures as the red images
    for i in range(8):
        for tint, label in (("red", "red"), (plain[i], "plain")):
            name = f"{tint}-{i}.jpg"
            (imgs / name).write_bytes(_tinted_jpeg(i, tint))
            rows.append((name, label))
            if label == "plain":
                rows.append((name, "ctl_a" if i % 2 == 0 else "ctl_b"))   # 2 grey, 1 green, 1 blue each
    pd.DataFrame(rows, columns=["file", "label"]).to_csv(tmp_path / "labels.csv", index=False)
    truth = np.zeros(atlas.N_GRAYORDINATES, np.int64)
    truth[atlas.variant_vertex_mapping("visual")[planted_cols]] = 1
    for s in ("01", "02"):
        write_dlabel(tmp_path / f"sub-{s}_planted.dlabel.nii", truth, {1: "red"})

    run = tmp_path / "run"
    assert main(["run", str(imgs), "--store", str(store), "--out", str(run), "--subjects", "sub-01,sub-02",
                 "--rois", "V1",
                 "--precision", "fp32", "--vertex-stats", str(tmp_path / "labels.csv"), "--no-progress"]) == 0
    assert main(["contrast", str(run), "--contrast", "red>plain", "--contrast", "ctl_a>ctl_b", "--no-flatmaps",
                 "--compare", str(tmp_path / "sub-{subject}_planted.dlabel.nii")]) == 0
    capsys.readouterr()
    cmp = pd.read_csv(run / "contrasts" / "compare.csv")
    chance = planted_cols.size / V_VISUAL
    assert np.allclose(cmp.chance, chance) and len(cmp) == 4
    red, ctl = cmp[cmp.contrast == "red_vs_plain"], cmp[cmp.contrast == "ctl_a_vs_ctl_b"]
    assert (red.ap > 0.9).all(), red
    assert (ctl.ap < chance + 0.1).all(), ctl
    table = pd.read_parquet(run / "contrasts" / "contrasts.parquet")
    for s in SUBJECTS:
        t = table[(table.contrast == "red_vs_plain") & (table.subject == s)].sort_values("t", ascending=False)
        top = t.vertex.to_numpy()[:planted_cols.size]
        assert np.isin(top, planted_cols).mean() > 0.9
