"""Image features (the core output's spatial mean) kept by a run, searched (--space features) and used for a
diverse top-k."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.image_corpus import encode, photo_like

SUBJECTS = ["sub-01", "sub-02"]


def _photos(folder, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"p{i}.png").write_bytes(encode(photo_like(140 + 6 * i, 120, seed=i), "PNG"))
    return folder


def _real_photos(folder, n=8):
    """Distinct real photographs (the demo's, bundled in PyPI packages), as p0.png .."""
    from screening.demo import packaged_photos

    folder.mkdir(parents=True, exist_ok=True)
    photos, seen = packaged_photos(), set()
    distinct = [a for a, _ in (photos[k] for k in sorted(photos))
                if not (a.tobytes() in seen or seen.add(a.tobytes()))]   # skimage's cat() is chelsea()
    for i, pixels in enumerate(distinct[:n]):
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    return folder


def _near_copy(src, dst):
    """The same photo shifted by a pixel and re-encoded as JPEG."""
    base = Image.open(src).convert("RGB")
    shifted = Image.new("RGB", base.size)
    shifted.paste(base, (1, 0))
    buf = io.BytesIO()
    shifted.save(buf, "JPEG", quality=92)
    dst.write_bytes(buf.getvalue())


def _screen(images, store, out, **kw):
    from screening.pipeline import screen

    return screen(str(images), str(store), str(out), subjects=SUBJECTS, rois=["V1", "FFC"], precision="fp32",
                  progress=False, batch_size=4, **kw)


def test_features_are_the_core_spatial_mean_and_commit_exactly_once(tmp_path, visual_store):
    from screening.api import BERG
    from screening.preprocess import preprocess_bytes

    images = _photos(tmp_path / "imgs")
    res = _screen(images, visual_store, tmp_path / "out")
    feats = res.features()
    assert len(feats) == 6 and feats.image_id.is_unique and list(feats.columns[1:4]) == ["f000", "f001", "f002"]
    assert all(feats[c].dtype == np.float16 for c in feats.columns[1:]) and feats.shape[1] == 1 + 16
    berg = BERG(str(visual_store))
    model = berg.get_encoding_model(berg.store.model_ids()[0], subject=1, device="cpu")
    src = pd.concat(pd.read_parquet(f) for f in res.outputs.files()["sources"])
    by_id = dict(zip(src.image_id, src.source))
    x = np.stack([preprocess_bytes(open(by_id[i], "rb").read(), fast=True) for i in feats.image_id])
    direct = model.features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(feats.iloc[:, 1:].to_numpy(np.float32), direct.astype(np.float16).astype(np.float32),
                               rtol=2 ** -10, atol=1e-6)   # fp32 mean, then float16: one rounding
    # resume: a unit redone keeps one features row per image, the same values
    os.remove(next((tmp_path / "out" / "_committed").iterdir()))
    again = _screen(images, visual_store, tmp_path / "out")
    assert again.units_run == 1
    f2 = again.features().set_index("image_id").sort_index()
    assert f2.index.is_unique and len(f2) == 6
    np.testing.assert_array_equal(f2.to_numpy(), feats.set_index("image_id").sort_index().to_numpy())
    off = _screen(images, visual_store, tmp_path / "off", features=False)
    assert off.features().empty and not list((tmp_path / "off").glob("features/*/*.parquet"))


def test_search_in_feature_space_finds_the_image_itself_and_its_copy(tmp_path, visual_store):
    from screening.search import search

    images = _real_photos(tmp_path / "imgs", n=6)
    _near_copy(images / "p2.png", images / "p2-copy.jpg")
    _screen(images, visual_store, tmp_path / "out")
    got = search(tmp_path / "out", like=str(images / "p2.png"), space="features", k=3)
    assert got.source.iloc[0].endswith("p2.png") and got.similarity.iloc[0] == pytest.approx(1.0, abs=1e-3)
    assert got.source.iloc[1].endswith("p2-copy.jpg")


def test_diverse_top_k_keeps_one_of_a_near_duplicate_pair_and_records_the_skip(tmp_path, visual_store):
    from screening.rank import rank_with_labels, read_rankings

    images = _real_photos(tmp_path / "imgs", n=8)
    _near_copy(images / "p3.png", images / "p3-copy.jpg")
    _screen(images, visual_store, tmp_path / "out")
    resp = tmp_path / "out" / "responses"
    plain = rank_with_labels(str(resp), rois=["V1"], top_k=9, bottom_k=0, null_draws=0, selectivity=False,
                             consensus=False).rankings
    src = pd.concat(pd.read_parquet(f) for f in (tmp_path / "out" / "sources").glob("*/*.parquet"))
    pair = set(src[src.source.str.contains("p3")].image_id)
    assert len(pair) == 2 and pair <= set(plain.image_id)   # k = all 9 images: both copies listed
    res = rank_with_labels(str(resp), tmp_path / "rk", diverse=0.95, rois=["V1"], top_k=9, bottom_k=0,
                           null_draws=0, selectivity=False, consensus=False)
    r = res.rankings
    for subject, g in r.groupby("subject"):
        listed = g[g.kind == "topk"]
        skipped = g[g.kind == "topk_skipped"]
        assert len(pair & set(listed.image_id)) == 1, subject           # one of the pair is listed
        assert set(skipped.image_id) <= pair and len(skipped) == 1, subject   # the other is recorded as skipped
        assert skipped.duplicate_of.iloc[0] in pair and listed["rank"].tolist() == list(range(1, len(listed) + 1))
    stored = read_rankings(str(tmp_path / "rk"))
    assert (stored.kind == "topk_skipped").sum() == (r.kind == "topk_skipped").sum()


def test_diverse_notes_name_the_short_lists_and_the_images_listed_unchecked():
    from screening.rank._diverse import diversify

    rows = pd.DataFrame({"roi": "V1", "subject": "mean", "kind": "topk", "rank": [1, 2, 3, 4],
                         "image_id": ["a", "b", "c", "d"], "duplicate_of": None})
    e = np.eye(3, dtype=np.float32)
    vectors = {"a": e[0], "b": e[0], "c": e[0]}             # b, c near-copies of a; d has no vector
    out, notes = diversify(rows, vectors, 0.95, {"topk": 3})
    listed = out[out.kind == "topk"]
    assert listed.image_id.tolist() == ["a", "d"] and (out.kind == "topk_skipped").sum() == 2
    assert any("1 list(s) hold fewer than k images" in n and "V1/mean/topk (2 of 3)" in n for n in notes)
    assert any("1 listed image(s) have no feature vector" in n and n.endswith(": d") for n in notes)
