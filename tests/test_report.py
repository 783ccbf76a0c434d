"""Tests of ``screening report``: flatmap drawing, contact sheets, and the page in headless Chromium."""

from __future__ import annotations

import hashlib
import html
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
from screening.report import describe_roi, fetch_image_records, fetch_images, histogram_thresholds, write_report
from screening.report.describe import short_name
from screening.report.flatmap import draw_flatmap, hemisphere_values, roi_grayordinate_mask

COLUMNS = ["L_V1", "L_FFC", "L_PHA1", "L_PHA2", "L_PHA3", "R_V1", "R_FFC", "R_PHA1", "R_PHA2", "R_PHA3", "group_01"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _jpeg(rng, w, h, fmt="JPEG"):
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    arr[: h // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


WORDS = ["kitchen", "giraffe", "surfer", "bus", "teddy", "clock", "pizza", "tennis", "harbour", "zebra"]


def _image_id(i):
    return hashlib.sha256(f"image {i}".encode()).hexdigest()[:16]  # 16 hex, as the pipeline's ids look


def _source(i):
    # every 5th a PNG; one name carries HTML, which the page must escape
    if i == 7:
        return '/data/stimuli/a<b>&"odd".jpg'
    return f"/data/stimuli/{WORDS[i % len(WORDS)]}_{i:03d}.{'png' if i % 5 == 4 else 'jpg'}"


def _make_run(tmp_path, n=40, store=None, model_id="fmri-mosaic-CNN8_multihead_subNSD_verticesAll", columns=COLUMNS):
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    images = tmp_path / "images"
    for d in (run / "responses", run / "errors", images):
        d.mkdir(parents=True)
    ids = [_image_id(i) for i in range(n)]
    shard_paths = []
    for k in range(2):  # two image shards
        idx = list(range(k, n, 2))
        blobs = [_jpeg(rng, 96 + 8 * (i % 3), 80, "PNG" if i % 5 == 4 else "JPEG") for i in idx]
        path = images / f"shard-{k}.parquet"
        pq.write_table(pa.table({"image_id": [ids[i] for i in idx], "image": pa.array(blobs, pa.binary()),
                                 "source": [_source(i) for i in idx],
                                 "width": pa.array([96 + 8 * (i % 3) for i in idx], pa.int32()),
                                 "height": pa.array([80] * len(idx), pa.int32())}), path)
        shard_paths.append(str(path))
    frames = []
    for s in ["sub-01", "sub-02", "mean"]:
        d = {"image_id": ids, "subject": s}
        for c in columns:
            d[c] = rng.normal(size=n).astype(np.float32)
        frames.append(pd.DataFrame(d))
    pq.write_table(pa.Table.from_pandas(pd.concat(frames), preserve_index=False), run / "responses" / "part-0.parquet")
    pq.write_table(pa.table({"image_id": ["bad1"], "source": ["/data/stimuli/broken.jpg"], "stage": ["decode"],
                             "error": ["ImageDecodeError: not an image"]}), run / "errors" / "part-0.parquet")
    manifest = {
        "engine_version": "0.1.0", "created": "2026-01-01T00:00:00Z",
        "config": {"images": str(images), "store": str(store) if store else str(tmp_path / "no-store")},
        "model": {"model_id": model_id, "variant": "all", "checkpoint_sha256": "ab" * 32, "synthetic": True,
                  "width": 16},
        "rois": {}, "shards": [{"path": p, "unit": f"shard-{k}", "state": "committed"} for k, p in
                               enumerate(shard_paths)],
        "counts": {"images": n, "responses_rows": 3 * n, "errors": 1},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def read_rankings_top(run, roi):
    from screening.rank import read_rankings

    r = read_rankings(str(run / "rankings"))
    return r[(r.kind == "topk") & (r.roi == roi) & (r.subject == "mean")].sort_values("rank").image_id.iloc[0]


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
    _make_run(tmp_path, n=10)
    a, b = _image_id(3), _image_id(4)
    got = fetch_images(str(tmp_path / "images"), [a, b, "nope"])
    assert sorted(got) == sorted([a, b])
    assert Image.open(io.BytesIO(got[a])).format == "JPEG" and Image.open(io.BytesIO(got[b])).format == "PNG"
    # the manifest's shard list works too; without bytes only the id and source come back
    shards = [str(p) for p in sorted((tmp_path / "images").glob("*.parquet"))]
    recs = fetch_image_records(shards, [a, "nope"], with_bytes=False)
    assert recs == {a: {"bytes": None, "source": "/data/stimuli/bus_003.jpg"}}
    with pytest.raises(InvalidParameterError, match=r"image shard\(s\) \[.*gone.parquet'\] do not exist"):
        fetch_image_records(shards + [str(tmp_path / "gone.parquet")], [a])
    with pytest.raises(InvalidParameterError, match=r"no id_column 'uid'; their columns: \['image_id', 'image'"):
        fetch_image_records(shards, [a], id_column="uid")


def test_describe_roi_names_the_parts():
    assert describe_roi("FFC", ["L_FFC", "R_FFC"], n_vertices={"L_FFC": 151, "R_FFC": 167}) == (
        "bilateral area FFC (Glasser group 4, Ventral Stream Visual) = L_FFC (151 vertices) ∪ R_FFC (167 vertices); "
        "the response is the mean over all these vertices.")
    faces = describe_roi("faces", ["L_FFC", "R_FFC", "L_PIT", "R_PIT", "L_V8", "R_V8"])
    assert faces.startswith("composite of FFC, PIT, V8 (a name without L_/R_ = both hemispheres) = L_FFC ∪ R_FFC")
    assert describe_roi("L_places", ["L_PHA1", "L_PHA2", "L_PHA3"]).startswith("composite of L_PHA1, L_PHA2, L_PHA3")
    g4 = describe_roi("group_04", ["group_04"])
    assert g4 == "Glasser group 4, Ventral Stream Visual: areas V8, FFC, PIT, VMV1, VMV3, VMV2, VVC (both hemispheres)"
    assert describe_roi("group_01", ["group_01"]) == "Glasser group 1, Primary Visual: areas V1 (both hemispheres)"
    assert "left hemisphere" in describe_roi("L_V1", ["L_V1"])
    assert describe_roi("FFC", ["FFC"]).startswith("HCP-MMP1.0 area FFC, both hemispheres")  # a --rois FFC column
    assert "union of FFC, PIT" in describe_roi("myfaces", ["myfaces"], {"composites": {"myfaces": ["FFC", "PIT"]}})


def test_short_name():
    assert short_name("/data/stimuli/cat.jpg") == "cat.jpg"
    assert short_name("s3://bucket/a/b/dog.png") == "dog.png"
    assert short_name("tar://photos/x/y.jpg::/data/archive.tar") == "y.jpg"
    assert short_name("shard-0.parquet#row=3") == "shard-0.parquet"
    assert short_name(None) is None and short_name("") is None
    assert short_name("tar://member.png::s3://bucket/shard-000.tar") == "member.png"   # the member, not the archive


# -- histogram thresholds ---------------------------------------------------------------------------------
def test_histogram_thresholds_are_the_kth_largest_and_smallest():
    values = np.array([5.0, 1, 12, 7, np.nan, 3, 9, 2, 11, 4, 8, 6, 10])  # 1..12 shuffled, one NaN
    assert histogram_thresholds(values, 3, 3) == (10.0, 3.0)
    assert histogram_thresholds(values, 1, 1) == (12.0, 1.0)
    assert histogram_thresholds(values, 12, 12) == (1.0, 12.0)  # a list of everything starts at the other end
    assert histogram_thresholds(values, 0, 13) == (None, None)  # off / longer than the values


def _thresholds_on_page(page):
    out = {}
    for m in re.finditer(r'<img src="hist_([^"]+)\.png"[^>]*data-top-threshold="([^"]*)" '
                         r'data-bottom-threshold="([^"]*)"', page):
        out[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return out


def test_report_histogram_lines_sit_at_the_kth_values(tmp_path):
    from screening.rank import read_rankings

    run = _make_run(tmp_path, n=40)
    page = open(write_report(run, rois=["FFC", "V1"], top_k=10, bottom_k=5, flatmaps=False), encoding="utf-8").read()
    thr = _thresholds_on_page(page)
    assert set(thr) == {"FFC", "V1"}
    resp = pd.read_parquet(run / "responses")
    resp = resp[resp.subject == "mean"]
    rk = read_rankings(str(run / "rankings"))
    # V1 = vertex-weighted mean of L_V1 and R_V1 (atlas counts)
    n = {c: len(atlas.roi_grayordinates()[c]) for c in ("L_V1", "R_V1")}
    v1 = np.sort((resp.L_V1 * n["L_V1"] + resp.R_V1 * n["R_V1"]).to_numpy(np.float64) / (n["L_V1"] + n["R_V1"]))
    assert thr["V1"][0] == pytest.approx(v1[-10], rel=1e-5)  # 10th largest
    assert thr["V1"][1] == pytest.approx(v1[4], rel=1e-5)  # 5th smallest
    assert v1[0] < thr["V1"][1] < thr["V1"][0] < v1[-1]  # not at the minimum / maximum
    for roi, (top, bottom) in thr.items():
        t = rk[(rk.roi == roi) & (rk.subject == "mean") & (rk.kind == "topk")].sort_values("rank")
        b = rk[(rk.roi == roi) & (rk.subject == "mean") & (rk.kind == "bottomk")].sort_values("rank")
        assert top == pytest.approx(t.response.iloc[9], rel=1e-5) and bottom == pytest.approx(b.response.iloc[4], rel=1e-5)


def test_report_reads_only_committed_files_of_a_pipeline_run(tmp_path):
    # A pipeline run's responses/ and errors/ may hold leftovers of an interrupted unit (no marker): the report,
    # like rank, reads only the files the _committed/ markers list.
    run = _make_run(tmp_path, n=40)
    for kind in ("responses", "errors"):
        (run / kind / "u0").mkdir()
        (run / kind / "part-0.parquet").rename(run / kind / "u0" / "part-0.parquet")
    (run / "_committed").mkdir()
    (run / "_committed" / "u0.json").write_text(json.dumps(
        {"unit": "u0", "files": {"responses": ["responses/u0/part-0.parquet"], "errors": ["errors/u0/part-0.parquet"]}}))
    committed = pd.read_parquet(run / "responses" / "u0" / "part-0.parquet")
    leftover = committed.assign(**{c: np.float32(1e6) for c in COLUMNS})
    (run / "responses" / "u1").mkdir()
    (run / "errors" / "u1").mkdir()
    pq.write_table(pa.Table.from_pandas(leftover, preserve_index=False), run / "responses" / "u1" / "part-0.parquet")
    pq.write_table(pa.table({"image_id": ["bad2"], "source": ["/data/stimuli/leftover.jpg"], "stage": ["decode"],
                             "error": ["ImageDecodeError: leftover"]}), run / "errors" / "u1" / "part-0.parquet")
    page = open(write_report(run, rois=["V1"], top_k=10, bottom_k=5, flatmaps=False), encoding="utf-8").read()
    resp = committed[committed.subject == "mean"]
    n = {c: len(atlas.roi_grayordinates()[c]) for c in ("L_V1", "R_V1")}
    v1 = np.sort((resp.L_V1 * n["L_V1"] + resp.R_V1 * n["R_V1"]).to_numpy(np.float64) / (n["L_V1"] + n["R_V1"]))
    top, bottom = _thresholds_on_page(page)["V1"]
    assert top == pytest.approx(v1[-10], rel=1e-5) and bottom == pytest.approx(v1[4], rel=1e-5)
    assert "errors (1)" in page and "broken.jpg" in page and "leftover" not in page


def test_report_subject_in_any_spelling(tmp_path):
    run = _make_run(tmp_path, n=12)
    for spelling in ("1", "subj01"):
        page = open(write_report(run, rois=["V1"], subject=spelling, top_k=2, bottom_k=2, flatmaps=False),
                    encoding="utf-8").read()
        assert "lists for subject sub-01" in page
    for bad, match in (("9", "subject='9' is not valid; valid values: 1, 2"), ("1,2", "names 2 subjects"),
                       ("sub-03", "'sub-03' is not in the rankings; valid: \\['sub-01', 'sub-02', 'mean'")):
        with pytest.raises(InvalidParameterError, match=match):
            write_report(run, rois=["V1"], subject=bad, flatmaps=False)


# -- the page ---------------------------------------------------------------------------------------------
def test_report_page_complete(tmp_path, monkeypatch):
    import screening.report.figures as figures

    labels, painted = [], []
    real_draw = figures.draw_flatmap

    def spy(values, **kw):
        labels.append(kw.get("colorbar_label"))
        painted.append((kw.get("title"), values))
        return real_draw(values, **kw)

    monkeypatch.setattr(figures, "draw_flatmap", spy)
    run = _make_run(tmp_path)
    index = write_report(run, top_k=10, bottom_k=5)
    page = open(index, encoding="utf-8").read()
    out = run / "report"
    assert (run / "rankings" / "rankings.parquet").exists()  # ranked because rankings/ was missing
    assert "SYNTHETIC WEIGHTS — responses are not brain predictions" in page
    for roi in ("FFC", "PHA1-3", "V1", "group_01"):
        assert f'href="sheet_{roi}.png"' in page, roi
        for prefix in ("hist", "flatmap"):
            assert f'src="{prefix}_{roi}.png"' in page, (prefix, roi)
        for prefix in ("sheet", "hist", "flatmap"):
            assert (out / f"{prefix}_{roi}.png").stat().st_size > 1000
    assert labels and set(labels) == {"ROI response (model output units)"}  # colour bar units
    # each map paints the ROI's top image with its committed responses (mean subject), area by area
    resp = pd.read_parquet(run / "responses")
    resp = resp[resp.subject == "mean"].set_index("image_id")
    top = read_rankings_top(run, "V1")
    title, values = next((t, v) for t, v in painted if "top-1 for V1," in t)
    areas = atlas.roi_grayordinates()
    for area in ("L_V1", "R_FFC", "L_PHA2"):
        assert np.allclose(values[areas[area]], resp.loc[top, area]), area
    assert np.isnan(values[areas["L_MT"]]).all()   # not screened: not painted
    assert "flatmap unavailable" not in page
    assert "ImageDecodeError: not an image" in page and "errors (1)" in page
    srcs = re.findall(r'<img src="([^"]+)"', page) + re.findall(r'<a href="([^"#]+)"', page)
    assert srcs and all(not s.startswith(("/", "http", "file:")) for s in srcs)  # relative links only
    assert all((out / html.unescape(s)).is_file() for s in srcs), [s for s in srcs if not (out / s).is_file()]
    sheet = Image.open(out / "sheet_FFC.png")
    assert sheet.width >= 10 * 132 and sheet.height > 2 * 132  # 10 top thumbnails, bottom row below
    # every thumbnail links the original bytes, under the right extension
    shards = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "images").glob("*.parquet"))])
    blob = dict(zip(shards.image_id, shards.image))
    links = re.findall(r'<figure class="thumb" data-image-id="([0-9a-f]{16})">\n<a href="(images/[^"]+)"', page)
    assert len(links) == 4 * 15  # 10 + 5 per ROI
    for image_id, href in links:
        assert (out / href).read_bytes() == blob[image_id]
        assert href.endswith(".png" if Image.open(io.BytesIO(blob[image_id])).format == "PNG" else ".jpg")
    assert any(h.endswith(".png") for _, h in links) and any(h.endswith(".jpg") for _, h in links)
    # file names beside the ids; HTML in a name is escaped (autoescape), never markup
    names = {_image_id(i): _source(i).rsplit("/", 1)[1] for i in range(40)}
    shown = re.findall(r'data-image-id="([0-9a-f]{16})">.*?<span class="fn" title="[^"]*">([^<]*)</span>', page,
                       re.S)
    assert shown and all(html.unescape(name) == names[i] for i, name in shown)
    assert 'a<b>&"odd"' not in page and "a&lt;b&gt;&amp;&#34;odd&#34;.jpg" in page
    # what each ROI is made of, and the legend
    assert "bilateral area FFC (Glasser group 4, Ventral Stream Visual) = L_FFC" in page
    assert "composite of PHA1, PHA2, PHA3" in page
    assert "Glasser group 1, Primary Visual: areas V1 (both hemispheres)" in page
    for term in ("z", "margin", "p_null"):
        assert f"<dt>{term}</dt>" in page
    assert "(response − mean) / std over the screened set" in page
    assert "score − the 95th percentile of the single-image null" in page
    assert "(1 + #{null ≥ score}) / (1 + n_null)" in page
    assert "Small set: the single-image null holds only 40 images" in page  # p-values on a tiny set
    assert "both lists are cut" not in page  # 10 + 5 <= 40: nothing to cap


