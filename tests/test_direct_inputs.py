"""`screening run` straight on what people have: a folder of photos, WebDataset / plain tars, a CSV list.

Real photos (the packaged ones, JPEG and PNG), real local Ray, the CLI in-process (`screening.cli.main`), then
`screening report`. Rows land exactly once by identity (unit, row); resume knows its inputs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from screening.fs import StorageOptions
from screening.cli import main
from tests.image_corpus import bad_image_corpus, encode

SUBJECTS = "sub-01,sub-02"
ROIS = "V1,FFC"
N_PHOTOS = 8


def _sid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """name -> encoded bytes of real photographs: JPEG, with every third one PNG."""
    from PIL import Image

    from screening.demo import packaged_photos

    out, seen = {}, set()
    for name, (rgb, _) in sorted(packaged_photos().items()):
        if rgb.tobytes() in seen:   # skimage's "cat" is "chelsea"
            continue
        seen.add(rgb.tobytes())
        fmt, ext = ("PNG", "png") if len(out) % 3 == 2 else ("JPEG", "jpg")
        out[f"{name}.{ext}"] = encode(Image.fromarray(rgb), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        if len(out) == N_PHOTOS:
            return out
    pytest.fail(f"only {len(out)} distinct packaged photos (scikit-image / scikit-learn missing?)")


def _run(images, store, out, *extra) -> int:
    return main(["run", str(images), "--store", str(store), "--out", str(out), "--subjects", SUBJECTS,
                 "--rois", ROIS, "--precision", "fp32", "--num-encoders", "1", "--batch-size", "8", "--no-progress",
                 *extra])


def _sources(out):
    from screening.pipeline import committed_files

    import pandas as pd
    return pd.concat([pq.read_table(f).to_pandas() for f in committed_files(str(out))["sources"]], ignore_index=True)


def _committed(out):
    from screening.pipeline import committed_files

    files = committed_files(str(out))
    resp = [pq.read_table(f).to_pandas() for f in files["responses"]]
    errs = [pq.read_table(f).to_pandas() for f in files["errors"]]
    import pandas as pd

    return (pd.concat(resp) if resp else None), (pd.concat(errs) if errs else pd.DataFrame(columns=["source"]))


def _assert_each_once(resp, ids, labels=3):
    """Every id has one row per subject (+ mean): the image was screened exactly once."""
    counts = resp.groupby("image_id").size()
    assert sorted(counts.index) == sorted(ids)
    assert set(counts) == {labels}


def _assert_ranked_and_reported(out, ids, names):
    rankings = pq.read_table(out / "rankings" / "rankings.parquet").to_pandas()
    top = rankings[(rankings.kind == "topk") & (rankings.roi == "V1") & (rankings.subject == "mean")]
    assert sorted(top.image_id) == sorted(ids)   # k = all ranked: each photo once
    html = (out / "report" / "index.html").read_text()
    assert "V1" in html and "<html" in html.lower()
    # names and originals come from the run's sources table: no placeholders, each original linked beside the page
    assert all(n in html for n in names), [n for n in names if n not in html]
    assert "placeholders" not in html
    originals = {p.stem for p in (out / "report" / "images").iterdir()}
    assert len(originals) == len(set(ids))


@pytest.fixture(scope="module")
def folder_run(ray_local, visual_store, photos, tmp_path_factory):
    """A folder tree of photos plus one corrupt JPEG and a README; units of 4 files."""
    root = tmp_path_factory.mktemp("direct") / "photos"
    for i, (name, data) in enumerate(sorted(photos.items())):
        p = root / ("a" if i % 2 else "b/c") / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "broken.jpg").write_bytes(bad_image_corpus()["truncated_jpeg"][0])
    (root / "README.txt").write_text("not an image")
    out = root.parent / "out"
    mp = pytest.MonkeyPatch()
    mp.setattr("screening.sources.files.FILES_PER_UNIT", 4)
    try:
        rc = _run(root, visual_store, out)
    finally:
        mp.undo()
    return root, out, rc


def test_folder_of_photos_to_rankings_and_report(folder_run, photos, monkeypatch):
    root, out, rc = folder_run
    assert rc == 0
    resp, errs = _committed(out)
    _assert_each_once(resp, [_sid(d) for d in photos.values()])
    # the corrupt image is an errors row naming the file; the rest committed
    assert list(errs.source) == [str(root / "broken.jpg")] and list(errs.stage) == ["decode"]
    markers = sorted(os.listdir(out / "_committed"))
    assert len(markers) == 3   # 9 image files in units of 4
    src = _sources(out)   # one (id, file) row per screened photo
    assert sorted(src.image_id) == sorted(set(resp.image_id)) and all(s.startswith(str(root)) for s in src.source)
    assert main(["report", str(out), "--no-flatmaps"]) == 0
    _assert_ranked_and_reported(out, [_sid(d) for d in photos.values()], sorted(photos))


def test_folder_rerun_does_nothing_and_a_changed_file_is_refused_or_redone(folder_run, visual_store, capsys,
                                                                            monkeypatch):
    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan

    root, out, _ = folder_run
    monkeypatch.setattr("screening.sources.files.FILES_PER_UNIT", 4)
    before = {n: (out / "_committed" / n).read_bytes() for n in os.listdir(out / "_committed")}
    assert _run(root, visual_store, out) == 0
    assert "0 unit(s), 0 images" in capsys.readouterr().out
    assert {n: (out / "_committed" / n).read_bytes() for n in os.listdir(out / "_committed")} == before

    victim = sorted(root.rglob("*.jpg"))[-1]   # same name, new bytes
    victim.write_bytes(victim.read_bytes()[:-2] + b"\xff\xd9")
    assert _run(root, visual_store, out) == 2
    err = capsys.readouterr().err
    assert "changed since they were screened" in err and "--redo-changed" in err and "Traceback" not in err
    plan = build_plan(RunConfig.of(str(root), str(visual_store), str(out), subjects=SUBJECTS, rois=ROIS, precision="fp32",
                      batch_size=8, redo_changed=True))
    unit = [s.unit for s in plan.shards if str(victim) in s.files]
    assert plan.redo == tuple(unit) and [s.unit for s in plan.pending] == unit   # only that unit is redone


def _read_rows(plan):
    """What the read tasks emit for the plan's pending units (called in-process): (unit, row) -> (id, source)."""
    from screening.sources import read_units as read_shards
    import pyarrow as pa

    got = {}
    for s in plan.pending:
        for t in read_shards(pa.Table.from_pylist([s.read_item()]), spec=plan.spec, chunk_rows=2):
            for r in t.to_pylist():
                assert (r["unit"], r["row"]) not in got
                got[(r["unit"], r["row"])] = (r["image_id"], r["source"], r["read_error"])
    assert sorted(got) == sorted((s.unit, i) for s in plan.pending for i in range(s.rows))
    return got


