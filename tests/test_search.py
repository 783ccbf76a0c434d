"""screening search: streamed exact profile search against a brute-force numpy search, self-retrieval, targets and
new images encoded as the run encoded its own."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest

from screening.exceptions import InvalidParameterError
from screening.search import parse_target, search


def _table_run(tmp_path, n=60, cols=6, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, cols)).astype(np.float32) * np.linspace(0.5, 3, cols) + np.arange(cols)
    if ties:
        x[5] = x[7]   # two images with the same profile: equal similarity to everything
    ids = [f"img{i:03d}" for i in range(n)]
    names = [f"R{j}" for j in range(cols)]
    frames = [pd.DataFrame(x, columns=names).assign(image_id=ids, subject="mean"),
              pd.DataFrame(x[::-1].copy(), columns=names).assign(image_id=ids, subject="sub-01")]
    run = tmp_path / "run"
    (run / "responses").mkdir(parents=True)
    for k, f in enumerate(frames):   # two files, small batches: the stream crosses boundaries
        f[["image_id", "subject"] + names].to_parquet(run / "responses" / f"part-{k}.parquet", row_group_size=16)
    return run, x, ids, names


def _brute(x, ids, q, metric="pearson", raw=True):
    z = (x.astype(np.float64) - x.mean(0)) / x.std(0)
    qz = (q - x.mean(0)) / x.std(0) if raw else q
    if metric == "pearson":
        z = z - z.mean(1, keepdims=True)
        qz = qz - qz.mean()
    sims = (z @ qz) / (np.linalg.norm(z, axis=1) * np.linalg.norm(qz))
    order = sorted(range(len(ids)), key=lambda i: (-sims[i], ids[i]))
    return [(ids[i], sims[i]) for i in order]


@pytest.mark.parametrize("metric", ["pearson", "cosine"])
@pytest.mark.parametrize("k", [1, 7, 500])
def test_streamed_search_equals_brute_force_with_ties_and_k_beyond_the_set(tmp_path, metric, k, monkeypatch):
    monkeypatch.setattr("screening.search.BATCH_ROWS", 11)
    run, x, ids, names = _table_run(tmp_path)
    got = search(run, like="img007", k=k, metric=metric)
    want = _brute(x, ids, x[7].astype(np.float64), metric)[:k]
    assert list(got.image_id) == [i for i, _ in want]
    assert np.allclose(got.similarity, [s for _, s in want], atol=1e-9)
    if k >= 2:
        assert set(got.image_id[:2]) == {"img005", "img007"} and list(got.image_id[:2]) == ["img005", "img007"]
    assert got["rank"].tolist() == list(range(1, len(got) + 1)) and len(got) == min(k, 60)


def test_self_retrieval_and_a_target_equal_to_an_image_profile(tmp_path):
    run, x, ids, names = _table_run(tmp_path, ties=False)
    got = search(run, like=["img013", "img040"], k=3)
    first = got[got["rank"] == 1].set_index("query")
    assert first.loc["like:img013", "image_id"] == "img013" and first.loc["like:img013", "similarity"] == \
        pytest.approx(1.0)
    assert first.loc["like:img040", "image_id"] == "img040"
    z = (x[22].astype(np.float64) - x.mean(0)) / x.std(0)
    target = {n: float(v) for n, v in zip(names, z)}
    hit = search(run, target=target, k=1)
    assert hit.image_id.tolist() == ["img022"] and hit.similarity.iloc[0] == pytest.approx(1.0)
    # several queries in one pass give what each gives alone
    both = search(run, like="img013", target=target, k=5)
    alone = pd.concat([search(run, target=target, k=5), search(run, like="img013", k=5)])
    assert sorted(map(tuple, both[["query", "image_id"]].values)) == sorted(map(tuple, alone[["query", "image_id"]].values))
    # a subject's own rows
    sub = search(run, like="img013", subject="sub-01", k=1)
    assert sub.image_id.tolist() == ["img013"]


def test_a_target_over_some_columns_only(tmp_path):
    run, x, ids, names = _table_run(tmp_path, ties=False)
    got = search(run, target="R0=+2,R3=-1,R5=0", k=4)
    cols = [0, 3, 5]
    want = _brute(x[:, cols], ids, np.array([2.0, -1.0, 0.0]), raw=False)[:4]
    assert list(got.image_id) == [i for i, _ in want]


def test_bad_queries_are_named(tmp_path):
    run, *_ = _table_run(tmp_path)
    with pytest.raises(InvalidParameterError, match="'FFC' is not ROI=VALUE"):
        parse_target("FFC")
    with pytest.raises(InvalidParameterError, match=r"\['XX'\] are not response columns of the run"):
        search(run, target="XX=1,R1=2")
    with pytest.raises(InvalidParameterError, match="neither an image_id of the run"):
        search(run, like="nope")
    with pytest.raises(InvalidParameterError, match="give at least one query"):
        search(run)
    with pytest.raises(InvalidParameterError, match="over 2 ROI\\(s\\) is always \\+1 or -1"):
        search(run, target="R1=1,R2=-1")
    assert len(search(run, target="R1=1,R2=-1", metric="cosine", k=2)) == 2
    with pytest.raises(InvalidParameterError, match="metric='euclid' is not valid"):
        search(run, like="img001", metric="euclid")


def test_a_new_image_gets_the_profile_it_had_in_the_run(tmp_path, visual_store, capsys):
    from screening.cli import main
    from screening.pipeline import screen
    from screening.search import encode_profile
    from tests.image_corpus import encode, photo_like

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        (folder / f"p{i}.jpg").write_bytes(encode(photo_like(150 + 7 * i, 120, seed=i), "JPEG"))
    res = screen(str(folder), str(visual_store), str(tmp_path / "run"), subjects=["sub-01", "sub-02"],
                 rois=["V1", "V2", "FFC", "L_V3"], precision="fp32", progress=False)
    df = res.responses()
    src = pd.read_parquet(res.outputs.files()["sources"][0])
    pid = src[src.source.str.endswith("p3.jpg")].image_id.iloc[0]
    row = df[(df.image_id == pid) & (df.subject == "mean")][["V1", "V2", "FFC", "L_V3"]].to_numpy()[0]
    from screening.pipeline.outputs import RunOutputs

    got = encode_profile(RunOutputs(str(tmp_path / "run")), str(folder / "p3.jpg"), ("V1", "V2", "FFC", "L_V3"), "mean")
    np.testing.assert_allclose(got, row, rtol=1e-5, atol=1e-6)
    # the CLI: a new file finds itself first; a table and a contact sheet are written
    out, sheet = tmp_path / "hits.csv", tmp_path / "hits.png"
    assert main(["search", str(tmp_path / "run"), "--like", str(folder / "p3.jpg"), "--target", "V1=1,FFC=-1,V2=0",
                 "-k", "3", "--out", str(out), "--sheet", str(sheet)]) == 0
    t = pd.read_csv(out)
    like = t[t["query"].str.startswith("like:")]
    assert like[like["rank"] == 1].image_id.tolist() == [pid] and like.similarity.iloc[0] == pytest.approx(1, abs=1e-5)
    assert sheet.stat().st_size > 1000
    assert t.source.str.endswith(".jpg").all()
    assert main(["search", str(tmp_path / "run"), "--target", "V1"]) == 2
    assert "is not ROI=VALUE" in capsys.readouterr().err


def test_queries_over_different_columns_in_one_pass_equal_each_alone(tmp_path):
    run, x, ids, names = _table_run(tmp_path, ties=False)
    target = "R0=+2,R3=-1,R5=0"
    both = search(run, like="img009", target=target, k=6)
    for q, alone in (("target:" + target, search(run, target=target, k=6)),
                     ("like:img009", search(run, like="img009", k=6))):
        mine = both[both["query"] == q]
        assert mine.image_id.tolist() == alone.image_id.tolist()
        assert np.allclose(mine.similarity, alone.similarity, atol=1e-12)
    want = _brute(x[:, [0, 3, 5]], ids, np.array([2.0, -1.0, 0.0]), raw=False)[:6]
    assert both[both["query"] == "target:" + target].image_id.tolist() == [i for i, _ in want]


def test_report_is_the_contact_sheet_flag_too():
    import argparse

    from screening.search import configure_parser

    p = argparse.ArgumentParser()
    configure_parser(p)
    assert p.parse_args(["run", "--like", "x", "--report", "s.png"]).sheet == "s.png"


def test_contact_sheet_names_a_tar_member_by_its_own_name(tmp_path, monkeypatch):
    from PIL import Image

    import screening.report.contact_sheet as contact_sheet
    from screening.search import _sheet

    seen = {}

    def fake_sheet(frame, values, images, *, title, out_png, labels):
        seen.update(labels)
        Image.new("RGB", (4, 4)).save(out_png)

    monkeypatch.setattr(contact_sheet, "make_contact_sheet", fake_sheet)
    table = pd.DataFrame({"query": ["like:img001"] * 2, "rank": [1, 2], "image_id": ["a", "b"],
                          "similarity": [0.9, 0.8],
                          "source": ["tar://photos/cat.jpg::/gone/shard-000.tar", "/data/dog.png"]})
    _sheet(tmp_path, table, str(tmp_path / "sheet.png"), None)
    assert seen == {"a": "cat.jpg", "b": "dog.png"}


# -- the edges: constant and NaN columns, flat profiles, several queries (issue: wrong answers at the edges) ---------
def _write(tmp, x, names, ids):
    import os

    os.makedirs(os.path.join(tmp, "responses"), exist_ok=True)
    pd.DataFrame(x, columns=names).assign(image_id=ids, subject="mean").to_parquet(
        os.path.join(tmp, "responses", "part-0.parquet"), row_group_size=7)
    return tmp


def _brute_query(x, ids, names, q: dict, raw: bool, metric="pearson"):
    """An explicit z-matrix Pearson over the query's scorable columns: {image_id: score}, or None if refused."""
    cols = [names.index(c) for c in q]
    v = np.array(list(q.values()), float)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # an all-NaN column
        mu, sd, n = np.nanmean(x, 0), np.nanstd(x, 0), np.isfinite(x).sum(0)
    keep = [j for j, c in enumerate(cols) if n[c] > 0 and sd[c] > 1e-9 * abs(mu[c]) and np.isfinite(v[j])]
    if len(keep) < (3 if metric == "pearson" else 2):
        return None
    c = [cols[j] for j in keep]
    qz = (v[keep] - mu[c]) / sd[c] if raw else v[keep]
    if metric == "pearson":
        qz = qz - qz.mean()
    if np.linalg.norm(qz) < 1e-12:
        return None
    out = {}
    for i, row in zip(ids, x[:, c]):
        if not np.isfinite(row).all():
            continue
        z = (row - mu[c]) / sd[c]
        if metric == "pearson":
            z = z - z.mean()
        if np.linalg.norm(z) > 1e-6:
            out[i] = float(z @ qz / (np.linalg.norm(z) * np.linalg.norm(qz)))
    return out


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=bool(os.environ.get("SCREENING_CI")))   # CI: the same draws every run
@given(n=st.integers(5, 40), cols=st.integers(3, 8), seed=st.integers(0, 2**32 - 1),
       n_const=st.integers(0, 2), nan_share=st.sampled_from([0.0, 0.05, 0.3]), all_nan=st.booleans(),
       n_queries=st.integers(1, 3), metric=st.sampled_from(["pearson", "cosine"]))
