"""Tests of ``screening rank``: known answers, streaming == pandas, weighting, contrasts, null."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from screening import atlas
from screening.exceptions import InvalidParameterError
from screening.rank import RANKINGS_SCHEMA, SETS_FILE, rank, rank_with_sets, read_rankings

AREAS = ["L_V1", "L_FFC", "L_PHA1", "L_PHA2", "L_PHA3", "L_PIT", "L_V8",
         "R_V1", "R_FFC", "R_PHA1", "R_PHA2", "R_PHA3", "R_PIT", "R_V8"]
FAST = dict(null_draws=200, n_null=500)


def _table(n_images, subjects, rng, columns=AREAS + ["group_01"]):
    frames = []
    ids = [f"img{i:05d}" for i in range(n_images)]
    for s in subjects:
        d = {"image_id": ids, "subject": [s] * n_images}
        for c in columns:
            d[c] = rng.normal(size=n_images).astype(np.float32)
        frames.append(pd.DataFrame(d))
    return pd.concat(frames, ignore_index=True)


def _sel(rows, kind, roi, subject):
    return rows[(rows.kind == kind) & (rows.roi == roi) & (rows.subject == subject)].sort_values("rank")


# -- known answers -----------------------------------------------------------------------------------
def test_ties_nan_and_fewer_than_k():
    df = pd.DataFrame({
        "image_id": ["e", "d", "c", "b", "a"],
        "subject": ["sub-01"] * 5,
        "L_V1": np.array([3, 5, 5, np.nan, 1], np.float32),
    })
    rows = rank(df, rois=["L_V1"], top_k=3, bottom_k=10, selectivity=False, consensus=False, **FAST)
    top = _sel(rows, "topk", "L_V1", "sub-01")
    assert top.image_id.tolist() == ["c", "d", "e"]  # 5 (tie: c < d), then 3
    assert top["rank"].tolist() == [1, 2, 3]
    assert top.response.tolist() == [5.0, 5.0, 3.0]
    bottom = _sel(rows, "bottomk", "L_V1", "sub-01")
    assert bottom.image_id.tolist() == ["a", "e", "c", "d"]  # only 4 finite images; NaN row 'b' skipped
    vals = np.array([3, 5, 5, 1.0])
    np.testing.assert_allclose(top.z, (np.array([5, 5, 3]) - vals.mean()) / vals.std())
    assert "b" not in set(rows.image_id)


def test_ties_across_batches_are_broken_by_image_id():
    # the same value everywhere: the first k image ids win, whatever the batch boundaries
    ids = [f"x{i:03d}" for i in range(100)][::-1]
    df = pd.DataFrame({"image_id": ids, "subject": "sub-01", "L_V1": np.ones(100, np.float32)})
    for bs in (7, 100):
        rows = rank(df, rois=["L_V1"], top_k=5, bottom_k=5, selectivity=False, consensus=False, batch_size=bs, **FAST)
        assert _sel(rows, "topk", "L_V1", "sub-01").image_id.tolist() == [f"x{i:03d}" for i in range(5)]
        assert _sel(rows, "bottomk", "L_V1", "sub-01").image_id.tolist() == [f"x{i:03d}" for i in range(5)]
        # zero variance: z is undefined, not infinite
        assert _sel(rows, "topk", "L_V1", "sub-01").z.isna().all()


def test_all_nan_column_and_empty_subject_lists():
    df = pd.DataFrame({"image_id": ["a", "b"], "subject": "sub-01",
                       "L_V1": np.array([np.nan, np.nan], np.float32), "R_V1": np.array([1, 2], np.float32)})
    rows = rank(df, rois=["L_V1", "R_V1"], top_k=5, selectivity=False, consensus=False, **FAST)
    assert _sel(rows, "topk", "L_V1", "sub-01").empty
    assert _sel(rows, "topk", "R_V1", "sub-01").image_id.tolist() == ["b", "a"]


# -- streaming == pandas ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def medium():
    rng = np.random.default_rng(1)
    subjects = ["sub-01", "sub-02", "sub-03", "mean"]
    df = _table(5000, subjects, rng)  # 20,000 rows
    df.loc[rng.choice(len(df), 50, replace=False), AREAS] = np.nan
    df = df.sample(frac=1.0, random_state=3).reset_index(drop=True)  # subjects interleaved across batches
    rows, sets = rank_with_sets(df, rois=["L_FFC", "group_01", "FFC", "faces"], top_k=10, bottom_k=10,
                                contrasts=["FFC:V1"], comparison=["V1", "PHA1", "PIT"], batch_size=997,
                                memory_budget_mb=0.05, **FAST)
    return df, rows, sets


def _pandas_value(df, roi):
    if roi in df:
        return df[roi].astype(np.float64)
    n = atlas.roi_grayordinates()
    members = {"FFC": ["FFC"], "faces": ["FFC", "PIT", "V8"], "V1": ["V1"], "PHA1": ["PHA1"], "PIT": ["PIT"]}[roi]
    cols = [f"{h}_{m}" for m in members for h in "LR"]
    w = np.array([len(n[c]) for c in cols], np.float64)
    return (df[cols].astype(np.float64) * w).sum(axis=1, min_count=len(cols)) / w.sum()


def _pandas_z(df, roi):
    v = _pandas_value(df, roi)
    g = v.groupby(df.subject)
    return (v - g.transform("mean")) / g.transform(lambda x: x.std(ddof=0))


@pytest.mark.parametrize("roi", ["L_FFC", "group_01", "FFC", "faces"])
def test_streaming_equals_pandas_topk(medium, roi):
    df, rows, _ = medium
    v = _pandas_value(df, roi)
    for s in ["sub-01", "sub-02", "sub-03", "mean"]:
        sub = pd.DataFrame({"image_id": df.image_id, "v": v, "z": _pandas_z(df, roi)})[df.subject == s].dropna()
        exp_top = sub.sort_values(["v", "image_id"], ascending=[False, True]).head(10)
        exp_bot = sub.sort_values(["v", "image_id"], ascending=[True, True]).head(10)
        got_top = _sel(rows, "topk", roi, s)
        got_bot = _sel(rows, "bottomk", roi, s)
        assert got_top.image_id.tolist() == exp_top.image_id.tolist()
        assert got_bot.image_id.tolist() == exp_bot.image_id.tolist()
        np.testing.assert_allclose(got_top.response, exp_top.v, rtol=1e-6)
        np.testing.assert_allclose(got_top.z, exp_top.z, rtol=1e-6)


@pytest.mark.parametrize("roi", ["L_FFC", "faces"])
def test_streaming_equals_pandas_consensus(medium, roi):
    df, rows, _ = medium
    real = df.subject != "mean"
    z = _pandas_z(df, roi)[real]
    frame = pd.DataFrame({"image_id": df.image_id[real], "z": z, "v": _pandas_value(df, roi)[real]})
    agg = frame.groupby("image_id").agg(z=("z", "mean"), v=("v", "mean")).reset_index().dropna()
    exp = agg.sort_values(["z", "image_id"], ascending=[False, True]).head(10)
    got = _sel(rows, "consensus", roi, "consensus")
    assert got.image_id.tolist() == exp.image_id.tolist()
    np.testing.assert_allclose(got.score, exp.z, rtol=1e-5)
    np.testing.assert_allclose(got.response, exp.v, rtol=1e-5)
    # n_subjects_topk = how many subjects have the image in their own top-k
    tops = rows[(rows.kind == "topk") & (rows.roi == roi) & rows.subject.str.startswith("sub-")]
    counts = tops.image_id.value_counts()
    assert got.n_subjects_topk.tolist() == [int(counts.get(i, 0)) for i in got.image_id]
    assert rows[rows.kind != "consensus"].n_subjects_topk.isna().all()


def test_streaming_equals_pandas_contrast_and_selectivity(medium):
    df, rows, _ = medium
    for roi_a, roi_b, name in [("FFC", "V1", "FFC>V1"), ("L_FFC", "L_V1", "L_FFC>L_V1")]:
        dz = _pandas_z(df, roi_a) - _pandas_z(df, roi_b)
        dr = _pandas_value(df, roi_a) - _pandas_value(df, roi_b)
        sub = pd.DataFrame({"image_id": df.image_id, "dz": dz, "dr": dr})[df.subject == "sub-02"].dropna()
        exp = sub.sort_values(["dz", "image_id"], ascending=[False, True]).head(10)
        got = _sel(rows, "contrast", name, "sub-02")
        assert got.image_id.tolist() == exp.image_id.tolist()
        np.testing.assert_allclose(got.score, exp.dz, rtol=1e-6)
        np.testing.assert_allclose(got.z, exp.dz, rtol=1e-6)
        np.testing.assert_allclose(got.response, exp.dr, rtol=1e-5)
    # selectivity of FFC against the comparison set [V1, PHA1, PIT] (none overlaps FFC)
    sel = _pandas_z(df, "FFC") - (_pandas_z(df, "V1") + _pandas_z(df, "PHA1") + _pandas_z(df, "PIT")) / 3
    sub = pd.DataFrame({"image_id": df.image_id, "s": sel})[df.subject == "sub-01"].dropna()
    exp = sub.sort_values(["s", "image_id"], ascending=[False, True]).head(10)
    got = _sel(rows, "selectivity", "FFC", "sub-01")
    assert got.image_id.tolist() == exp.image_id.tolist()
    np.testing.assert_allclose(got.score, exp.s, rtol=1e-6)


def test_chunked_consensus_equals_single_pass(medium):
    df, rows, _ = medium
    one = rank(df, rois=["L_FFC", "group_01", "FFC", "faces"], top_k=10, bottom_k=10, contrasts=["FFC:V1"],
               comparison=["V1", "PHA1", "PIT"], batch_size=4096, memory_budget_mb=512, **FAST)
    a = rows.sort_values(["kind", "roi", "subject", "rank"]).reset_index(drop=True)
    b = one.sort_values(["kind", "roi", "subject", "rank"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)


# -- weighting, contrasts, selectivity by hand ----------------------------------------------------------
def _hand_table():
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d"],
        "subject": ["sub-01"] * 4,
        "L_FFC": np.array([1, 2, 3, 4], np.float32),
        "R_FFC": np.array([4, 0, 2, 0], np.float32),
        "L_V1": np.array([0, 1, 0, 2], np.float32),
        "R_V1": np.array([1, 1, 1, 1], np.float32),
    })


def test_bilateral_weighting_from_atlas_and_manifest():
    df = _hand_table()
    n = atlas.roi_grayordinates()
    nl, nr = len(n["L_FFC"]), len(n["R_FFC"])
    assert (nl, nr) == (151, 167)
    rows = rank(df, rois=["FFC"], top_k=4, bottom_k=0, selectivity=False, consensus=False, **FAST)
    got = _sel(rows, "topk", "FFC", "sub-01").set_index("image_id").response
    exp = (nl * df.L_FFC.astype(float) + nr * df.R_FFC.astype(float)) / (nl + nr)
    np.testing.assert_allclose(got.loc[list(df.image_id)], exp, rtol=1e-6)
    # the manifest's per-subject vertex counts win over the atlas
    manifest = {"rois": {"L_FFC": {"n_vertices": {"sub-01": 1}}, "R_FFC": {"n_vertices": {"sub-01": 3}}}}
    rows = rank(df, rois=["FFC"], top_k=4, bottom_k=0, selectivity=False, consensus=False, manifest=manifest, **FAST)
    got = _sel(rows, "topk", "FFC", "sub-01").set_index("image_id").response
    np.testing.assert_allclose(got.loc[["a", "b", "c", "d"]], [3.25, 0.5, 2.25, 1.0])


def test_composite_from_config_file(tmp_path):
    cfg = tmp_path / "rois.yaml"
    cfg.write_text("mine: [FFC, L_V1]\n")
    df = _hand_table()
    rows = rank(df, rois=["mine", "L_mine"], top_k=4, bottom_k=0, selectivity=False, consensus=False,
                roi_config=cfg, manifest={"rois": {c: {"n_vertices": {"sub-01": 1}} for c in
                                                   ["L_FFC", "R_FFC", "L_V1", "R_V1"]}}, **FAST)
    got = _sel(rows, "topk", "mine", "sub-01").set_index("image_id").response
    np.testing.assert_allclose(got.loc[["a", "b", "c", "d"]], [5 / 3, 1.0, 5 / 3, 2.0])
    got = _sel(rows, "topk", "L_mine", "sub-01").set_index("image_id").response  # L_FFC, L_V1
    np.testing.assert_allclose(got.loc[["a", "b", "c", "d"]], [0.5, 1.5, 1.5, 3.0])


def test_contrast_and_selectivity_by_hand():
    df = _hand_table()
    man = {"rois": {c: {"n_vertices": {"sub-01": 1}} for c in ["L_FFC", "R_FFC", "L_V1", "R_V1"]}}
    rows = rank(df, rois=["L_FFC"], top_k=4, bottom_k=0, contrasts=["FFC:V1"], contrast_by="response",
                comparison=["L_V1"], consensus=False, manifest=man, **FAST)
    ffc = np.array([2.5, 1.0, 2.5, 2.0])
    v1 = np.array([0.5, 1.0, 0.5, 1.5])
    con = _sel(rows, "contrast", "FFC>V1", "sub-01")
    assert con.image_id.tolist() == ["a", "c", "d", "b"]  # 2, 2 (tie a<c), 0.5, 0
    np.testing.assert_allclose(con.response, [2.0, 2.0, 0.5, 0.0])
    zf = (ffc - ffc.mean()) / ffc.std()
    zv = (v1 - v1.mean()) / v1.std()
    np.testing.assert_allclose(con.set_index("image_id").z.loc[list("abcd")], zf - zv)
    assert set(rows[rows.kind == "contrast"].roi) == {"FFC>V1", "L_FFC>L_V1", "R_FFC>R_V1"}
    lf = np.array([1, 2, 3, 4.0])
    lv = np.array([0, 1, 0, 2.0])
    sel = (lf - lf.mean()) / lf.std() - (lv - lv.mean()) / lv.std()
    got = _sel(rows, "selectivity", "L_FFC", "sub-01")
    np.testing.assert_allclose(got.set_index("image_id").score.loc[list("abcd")], sel)
    assert got.image_id.tolist() == list(np.array(list("abcd"))[np.argsort(-sel, kind="stable")])


def test_default_selectivity_excludes_the_rois_own_areas():
    df = _hand_table()
    rows = rank(df, rois=["L_FFC", "FFC"], top_k=4, bottom_k=0, consensus=False, **FAST)
    z = {c: (df[c].astype(float) - df[c].astype(float).mean()) / df[c].astype(float).std(ddof=0)
         for c in ["L_FFC", "R_FFC", "L_V1", "R_V1"]}
    # L_FFC is compared with the other area columns; FFC (both hemispheres) with the V1 columns.
    # R_V1 is constant, so its z is undefined and it leaves the comparison set.
    assert z["R_V1"].isna().all()
    exp = z["L_FFC"] - (z["R_FFC"] + z["L_V1"]) / 2
    got = _sel(rows, "selectivity", "L_FFC", "sub-01").set_index("image_id").score
    np.testing.assert_allclose(got.loc[list("abcd")], exp)
    nl, nr = 151, 167
    ffc = (nl * df.L_FFC + nr * df.R_FFC) / (nl + nr)
    exp = (ffc - ffc.mean()) / ffc.std(ddof=0) - z["L_V1"]
    got = _sel(rows, "selectivity", "FFC", "sub-01").set_index("image_id").score
    np.testing.assert_allclose(got.loc[list("abcd")], exp, rtol=1e-6)


# -- the null ---------------------------------------------------------------------------------------
def test_null_margin_planted_image_and_calibration():
    rng = np.random.default_rng(5)
    n = 3000
    ids = [f"i{i:04d}" for i in range(n)]
    v = rng.normal(size=n)
    planted = rng.choice(n, 25, replace=False)
    w = rng.normal(size=n)
    w[planted] += 10.0
    v[17] = 10.0
    df = pd.DataFrame({"image_id": ids, "subject": "sub-01", "L_V1": v.astype(np.float32),
                       "R_V1": w.astype(np.float32)})
    rows, sets = rank_with_sets(df, rois=["L_V1", "R_V1"], top_k=n, bottom_k=0, selectivity=False,
                                consensus=False, n_null=1000, null_draws=2000, seed=3)
    top = _sel(rows, "topk", "L_V1", "sub-01")
    first = top.iloc[0]
    assert first.image_id == "i0017" and first.margin > 6 and first.p_null == pytest.approx(1 / 1001)
    # for the other, random images margin > 0 about 5% of the time and p_null is about uniform
    rest = top.iloc[1:]
    assert 0.03 < (rest.margin > 0).mean() < 0.07
    assert 0.45 < rest.p_null.mean() < 0.55
    # seeded: same answer twice
    again = rank(df, rois=["L_V1"], top_k=50, bottom_k=0, selectivity=False, consensus=False,
                 n_null=1000, null_draws=2000, seed=3)
    pd.testing.assert_frame_equal(_sel(again, "topk", "L_V1", "sub-01").reset_index(drop=True),
                                  top.head(50).reset_index(drop=True))
    # set-level null: the planted 25 beat random 25-sets, and the null centres on the screened mean
    rows2, sets2 = rank_with_sets(df, rois=["R_V1"], top_k=25, bottom_k=0, selectivity=False, consensus=False,
                                  n_null=1000, null_draws=2000, seed=3)
    s = sets2[(sets2.roi == "R_V1") & (sets2.kind == "topk")].iloc[0]
    assert set(_sel(rows2, "topk", "R_V1", "sub-01").image_id) == {ids[i] for i in planted}
    assert s.set_margin > 5 and s.set_p_null == pytest.approx(1 / 2001)
    assert s.null_mean == pytest.approx(w.mean(), abs=0.15)


# -- I/O and CLI ------------------------------------------------------------------------------------
def test_cli_writes_documented_tables(tmp_path):
    from screening.cli import main

    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    (run / "responses").mkdir(parents=True)
    df = _table(300, ["sub-01", "sub-02", "mean"], rng)
    for i, part in enumerate([df.iloc[j::3] for j in range(3)]):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), run / "responses" / f"part-{i}.parquet")
    (run / "manifest.json").write_text(json.dumps({"rois": {}}))
    out = run / "rankings"
    assert main(["rank", str(run / "responses"), str(out), "--roi", "FFC", "--roi", "places", "--top-k", "5",
                 "--contrast", "FFC:PHA1-3", "--null-draws", "100", "--batch-size", "128"]) == 0
    table = pq.read_table(out / "rankings.parquet")
    assert table.schema.remove_metadata() == RANKINGS_SCHEMA
    got = read_rankings(out)
    assert set(got.kind) == {"topk", "bottomk", "contrast", "selectivity", "consensus"}
    assert set(got[got.kind == "contrast"].roi) == {"FFC>PHA1-3", "L_FFC>L_PHA1-3", "R_FFC>R_PHA1-3"}
    assert (got.groupby(["kind", "roi", "subject"]).size() == 5).all()
    assert pq.read_table(out / SETS_FILE).num_rows > 0
    assert json.loads(table.schema.metadata[b"screening.rank"])["top_k"] == 5


@pytest.mark.parametrize("kwargs, match", [
    ({"rois": ["NOPE"]}, "unknown ROI 'NOPE'.*valid"),
    ({"contrasts": ["FFC-PHA1"]}, "contrast 'FFC-PHA1' is not valid.*'A:B'"),
    ({"top_k": 0}, "top_k must be an integer >= 1; got 0"),
    ({"top_k": True}, "top_k must be an integer"),
    ({"contrast_by": "t"}, "contrast_by='t' is not valid; valid: 'z', 'response'"),
    ({"selectivity": "no"}, "selectivity must be True or False; got 'no'"),   # was bool("no"): True
])
def test_errors_name_the_bad_value(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        rank(_hand_table(), **kwargs)


@pytest.mark.parametrize("roi, hint", [
    ("FFA", "; did you mean 'FFC'?"),                 # localiser name -> the area the table has
    ("l_ffc", "did you mean 'L_FFC'"),                # case
    ("L_FFX", "did you mean 'L_FFC' or 'R_FFC'?"),    # typo; only columns the table holds are offered
])
def test_unknown_roi_suggests_only_names_the_table_takes(roi, hint):
    with pytest.raises(InvalidParameterError, match=f"unknown ROI {roi!r}") as e:
        rank(_hand_table(), rois=[roi], **FAST)
    assert str(e.value).endswith(hint) or hint in str(e.value)
    assert "PIT" not in str(e.value).split("did you mean")[1]  # faces needs L_PIT: not offered


def test_rank_takes_the_grammar_of_screening_rois():
    """One grammar: composites nest, groups are members, a hemisphere version keeps that side's areas."""
    from screening.rank._rois import RoiResolver

    cols = AREAS + ["group_01"]
    res = RoiResolver(cols, ["sub-01"], composites={"inner": ["PHA1", "L_V1"], "outer": ["inner", "FFC"],
                                                    "withgroup": ["group_01", "FFC"]})
    assert res.resolve("outer").members == ("L_PHA1", "R_PHA1", "L_V1", "L_FFC", "R_FFC")
    assert res.resolve("R_outer").members == ("R_PHA1", "R_FFC")
    t = res.resolve("withgroup")
    assert t.members == ("group_01", "L_FFC", "R_FFC")
    assert {"L_V1", "R_V1"} <= t.areas  # group_01 (V1) is left out of its own selectivity comparison
    w = res.resolve("withgroup").weights["sub-01"]
    assert w.tolist() == [int((atlas.glasser_group_id() == 1).sum()), 151, 167]
    with pytest.raises(InvalidParameterError, match="span both hemispheres"):
        res.resolve("L_withgroup")
    res.composites["twice"] = ("group_01", "V1")
    with pytest.raises(InvalidParameterError, match="count vertices twice: group_01 contains L_V1"):
        res.resolve("twice")
    with pytest.raises(InvalidParameterError, match=r"'V2' needs column\(s\) \['L_V2', 'R_V2'\]"):
        res.resolve("V2")