def _add(tar, name: str, payload: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _webdataset(dirpath, photos, n_shards=2):
    """img2dataset layout: shard-00000.tar with key.jpg + key.json + key.txt, a metadata .parquet per shard; the last
    shard also holds a corrupt JPEG."""
    import pyarrow as pa

    dirpath.mkdir(parents=True)
    items = sorted(photos.items())
    for s in range(n_shards):
        with tarfile.open(dirpath / f"shard-{s:05d}.tar", "w") as tar:
            samples = items[s::n_shards] + ([("broken.jpg", bad_image_corpus()["truncated_jpeg"][0])]
                                            if s == n_shards - 1 else [])
            for i, (name, data) in enumerate(samples):
                key = f"{s:05d}{i:04d}"
                _add(tar, key + os.path.splitext(name)[1], data)
                _add(tar, key + ".json", json.dumps({"key": key, "url": name}).encode())
                _add(tar, key + ".txt", f"a caption for {name}".encode())
        pq.write_table(pa.table({"key": [f"{s:05d}"]}), dirpath / f"shard-{s:05d}.parquet")


def test_webdataset_shards_to_rankings_and_report(ray_local, visual_store, photos, tmp_path, capsys):
    shards = tmp_path / "wds"
    _webdataset(shards, photos)
    out = tmp_path / "out"
    pattern = str(shards / "shard-{00000..00001}.tar")
    assert _run(pattern, visual_store, out) == 0
    resp, errs = _committed(out)
    _assert_each_once(resp, [_sid(d) for d in photos.values()])
    assert list(errs.source) == [f"tar://00001{N_PHOTOS // 2:04d}.jpg::{shards / 'shard-00001.tar'}"]
    assert list(errs.stage) == ["decode"]
    markers = {n: json.loads((out / "_committed" / n).read_text()) for n in os.listdir(out / "_committed")}
    assert sorted(m["input"]["uri"] for m in markers.values()) == [str(shards / f"shard-0000{i}.tar") for i in (0, 1)]
    assert sum(m["input"]["rows"] for m in markers.values()) == N_PHOTOS + 1
    assert main(["report", str(out), "--no-flatmaps"]) == 0
    src = _sources(out)
    assert sorted(src.image_id) == sorted(set(resp.image_id))
    members = sorted(s[len("tar://"):].split("::")[0] for s in src.source)
    _assert_ranked_and_reported(out, [_sid(d) for d in photos.values()], members)

    capsys.readouterr()
    with tarfile.open(shards / "shard-00000.tar", "a") as tar:   # the same name, a different archive
        _add(tar, "extra.jpg", sorted(photos.values())[0])
    assert _run(pattern, visual_store, out) == 2
    err = capsys.readouterr().err
    assert "shard-00000.tar" in err and "changed since they were screened" in err and "Traceback" not in err


def test_plain_tar_rows_land_once_by_identity(ray_local, visual_store, photos, tmp_path):
    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan

    items = sorted(photos.items())[:4]
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in items + [("README.md", b"metadata, passed over")]:
            info = tarfile.TarInfo(f"set/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    plan = build_plan(RunConfig.of(str(archive), str(visual_store), str(tmp_path / "out"), subjects=SUBJECTS, rois=ROIS))
    (shard,) = plan.shards
    assert (shard.kind, shard.rows, shard.uri, shard.size) == ("tar", 4, str(archive), archive.stat().st_size)
    got = _read_rows(plan)
    assert [got[(shard.unit, i)] for i in range(4)] == [
        (_sid(d), f"tar://set/{n}::{archive}", "") for n, d in items]


def test_truncated_tar_keeps_its_images_and_names_the_break(ray_local, visual_store, photos, tmp_path):
    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan

    items = sorted(photos.items())[:2]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "cut.tar"
    first = 512 + -(-len(items[0][1]) // 512) * 512   # header + data padded to 512-byte blocks
    archive.write_bytes(buf.getvalue()[: first + 512 + 100])   # cut inside the 2nd member's data
    plan = build_plan(RunConfig.of(str(archive), str(visual_store), str(tmp_path / "out"), subjects=SUBJECTS, rois=ROIS))
    got = _read_rows(plan)
    unit = plan.shards[0].unit
    assert got[(unit, 0)][:2] == (_sid(items[0][1]), f"tar://{items[0][0]}::{archive}")
    assert got[(unit, 1)][0] is None and "unreadable after 1 image" in got[(unit, 1)][2]


def test_csv_and_text_lists_of_paths(visual_store, photos, tmp_path):
    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan

    items = sorted(photos.items())[:3]
    (tmp_path / "sub").mkdir()
    for name, data in items:
        (tmp_path / "sub" / name).write_bytes(data)
    lst = tmp_path / "images.csv"
    with open(lst, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "path"])
        for name, _ in items:
            w.writerow(["x", f"sub/{name}"])   # relative to the list's folder
        w.writerow(["y", "gone.jpg"])   # listed, missing: an error row naming it
    txt = tmp_path / "images.txt"
    txt.write_text("# one per line\n" + "".join(f"{tmp_path / 'sub' / n}\n" for n, _ in items))
    for src, n in ((lst, 4), (txt, 3)):
        plan = build_plan(RunConfig.of(str(src), str(visual_store), str(tmp_path / f"out-{src.suffix}"), subjects=SUBJECTS,
                          rois=ROIS))
        got = _read_rows(plan)
        rows = [got[k] for k in sorted(got)]
        assert len(rows) == n
        assert [r[:2] for r in rows[:3]] == [(_sid(d), str(tmp_path / "sub" / nm)) for nm, d in items]
    assert all(r[2] == "" for r in rows)   # the .txt list: every file read
    plan = build_plan(RunConfig.of(str(lst), str(visual_store), str(tmp_path / "out-csv"), subjects=SUBJECTS, rois=ROIS))
    last = _read_rows(plan)[(plan.shards[0].unit, 3)]
    assert last[:2] == (None, str(tmp_path / "gone.jpg")) and "FileNotFoundError" in last[2]


def test_s3_folder_and_uri_list(visual_store, photos, tmp_path, monkeypatch):
    """On S3 (moto on loopback): a prefix of images and a CSV of s3:// URIs, listed (sizes, ETags) and read."""
    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan
    from tests.s3server import dummy_credentials, s3_server, upload_dir

    dummy_credentials(monkeypatch)
    items = sorted(photos.items())[:3]
    (tmp_path / "imgs").mkdir()
    for name, data in items:
        (tmp_path / "imgs" / name).write_bytes(data)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "uris.csv").write_text("uri\n" + "".join(f"s3://data/imgs/{n}\n" for n, _ in items))
    with s3_server() as endpoint:
        for d in ("imgs", "lists"):
            upload_dir(endpoint, tmp_path / d, "data", d)
        for src, kind in (("s3://data/imgs", "files"), ("s3://data/lists/uris.csv", "files")):
            plan = build_plan(RunConfig.of(src, str(visual_store), str(tmp_path / "out" / kind / src[-4:]), subjects=SUBJECTS,
                              rois=ROIS, endpoint_url=str(endpoint)))
            assert [s.kind for s in plan.shards] == [kind] and plan.shards[0].rows == 3
            assert plan.shards[0].version.startswith("files-sha256:")
            import pyarrow as pa

            from screening.sources import read_units as read_shards

            rows = [r for t in read_shards(pa.Table.from_pylist([plan.shards[0].read_item()]), spec=plan.spec,
                                           storage=StorageOptions(endpoint_url=str(endpoint))) for r in t.to_pylist()]
            assert [(r["row"], r["image_id"], r["read_error"]) for r in rows] == [
                (i, _sid(d), "") for i, (_, d) in enumerate(items)], src
            assert rows[0]["source"] == f"s3://data/imgs/{items[0][0]}"


@pytest.mark.parametrize("make, shown", [
    (lambda p: [(p / f"n{i}.txt").write_text("x") for i in range(3)] and p, r"found 3 \.txt"),
    (lambda p: [(p / "photos.zip").write_bytes(b"PK\x03\x04")] and p / "photos.zip", r"is a \.zip file"),
    (lambda p: p, r"it is empty"),
])
def test_unsupported_input_names_what_was_found_and_what_is_accepted(visual_store, tmp_path, capsys, make, shown):
    import re

    src = tmp_path / "in"
    src.mkdir()
    images = make(src)
    assert _run(images, visual_store, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert re.search(shown, err), err
    assert "accepted: Parquet image shards" in err and ".tar" in err and ".csv" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_folder_symlinks_are_screened_or_named_and_other_files_are_counted(ray_local, visual_store, photos, tmp_path,
                                                                          capsys):
    """Category folders built of symlinks: a link to a photo is screened as that photo; a dangling link and a link
    loop are error rows that say so; a linked folder (not followed), a folder named like an image and a text file
    are counted in the summary, not dropped silently."""
    names = sorted(photos)
    store_dir, root = tmp_path / "library", tmp_path / "faces"
    store_dir.mkdir()
    root.mkdir()
    for n in names[:2]:
        (root / n).write_bytes(photos[n])
    (store_dir / names[2]).write_bytes(photos[names[2]])
    (root / "linked.jpg").symlink_to(store_dir / names[2])
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (root / "loop-a.jpg").symlink_to(root / "loop-b.jpg")
    (root / "loop-b.jpg").symlink_to(root / "loop-a.jpg")
    (root / "dir.jpg").mkdir()
    (root / "notes.txt").write_text("not an image")
    (root / "more").symlink_to(store_dir, target_is_directory=True)
    out = tmp_path / "out"
    assert _run(root, visual_store, out) == 0
    printed = capsys.readouterr().out
    resp, errs = _committed(out)
    _assert_each_once(resp, [_sid(photos[n]) for n in names[:3]])
    src = _sources(out)
    assert str(root / "linked.jpg") in set(src.source)          # screened under the name the user gave it
    by_source = dict(zip(errs.source, errs.error))
    assert set(by_source) == {str(root / n) for n in ("dangling.jpg", "loop-a.jpg", "loop-b.jpg")}
    assert "a dangling symlink" in by_source[str(root / "dangling.jpg")] and "gone.jpg" in by_source[
        str(root / "dangling.jpg")]
    assert "a symlink loop" in by_source[str(root / "loop-a.jpg")]
    assert set(errs.stage) == {"read"}
    assert "not screened: 2 other file(s) beside the images (" in printed, printed
    assert ".txt 1" in printed and "(symlinked folder, not followed) 1" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["not_screened"] == {".txt": 1, "(symlinked folder, not followed)": 1}


def test_a_run_whose_every_image_failed_says_so_in_rank_and_report(ray_local, visual_store, tmp_path, capsys):
    """Both images undecodable: the unit commits with two error rows, and `rank` / `report` say that every image
    failed and where the errors are, not that nothing is committed."""
    root = tmp_path / "bad"
    root.mkdir()
    corpus = bad_image_corpus()
    (root / "a.jpg").write_bytes(corpus["truncated_jpeg"][0])
    (root / "b.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out"
    assert _run(root, visual_store, out) == 0
    assert len(os.listdir(out / "_committed")) == 1
    capsys.readouterr()
    assert main(["rank", str(out / "responses"), str(out / "rankings")]) == 2
    err = capsys.readouterr().err
    assert "no committed unit" not in err
    assert "1 committed unit(s) hold no response rows: all 2 image(s) failed; see " in err, err
    assert f"{out / 'errors'}/" in err
    assert main(["report", str(out), "--no-flatmaps"]) == 2
    assert "all 2 image(s) failed" in capsys.readouterr().err