def test_search_scorer_equals_brute_force_numpy_on_any_shape(n, cols, seed, n_const, nan_share, all_nan, n_queries,
                                                             metric):
    import tempfile

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, cols)) * rng.uniform(0.1, 5, cols) + rng.uniform(-20, 20, cols)
    x = x.astype(np.float32).astype(np.float64)
    for j in rng.choice(cols, size=min(n_const, cols), replace=False):
        x[:, j] = rng.normal()                                 # a constant column
    x[rng.random(x.shape) < nan_share] = np.nan
    if all_nan:
        x[:, rng.integers(cols)] = np.nan                      # an ROI with no vertex over the threshold
    names = [f"R{j}" for j in range(cols)]
    ids = [f"i{i:02d}" for i in range(n)]
    queries = []
    for _ in range(n_queries):
        subset = sorted(rng.choice(cols, size=int(rng.integers(min(3, cols), cols + 1)), replace=False))
        queries.append({names[j]: float(rng.normal() * 2) for j in subset})
    like = ids[int(rng.integers(n))]
    with tempfile.TemporaryDirectory() as tmp:
        run = _write(tmp, x.astype(np.float32), names, ids)
        want = {f"target:{','.join(f'{a}={b:g}' for a, b in q.items())}": _brute_query(x, ids, names, q, False, metric)
                for q in queries}
        want[f"like:{like}"] = _brute_query(x, ids, names, dict(zip(names, x[ids.index(like)])), True, metric)
        valid = {k: v for k, v in want.items() if v is not None}
        for name in set(want) - set(valid):   # refused alone, with a message that names it
            kw = {"like": like} if name.startswith("like:") else {"target": queries[list(want).index(name)]}
            with pytest.raises(InvalidParameterError):
                search(run, k=n, metric=metric, **kw)
        targets = [q for q, name in zip(queries, want) if name in valid]
        if not valid:
            return
        got = search(run, target=targets, like=[like] if f"like:{like}" in valid else [], k=n, metric=metric)
        for name, scores in valid.items():
            mine = got[got["query"] == name]
            assert dict(zip(mine.image_id, mine.similarity)) == pytest.approx(scores, abs=1e-6)
            assert (mine.similarity.abs() <= 1 + 1e-9).all()
        if f"like:{like}" in valid and like in valid[f"like:{like}"]:
            mine = got[got["query"] == f"like:{like}"]
            assert mine.similarity.iloc[0] == pytest.approx(1.0)


