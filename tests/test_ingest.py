"""Tests for screening.ingest: folder / tar / list sources, shards, errors, determinism, S3 (moto)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from screening import cli
from screening.exceptions import InvalidParameterError
from screening.fs import filesystem_for
from screening.ingest import ERRORS_NAME, image_id_for, ingest
from tests.image_corpus import bad_image_corpus, encode, photo_like

CORPUS = bad_image_corpus()
SHARD_SCHEMA = pa.schema([("image_id", pa.string()), ("image", pa.binary()), ("source", pa.string()),
                          ("width", pa.int32()), ("height", pa.int32())])


def _images() -> dict[str, bytes]:
    """Relative path -> bytes of a small mixed tree (JPEG/PNG/WebP, any-case extensions)."""
    return {
        "a/cat.jpg": encode(photo_like(64, 48, seed=1), "JPEG", quality=90),
        "a/dog.PNG": encode(photo_like(30, 40, seed=2), "PNG"),
        "b/c/owl.webp": encode(photo_like(50, 50, seed=3), "WEBP", quality=90),
        "b/zebra.jpeg": encode(photo_like(20, 10, seed=4), "JPEG", quality=90),
        "b/truncated.jpg": CORPUS["truncated_jpeg"][0],  # header fine: ingested, decoded later
        "bomb.png": CORPUS["decompression_bomb_png"][0],  # header fine: ingested with its size
    }


BAD = {"b/notes.jpg": CORPUS["text_file"][0], "empty.png": b"", "noise.webp": CORPUS["random_bytes"][0]}
OTHER = {"README.txt": b"hello", ".hidden/x.jpg": b"x", "a/._cat.jpg": b"\x00\x05\x16\x07"}


def _write_tree(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    _write_tree(root, {**_images(), **BAD, **OTHER})
    # An exact copy elsewhere: same bytes -> same id -> reported as a duplicate of the first.
    (root / "z").mkdir()
    (root / "z" / "copy_of_cat.jpg").write_bytes(_images()["a/cat.jpg"])
    return root


def _read_shards(paths, fs=None) -> pa.Table:
    tables = []
    for p in paths:
        if fs is None:
            t = pq.read_table(p)
        else:
            with fs.open(p.replace("s3://", ""), "rb") as f:
                t = pq.read_table(f)
        assert t.schema.equals(SHARD_SCHEMA), t.schema
        tables.append(t)
    return pa.concat_tables(tables)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ----------------------------------------------------------------------------------------------
# folder
# ----------------------------------------------------------------------------------------------

def test_folder_tree(tree, tmp_path):
    out = tmp_path / "out"
    res = ingest(tree, out, shard_rows=3, row_group_rows=2)
    images = _images()
    order = sorted(images)  # sorted relative paths: a/cat.jpg, a/dog.PNG, b/c/owl.webp, ...
    assert res.rows == len(images) == 6
    assert [os.path.basename(p) for p in res.shards] == ["shard-00000.parquet", "shard-00001.parquet"]
    for p in res.shards:
        md = pq.ParquetFile(p).metadata
        assert md.num_rows == 3 and md.num_row_groups == 2  # rows 2 + 1
    t = _read_shards(res.shards)
    assert t.column("source").to_pylist() == [str(tree / rel) for rel in order]
    assert t.column("image").to_pylist() == [images[rel] for rel in order]  # bytes untouched
    assert t.column("image_id").to_pylist() == [hashlib.sha256(images[r]).hexdigest()[:16] for r in order]
    sizes = dict(zip(t.column("source").to_pylist(), zip(t.column("width").to_pylist(), t.column("height").to_pylist())))
    assert sizes[str(tree / "a/dog.PNG")] == (30, 40)
    assert sizes[str(tree / "bomb.png")] == (100_000, 100_000)
    assert sizes[str(tree / "b/truncated.jpg")] == (640, 480)

    # Unreadable files are reported, with reasons, in the result, the errors file and the summary.
    errors = dict(res.errors)
    assert sorted(errors) == sorted(str(tree / r) for r in BAD)
    assert "looks like text" in errors[str(tree / "b/notes.jpg")]
    assert "empty input" in errors[str(tree / "empty.png")]
    assert "not a recognised image format" in errors[str(tree / "noise.webp")]
    with open(out / ERRORS_NAME, newline="") as f:
        et = list(csv.reader(f))
    assert et[0] == ["source", "error"] and dict(map(tuple, et[1:])) == errors
    assert sorted(n for n in os.listdir(out) if n.endswith(".parquet")) == [os.path.basename(p) for p in res.shards]
    assert res.duplicates == [(str(tree / "z/copy_of_cat.jpg"), image_id_for(images["a/cat.jpg"]), str(tree / "a/cat.jpg"))]
    assert res.skipped == 1  # README.txt; hidden files are not even counted
    summary = res.summary()
    assert "ingested 6 images into 2 shard(s)" in summary and "3 unreadable file(s)" in summary
    assert "1 duplicate" in summary and "notes.jpg: looks like text" in summary

    manifest = json.loads((out / "_manifest.json").read_text())
    assert [s["path"] for s in manifest["shards"]] == ["shard-00000.parquet", "shard-00001.parquet"]
    assert [s["sha256"] for s in manifest["shards"]] == [_sha(p) for p in res.shards]
    assert manifest["counts"] == {"images": 6, "errors": 3, "duplicates": 1, "skipped": 1}
    assert not [n for n in os.listdir(out) if ".tmp" in n]  # no temporary files left


def test_same_input_gives_identical_files(tree, tmp_path):
    a, b = tmp_path / "out_a", tmp_path / "out_b"
    ingest(tree, a, shard_rows=4)
    ingest(str(tree), str(b), shard_rows=4, workers=1)  # thread count must not change the order
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    assert {n: _sha(a / n) for n in names} == {n: _sha(b / n) for n in names}


def test_existing_ingest_is_refused_then_overwritten(tree, tmp_path):
    out = tmp_path / "out"
    first = ingest(tree, out, shard_rows=1)
    assert len(first.shards) == 6
    with pytest.raises(InvalidParameterError, match=r"already holds an ingest .*overwrite=True"):
        ingest(tree, out)
    second = ingest(tree, out, shard_rows=4, overwrite=True)
    assert sorted(n for n in os.listdir(out) if n.startswith("shard-")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert _read_shards(second.shards).num_rows == 6


# ----------------------------------------------------------------------------------------------
# tar and lists
# ----------------------------------------------------------------------------------------------

def _make_tar(path, files: dict[str, bytes], mode="w") -> None:
    with tarfile.open(path, mode) as tar:
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_tar_archive(tmp_path, suffix, mode):
    images = _images()
    members = {"dir/" + k: v for k, v in reversed(images.items())}  # archive order, not sorted
    members["./top.png"] = encode(photo_like(8, 8, seed=9), "PNG")  # `tar -cf x.tar .` style name
    members["dir/.hidden.jpg"] = b"skipped, not counted"
    members["dir/readme.md"] = b"# not an image"
    members["dir/empty.jpg"] = b""
    archive = tmp_path / f"imgs{suffix}"
    _make_tar(archive, members, mode)
    res = ingest(archive, tmp_path / "out")
    t = _read_shards(res.shards)
    want = [k for k in members if k not in ("dir/readme.md", "dir/empty.jpg", "dir/.hidden.jpg")]
    assert t.column("source").to_pylist() == [f"tar://{k}::{archive}" for k in want]
    assert t.column("image").to_pylist() == [members[k] for k in want]
    assert res.errors == [(f"tar://dir/empty.jpg::{archive}", "empty input: 0 bytes")]
    assert res.skipped == 1


def test_csv_and_txt_lists(tmp_path):
    root = tmp_path / "data"
    _write_tree(root, _images())
    csv_path = root / "list.csv"
    # Header row; the `path` column is used even when it is not first; relative entries resolve
    # against the list's folder; a missing file is a read error, not a silent drop.
    csv_path.write_text("label,path\nx,b/zebra.jpeg\ny," + str(root / "a/cat.jpg") + "\nz,missing.jpg\nw,a/dog.PNG\n")
    res = ingest(csv_path, tmp_path / "out_csv")
    t = _read_shards(res.shards)
    assert t.column("source").to_pylist() == [str(root / "b/zebra.jpeg"), str(root / "a/cat.jpg"), str(root / "a/dog.PNG")]
    assert len(res.errors) == 1 and res.errors[0][0] == str(root / "missing.jpg")
    assert res.errors[0][1].startswith("read failed: FileNotFoundError")

    txt = tmp_path / "list.txt"
    txt.write_text("# comment\n\n" + str(root / "a/dog.PNG") + "\n" + str(root / "b/c/owl.webp") + "\n")
    res = ingest(txt, tmp_path / "out_txt")
    assert _read_shards(res.shards).column("source").to_pylist() == [str(root / "a/dog.PNG"), str(root / "b/c/owl.webp")]

    first_col = tmp_path / "first.csv"  # no path/uri column: the first column is used
    first_col.write_text("file,label\n" + str(root / "a/cat.jpg") + ",cat\n")
    assert ingest(first_col, tmp_path / "out_first").rows == 1


def test_single_image_and_bad_sources(tmp_path):
    img = tmp_path / "one.png"
    img.write_bytes(_images()["a/dog.PNG"])
    assert ingest(img, tmp_path / "o1").rows == 1
    with pytest.raises(InvalidParameterError, match="does not exist"):
        ingest(tmp_path / "nope", tmp_path / "o2")
    other = tmp_path / "x.bin"
    other.write_bytes(b"1")
    with pytest.raises(InvalidParameterError, match=r"not a folder, an image, a tar archive"):
        ingest(other, tmp_path / "o3")
    with pytest.raises(InvalidParameterError, match=r"shard_rows=0 must be a positive integer"):
        ingest(img, tmp_path / "o4", shard_rows=0)
    with pytest.raises(InvalidParameterError, match=r"unsupported location 'ftp://h/x'"):
        ingest(img, "ftp://h/x")


def test_cli(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["ingest", str(tree), str(out), "--shard-rows", "5", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "ingested 6 images into 2 shard(s)" in err and "3 unreadable" in err
    assert cli.main(["ingest", str(tree), str(out)]) == 2  # refuses to mix with the earlier ingest
    assert "already holds an ingest" in capsys.readouterr().err
    bad = tmp_path / "bad"
    _write_tree(bad, BAD)
    assert cli.main(["ingest", str(bad), str(tmp_path / "out_bad"), "--quiet"]) == 1  # nothing usable
    assert os.path.exists(tmp_path / "out_bad" / ERRORS_NAME)


# ----------------------------------------------------------------------------------------------
# S3, against a real moto server on loopback
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="eu-west-1")  # s3fs mkdir sends it as LocationConstraint
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(s3_endpoint, request):
    fs, _ = filesystem_for("s3://x", endpoint_url=s3_endpoint, anonymous=False)
    name = "ingest-" + request.node.name.lower().replace("_", "-")[:40]
    fs.mkdir(name)
    return fs, name


def test_s3_folder_in_and_out(tree, s3_endpoint, bucket, tmp_path):
    fs, name = bucket
    fs.put(str(tree) + "/", f"{name}/in/", recursive=True)
    res = ingest(f"s3://{name}/in", f"s3://{name}/out", shard_rows=4, endpoint_url=s3_endpoint, anonymous=False)
    assert res.shards == [f"s3://{name}/out/shard-00000.parquet", f"s3://{name}/out/shard-00001.parquet"]
    t = _read_shards(res.shards, fs)
    local = _read_shards(ingest(tree, tmp_path / "local", shard_rows=4).shards)
    assert t.column("image_id").to_pylist() == local.column("image_id").to_pylist()
    assert t.column("image").to_pylist() == local.column("image").to_pylist()
    assert t.column("source").to_pylist()[0] == f"s3://{name}/in/a/cat.jpg"
    assert sorted(s for s, _ in res.errors) == sorted(f"s3://{name}/in/{r}" for r in BAD)
    listing = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{name}/out", detail=False))
    assert listing == ["_manifest.json", "ingest_duplicates.csv", "ingest_errors.csv",
                       "shard-00000.parquet", "shard-00001.parquet"]
    manifest = json.loads(fs.cat_file(f"{name}/out/_manifest.json"))
    assert [s["sha256"] for s in manifest["shards"]] == [
        hashlib.sha256(fs.cat_file(p.replace("s3://", ""))).hexdigest() for p in res.shards]


def test_s3_uri_list_and_tar(s3_endpoint, bucket, tmp_path):
    fs, name = bucket
    images = _images()
    fs.pipe({f"{name}/raw/{k}": v for k, v in images.items()})
    lst = tmp_path / "uris.csv"
    lst.write_text("uri\n" + "".join(f"s3://{name}/raw/{k}\n" for k in sorted(images)) + f"s3://{name}/raw/gone.jpg\n")
    res = ingest(lst, tmp_path / "out", endpoint_url=s3_endpoint, anonymous=False)
    assert res.rows == len(images)
    assert res.errors[0][0] == f"s3://{name}/raw/gone.jpg" and "read failed" in res.errors[0][1]

    archive = tmp_path / "a.tar"
    _make_tar(archive, images)
    fs.put(str(archive), f"{name}/a.tar")
    res = ingest(f"s3://{name}/a.tar", tmp_path / "out_tar", endpoint_url=s3_endpoint, anonymous=False)
    assert res.rows == len(images)
    assert _read_shards(res.shards).column("source").to_pylist()[0] == f"tar://{next(iter(images))}::s3://{name}/a.tar"


def test_symlinks_in_a_folder_are_ingested_or_named(tmp_path):
    """A symlink to an image is ingested as that image (labs build category folders of links); a dangling link is an
    error that says so; a linked folder is counted as skipped, not walked."""
    from tests.image_corpus import encode, photo_like

    lib, root = tmp_path / "lib", tmp_path / "faces"
    lib.mkdir()
    root.mkdir()
    data = encode(photo_like(48, 40, seed=3), "JPEG")
    (lib / "face.jpg").write_bytes(data)
    (root / "linked.jpg").symlink_to(lib / "face.jpg")
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (root / "more").symlink_to(lib, target_is_directory=True)
    res = ingest(str(root), str(tmp_path / "out"), shard_rows=4)
    assert res.rows == 1
    t = pq.read_table(res.shards[0])
    assert t.column("source").to_pylist() == [str(root / "linked.jpg")] and t.column("image")[0].as_py() == data
    errors = dict(res.errors)
    assert list(errors) == [str(root / "dangling.jpg")]
    assert "a dangling symlink" in errors[str(root / "dangling.jpg")] and "gone.jpg" in errors[str(root / "dangling.jpg")]
    assert res.skipped == 1