def test_small_set_caps_k_and_lists_do_not_overlap(tmp_path):
    from screening.rank import rank

    run = _make_run(tmp_path, n=12)
    rank(str(run / "responses"), str(run / "rankings"), contrasts=["FFC:PHA1-3"], null_draws=200)  # k = 25
    page = open(write_report(run, rois=["FFC", "V1"], flatmaps=False), encoding="utf-8").read()
    assert page.count("both lists are cut to k = floor(12/2) = 6 so that no image is in both") == 2
    for roi in ("FFC", "V1"):
        top, bottom = _grid_ids(page, roi, "top"), _grid_ids(page, roi, "bottom")
        assert len(top) == len(bottom) == 6 and not set(top) & set(bottom)
    assert "p_null cannot fall below 1/(12+1) = 0.077" in page
    assert "rank's lists hold k = 12 of the 12 images, not the 6 shown" in html.unescape(page)  # set-level caveat
    assert "<h3>FFC&gt;PHA1-3</h3>" in page and "score = z(FFC) − z(PHA1-3)" in page
    assert "PHA1-3: composite of PHA1, PHA2, PHA3" in page
    # the lines mark where the shown lists start: 6th largest / 6th smallest, not the set's max / min
    resp = pd.read_parquet(run / "responses")
    n = {c: len(atlas.roi_grayordinates()[c]) for c in ("L_FFC", "R_FFC")}
    m = resp[resp.subject == "mean"]
    ffc = np.sort((m.L_FFC * n["L_FFC"] + m.R_FFC * n["R_FFC"]).to_numpy(np.float64) / (n["L_FFC"] + n["R_FFC"]))
    top, bottom = _thresholds_on_page(page)["FFC"]
    assert top == pytest.approx(ffc[-6], rel=1e-5) and bottom == pytest.approx(ffc[5], rel=1e-5)
    assert ffc[0] < top < ffc[-1] and ffc[0] < bottom < ffc[-1]