def test_a_constant_column_is_left_out_and_scores_stay_in_range(tmp_path):
    run, x, ids, names = _table_run(tmp_path, ties=False)
    x = x.astype(np.float32).astype(np.float64)   # as the table holds them
    x[:, 2] = 4.0
    _write(str(run), x.astype(np.float32), names, ids)
    (run / "responses" / "part-1.parquet").unlink()
    got = search(run, like="img011", k=60)
    keep = [0, 1, 3, 4, 5]
    want = dict(_brute(x[:, keep], ids, x[11, keep]))
    assert dict(zip(got.image_id, got.similarity)) == pytest.approx(want, abs=1e-9)
    assert got.similarity.between(-1 - 1e-12, 1 + 1e-12).all() and got.similarity.iloc[0] == pytest.approx(1.0)
    assert any("column R2 left out: the same value for every image" in s for s in got.attrs["notes"])
    t = search(run, target="R0=1,R1=-1,R2=0,R3=2", k=60)
    assert t.similarity.between(-1 - 1e-12, 1 + 1e-12).all()


def test_a_nan_in_one_querys_column_leaves_the_other_query_alone_and_is_counted(tmp_path):
    run, x, ids, names = _table_run(tmp_path, ties=False)
    x = x.astype(np.float32).astype(np.float64)   # as the table holds them
    x[[3, 8], 5] = np.nan   # only query b scores R5
    _write(str(run), x.astype(np.float32), names, ids)
    (run / "responses" / "part-1.parquet").unlink()
    a, b = "R0=1,R1=-1,R2=0.5", "R3=1,R4=-1,R5=2"
    both = search(run, target=[a, b], k=60)
    for q in (a, b):
        alone = search(run, target=q, k=60)
        mine = both[both["query"] == "target:" + q]
        assert mine.image_id.tolist() == alone.image_id.tolist()
        assert np.allclose(mine.similarity, alone.similarity, atol=1e-12)
    assert set(both[both["query"] == "target:" + a].image_id) == set(ids)               # img003, img008 kept
    assert not {"img003", "img008"} & set(both[both["query"] == "target:" + b].image_id)
    assert f"target:{b}: 2 image(s) left out: NaN in a scored column" in both.attrs["notes"]


