"""HDF5 stimulus arrays (NSD's nsd_stimuli.hdf5 layout) as a run's input: one module in screening/sources/."""

from __future__ import annotations

import io
import os

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from screening.cli import main
from screening.fs import StorageOptions
from tests.image_corpus import photo_like

SUBJECTS = "sub-01,sub-02"
ROIS = "V1,FFC"


def _pixels(n: int, size=(70, 90)) -> np.ndarray:
    return np.stack([np.asarray(photo_like(size[1], size[0], seed=i).convert("RGB")) for i in range(n)])


def _h5(path, pixels, name="imgBrick"):
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=pixels)
    return path


def _run(images, store, out, *extra) -> int:
    return main(["run", str(images), "--store", str(store), "--out", str(out), "--subjects", SUBJECTS, "--rois", ROIS,
                 "--precision", "fp32", "--num-encoders", "1", "--batch-size", "8", "--no-progress", *extra])


def _responses(out) -> pd.DataFrame:
    from screening.pipeline.outputs import RunOutputs

    outputs = RunOutputs(str(out))
    resp = outputs.table("responses", None).to_pandas()
    src = outputs.table("sources", None).to_pandas().drop_duplicates("image_id")
    return resp.merge(src, on="image_id")


def test_the_same_pixels_as_png_files_give_the_same_rows(tmp_path, visual_store):
    pixels = _pixels(6)
    h5 = _h5(tmp_path / "nsd_stimuli.hdf5", pixels)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{i:03d}.png")
    assert _run(h5, visual_store, tmp_path / "out-h5") == 0
    assert _run(folder, visual_store, tmp_path / "out-png") == 0
    a, b = _responses(tmp_path / "out-h5"), _responses(tmp_path / "out-png")
    a["index"] = a.source.str.rsplit("#", n=1).str[1].astype(int)
    b["index"] = b.source.str.rsplit("/", n=1).str[1].str[:3].astype(int)
    a, b = (t.sort_values(["index", "subject"]).reset_index(drop=True) for t in (a, b))
    assert len(a) == 6 * 3 and a.source.iloc[0] == f"{h5}#0"
    for c in ("V1", "FFC"):
        np.testing.assert_array_equal(a[c].to_numpy(), b[c].to_numpy())   # fp32 exact: the same crop and resize
    from screening.sources.base import derived_id

    assert a.image_id.iloc[0] == derived_id(pixels[0].tobytes())   # the digest of the pixel bytes


def test_row_ranges_resume_exactly_once(tmp_path, visual_store, monkeypatch):
    from screening.pipeline import screen

    monkeypatch.setattr("screening.sources.hdf5.ROWS_PER_UNIT", 4)
    h5 = _h5(tmp_path / "s.h5", _pixels(10))
    out = tmp_path / "out"
    kw = dict(subjects=SUBJECTS.split(","), rois=ROIS.split(","), precision="fp32", progress=False, batch_size=8)
    first = screen(str(h5), str(visual_store), str(out), **kw)
    assert first.units_run == 3 and first.counts["images"] == 10
    markers = sorted((out / "_committed").iterdir())
    os.remove(markers[1])   # as if that unit had never committed
    again = screen(str(h5), str(visual_store), str(out), **kw)
    assert again.units_run == 1 and again.units_skipped == 2
    df = again.responses()
    assert len(df) == 10 * 3 and not df.duplicated(["image_id", "subject"]).any()
    with h5py.File(h5, "a") as f:   # a changed file is refused, as any changed input
        f["imgBrick"][0, 0, 0, 0] ^= 1
    os.utime(h5, (1, 1))
    assert _run(h5, visual_store, out) == 2


@pytest.mark.parametrize("data, name, shown", [
    (np.zeros((3, 8, 8, 3), np.float32), "imgBrick", "is float32 of shape (3, 8, 8, 3); expected uint8 N x H x W x 3"),
    (np.zeros((3, 8, 8), np.uint8), "imgBrick", "is uint8 of shape (3, 8, 8); expected uint8 N x H x W x 3"),
    (np.zeros((3, 8, 8, 3), np.uint8), "stimuli", "has no dataset 'imgBrick' (datasets: stimuli (3, 8, 8, 3) uint8)"),
])
def test_a_wrong_dataset_is_refused_with_what_was_found(tmp_path, visual_store, capsys, data, name, shown):
    h5 = _h5(tmp_path / "bad.hdf5", data, name)
    assert _run(h5, visual_store, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert shown in err and "Traceback" not in err
    if name != "imgBrick":
        assert _run(h5, visual_store, tmp_path / "out2", "--hdf5-dataset", name) == 0


def test_an_hdf5_on_s3_is_read_in_slices(tmp_path, visual_store, monkeypatch):
    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan
    from screening.sources import read_units
    from tests.s3server import dummy_credentials, s3_server, upload_dir

    dummy_credentials(monkeypatch)
    pixels = _pixels(5)
    (tmp_path / "d").mkdir()
    _h5(tmp_path / "d" / "nsd.hdf5", pixels)
    with s3_server() as endpoint:
        upload_dir(endpoint, tmp_path / "d", "data", "stim")
        plan = build_plan(RunConfig.of("s3://data/stim/nsd.hdf5", str(visual_store), str(tmp_path / "out"),
                                       subjects=SUBJECTS, rois=ROIS, endpoint_url=str(endpoint)))
        assert [(u.kind, u.rows) for u in plan.shards] == [("hdf5", 5)]
        rows = [r for t in read_units(pa.Table.from_pylist([plan.shards[0].read_item()]), spec=plan.spec,
                                      storage=StorageOptions(endpoint_url=str(endpoint))) for r in t.to_pylist()]
    from screening.preprocess import preprocess_bytes

    assert [r["source"] for r in rows] == [f"s3://data/stim/nsd.hdf5#{i}" for i in range(5)]
    png = io.BytesIO()
    Image.fromarray(pixels[3]).save(png, "PNG")
    np.testing.assert_array_equal(preprocess_bytes(rows[3]["data"]), preprocess_bytes(png.getvalue()))


def test_a_recorded_hdf5_source_reads_back_as_that_image(tmp_path):
    from screening.sources import read_image

    pixels = _pixels(4)
    h5 = _h5(tmp_path / "s.hdf5", pixels)
    png = read_image(f"{h5}#2")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), pixels[2])
    assert read_image(f"{h5}#9") is None and read_image(str(tmp_path / "shard.parquet#row=3")) is None
