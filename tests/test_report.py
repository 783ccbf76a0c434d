"""Tests of ``screening report``: flatmap drawing, contact sheets, and the page in headless Chromium."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from screening import atlas
from screening.exceptions import InvalidParameterError
from screening.report import fetch_images, write_report
from screening.report.flatmap import draw_flatmap, hemisphere_values, roi_grayordinate_mask

COLUMNS = ["L_V1", "L_FFC", "L_PHA1", "L_PHA2", "L_PHA3", "R_V1", "R_FFC", "R_PHA1", "R_PHA2", "R_PHA3", "group_01"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _jpeg(rng, w, h):
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    arr[: h // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _make_run(tmp_path, n=40, store=None, model_id="fmri-mosaic-CNN8_multihead_subNSD_verticesAll"):
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    images = tmp_path / "images"
    for d in (run / "responses", run / "errors", images):
        d.mkdir(parents=True)
    ids = [f"img{i:03d}" for i in range(n)]
    for k in range(2):  # two image shards
        part = ids[k::2]
        blobs = [_jpeg(rng, 96 + 8 * (i % 3), 80) for i in range(len(part))]
        pq.write_table(pa.table({"image_id": part, "image": pa.array(blobs, pa.binary()),
                                 "source": [f"mem://{i}" for i in part],
                                 "width": pa.array([96 + 8 * (i % 3) for i in range(len(part))], pa.int32()),
                                 "height": pa.array([80] * len(part), pa.int32())}), images / f"shard-{k}.parquet")
    frames = []
    for s in ["sub-01", "sub-02", "mean"]:
        d = {"image_id": ids, "subject": s}
        for c in COLUMNS:
            d[c] = rng.normal(size=n).astype(np.float32)
        frames.append(pd.DataFrame(d))
    pq.write_table(pa.Table.from_pandas(pd.concat(frames), preserve_index=False), run / "responses" / "part-0.parquet")
    pq.write_table(pa.table({"image_id": ["bad1"], "source": ["mem://bad1"], "stage": ["decode"],
                             "error": ["ImageDecodeError: not an image"]}), run / "errors" / "part-0.parquet")
    manifest = {
        "engine_version": "0.1.0", "created": "2026-01-01T00:00:00Z",
        "config": {"images": str(images), "store": str(store) if store else str(tmp_path / "no-store")},
        "model": {"model_id": model_id, "variant": "all", "checkpoint_sha256": "ab" * 32, "synthetic": True,
                  "width": 16},
        "rois": {}, "shards": [], "counts": {"images": n, "responses_rows": 3 * n, "errors": 1},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def _fake_predict(image_bytes, subject):
    v = np.full(atlas.N_GRAYORDINATES, np.nan, np.float32)
    m = atlas.vertex_mapping_all()
    v[m] = np.cos(m / 2000.0) * (len(image_bytes) % 7 + 1)
    return v


def _chromium_dom(index):
    with_dir = index.parent / "chrome-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={with_dir}", "--virtual-time-budget=5000",
           "--dump-dom", index.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout


# -- flatmap --------------------------------------------------------------------------------------------
def test_flatmap_places_values_on_the_right_vertices(tmp_path):
    m = atlas.vertex_mapping_all()
    values = np.full(atlas.N_GRAYORDINATES, np.nan)
    values[m] = m.astype(float)
    left, right = hemisphere_values(values, "L"), hemisphere_values(values, "R")
    assert np.nanmax(left) < 29_696 <= np.nanmin(right)  # the 29,696 left grayordinates come first
    assert np.isnan(left).sum() > 0  # medial wall stays NaN
    assert np.isfinite(left).sum() + np.isfinite(right).sum() == m.size
    out = draw_flatmap(values, outline_rois=["FFC", "L_V1", "group_01"], title="label", out_png=tmp_path / "f.png")
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 600
    grey = np.all(img == (0xCF, 0xCF, 0xCF), axis=2).sum()
    assert grey > 500  # medial wall drawn grey
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 100  # a real colour map, not a blank canvas


def test_flatmap_rejects_bad_input(tmp_path):
    with pytest.raises(InvalidParameterError, match=r"values_91k must have shape \(91282,\); got \(10,\)"):
        draw_flatmap(np.zeros(10), out_png=tmp_path / "x.png")
    with pytest.raises(InvalidParameterError, match="outline ROI 'NOPE' is not valid"):
        roi_grayordinate_mask("NOPE")
    assert roi_grayordinate_mask("FFC").sum() == len(atlas.roi_grayordinates()["L_FFC"]) + 167
    assert roi_grayordinate_mask("L_PHA1-3").sum() == sum(len(atlas.roi_grayordinates()[f"L_PHA{i}"]) for i in (1, 2, 3))


def test_fetch_images_reads_only_requested_ids(tmp_path):
    run = _make_run(tmp_path, n=10)
    got = fetch_images(str(tmp_path / "images"), ["img003", "img004", "nope"])
    assert sorted(got) == ["img003", "img004"]
    assert Image.open(io.BytesIO(got["img003"])).format == "JPEG"
    assert run.exists()


# -- the page ---------------------------------------------------------------------------------------------
def test_report_page_complete(tmp_path):
    run = _make_run(tmp_path)
    index = write_report(run, predict_91k=_fake_predict, top_k=10, bottom_k=5)
    page = open(index, encoding="utf-8").read()
    assert (run / "rankings" / "rankings.parquet").exists()  # ranked because rankings/ was missing
    assert "SYNTHETIC WEIGHTS — responses are not brain predictions" in page
    for roi in ("FFC", "PHA1-3", "V1", "group_01"):
        for prefix in ("sheet", "hist", "flatmap"):
            assert f"src='{prefix}_{roi}.png'" in page, (prefix, roi)
            assert (run / "report" / f"{prefix}_{roi}.png").stat().st_size > 1000
    assert "flatmap unavailable" not in page
    assert "ImageDecodeError: not an image" in page and "errors (1)" in page
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert srcs and all(not s.startswith(("/", "http", "file:")) for s in srcs)  # relative links only
    sheet = Image.open(run / "report" / "sheet_FFC.png")
    assert sheet.width >= 10 * 132 and sheet.height > 2 * 132  # 10 top thumbnails, bottom row below


def test_report_records_flatmap_unavailable(tmp_path):
    run = _make_run(tmp_path)
    page = open(write_report(run, rois=["V1"], top_k=3, bottom_k=0), encoding="utf-8").read()
    assert "flatmap unavailable:" in page  # the manifest's store does not exist
    assert "src='sheet_V1.png'" in page
    with pytest.raises(InvalidParameterError, match=r"ROI\(s\) \['NOPE'\] are not in the rankings; valid:"):
        write_report(run, rois=["NOPE"])


def test_report_flatmap_through_the_model(tmp_path, visual_store):
    run = _make_run(tmp_path, n=12, store=visual_store, model_id="fmri-mosaic-CNN8_multihead_subNSD_verticesVisual")
    page = open(write_report(run, rois=["V1"], top_k=4, bottom_k=0), encoding="utf-8").read()
    assert "flatmap unavailable" not in page, re.findall(r"flatmap unavailable[^<]*", page)
    assert (run / "report" / "flatmap_V1.png").stat().st_size > 1000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    from pathlib import Path

    run = _make_run(tmp_path)
    index = write_report(run, rois=["FFC", "V1"], predict_91k=_fake_predict, top_k=10, bottom_k=5)

    dom = _chromium_dom(Path(index))
    n_imgs = len(re.findall(r"<img ", open(index, encoding="utf-8").read()))
    assert n_imgs == 6  # sheet, histogram, flatmap per ROI
    m = re.search(r'data-images="(\d+)" data-broken-images="(\d+)"', dom)
    assert m, dom[:500]
    assert int(m.group(1)) == n_imgs and m.group(2) == "0", re.findall(r'data-broken-src="[^"]*"', dom)
    # and the check itself can fail: break one link
    page = Path(index).read_text(encoding="utf-8").replace("src='sheet_V1.png'", "src='missing.png'")
    broken = Path(index).with_name("broken.html")
    broken.write_text(page, encoding="utf-8")
    dom = _chromium_dom(broken)
    assert 'data-broken-images="1"' in dom and "missing.png" in dom