def test_cli_reports_bad_roi(tmp_path, capsys):
    from screening.cli import main

    path = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pandas(_hand_table(), preserve_index=False), path)
    assert main(["rank", str(path), str(tmp_path / "out"), "--roi", "FFA"]) == 2
    assert "unknown ROI 'FFA'" in capsys.readouterr().err


def test_single_roi_run_skips_selectivity_with_a_note(tmp_path, capsys):
    """A run screened with ``--rois FFC`` has one ROI column and no area to compare against."""
    from screening.cli import main
    from screening.rank import RankingNote, read_rankings_metadata

    rng = np.random.default_rng(3)
    run = tmp_path / "run"
    (run / "responses").mkdir(parents=True)
    df = _table(60, ["sub-01", "sub-02", "mean"], rng, columns=["FFC"])
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), run / "responses" / "part-0.parquet")
    (run / "manifest.json").write_text(json.dumps({"rois": {"FFC": {"n_vertices": {"sub-01": 300, "sub-02": 310}}}}))
    out = run / "rankings"
    assert main(["rank", str(run / "responses"), str(out), "--top-k", "5", "--null-draws", "50"]) == 0
    err = capsys.readouterr().err
    assert "screening rank: note: selectivity skipped: nothing to compare against" in err
    assert "['FFC']" in err  # names the columns it had
    got = read_rankings(out)
    assert set(got.kind) == {"topk", "bottomk", "consensus"}
    meta = read_rankings_metadata(out)
    assert meta["selectivity"] is False
    assert len(meta["notes"]) == 1 and meta["notes"][0].startswith("selectivity skipped")
    assert meta["members"] == {"FFC": ["FFC"]}
    # the Python API warns with the same note
    with pytest.warns(RankingNote, match="selectivity skipped: nothing to compare against"):
        rows = rank(df, top_k=3, **FAST)
    assert "selectivity" not in set(rows.kind)