def _grid_ids(page, roi, which):
    m = re.search(rf'<div class="grid" data-roi="{re.escape(roi)}" data-list="{which}">(.*?)</div>', page, re.S)
    assert m, (roi, which)
    return re.findall(r'data-image-id="([^"]+)"', m.group(1))


def test_report_shows_skipped_selectivity(tmp_path):
    """A run screened with --rois FFC: rank skips selectivity with a note and the page shows it."""
    run = _make_run(tmp_path, n=20, columns=["FFC"])
    page = open(write_report(run, flatmaps=False), encoding="utf-8").read()
    assert "ranking: selectivity skipped: nothing to compare against" in page
    assert "No selectivity list: selectivity skipped" in page
    assert "HCP-MMP1.0 area FFC, both hemispheres (L_FFC ∪ R_FFC), screened as one ROI" in page


def test_a_ranking_kind_registered_once_gets_its_table_in_each_roi_section(tmp_path, monkeypatch):
    """A kind with a report table, registered in screening.rank.kinds only: its rows are shown on the page."""
    from screening.rank import RANKINGS_FILE, rank
    from screening.rank.kinds import KINDS, RankingKind, ReportTable

    run = _make_run(tmp_path, n=12)
    rank(str(run / "responses"), str(run / "rankings"), rois=["V1"], top_k=3, n_null=20, null_draws=0)
    path = run / "rankings" / RANKINGS_FILE
    table = pq.read_table(path)
    rows = table.to_pandas()
    planted = rows[(rows.kind == "topk") & (rows.roi == "V1") & (rows.subject == "mean")].assign(kind="planted")
    pq.write_table(pa.Table.from_pandas(pd.concat([rows, planted]), schema=table.schema, preserve_index=False), path)

    def page():
        return open(write_report(run, rois=["V1"], top_k=3, bottom_k=3, flatmaps=False), encoding="utf-8").read()

    assert "planted list" not in page()   # unregistered: its rows are not shown
    monkeypatch.setitem(KINDS, "planted", RankingKind("planted", "planted for this test", table=ReportTable(
        "planted list", "score = a planted note", ("rank", "file", "image_id", "score"))))
    shown = page()
    assert "planted list" in shown and "score = a planted note" in shown


