"""Labels of the screened images, enrichment of the ranked lists and each ROI's response per label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from screening.exceptions import InvalidParameterError
from screening.labels import Labels, file_name, image_labels, parent_folder
from screening.rank._enrichment import bh_q, enrichment

SOURCES = pd.DataFrame({
    "image_id": ["a", "b", "c", "d", "e", "f"],
    "source": ["/data/faces/adult-01.jpg", "/data/faces/child-02.png", "s3://bk/places/beach-1.jpg",
               "tar://bodies/hand-3.jpg::/data/shard-0.tar", "/data/shard-0.parquet#row=4", "/data/misc/x.jpg"],
})


@pytest.mark.parametrize("source", [
    "/data/faces/adult-01.jpg", "faces/child-02.png", "s3://bk/places/beach-1.jpg", "tar://hand-3.jpg::s3://b/s.tar",
    "/data/shard-0.parquet#row=4", "x.jpg", "/x.jpg", "", "a//b.jpg", "a/b/", "/data/nsd.hdf5#12", "s3://bk/x.jpg#3",
    "https://host/a/b/c.png", "tar://a/b/c.jpg", "file:///abs/p/q.jpg", "/"])
def test_vectorised_paths_equal_posixpath_on_the_recorded_path(source):
    import posixpath

    s = source[len("tar://"):].split("::", 1)[0] if source.startswith("tar://") else source
    s = s.split("#", 1)[0]
    s = (s.split("://", 1)[1] if "://" in s else s).rstrip("/")
    assert file_name(source) == posixpath.basename(s)
    assert parent_folder(source) == posixpath.basename(posixpath.dirname(s))


def test_paths_in_every_kind_of_source():
    assert [parent_folder(s) for s in SOURCES.source] == ["faces", "faces", "places", "bodies", "data", "misc"]
    assert file_name("tar://bodies/hand-3.jpg::/data/shard-0.tar") == "hand-3.jpg"
    assert file_name("s3://bk/places/beach-1.jpg") == "beach-1.jpg"


def test_each_label_spec_resolves_and_counts_the_unlabelled(tmp_path):
    folder = image_labels("folder", SOURCES)
    assert dict(zip(folder.pairs.image_id, folder.pairs.label))["c"] == "places" and folder.n_unlabelled == 0
    named = image_labels(r"name:^([a-z]+)-\d+\.(?:jpg|png)$", SOURCES)
    assert dict(zip(named.pairs.image_id, named.pairs.label)) == {"a": "adult", "b": "child", "c": "beach",
                                                                   "d": "hand"}
    assert named.n_unlabelled == 2 and "2 unlabelled" in named.summary()
    # a multi-label table keyed by file name (CSV) and one keyed by image_id (Parquet)
    (tmp_path / "coco.csv").write_text("file,label\nadult-01.jpg,person\nadult-01.jpg,face\nbeach-1.jpg,sea\n"
                                       "nothere.jpg,cat\n")
    table = image_labels(str(tmp_path / "coco.csv"), SOURCES)
    assert sorted(map(tuple, table.pairs.values)) == [("a", "face"), ("a", "person"), ("c", "sea")]
    assert table.n_unlabelled == 4 and table.names == ["face", "person", "sea"]
    pq.write_table(pa.table({"image_id": ["e", "f", "zz"], "label": ["x", "y", "z"]}), tmp_path / "t.parquet")
    assert sorted(image_labels(str(tmp_path / "t.parquet"), SOURCES).pairs.label) == ["x", "y"]
    with pytest.raises(InvalidParameterError, match=r"needs a 'label' column and one of image_id, source, file"):
        (tmp_path / "bad.csv").write_text("path,cat\n")
        image_labels(str(tmp_path / "bad.csv"), SOURCES)
    with pytest.raises(InvalidParameterError, match=r"labels='kind' is not a label spec; valid: folder"):
        image_labels("kind", SOURCES)
    with pytest.raises(InvalidParameterError, match="does not compile"):
        image_labels("name:([a-", SOURCES)


def test_column_labels_map_hugging_face_class_ids_to_names(tmp_path):
    import json

    meta = {b"huggingface": json.dumps({"info": {"features": {"label": {"names": ["tench", "goldfish"],
                                                                         "_type": "ClassLabel"}}}}).encode()}
    t = pa.table({"image_id": ["a", "b", "c"], "label": [1, 0, 1]}).replace_schema_metadata(meta)
    pq.write_table(t, tmp_path / "s.parquet")
    got = image_labels("column:label", SOURCES, shards=[str(tmp_path / "s.parquet")])
    assert dict(zip(got.pairs.image_id, got.pairs.label)) == {"a": "goldfish", "b": "tench", "c": "goldfish"}
    with pytest.raises(InvalidParameterError, match="has no column 'species'"):
        image_labels("column:species", SOURCES, shards=[str(tmp_path / "s.parquet")])
    with pytest.raises(InvalidParameterError, match="lists none"):
        image_labels("column:label", SOURCES, shards=[])


def _labels(mapping: dict, images) -> Labels:
    pairs = pd.DataFrame([(i, lab) for i, labs in mapping.items() for lab in labs], columns=["image_id", "label"])
    return Labels("test", pairs, np.asarray(sorted(images)))


def test_enrichment_counts_and_p_values_match_fisher_and_hypergeom():
    images = [f"i{n:02d}" for n in range(40)]
    faces = set(images[:10])   # base rate 10/40
    lab = _labels({i: (["face"] if i in faces else ["place"]) for i in images}, images)
    top = images[:4] + images[20:24]   # 4 of 8 are faces
    rankings = pd.DataFrame({"roi": "FFC", "subject": "mean", "kind": "topk", "rank": range(1, 9), "image_id": top})
    e = enrichment(rankings, lab)
    row = e[e.label == "face"].iloc[0]
    table = [[4, 4], [10 - 4, 40 - 10 - 4]]
    odds, p = stats.fisher_exact(table, alternative="greater")
    assert (row.k, row.hits, row.n_label, row.n_images) == (8, 4, 10, 40)
    assert row.p == pytest.approx(p, rel=1e-10) and row.odds_ratio == pytest.approx(odds)
    assert row.p == pytest.approx(stats.hypergeom.sf(3, 40, 10, 8), rel=1e-10)
    assert row.fold == pytest.approx((4 / 8) / (10 / 40))
    # BH over all (list, label) tests: here 1 list x 2 labels
    assert e.q.tolist() == pytest.approx(stats.false_discovery_control(e.p.to_numpy()).tolist())


def test_bh_counts_untested_labels_as_p_one():
    p = np.array([0.001, 0.02, 0.04])
    assert bh_q(p, 10).tolist() == pytest.approx(stats.false_discovery_control(np.r_[p, np.ones(7)])[:3].tolist())


def test_a_planted_category_is_found_enriched_in_the_top_list_and_depleted_from_the_bottom():
    from screening.rank import rank_with_labels

    rng = np.random.default_rng(3)
    n = 400
    ids = [f"{i:04d}" for i in range(n)]
    cats = rng.choice(["face", "place", "body", "food"], size=n)
    ffc = rng.normal(size=n) + 2.5 * (cats == "face")     # FFC prefers faces
    frames = [pd.DataFrame({"image_id": ids, "subject": s, "L_FFC": (ffc + rng.normal(0, .1, n)).astype(np.float32),
                            "L_V1": rng.normal(size=n).astype(np.float32)}) for s in ("sub-01", "mean")]
    labels = _labels({i: [c] for i, c in zip(ids, cats)}, ids)
    res = rank_with_labels(pd.concat(frames), labels=labels, rois=["L_FFC", "L_V1"], top_k=25, null_draws=0,
                           selectivity=False, consensus=False)
    e = res.enrichment
    best = e[(e.roi == "L_FFC") & (e.subject == "mean") & (e.kind == "topk")].sort_values("p").iloc[0]
    assert best.label == "face" and best.fold > 3 and best.q < 1e-6
    v1 = e[(e.roi == "L_V1") & (e.subject == "mean") & (e.kind == "topk")]
    assert (v1.q > 0.01).all()   # nothing planted there
    # tuning: the per-label means equal a direct group-by of the table
    tm = res.label_means
    direct = frames[1].assign(label=cats).groupby("label").L_FFC.agg(["mean", "std", "count"])
    got = tm[(tm.roi == "L_FFC") & (tm.subject == "mean")].set_index("label")
    for c in direct.index:
        assert got.loc[c, "mean"] == pytest.approx(direct.loc[c, "mean"], rel=1e-6)
        assert got.loc[c, "sd"] == pytest.approx(direct.loc[c, "std"], rel=1e-6)
        assert got.loc[c, "n"] == direct.loc[c, "count"]


def test_label_means_count_an_image_once_per_label_and_chunk_by_memory():
    from screening.rank import rank_with_labels

    ids = ["a", "b", "c", "d"]
    df = pd.DataFrame({"image_id": ids, "subject": "mean", "L_V1": [1.0, 2.0, 3.0, 10.0],
                       "L_V2": [0.0, 0.0, 1.0, np.nan]})
    labels = _labels({"a": ["x", "y"], "b": ["x"], "c": ["y"]}, ids)
    for budget in (512.0, 1e-6):   # the second splits the ROIs into one scan each
        res = rank_with_labels(df, labels=labels, rois=["L_V1", "L_V2"], top_k=1, null_draws=0, selectivity=False,
                               consensus=False, memory_budget_mb=budget)
        t = res.label_means.set_index(["roi", "label"])
        assert t.loc[("L_V1", "x"), "mean"] == 1.5 and t.loc[("L_V1", "y"), "mean"] == 2.0
        assert t.loc[("L_V1", "x"), "n"] == 2 and t.loc[("L_V2", "y"), "mean"] == 0.5
        assert res.labels.n_unlabelled == 1


def test_rank_labels_folder_on_a_run_writes_tables_and_the_report_shows_them(tmp_path, visual_store, capsys):
    from screening.cli import main
    from tests.image_corpus import encode, photo_like

    root = tmp_path / "photos"
    for k, (cat, n) in enumerate((("faces", 5), ("places", 4), ("bodies", 3))):
        (root / cat).mkdir(parents=True)
        for i in range(n):
            (root / cat / f"{cat}-{i}.jpg").write_bytes(encode(photo_like(150 + 9 * i, 120, seed=10 * k + i), "JPEG"))
    (root / "loose.png").write_bytes(encode(photo_like(140, 140, seed=99), "PNG"))   # no category folder
    out = tmp_path / "run"
    assert main(["run", str(root), "--store", str(visual_store), "--out", str(out), "--subjects", "sub-01,sub-02",
                 "--rois", "L_V1,R_V1", "--precision", "fp32", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["rank", str(out / "responses"), str(out / "rankings"), "--top-k", "4", "--labels", "folder",
                 "--null-draws", "0"]) == 0
    said = capsys.readouterr().out
    assert "labels (folder): 4 label(s) on 13 of 13 image(s); 0 unlabelled" in said   # "photos" for loose.png
    assert "most enriched label in each top-k (mean):" in said and "  L_V1: " in said
    e = pd.read_parquet(out / "rankings" / "enrichment.parquet")
    assert set(e.n_images) == {13} and dict(zip(e.label, e.n_label)) == {"faces": 5, "places": 4, "bodies": 3,
                                                                          "photos": 1}
    tm = pd.read_parquet(out / "rankings" / "label_means.parquet")
    assert set(tm.subject) == {"sub-01", "sub-02", "mean"} and (tm.groupby(["roi", "subject"]).n.sum() == 13).all()
    assert main(["report", str(out), "--roi", "L_V1", "--no-flatmaps"]) == 0
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert 'src="labels_L_V1.png"' in page and 'src="tuning_L_V1.png"' in page
    assert (out / "report" / "tuning_L_V1.png").stat().st_size > 1000


# -- the edges: integer ids, undefined odds ratios, the finite population, linear bookkeeping ----------------------
def test_label_means_with_integer_image_ids_equal_a_pandas_group_by():
    from screening.rank import rank_with_labels

    rng = np.random.default_rng(5)
    ids = np.arange(1000, 1200)                       # integer ids, as a user's own table may hold
    cats = rng.choice(["a", "b", "c"], size=ids.size)
    df = pd.DataFrame({"image_id": ids, "subject": "mean", "L_V1": rng.normal(size=ids.size),
                       "L_V2": rng.normal(size=ids.size)})
    labels = Labels("test", pd.DataFrame({"image_id": ids, "label": cats}), ids)
    res = rank_with_labels(df, labels=labels, rois=["L_V1", "L_V2"], top_k=5, null_draws=0, selectivity=False,
                           consensus=False)
    got = res.label_means.set_index(["roi", "label"])
    direct = df.assign(label=cats).melt(["image_id", "subject", "label"], var_name="roi").groupby(
        ["roi", "label"]).value.agg(["count", "mean", "std"])
    assert len(got) == len(direct) == 6
    for key, row in direct.iterrows():
        assert got.loc[key, "n"] == row["count"] > 0
        assert got.loc[key, "mean"] == pytest.approx(row["mean"], rel=1e-9)
        assert got.loc[key, "sd"] == pytest.approx(row["std"], rel=1e-9)
    assert res.labels.n_unlabelled == 0 and res.enrichment.hits.sum() > 0


@pytest.mark.parametrize("table", [[[3, 0], [5, 0]],    # a label on every image
                                   [[3, 2], [0, 0]],    # a list of every image (k = N)
                                   [[0, 0], [4, 6]],    # an empty list
                                   [[4, 0], [2, 9]],    # bc = 0: scipy's inf
                                   [[4, 3], [2, 9]]])
def test_the_odds_ratio_is_scipys_nan_where_undefined(table):
    from screening.rank._enrichment import odds_ratio

    (a, b), (c, d) = table
    want = stats.fisher_exact(table).statistic
    got = float(odds_ratio(a, b, c, d))
    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want)


def test_a_label_on_every_image_has_a_nan_odds_ratio_in_the_table():
    images = [f"i{n:02d}" for n in range(12)]
    lab = _labels({i: ["thing"] for i in images}, images)
    rankings = pd.DataFrame({"roi": "FFC", "subject": "mean", "kind": "topk", "rank": range(1, 5),
                             "image_id": images[:4]})
    row = enrichment(rankings, lab).iloc[0]
    assert np.isnan(row.odds_ratio) and row.p == pytest.approx(1.0) and row.fold == pytest.approx(1.0)


def test_enrichment_counts_the_images_with_a_finite_score_for_that_roi():
    from screening.rank import rank_with_labels

    rng = np.random.default_rng(9)
    n = 120
    ids = [f"m{i:03d}" for i in range(n)]
    cats = np.where(np.arange(n) < 40, "face", "other")
    v2 = rng.normal(size=n)
    v2[:30] = np.nan   # 30 faces have no L_V2 value: they cannot be listed there
    v2[30:40] += 5     # the other 10 top the list
    df = pd.DataFrame({"image_id": ids, "subject": "mean", "L_V1": rng.normal(size=n) + 3 * (cats == "face"),
                       "L_V2": v2})
    labels = _labels({i: [c] for i, c in zip(ids, cats)}, ids)
    res = rank_with_labels(df, labels=labels, rois=["L_V1", "L_V2"], top_k=10, bottom_k=0, null_draws=0,
                           selectivity=False, consensus=False)
    e = res.enrichment.set_index(["roi", "kind", "label"])
    assert e.loc[("L_V1", "topk", "face"), "n_images"] == 120 and e.loc[("L_V1", "topk", "face"), "n_label"] == 40
    v2_rows = e.loc["L_V2"]
    assert (v2_rows.n_images == 90).all()
    row = v2_rows.loc[("topk", "face")]
    assert (row.hits, row.n_label) == (10, 10)
    assert row.p == pytest.approx(stats.hypergeom.sf(row.hits - 1, 90, 10, 10), rel=1e-10)


def test_label_bookkeeping_is_linear_in_the_images():
    """20,000 and 200,000 string ids of real-looking paths in 1,000 folders: linear work gives a time ratio near 10,
    quadratic near 100 (the old np.isin over object arrays); 30 leaves room for noise either way."""
    import time

    def once(n):
        ids = np.array([f"{i:016x}" for i in range(n)], dtype=object)
        sources = pd.DataFrame({"image_id": ids, "source": [f"/data/imagenet/n{i % 1000:08d}/img_{i}.JPEG"
                                                            for i in range(n)]})
        t0 = time.perf_counter()
        lab = image_labels("folder", sources)
        assert lab.n_unlabelled == 0 and len(lab.names) == 1000
        m = lab.membership(ids[::-1])
        assert m.shape == (n, 1000) and m.sum() == n
        return time.perf_counter() - t0

    once(2000)   # warm imports
    small, big = min(once(20_000) for _ in range(2)), once(200_000)
    assert big / small < 30, (small, big)


def test_the_hypergeometric_tail_equals_exact_rational_sums_and_scipy():
    from fractions import Fraction
    from math import comb

    from screening.rank._enrichment import hypergeom_sf

    rng = np.random.default_rng(4)
    for n in (7, 40, 100_000, 1_000_000):
        big_k = rng.integers(0, n + 1, 60)
        k = rng.integers(0, min(n, 120) + 1, 60)
        hits = np.array([rng.integers(0, min(a, b) + 2) for a, b in zip(big_k, k)])
        got = hypergeom_sf(hits, n, big_k, k)
        assert got == pytest.approx(stats.hypergeom.sf(hits - 1, n, big_k, k), rel=1e-8, abs=1e-300)
        for i in range(0, 60, 6):   # against exact rational arithmetic: scipy's own error is ~1e-10 at n = 1e6
            a, b, c = int(big_k[i]), int(k[i]), int(hits[i])
            exact = float(Fraction(sum(comb(a, j) * comb(n - a, b - j) for j in range(max(c, 0), min(a, b) + 1)),
                                   comb(n, b)))
            assert got[i] == pytest.approx(exact, rel=1e-12, abs=1e-300)