# -- pipeline runs, Parquet row groups, atlas groups --------------------------------------------------
def test_pipeline_run_reads_committed_files_and_manifest(tmp_path):
    rng = np.random.default_rng(7)
    run = tmp_path / "run"
    (run / "responses").mkdir(parents=True)
    (run / "_committed").mkdir()
    committed = _table(300, ["sub-01", "sub-02", "mean"], rng, columns=["L_FFC", "R_FFC", "L_V1", "R_V1"])
    # several row groups, each larger than the batch: batches are cut inside row groups
    pq.write_table(pa.Table.from_pandas(committed, preserve_index=False), run / "responses" / "u1.parquet",
                   row_group_size=250)
    # a unit without a marker (an interrupted run): its rows would win every list if they were read
    leftover = committed.head(30).copy()
    leftover["image_id"] = [f"zz{i:03d}" for i in range(30)]
    leftover[["L_FFC", "R_FFC", "L_V1", "R_V1"]] = 1e6
    pq.write_table(pa.Table.from_pandas(leftover, preserve_index=False), run / "responses" / "u2.parquet")
    (run / "_committed" / "u1.json").write_text(json.dumps({
        "unit": "u1", "files": {"responses": "responses/u1.parquet", "errors": "errors/u1.parquet"}}))
    # manifest beside responses/: R_FFC has no vertex for any subject, so FFC == L_FFC
    (run / "manifest.json").write_text(json.dumps({"rois": {
        "L_FFC": {"n_vertices": {"sub-01": 10, "sub-02": 12, "mean": 11}},
        "R_FFC": {"n_vertices": {"sub-01": 0, "sub-02": 0, "mean": 0}}}}))
    kw = dict(rois=["FFC", "L_V1"], top_k=5, selectivity=False, consensus=False, **FAST)
    rows = rank(str(run / "responses"), batch_size=64, **kw)
    assert not rows.image_id.str.startswith("zz").any()
    expected = rank(committed, manifest=json.loads((run / "manifest.json").read_text()), batch_size=64, **kw)
    pd.testing.assert_frame_equal(rows.reset_index(drop=True), expected.reset_index(drop=True))
    top = _sel(rows, "topk", "FFC", "sub-01")
    exp = committed[committed.subject == "sub-01"].sort_values("L_FFC", ascending=False).head(5)
    assert top.image_id.tolist() == exp.image_id.tolist()
    np.testing.assert_allclose(top.response, exp.L_FFC, rtol=1e-6)
    # the same folder without markers is read whole (not a pipeline run)
    (run / "_committed" / "u1.json").unlink()
    (run / "_committed").rmdir()
    assert rank(str(run / "responses"), **kw).image_id.str.startswith("zz").any()