def test_report_records_flatmap_unavailable(tmp_path, monkeypatch):
    import screening.report.figures as figures

    def nowhere(name):
        raise InvalidParameterError(f"{name} is not placed")

    run = _make_run(tmp_path)
    monkeypatch.setattr(figures, "roi_grayordinate_mask", nowhere)
    page = open(write_report(run, rois=["V1"], top_k=3, bottom_k=0), encoding="utf-8").read()
    assert "flatmap unavailable:" in page and "none of the run&#39;s response columns is an atlas area" in page
    assert 'href="sheet_V1.png"' in page and 'data-list="bottom"' not in page
    with pytest.raises(InvalidParameterError, match=r"ROI\(s\) \['NOPE'\] are not in the rankings; valid:"):
        write_report(run, rois=["NOPE"])
    with pytest.raises(InvalidParameterError, match=r"top_k must be an integer >= 0 or None; got -1"):
        write_report(run, top_k=-1)


def test_report_flatmap_needs_no_model(tmp_path):
    run = _make_run(tmp_path, n=12)   # its manifest names a store that does not exist: the report never opens it
    page = open(write_report(run, rois=["V1"], top_k=4, bottom_k=0), encoding="utf-8").read()
    assert "flatmap unavailable" not in page, re.findall(r"flatmap unavailable[^<]*", page)
    assert (run / "report" / "flatmap_V1.png").stat().st_size > 1000
    assert "ROI means: each screened ROI painted" in page   # the map says what it is
    # asked for vertex maps, an unreachable store leaves the ROI-mean map, and the page says why
    page = open(write_report(run, rois=["V1"], top_k=4, bottom_k=0, vertex_maps=True), encoding="utf-8").read()
    assert "ROI means: vertex maps unavailable (" in page and "flatmap unavailable" not in page
    assert (run / "report" / "flatmap_V1.png").stat().st_size > 1000


