"""screening.sources: the registry decides what a location holds, and a new kind needs only a Source and a place in
SOURCES (the planted kind below is screened by find / plan / read_units without touching anything else)."""

import io
import pickle

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from screening import sources
from screening.exceptions import InvalidParameterError
from screening.sources.base import (DIRECT_SPEC, PlanContext, Source, Unit, chunked, file_version, stat_files,
                                    unit_names)


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class NpyStackSource(Source):
    """A toy kind: ``.npz`` files whose arrays are PNG bytes (uint8), one image per array, one unit per file."""

    kind = "npz"
    suffixes = (".npz",)
    describe = "npz stacks of PNG bytes (.npz)"
    precedence = 1

    def plan(self, found, ctx):
        from screening.fs import to_uri

        units = []
        for p, u, (size, version) in zip(found.paths, unit_names(list(found.paths), self.suffixes),
                                         stat_files(found.fs, list(found.paths))):
            with found.fs.open(p, "rb") as f:
                n = len(np.load(f).files)
            units.append(Unit(p, to_uri(found.fs, p), u, n, size, version, kind=self.kind))
        return tuple(units), DIRECT_SPEC

    def read(self, item, *, spec=None, storage=None, chunk_rows=256):
        with open(item["uri"], "rb") as f:
            arrays = np.load(f)
            rows = [(row, f"{item['uri']}#{name}", arrays[name].tobytes(), "") for row, name in
                    enumerate(sorted(arrays.files))]
        return chunked(item["unit"], chunk_rows, rows)


def test_a_planted_kind_is_found_planned_and_read_through_the_registry(tmp_path, monkeypatch):
    folder = tmp_path / "stacks"
    folder.mkdir()
    images = [_png(i) for i in range(5)]
    np.savez(folder / "a.npz", **{f"i{k}": np.frombuffer(b, np.uint8) for k, b in enumerate(images[:3])})
    np.savez(folder / "b.npz", **{f"i{k}": np.frombuffer(b, np.uint8) for k, b in enumerate(images[3:])})
    (folder / "notes.txt").write_text("metadata beside the stacks")

    with pytest.raises(InvalidParameterError, match="holds nothing screening run reads"):
        sources.find(str(folder))
    monkeypatch.setattr(sources, "SOURCES", sources.SOURCES + (NpyStackSource(),))

    assert "npz stacks" in sources.accepted()
    found = sources.find(str(folder))
    assert found.kind == "npz" and [p.rsplit("/", 1)[-1] for p in found.paths] == ["a.npz", "b.npz"]
    units, spec, skipped = sources.plan(str(folder), PlanContext({}))
    assert [(u.unit, u.rows, u.kind) for u in units] == [("a", 3, "npz"), ("b", 2, "npz")] and spec == DIRECT_SPEC
    rows = [r for t in sources.read_units(pa.Table.from_pylist([u.read_item() for u in units]), spec=spec,
                                          chunk_rows=2) for r in t.to_pylist()]
    assert [r["data"] for r in rows] == images
    assert [(r["unit"], r["row"]) for r in rows] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert all(r["read_error"] == "" and len(r["image_id"]) == 16 for r in rows)


def test_precedence_decides_a_mixed_folder_and_images_beside_shards_are_refused(tmp_path):
    import tarfile

    d = tmp_path / "mixed"
    d.mkdir()
    with tarfile.open(d / "s.tar", "w") as tar:
        data = _png(1)
        info = tarfile.TarInfo("x.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (d / "meta.parquet").write_bytes(b"img2dataset stats")
    assert sources.find(str(d)).kind == "tar" and len(sources.find(str(d)).paths) == 1
    (d / "y.png").write_bytes(_png(2))
    with pytest.raises(InvalidParameterError, match=r"mixes 1 tar file\(s\) with 1 image file\(s\)"):
        sources.find(str(d))


def test_units_pickle_and_read_their_kind_details_as_attributes():
    u = Unit("/p", "/p#files=0-1", "p-00000", 2, 10, "files-sha256:x", kind="files",
             detail=(("files", ("/a.jpg", "/b.jpg")), ("sizes", (4, 6))))
    assert pickle.loads(pickle.dumps(u)) == u and u.files == ("/a.jpg", "/b.jpg")
    assert u.read_item()["files"] == ["/a.jpg", "/b.jpg"] and u.read_item()["kind"] == "files"
    with pytest.raises(AttributeError, match="no 'broken'"):
        u.broken
    with pytest.raises(InvalidParameterError, match="'hdf9' is not one of parquet, tar, files, list"):
        sources.source("hdf9")


def test_file_version_prefers_the_etag_then_the_mtime():
    assert file_version({"ETag": '"abc"', "mtime": 1.0}) == "etag:abc"
    assert file_version({"mtime": 1.5}) == "mtime_ns:1500000000"