def test_pipeline_run_without_committed_units_is_an_error(tmp_path):
    run = tmp_path / "run"
    (run / "responses").mkdir(parents=True)
    (run / "_committed").mkdir()
    pq.write_table(pa.Table.from_pandas(_hand_table(), preserve_index=False), run / "responses" / "u.parquet")
    with pytest.raises(InvalidParameterError, match="no committed unit"):
        rank(str(run / "responses"))


def test_atlas_area_group():
    assert atlas.area_group("V1") == atlas.area_group("L_V1") == atlas.area_group("R_V1") == 1
    assert atlas.area_group("FFC") == 4
    for name, g in atlas.roi_grayordinates().items():  # agrees with the vertices' groups
        if g.size:
            k = np.searchsorted(atlas.vertex_mapping_all(), g[0])
            assert atlas.glasser_group_id()[k] == atlas.area_group(name)
    with pytest.raises(InvalidParameterError, match="'FFA' is not an HCP-MMP1.0 area; valid: .*FFC"):
        atlas.area_group("FFA")


def test_s3_responses_rank_as_the_local_files(tmp_path, monkeypatch):
    # s3:// is read through pyarrow over s3fs (the moto server on loopback); the ranking equals the local one
    from tests.s3server import dummy_credentials, s3_server, upload_dir

    rng = np.random.default_rng(5)
    local = tmp_path / "responses"
    local.mkdir()
    df = _table(400, ["sub-01", "sub-02", "mean"], rng)
    for i, part in enumerate([df.iloc[j::2] for j in range(2)]):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), local / f"part-{i}.parquet")
    kw = dict(rois=["FFC"], top_k=5, contrasts=["L_FFC:L_V1"], selectivity=False, consensus=False, **FAST)
    want = rank(str(local), **kw)
    dummy_credentials(monkeypatch)
    with s3_server() as endpoint:
        upload_dir(endpoint, local, "rank-s3", "run/responses")
        got = rank("s3://rank-s3/run/responses", "s3://rank-s3/run/rankings", endpoint_url=endpoint, **kw)
        back = read_rankings("s3://rank-s3/run/rankings", endpoint_url=endpoint)
    key = ["kind", "roi", "subject", "rank"]
    a, b = (x.sort_values(key).reset_index(drop=True) for x in (want, got))
    pd.testing.assert_frame_equal(a, b)
    assert len(back) == len(got) and set(got.kind) == {"topk", "bottomk", "contrast"}