def test_report_vertex_maps_paint_the_api_vertex_outputs_of_the_shown_image(tmp_path, visual_store, monkeypatch):
    """``--vertex-maps``: the array each flatmap is drawn from is the run's model's vertex output for that ROI's
    top image (``BERG.encode``; subject ``mean``: the mean over the run's subjects), NaN off the model's vertices."""
    import screening.report.figures as figures
    from screening.api import BERG
    from screening.preprocess import preprocess_bytes

    berg = BERG(str(visual_store))
    model_id = berg.store.model_ids()[0]
    run = _make_run(tmp_path, n=12, store=visual_store, model_id=model_id)
    drawn, real = {}, figures.draw_flatmap

    def spy(values, **kw):
        drawn[kw["out_png"].name] = np.array(values, dtype=np.float64)
        return real(values, **kw)

    monkeypatch.setattr(figures, "draw_flatmap", spy)
    page = open(write_report(run, rois=["V1", "FFC"], top_k=2, bottom_k=0, vertex_maps=True),
                encoding="utf-8").read()
    assert "vertex responses: all 7,831 vertices of the run&#39;s model" in page and "ROI means" not in page
    data = {i: b for f in sorted((tmp_path / "images").glob("*.parquet"))
            for i, b in zip(*pq.read_table(f, columns=["image_id", "image"]).to_pydict().values())}
    model = berg.get_encoding_model(model_id, subject=[1, 2], precision="fp32")
    mapping = model.vertex_mapping
    for roi in ("V1", "FFC"):
        best = read_rankings_top(run, roi)
        out = berg.encode(model, preprocess_bytes(data[best])[None])["NaturalScenesDataset"]
        want = np.mean([out["sub-01"][0], out["sub-02"][0]], axis=0, dtype=np.float64)
        got = drawn[f"flatmap_{roi}.png"]
        assert np.isfinite(got).sum() == mapping.size == 7831 and np.isfinite(got[mapping]).all()
        # float32 outputs of O(1): the report encodes its images in one batch, here one at a time (rounding only)
        np.testing.assert_allclose(got[mapping], want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    from pathlib import Path

    from screening.contrast import contrast
    from screening.vertex_stats import VertexStats

    run = _make_run(tmp_path, n=12)  # a small set: rank's k = 25 > 12 / 2
    rng = np.random.default_rng(2)   # a vertex contrast of screening contrast: its mean flatmap is on the page
    contrast(VertexStats.of_values(rng.normal(size=(8, 2, 7831)), np.repeat(np.eye(2), 4, axis=0), ["a", "b"],
                                   ["sub-01", "sub-02"], variant="visual"), "a>b", out=str(run / "contrasts"))
    index = Path(write_report(run, rois=["FFC", "V1"]))

    dom = _chromium_dom(index)
    n_imgs = len(re.findall(r"<img ", index.read_text(encoding="utf-8")))
    assert n_imgs == 2 * (2 + 6 + 6) + 1  # histogram, flatmap, 6 + 6 thumbnails per ROI; the contrast's flatmap
    assert 'src="vertex_contrast_a_vs_b_mean_t.png"' in dom or re.search(r'src="vertex_contrast_[^"]*_mean_t.png"', dom)
    m = re.search(r'data-images="(\d+)" data-broken-images="(\d+)"', dom)
    assert m, dom[:500]
    assert int(m.group(1)) == n_imgs and m.group(2) == "0", re.findall(r'data-broken-src="[^"]*"', dom)
    # the rendered DOM names the files, and top and bottom share no image
    names = {_image_id(i): _source(i).rsplit("/", 1)[1] for i in range(12)}
    for roi in ("FFC", "V1"):
        top, bottom = _grid_ids(dom, roi, "top"), _grid_ids(dom, roi, "bottom")
        assert len(top) == 6 and len(bottom) == 6 and not set(top) & set(bottom), (top, bottom)
    captions = re.findall(r'data-image-id="([0-9a-f]{16})">.*?<span class="fn" title="[^"]*">([^<]*)</span>', dom,
                          re.S)
    assert len(captions) == 24 and all(html.unescape(n) == names[i] for i, n in captions)
    assert "a<b>" not in dom and html.escape('a<b>&"odd".jpg', quote=False) in dom
    # and the check itself can fail: break one link
    page = index.read_text(encoding="utf-8").replace('src="hist_V1.png"', 'src="missing.png"')
    broken = index.with_name("broken.html")
    broken.write_text(page, encoding="utf-8")
    dom = _chromium_dom(broken)
    assert 'data-broken-images="1"' in dom and "missing.png" in dom


def test_fetch_reads_image_bytes_only_of_the_row_groups_it_needs(tmp_path):
    """Ids and sources of every row are scanned; the image column only where a wanted id is."""
    import fsspec.implementations.local as local

    rng = np.random.default_rng(1)
    blobs = [rng.bytes(100_000) for _ in range(12)]  # incompressible "images": the image column dominates
    ids = [_image_id(i) for i in range(12)]
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"image_id": ids, "image": pa.array(blobs, pa.binary()),
                             "source": [f"/x/{i}.jpg" for i in range(12)]}), path, row_group_size=3,
                   write_statistics=False)  # as with many random ids per group: statistics cannot prune
    read = []

    class CountingFS(local.LocalFileSystem):
        cachable = False

        def _open(self, p, mode="rb", **kw):
            f = super()._open(p, mode, **kw)
            raw = f.read

            def counted(n=-1):
                b = raw(n)
                read.append(len(b))
                return b

            f.read = counted
            return f

    got = fetch_image_records([str(path)], [ids[4], ids[5]], filesystem=CountingFS())
    assert {i: r["bytes"] for i, r in got.items()} == {ids[4]: blobs[4], ids[5]: blobs[5]}
    assert got[ids[5]]["source"] == "/x/5.jpg"
    # one row group of 3 images (300 kB) + footer reads (64 kB each), not all 12 images (1.2 MB)
    assert 300_000 <= sum(read) < 600_000, sum(read)
    read.clear()
    assert fetch_image_records([str(path)], [ids[0]], filesystem=CountingFS(), with_bytes=False)[ids[0]] == {
        "bytes": None, "source": "/x/0.jpg"}
    assert sum(read) < 200_000, sum(read)  # footers and ids only: not even one image row group


def test_a_vertex_contrast_map_of_the_run_is_shown_on_the_page(tmp_path):
    from screening.contrast import contrast
    from screening.vertex_stats import VertexStats

    run = _make_run(tmp_path, n=12)
    rng = np.random.default_rng(2)
    contrast(VertexStats.of_values(rng.normal(size=(8, 2, 7831)), np.repeat(np.eye(2), 4, axis=0), ["a", "b"],
                                   ["sub-01", "sub-02"], variant="visual"), "a>b", out=str(run / "contrasts"))
    page = open(write_report(run, rois=["V1"], top_k=2, bottom_k=0), encoding="utf-8").read()
    shown = re.findall(r'<img src="(vertex_contrast_[^"]+_mean_t\.png)"', page)
    assert len(shown) == 1 and (run / "report" / shown[0]).stat().st_size > 1000
    assert 'id="vertex-contrasts"' in page
