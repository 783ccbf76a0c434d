"""``screening run --vertex-stats``: per-label vertex statistics streamed from the encoders' full readout, committed
with their units, merged in unit order; equal to numpy over the API's vertex outputs, the same after a resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from screening.exceptions import InvalidParameterError

SUBJECTS = ["sub-01", "sub-02"]


def _folder(root, per_class=(3, 1, 2), seed=0):
    """Real JPEG/PNG photos in class folders (the last class alone in a second shard-sized group)."""
    from tests.image_corpus import encode, photo_like

    files = []
    for c, n in enumerate(per_class):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            p = d / f"img{i}.{'jpg' if i % 2 == 0 else 'png'}"
            p.write_bytes(encode(photo_like(120 + 9 * i + 5 * c, 100 + 7 * c, seed=seed + 10 * c + i),
                                 "JPEG" if i % 2 == 0 else "PNG"))
            files.append(p)
    return files


def _shards(root, n_shards=3, per_shard=4):
    """Real JPEGs in Parquet shards (a unit each); ids and bytes in order."""
    from tests.test_pipeline import _jpegs, write_shard

    ids, data = [], []
    for k in range(n_shards):
        sid = [f"v{k}-{i}" for i in range(per_shard)]
        jpegs = _jpegs(per_shard, 50 + k, size=(96 + 8 * k, 72))
        write_shard(root / f"part-{k:03d}.parquet", sid, jpegs)
        ids += sid
        data += jpegs
    return ids, data


def _api_vertices(store, data):
    """fp32 full vertex outputs of the API, per subject: (N, S, V)."""
    from screening.api import BERG
    from screening.preprocess import preprocess_bytes

    berg = BERG(str(store))
    model = berg.get_encoding_model(berg.store.model_ids()[0], subject=[1, 2], precision="fp32")
    out = berg.encode(model, np.stack([preprocess_bytes(b) for b in data]))[model.weights.dataset]
    return np.stack([out[s] for s in SUBJECTS], axis=1).astype(np.float64)


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory, visual_store):
    """One uninterrupted run over 3 units; a multi-label table: even/odd, 'any' on two images (two labels each),
    'solo' on one image only."""
    from screening.pipeline import screen

    root = tmp_path_factory.mktemp("vs")
    ids, data = _shards(root / "shards")
    table = pd.DataFrame({"image_id": ids, "label": ["even" if i % 2 == 0 else "odd" for i in range(len(ids))]})
    table = pd.concat([table, pd.DataFrame({"image_id": [ids[0], ids[5], ids[7]], "label": ["any", "any", "solo"]})])
    table.to_csv(root / "labels.csv", index=False)
    res = screen(str(root / "shards"), str(visual_store), str(root / "out"), subjects=SUBJECTS, rois=["V1", "V2"],
                 precision="fp32", vertex_stats=str(root / "labels.csv"), progress=False, batch_size=2,
                 write_batch_size=2)
    return root, ids, data, table, res


def test_streamed_label_stats_equal_numpy_over_the_api_vertex_outputs(labelled_run, visual_store):
    root, ids, data, table, res = labelled_run
    stats = res.vertex_stats()
    values = _api_vertices(visual_store, data)
    index = {i: k for k, i in enumerate(ids)}
    assert sorted(stats.labels) == ["any", "even", "odd", "solo"] and stats.subjects == SUBJECTS
    for label, g in table.groupby("label"):
        rows = [index[i] for i in g.image_id]
        assert stats.n[stats.index(label)] == len(rows)
        np.testing.assert_allclose(stats.mean(label), values[rows].mean(axis=0), rtol=1e-5, atol=1e-6)
        if len(rows) > 1:
            np.testing.assert_allclose(stats.var(label), values[rows].var(axis=0, ddof=1), rtol=1e-4, atol=1e-9)
        else:   # 'solo' has one image: a mean, no variance
            assert np.isnan(stats.var(label)).all()
    meta = json.loads((root / "out" / "vertex_stats" / "meta.json").read_text())
    assert len(meta["units"]) == 3 == len(json.loads((root / "out" / "manifest.json").read_text())["shards"])
    assert not list((root / "out").glob("vstats/*/*.npz"))   # merged partials are gone: O(labels x vertices) on disk


def test_a_resumed_run_merges_to_the_same_statistics(labelled_run, visual_store, tmp_path, monkeypatch):
    """Two ways a run stops between units: (a) it had screened only some units (here: the inputs had 2 of the 3 shards,
    the third is screened by the rerun); (b) it stopped after a unit's commit marker and before that unit's merge
    (its partials stay on disk; the rerun merges them and screens nothing). Both end with the uninterrupted run's
    statistics: the same partials merged in the same unit order."""
    import shutil

    from screening.pipeline import screen, vertex_sink

    root, ids, data, table, res = labelled_run
    whole = res.vertex_stats()
    kw = dict(subjects=SUBJECTS, rois=["V1", "V2"], precision="fp32", vertex_stats=str(root / "labels.csv"),
              progress=False, batch_size=2, write_batch_size=2)
    shards = tmp_path / "shards"
    shards.mkdir()
    for f in sorted((root / "shards").glob("*.parquet"))[:2]:
        shutil.copy(f, shards / f.name)
    screen(str(shards), str(visual_store), str(tmp_path / "a"), **kw)                 # (a) 2 of 3 units
    shutil.copy(sorted((root / "shards").glob("*.parquet"))[2], shards)
    again = screen(str(shards), str(visual_store), str(tmp_path / "a"), **kw)
    assert again.units_skipped == 2 and again.units_run == 1
    _assert_same(again.vertex_stats(), whole)

    real = vertex_sink.VertexStatsMerger.add
    last = sorted(json.loads((root / "out" / "manifest.json").read_text())["shards"], key=lambda s: s["path"])[-1]
    monkeypatch.setattr(vertex_sink.VertexStatsMerger, "add",     # (b) the process ends before the last merge
                        lambda self, marker: None if marker["unit"] == last["unit"] else real(self, marker))
    screen(str(root / "shards"), str(visual_store), str(tmp_path / "b"), **kw)
    meta = json.loads((tmp_path / "b" / "vertex_stats" / "meta.json").read_text())
    assert last["unit"] not in meta["units"] and list((tmp_path / "b" / "vstats" / last["unit"]).glob("*.npz"))
    monkeypatch.setattr(vertex_sink.VertexStatsMerger, "add", real)
    rerun = screen(str(root / "shards"), str(visual_store), str(tmp_path / "b"), **kw)
    assert rerun.units_run == 0
    _assert_same(rerun.vertex_stats(), whole)
    assert not list((tmp_path / "b").glob("vstats/*/*.npz"))


def _assert_same(got, want):
    assert got.labels == want.labels and np.array_equal(got.n, want.n)
    np.testing.assert_allclose(got.sum, want.sum, rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-9, atol=1e-12)


def _load(out):
    from screening.vertex_stats import VertexStats

    return VertexStats.load(str(out / "vertex_stats"))


def test_requests_that_cannot_work_are_refused_with_the_numbers(tmp_path, visual_store, monkeypatch, capsys):
    from screening.cli import main
    from screening.pipeline import vertex_sink

    _folder(tmp_path / "imgs", per_class=(1, 1))
    base = ["run", str(tmp_path / "imgs"), "--store", str(visual_store), "--out", str(tmp_path / "o")]
    assert main(base + ["--vertex-stats", "column:label"]) == 2   # a folder has no columns
    err = capsys.readouterr().err
    assert "column:label reads labels from a column of Parquet input shards" in err and "files input" in err
    assert main(base[:-1] + ["s3://bucket/o", "--vertex-stats", "folder"]) == 2
    assert "local" in capsys.readouterr().err
    monkeypatch.setattr(vertex_sink, "max_bytes", lambda: int(1.5 * 2**20))   # room for one label
    assert main(base + ["--vertex-stats", "folder"]) == 2
    err = capsys.readouterr().err
    assert "2 labels x 8 subjects x 7831 vertices need 1.9 MiB" in err and len(err.strip().splitlines()) <= 2
    with pytest.raises(InvalidParameterError, match="--redo-changed"):
        from screening.pipeline.config import RunConfig

        RunConfig.of(str(tmp_path / "imgs"), str(visual_store), str(tmp_path / "o"), vertex_stats="folder",
                     redo_changed=True)


def _labelled_shards(root):
    """2 Parquet shards of real JPEGs with a Hugging Face style integer ``label`` column (ClassLabel names in the
    schema metadata) and no id column; one row unlabelled (null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.test_pipeline import _jpegs

    meta = {b"huggingface": json.dumps({"info": {"features": {"label": {"names": ["cat", "dog"]}}}}).encode()}
    classes = [[0, 1, 0], [None, 1, 1]]
    data = []
    for k, labels in enumerate(classes):
        jpegs = _jpegs(len(labels), 70 + k, size=(80, 64 + 8 * k))
        table = pa.table({"image": pa.array([{"bytes": b, "path": f"img{k}{i}.jpg"} for i, b in enumerate(jpegs)]),
                          "label": pa.array(labels, pa.int64())})
        root.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.replace_schema_metadata(meta), root / f"train-{k:05d}.parquet")
        data += jpegs
    return data, [v for labels in classes for v in labels]


