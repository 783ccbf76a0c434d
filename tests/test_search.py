"""screening search: streamed exact profile search against a brute-force numpy search, self-retrieval, targets and
new images encoded as the run encoded its own."""

from __future__ import annotations

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
    import json

    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    got = encode_profile(manifest, str(folder / "p3.jpg"), ("V1", "V2", "FFC", "L_V3"), "mean")
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