def test_rank_config_is_checked_when_built_and_frozen():
    import dataclasses

    from screening.rank._engine import RankConfig

    cfg = RankConfig.of(rois="FFC", top_k=5, contrasts="FFC:V1")
    assert (cfg.rois, cfg.bottom_k, cfg.contrasts) == (["FFC"], 5, ("FFC:V1",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.top_k = 7
    with pytest.raises(InvalidParameterError, match=r"top_k must be an integer >= 1; got 0"):
        RankConfig(top_k=0)
    with pytest.raises(InvalidParameterError, match=r"contrast_by='p' is not valid; valid: 'z', 'response'"):
        RankConfig.of(contrast_by="p")


# -- one field per rank option -------------------------------------------------------------------------------------
def test_a_rank_option_added_as_one_field_is_on_the_cli_in_the_doc_and_in_the_metadata(tmp_path, monkeypatch, capsys):
    import dataclasses
    import inspect

    import screening.rank as rank_module
    from screening.cli import main
    from screening.rank import rank_with_labels, read_rankings_metadata
    from screening.rank.config import RankConfig, option, parameters_doc, signature

    @dataclasses.dataclass(frozen=True)
    class Planted(RankConfig):
        planted_level: int = option(3, flag="--planted-level", cli={"type": int}, check=lambda n, v, c: int(v),
                                    help="a planted option's help", doc="""int, default=3
        A planted option's documented entry.""")

    monkeypatch.setattr(rank_module, "RankConfig", Planted)
    with pytest.raises(SystemExit) as e:
        main(["rank", "--help"])
    assert e.value.code == 0
    assert "--planted-level" in capsys.readouterr().out
    assert "planted_level : int, default=3\n        A planted option's documented entry." in parameters_doc(Planted)
    assert signature(Planted).parameters["planted_level"].default == 3

    responses = tmp_path / "responses.parquet"
    _table(30, ["sub-01"], np.random.default_rng(0), ["L_V1"]).to_parquet(responses)
    assert main(["rank", str(responses), str(tmp_path / "cli"), "--planted-level", "5", "--null-draws", "0",
                 "--n-null", "20", "--no-selectivity"]) == 0
    assert read_rankings_metadata(tmp_path / "cli")["planted_level"] == 5
    rank_with_labels(str(responses), tmp_path / "api", planted_level=7, null_draws=0, n_null=20, selectivity=False)
    assert read_rankings_metadata(tmp_path / "api")["planted_level"] == 7
    # and the real function documents and takes every field of the real config, with its default
    monkeypatch.undo()
    sig = inspect.signature(rank_with_labels)
    for f in dataclasses.fields(RankConfig):
        assert f"\n    {f.name} : " in rank_with_labels.__doc__ and sig.parameters[f.name].default == f.default
    with pytest.raises(TypeError, match="planted_level"):
        rank_with_labels(str(responses), planted_level=7)
