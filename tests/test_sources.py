"""screening.sources: the registry decides what a location holds, and a new kind needs only a Source and a place in
SOURCES (the planted kind below is screened by find / plan / read_units without touching anything else)."""

import io
import pickle
import sys

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from screening import sources
from screening.exceptions import InvalidParameterError
from screening.sources.base import (DIRECT_SPEC, PlanContext, Source, SourceOption, Unit, chunked, file_version,
                                    stat_files, unit_names)


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


# -- a planted kind with an option of its own, end to end: screened, recorded, pictured ----------------------------
def _swatch(rgb, size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), tuple(rgb)).save(buf, "PNG")
    return buf.getvalue()


def _swatch_size(name, value):
    if int(value) < 8:
        raise InvalidParameterError(f"{name} must be at least 8 pixels; got {value!r}")
    return int(value)


class SwatchSource(Source):
    """A planted kind that owns an option: ``.swatches`` text files, one ``R,G,B`` colour a line, each an image of
    ``swatch_size`` pixels a side; a row's source is ``FILE@line``, read back by the kind for pictures."""

    kind = "swatches"
    suffixes = (".swatches",)
    describe = "colour swatch lists (.swatches)"
    precedence = 1
    options = (SourceOption("swatch_size", 32, flag="--swatch-size", help="a planted option: the swatches' side",
                            doc="""int, default=32
        A planted kind's own option: the side of its swatch images, in pixels.""", check=_swatch_size),)

    @staticmethod
    def _colours(uri) -> list[list[int]]:
        with open(uri) as f:
            return [[int(v) for v in line.split(",")] for line in f.read().split()]

    def plan(self, found, ctx):
        from screening.fs import to_uri

        size = self.option(ctx.source_options, "swatch_size")
        units = []
        for p, u, (nbytes, version) in zip(found.paths, unit_names(list(found.paths), self.suffixes),
                                           stat_files(found.fs, list(found.paths))):
            uri = to_uri(found.fs, p)
            units.append(Unit(p, uri, u, len(self._colours(uri)), nbytes, version, kind=self.kind,
                              detail=(("side", size),)))
        return tuple(units), DIRECT_SPEC

    def rows(self, item, storage):
        for k, rgb in enumerate(self._colours(item["uri"])):
            yield k, f"{item['uri']}@{k}", _swatch(rgb, item["side"]), ""

    def made(self, source):
        return source.rpartition("@")[0].endswith(self.suffixes)

    def picture(self, source, options=None, storage=None):
        uri, _, k = source.rpartition("@")
        return _swatch(self._colours(uri)[int(k)], self.option(options, "swatch_size"))


def test_a_planted_kind_with_its_own_option_is_screened_and_pictured_through_the_registry(tmp_path, monkeypatch,
                                                                                          visual_store):
    """Registered in SOURCES only: its option is a run option (API, CLI, record, RunOutputs.config()), its files are
    screened on Ray's workers, and the report's and the search's pictures are its own read-backs."""
    import argparse
    import dataclasses

    import screening.report.contact_sheet as contact_sheet
    from screening.pipeline import RunConfig, screen_config
    from screening.pipeline.cli import configure_parser
    from screening.pipeline.outputs import RunOutputs
    from screening.rank import rank
    from screening.report import write_report
    from screening.search import _sheet, search

    colours = {(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 220, 220), (120, 60, 160)}
    folder = tmp_path / "swatches"
    folder.mkdir()
    (folder / "a.swatches").write_text("\n".join(",".join(map(str, c)) for c in sorted(colours)))
    with pytest.raises(InvalidParameterError, match="unknown option"):
        RunConfig.of(str(folder), str(visual_store), str(tmp_path / "out"), swatch_size=40)
    monkeypatch.setattr(sources, "SOURCES", sources.SOURCES + (SwatchSource(),))

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    assert "--swatch-size" in parser.format_help()
    out = tmp_path / "out"
    cli = RunConfig.from_args(parser.parse_args([str(folder), "--store", str(visual_store), "--out", str(out),
                                                 "--swatch-size", "40", "--subjects", "sub-01", "--rois",
                                                 "V1,V2,FFC", "--precision", "fp32", "--no-progress"]))
    asked = RunConfig.of(str(folder), str(visual_store), str(out), swatch_size=40, subjects=["sub-01"],
                         rois=["V1", "V2", "FFC"], precision="fp32", progress=False)
    assert cli == asked and asked.swatch_size == 40
    with pytest.raises(InvalidParameterError, match="swatch_size must be at least 8 pixels; got 2"):
        RunConfig.of(str(folder), str(visual_store), str(out), swatch_size=2)

    from ray import cloudpickle

    module = sys.modules[SwatchSource.__module__]   # the planted class travels to the workers by value: a test
    cloudpickle.register_pickle_by_value(module)    # module is not importable there
    try:
        result = screen_config(asked)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert result.counts["images"] == len(colours) and result.counts["errors"] == 0
    outputs = RunOutputs(str(out))
    assert outputs.manifest()["config"]["swatch_size"] == 40
    model_id = outputs.manifest()["config"]["model_id"]
    assert outputs.config() == dataclasses.replace(asked, model_id=model_id, progress=True)

    def swatch_colour(data):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        assert image.size == (40, 40)   # the run's recorded option, not the kind's default
        return image.getpixel((0, 0))

    rank(str(out / "responses"), str(out / "rankings"), rois=["V1"], top_k=2, n_null=20, null_draws=0)
    write_report(str(out), rois=["V1"], top_k=2, bottom_k=2, flatmaps=False)
    shown = sorted((out / "report" / "images").iterdir())
    assert len(shown) == 4 and {swatch_colour(p.read_bytes()) for p in shown} <= colours

    sheets = {}

    def fake_sheet(frame, values, images, *, title, out_png, labels):
        sheets.update(images)
        Image.new("RGB", (4, 4)).save(out_png)

    monkeypatch.setattr(contact_sheet, "make_contact_sheet", fake_sheet)
    table = search(str(out), like=result.responses().image_id.iloc[0], k=3)
    _sheet(str(out), table, str(tmp_path / "sheet.png"), None)
    assert sorted(sheets) == sorted(table.image_id) and {swatch_colour(b) for b in sheets.values()} <= colours