def test_an_all_nan_column_does_not_empty_like_over_every_column(tmp_path, capsys):
    from screening.cli import main

    run, x, ids, names = _table_run(tmp_path, ties=False)
    x = x.astype(np.float32).astype(np.float64)   # as the table holds them
    x[:, 4] = np.nan
    _write(str(run), x.astype(np.float32), names, ids)
    (run / "responses" / "part-1.parquet").unlink()
    got = search(run, like="img020", k=5)
    assert len(got) == 5 and got.image_id.iloc[0] == "img020" and got.similarity.iloc[0] == pytest.approx(1.0)
    assert main(["search", str(run), "--like", "img020", "-k", "2"]) == 0
    assert "column R4 left out: no finite value in the run" in capsys.readouterr().err


def test_a_flat_target_and_target_rois_outside_rois_are_refused(tmp_path, capsys):
    from screening.cli import main

    run, *_ = _table_run(tmp_path)
    assert main(["search", str(run), "--target", "R0=1,R1=1,R2=1"]) == 2
    err = capsys.readouterr().err
    assert "profile is flat" in err and len(err.strip().splitlines()) <= 2
    with pytest.raises(InvalidParameterError, match=r"names \['R5'\], which are not among rois"):
        search(run, target="R0=1,R1=-1,R2=2,R5=3", rois=["R0", "R1", "R2"])
    assert len(search(run, target="R0=1,R1=1,R2=1", metric="cosine", k=3)) == 3
