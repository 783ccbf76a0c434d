"""Parcellations of the user's own (fLoc-style FFA/PPA files) as exact ROI columns of runs, the API, rois, rank."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from screening import atlas
from screening.exceptions import InvalidParameterError
from screening.parcellation import load_parcellation

SUBJECTS = ("sub-01", "sub-02")


def _axis(left_first: bool = True):
    import nibabel as nib

    with atlas.data_path("fslr32k_grayordinate_to_vertex.npz").open("rb") as f:
        d = np.load(f)
        grayl, grayr = d["grayl"], d["grayr"]
    left = nib.cifti2.BrainModelAxis.from_surface(grayl, 32492, "CortexLeft")
    right = nib.cifti2.BrainModelAxis.from_surface(grayr, 32492, "CortexRight")
    mask = np.zeros((40, 40, 20), bool)
    mask.reshape(-1)[: atlas.N_GRAYORDINATES - grayl.size - grayr.size] = True
    volume = nib.cifti2.BrainModelAxis.from_mask(mask, "thalamus_left", affine=np.eye(4))
    return (left + right + volume) if left_first else (right + left + volume)


def write_dlabel(path, values, names: dict, *, axis=None):
    """A CIFTI dlabel in the 91k space: ``values`` (91282,) ints, ``names`` {int: name}."""
    import nibabel as nib

    table = {0: ("???", (0.0, 0.0, 0.0, 0.0)), **{k: (v, (1.0, 0.0, 0.0, 1.0)) for k, v in names.items()}}
    labels = nib.cifti2.LabelAxis(["map"], [table])
    img = nib.cifti2.Cifti2Image(np.asarray(values, np.float32)[None], header=(labels, axis or _axis()))
    img.to_filename(str(path))
    return str(path)


def _area(name: str) -> np.ndarray:
    return np.asarray(atlas.roi_grayordinates()[name], dtype=np.int64)


def _values(**labels) -> np.ndarray:
    v = np.zeros(atlas.N_GRAYORDINATES, np.int64)
    for key, g in labels.items():
        v[g] = int(key[1:])
    return v


def test_dlabel_and_npy_tsv_give_the_same_named_columns(tmp_path):
    v = _values(k1=_area("L_V1"), k2=_area("R_V2"))
    dl = write_dlabel(tmp_path / "floc-faces.dlabel.nii", v, {1: "FFA-1", 2: "OFA"})
    np.save(tmp_path / "mine.npy", v)
    (tmp_path / "mine.tsv").write_text("index\tname\n1\tFFA-1\n2\tOFA\n")
    a = load_parcellation(dl, SUBJECTS)
    b = load_parcellation(tmp_path / "mine.npy", SUBJECTS, prefix="floc-faces")
    assert a.columns() == ["floc-faces_FFA-1", "floc-faces_OFA"] == b.columns()
    for c in a.columns():
        for s in SUBJECTS:
            assert np.array_equal(a.labels[c][s], b.labels[c][s])
    assert np.array_equal(a.labels["floc-faces_FFA-1"]["sub-01"], np.sort(_area("L_V1")))


def test_a_subject_pattern_reads_one_file_per_subject(tmp_path):
    write_dlabel(tmp_path / "sub-01_floc-faces.dlabel.nii", _values(k1=_area("L_V1")), {1: "FFA-1"})
    write_dlabel(tmp_path / "sub-02_floc-faces.dlabel.nii", _values(k1=_area("L_V2")), {1: "FFA-1"})
    p = load_parcellation(str(tmp_path / "sub-{subject}_floc-faces.dlabel.nii"), SUBJECTS)
    assert p.prefix == "floc-faces" and p.columns() == ["floc-faces_FFA-1"]
    assert np.array_equal(p.labels["floc-faces_FFA-1"]["sub-02"], np.sort(_area("L_V2")))
    counts = p.vertex_counts("visual")
    assert counts["floc-faces_FFA-1"]["sub-01"] == np.isin(_area("L_V1"), atlas.variant_vertex_mapping("visual")).sum()
    with pytest.raises(InvalidParameterError, match="sub-03_floc-faces.dlabel.nii' does not exist"):
        load_parcellation(str(tmp_path / "sub-{subject}_floc-faces.dlabel.nii"), ("sub-03",))


def test_files_in_another_space_or_order_are_refused_with_what_was_found(tmp_path):
    v = _values(k1=_area("L_V1"))
    swapped = write_dlabel(tmp_path / "swapped.dlabel.nii", v, {1: "x"}, axis=_axis(left_first=False))
    with pytest.raises(InvalidParameterError, match="structure 1 is CIFTI_STRUCTURE_CORTEX_RIGHT; expected "
                                                    "CIFTI_STRUCTURE_CORTEX_LEFT"):
        load_parcellation(swapped, SUBJECTS)
    np.save(tmp_path / "short.npy", np.zeros(32492, np.int64))
    (tmp_path / "short.tsv").write_text("1\tx\n")
    with pytest.raises(InvalidParameterError, match="has 32492 values; expected 91282"):
        load_parcellation(tmp_path / "short.npy", SUBJECTS)
    np.save(tmp_path / "float.npy", np.zeros(atlas.N_GRAYORDINATES))
    with pytest.raises(InvalidParameterError, match="float64 array .* expected \\(91282,\\) integers"):
        load_parcellation(tmp_path / "float.npy", SUBJECTS)
    np.save(tmp_path / "nonames.npy", v)
    with pytest.raises(InvalidParameterError, match="needs its label names beside it"):
        load_parcellation(tmp_path / "nonames.npy", SUBJECTS)
    with pytest.raises(InvalidParameterError, match="is not a .dlabel.nii or a .npy"):
        load_parcellation(tmp_path / "x.nii.gz", SUBJECTS)


def test_a_label_without_model_vertices_is_refused_by_name(tmp_path):
    sub = np.arange(atlas.N_CORTEX, atlas.N_CORTEX + 50)       # subcortex: no model vertex
    p = load_parcellation(write_dlabel(tmp_path / "p.dlabel.nii", _values(k1=_area("L_V1"), k2=sub),
                                       {1: "ok", 2: "thal"}), SUBJECTS)
    with pytest.raises(InvalidParameterError, match="label 'p_thal' has no model vertex for sub-01"):
        p.roi_columns("visual", SUBJECTS)


def test_api_selection_parcellation_is_the_exact_roi_mean(tmp_path, visual_store):
    from screening.api import BERG

    path = write_dlabel(tmp_path / "floc.dlabel.nii", _values(k1=_area("L_V1")), {1: "FFA-1"})
    berg = BERG(str(visual_store))
    model_id = berg.store.model_ids()[0]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (2, 3, 224, 224), dtype=np.uint8)
    parc = berg.get_encoding_model(model_id, subject=[1, 2], selection={"parcellation": path, "roi": ["L_V1"]},
                                   device="cpu")
    assert parc.roi_names == ["L_V1", "floc_FFA-1"]
    means = berg.encode(parc, x, reduce="roi_mean")["NaturalScenesDataset"]
    for s in ("sub-01", "sub-02"):
        assert np.allclose(means[s][:, 1], means[s][:, 0], rtol=1e-6, atol=1e-6)   # the same vertices
    with pytest.raises(InvalidParameterError, match="selection\\['parcellation'\\]"):
        berg.get_encoding_model(model_id, subject=1, selection={"parcellation": 3}, device="cpu")


def test_rois_cli_lists_parcellation_columns_with_vertex_counts(tmp_path, capsys, visual_store):
    from screening.cli import main

    path = write_dlabel(tmp_path / "floc.dlabel.nii", _values(k1=_area("L_V1"), k2=_area("L_V2")),
                        {1: "FFA-1", 2: "OFA"})
    assert main(["rois", "--parcellation", path, "--variant", "visual"]) == 0
    out = capsys.readouterr().out
    n = int(np.isin(_area("L_V1"), atlas.variant_vertex_mapping("visual")).sum())
    assert "floc_FFA-1" in out and "floc_OFA" in out and f"{n:,}" in out


def test_a_run_screens_parcellation_columns_equal_to_the_same_vertices_atlas_column(tmp_path, visual_store):
    from screening.pipeline import screen

    from tests.image_corpus import encode, photo_like

    for s in ("01", "02"):
        write_dlabel(tmp_path / f"sub-{s}_floc.dlabel.nii", _values(k1=_area("L_V1")), {1: "FFA-1"})
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):   # real JPEG bytes
        (images / f"p{i}.jpg").write_bytes(encode(photo_like(160 + 8 * i, 120, seed=i), "JPEG"))
    res = screen(str(images), str(visual_store), str(tmp_path / "out"), subjects=list(SUBJECTS), rois=["L_V1"],
                 parcellation=str(tmp_path / "sub-{subject}_floc.dlabel.nii"), precision="fp32", progress=False)
    df = res.responses()
    assert list(df.columns[2:]) == ["L_V1", "floc_FFA-1"]
    assert np.allclose(df["floc_FFA-1"], df["L_V1"], rtol=1e-6, atol=1e-6)


def test_encode_and_rank_take_the_parcellation_too(tmp_path, visual_store, capsys):
    from screening.cli import main
    from tests.image_corpus import encode, photo_like

    path = write_dlabel(tmp_path / "floc.dlabel.nii", _values(k1=_area("L_V1")), {1: "FFA-1"})
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        (images / f"p{i}.png").write_bytes(encode(photo_like(120, 100 + 10 * i, seed=i), "PNG"))
    out = tmp_path / "t.csv"
    assert main(["encode", str(images), "--store", str(visual_store), "--subject", "1", "--roi", "L_V1",
                 "--parcellation", path, "--precision", "fp32", "--out", str(out)]) == 0
    t = pd.read_csv(out)
    assert np.allclose(t["floc_FFA-1"], t["L_V1"], rtol=1e-5, atol=1e-6) and len(t) == 3
    # rank: the parcellation's columns, and a clear refusal where the table does not have them
    table = t.drop(columns=["image"]).assign(image_id=[f"i{k}" for k in range(3)])
    table.to_parquet(tmp_path / "resp.parquet")
    assert main(["rank", str(tmp_path / "resp.parquet"), str(tmp_path / "rk"), "--parcellation", path, "--top-k", "1",
                 "--null-draws", "0", "--no-selectivity"]) == 0
    from screening.rank import read_rankings

    assert set(read_rankings(str(tmp_path / "rk")).roi) == {"floc_FFA-1"}
    other = write_dlabel(tmp_path / "places.dlabel.nii", _values(k1=_area("L_V2")), {1: "PPA"})
    capsys.readouterr()
    assert main(["rank", str(tmp_path / "resp.parquet"), str(tmp_path / "rk2"), "--parcellation", other]) == 2
    assert "places_PPA" in capsys.readouterr().err


def test_two_labels_that_become_one_column_name_are_refused_naming_both(tmp_path):
    v = _values(k1=_area("L_V1"), k2=_area("R_V2"))
    np.save(tmp_path / "clash.npy", v)
    (tmp_path / "clash.tsv").write_text("1\tFFA 1\n2\tFFA/1\n")
    with pytest.raises(InvalidParameterError, match=r"labels 'FFA 1' and 'FFA/1' both become the column name 'FFA_1'"):
        load_parcellation(tmp_path / "clash.npy", SUBJECTS)


def test_a_label_missing_from_one_subjects_file_is_named(tmp_path):
    write_dlabel(tmp_path / "sub-01_floc.dlabel.nii", _values(k1=_area("L_V1"), k2=_area("L_V2")), {1: "FFA-1",
                                                                                                    2: "OFA"})
    write_dlabel(tmp_path / "sub-02_floc.dlabel.nii", _values(k1=_area("L_V1")), {1: "FFA-1"})
    p = load_parcellation(str(tmp_path / "sub-{subject}_floc.dlabel.nii"), SUBJECTS)
    with pytest.raises(InvalidParameterError, match=r"label 'floc_OFA' is missing from sub-02's file \(it is in sub-01\)"):
        p.roi_columns("visual", SUBJECTS)