def test_column_labels_travel_with_parquet_rows_to_the_encoders(tmp_path, visual_store):
    """``--vertex-stats column:label``: each row's value of the input column reaches the encoder's vertex stage; the
    per-label means are numpy's over the API's vertex outputs of those rows (class ids named from the metadata)."""
    from screening.pipeline import screen

    data, labels = _labelled_shards(tmp_path / "shards")
    res = screen(str(tmp_path / "shards"), str(visual_store), str(tmp_path / "out"), subjects=SUBJECTS, rois=["V1"],
                 precision="fp32", vertex_stats="column:label", progress=False, batch_size=2, write_batch_size=2)
    stats = res.vertex_stats()
    values = _api_vertices(visual_store, data)
    assert sorted(stats.labels) == ["cat", "dog"] and stats.images == 6 and stats.n.sum() == 5   # null: unlabelled
    for name, cls in (("cat", 0), ("dog", 1)):
        rows = [i for i, v in enumerate(labels) if v == cls]
        assert stats.n[stats.index(name)] == len(rows)
        np.testing.assert_allclose(stats.mean(name), values[rows].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert len(res.responses().image_id.unique()) == 6   # every row screened, labelled or not


def test_a_missing_label_column_is_refused_naming_the_columns(tmp_path, visual_store, capsys, monkeypatch):
    import pickle

    from screening.cli import main
    from screening.pipeline import vertex_sink
    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan

    _labelled_shards(tmp_path / "shards")
    with monkeypatch.context() as m:   # room for one label: the column's 2 ClassLabel names are refused at planning
        m.setattr(vertex_sink, "max_bytes", lambda: int(1.5 * 2**20))
        assert main(["run", str(tmp_path / "shards"), "--store", str(visual_store), "--out", str(tmp_path / "o"),
                     "--vertex-stats", "column:label"]) == 2
        assert "2 labels x 8 subjects x 7831 vertices need 1.9 MiB" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "shards"), "--store", str(visual_store), "--out", str(tmp_path / "o"),
                 "--vertex-stats", "column:category"]) == 2
    err = capsys.readouterr().err.strip()
    assert "column:category (the labels) is not a column of the input shards; their columns: image, label" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(InvalidParameterError) as got:
        build_plan(RunConfig.of(str(tmp_path / "shards"), str(visual_store), str(tmp_path / "o"),
                                vertex_stats="column:category"))
    assert str(pickle.loads(pickle.dumps(got.value))) == str(got.value)
    with pytest.raises(InvalidParameterError, match="names no column"):
        RunConfig.of(str(tmp_path / "shards"), str(visual_store), str(tmp_path / "o"), vertex_stats="column:")


def test_chan_merges_of_batch_statistics_equal_one_pass_in_any_grouping():
    from screening.vertex_stats import VertexStats

    rng = np.random.default_rng(1)
    values = rng.normal(3, 2, size=(40, 2, 30))
    member = (rng.random((40, 3)) < 0.4).astype(float)
    member[:, 2] = 0
    member[7, 2] = 1   # a label with one image
    whole = VertexStats.of_values(values, member, ["a", "b", "c"], SUBJECTS)
    for cuts in ([0, 5, 40], [0, 1, 2, 3, 17, 39, 40]):
        parts = [VertexStats.of_values(values[a:b], member[a:b], ["a", "b", "c"], SUBJECTS)
                 for a, b in zip(cuts, cuts[1:])]
        acc = parts[0]
        for p in parts[1:]:
            acc = acc.merge(p)
        np.testing.assert_allclose(acc.sum, whole.sum, rtol=1e-12)
        np.testing.assert_allclose(acc.m2, whole.m2, rtol=1e-10)
        assert np.array_equal(acc.n, whole.n) and acc.images == 40
