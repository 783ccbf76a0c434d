"""Tests for screening.preprocess: the decode rules, the exact path and the fast path."""

from __future__ import annotations

import io
import pickle
import re
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from screening import preprocess as P
from screening.exceptions import ImageDecodeError, InvalidParameterError
from tests.image_corpus import OK, bad_image_corpus, bomb_png, encode, photo_like

CORPUS = bad_image_corpus()
OK_CASES = sorted(k for k, (_, exp) in CORPUS.items() if exp == OK)
BAD_CASES = sorted(k for k, (_, exp) in CORPUS.items() if exp != OK)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(photo_like(4000, 3000, seed=7), "JPEG", quality=90)


# ----------------------------------------------------------------------------------------------
# independent reference: torchvision-style CenterCrop + PIL antialiased bilinear, in numpy
# ----------------------------------------------------------------------------------------------

def _tv_center_crop(img: Image.Image) -> Image.Image:
    # torchvision.transforms.functional.center_crop for a square of side min(w, h)
    w, h = img.size
    s = min(w, h)
    top = int(round((h - s) / 2.0))
    left = int(round((w - s) / 2.0))
    return img.crop((left, top, left + s, top + s))


def _aa_bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of PIL's antialiased bilinear (triangle) filter."""
    scale = n_in / n_out
    support = max(scale, 1.0)  # the triangle widens with the downscale factor
    W = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        j = np.arange(xmin, xmax)
        k = np.clip(1.0 - np.abs((j - center + 0.5) / support), 0.0, None)
        W[i, xmin:xmax] = k / k.sum()
    return W


def _reference(img: Image.Image) -> np.ndarray:
    sq = np.asarray(_tv_center_crop(img.convert("RGB")), dtype=np.float64)  # (s, s, 3)
    s = sq.shape[0]
    Wm = _aa_bilinear_weights(s, P.TARGET_SIZE)
    # PIL resamples horizontally then vertically, rounding to uint8 in between.
    horiz = np.clip(np.rint(np.einsum("oj,ijc->ioc", Wm, sq)), 0, 255)
    out = np.clip(np.rint(np.einsum("oi,ijc->ojc", Wm, horiz)), 0, 255)
    return out.astype(np.uint8).transpose(2, 0, 1)


def _assert_close_to_reference(out: np.ndarray, ref: np.ndarray) -> None:
    # PIL filters in fixed point (coefficients to 2**-22, uint8 between the two passes), so a
    # float reference lands within 1 level, and a 1-level intermediate difference can become 2.
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 2 and (diff > 1).mean() < 1e-4 and diff.mean() < 0.05, np.bincount(diff.ravel())


# ----------------------------------------------------------------------------------------------
# the bad-image corpus
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", OK_CASES)
@pytest.mark.parametrize("fast", [False, True])
def test_corpus_ok_cases_decode_to_rgb_224(name, fast):
    data, _ = CORPUS[name]
    img = P.decode_image(data)
    assert img.mode == "RGB"
    out = P.preprocess_bytes(data, fast=fast)
    assert out.shape == (3, 224, 224) and out.dtype == np.uint8 and out.flags.c_contiguous


@pytest.mark.parametrize("name", BAD_CASES)
def test_corpus_bad_cases_raise_with_reason(name):
    data, pattern = CORPUS[name]
    for call in (P.decode_image, P.preprocess_bytes, lambda d: P.preprocess_bytes(d, fast=True)):
        with pytest.raises(ImageDecodeError, match=pattern):
            call(data)


def test_truncated_jpeg_never_loads_partly(big_jpeg):
    # The guard is Pillow's default; importing screening must not have changed it.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    # A big one takes the reduced (draft) decode on the fast path: still refused, both paths.
    cut = big_jpeg[: int(len(big_jpeg) * 0.9)]
    for fast in (False, True):
        with pytest.raises(ImageDecodeError, match="corrupt or truncated JPEG data: image file is truncated"):
            P.preprocess_bytes(cut, fast=fast)


def test_grayscale_becomes_equal_channels():
    for name in ("grayscale_jpeg", "grayscale_png", "la_png", "bilevel_png"):
        out = P.preprocess_bytes(CORPUS[name][0])
        assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2]), name
        assert out.min() < 40 and out.max() > 210, name  # the cropped ramp (32..220) survived


def test_16bit_png_scaled_not_clipped():
    assert np.all(P.preprocess_bytes(CORPUS["png16_white"][0]) == 255)
    assert np.all(P.preprocess_bytes(CORPUS["png16_mid"][0]) == 128)  # 32768*255/65535 = 127.50
    # A row of chosen 16-bit values: rounding, not the high byte and not clipping at 255.
    values = np.array([[0, 128, 129, 257, 32767, 32768, 65280, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    got = np.asarray(P.decode_image(data))[0, :, 0]
    want = np.rint(values[0].astype(np.int64) * 255 / 65535).astype(np.uint8)
    assert got.tolist() == want.tolist() == [0, 0, 1, 1, 127, 128, 254, 255]


def test_cmyk_jpeg_colours():
    px = np.asarray(P.decode_image(CORPUS["cmyk_jpeg"][0])).reshape(-1, 3).mean(axis=0)
    assert np.allclose(px, (255, 0, 0), atol=3)


def test_transparency_composited_onto_white():
    rgba = np.asarray(P.decode_image(CORPUS["rgba_png"][0]))
    assert (rgba[:, :16] == (0, 0, 255)).all() and (rgba[:, 16:] == 255).all()
    pal = np.asarray(P.decode_image(CORPUS["palette_png_transparency"][0]))
    assert (pal[:, :16] == (255, 0, 0)).all() and (pal[:, 16:] == 255).all()
    # Half-transparent black over white -> mid grey.
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert abs(int(np.asarray(P.decode_image(encode(half, "PNG")))[0, 0, 0]) - 127) <= 1
    assert P.ALPHA_BACKGROUND == (255, 255, 255)


def test_exif_orientation_applied():
    img = P.decode_image(CORPUS["exif_rotated_jpeg"][0])
    assert img.size == (20, 40)  # stored 40x20, orientation 6
    arr = np.asarray(img).astype(int)
    assert arr[:20, :, 0].mean() > 200 and arr[:20, :, 2].mean() < 50  # red on top
    assert arr[20:, :, 2].mean() > 200 and arr[20:, :, 0].mean() < 50  # blue below
    # The fast path (reduced decode) applies it too: same result on a big one.
    exif = Image.Exif()
    exif[0x0112] = 6
    big = photo_like(1200, 900, seed=3)
    data = encode(big, "JPEG", quality=90, exif=exif.tobytes())
    exact, fast = P.preprocess_bytes(data), P.preprocess_bytes(data, fast=True)
    unrotated = P.preprocess_pil(big)
    assert np.abs(exact.astype(int) - fast.astype(int)).mean() < 1.0
    assert np.abs(exact.astype(int) - unrotated.astype(int)).mean() > 10  # rotation did happen


def test_one_by_one_upsampled_flat():
    out = P.preprocess_bytes(CORPUS["one_by_one"][0])
    assert (out.reshape(3, -1).T == (10, 20, 30)).all()


@pytest.mark.parametrize("name", ["wide_4000x10", "tall_10x4000"])
def test_extreme_aspect_ratio_is_centre_cropped(name):
    data, _ = CORPUS[name]
    img = P.decode_image(data)
    _assert_close_to_reference(P.preprocess_bytes(data), _reference(img))


# ----------------------------------------------------------------------------------------------
# decompression bombs and max_pixels
# ----------------------------------------------------------------------------------------------

def test_bomb_checked_before_decoding_and_independent_of_pillow_global(monkeypatch):
    bomb = bomb_png(100_000, 100_000)
    assert P.image_size(bomb) == (100_000, 100_000)  # header only, no allocation
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own guard off
    with pytest.raises(ImageDecodeError, match=r"10,000,000,000 pixels exceeds max_pixels=134,217,728"):
        P.decode_image(bomb)


def test_max_pixels_is_the_only_size_limit(monkeypatch):
    data = encode(photo_like(640, 480), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match=r"640x480 = 307,200 pixels exceeds max_pixels=300,000"):
        P.decode_image(data, max_pixels=300_000)
    # A tiny Pillow global limit neither warns nor raises when our max_pixels allows the image
    # (the crop's own bomb check included).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fast in (False, True):
            assert P.preprocess_bytes(data, fast=fast, max_pixels=307_200).shape == (3, 224, 224)


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, "100"])
def test_max_pixels_validated(bad):
    with pytest.raises(InvalidParameterError, match=re.escape(f"max_pixels={bad!r} must be a positive integer")):
        P.decode_image(CORPUS["rgb_png"][0], max_pixels=bad)


def test_parameter_errors_name_the_bad_value():
    with pytest.raises(InvalidParameterError, match="got str"):
        P.decode_image("photo.jpg")
    with pytest.raises(InvalidParameterError, match="fast must be True or False; got 'yes'"):
        P.preprocess_bytes(CORPUS["rgb_png"][0], fast="yes")
    with pytest.raises(InvalidParameterError, match=r"must have shape \(3, H, W\); got \(224, 224, 3\)"):
        P.preprocess_array(np.zeros((224, 224, 3), np.uint8))
    with pytest.raises(InvalidParameterError, match="dtype uint8; got float32"):
        P.preprocess_batch_array(np.zeros((2, 3, 8, 8), np.float32))


def test_image_decode_error_pickles():
    with pytest.raises(ImageDecodeError) as info:
        P.decode_image(CORPUS["truncated_jpeg"][0])
    err = pickle.loads(pickle.dumps(info.value))
    assert type(err) is ImageDecodeError and str(err) == str(info.value)
    assert isinstance(err, ValueError)


def test_image_size_reads_header_only():
    assert P.image_size(CORPUS["rgb_jpeg"][0]) == (640, 480)
    assert P.image_size(CORPUS["exif_rotated_jpeg"][0]) == (40, 20)  # stored, before EXIF
    # A truncated JPEG still has a parseable header; ingest relies on that distinction.
    assert P.image_size(CORPUS["truncated_jpeg"][0]) == (640, 480)
    with pytest.raises(ImageDecodeError, match="looks like text"):
        P.image_size(CORPUS["text_file"][0])


# ----------------------------------------------------------------------------------------------
# exact path against the independent reference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(640, 480), (480, 640), (205, 200), (203, 200), (300, 300), (150, 100)])
def test_exact_path_matches_reference(size):
    img = photo_like(*size, seed=sum(size))
    data = encode(img, "PNG")  # lossless: the reference sees the same pixels
    out = P.preprocess_bytes(data)
    ref = _reference(img)
    _assert_close_to_reference(out, ref)
    # And the crop box is torchvision's (round half to even), pinned on known values.
    assert np.array_equal(out, P.preprocess_pil(img))


def test_center_crop_box_rounding():
    assert P.center_crop_box(205, 200) == (2, 0, 202, 200)  # round(2.5) == 2
    assert P.center_crop_box(203, 200) == (2, 0, 202, 200)  # round(1.5) == 2
    assert P.center_crop_box(200, 207) == (0, 4, 200, 204)  # round(3.5) == 4
    assert P.center_crop_box(10, 4000) == (0, 1995, 10, 2005)


def test_exact_path_is_not_a_naive_resize():
    # Antialiasing matters on downscale: a 1-pixel checkerboard averages to grey, whereas a
    # point-sampled or non-antialiased bilinear resize keeps high contrast.
    board = (np.indices((896, 896)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = P.preprocess_pil(Image.fromarray(board, "L"))
    assert np.abs(out.astype(int) - 128).max() <= 2


def test_preprocess_array_and_batch():
    img = photo_like(300, 200, seed=11)
    chw = np.asarray(img).transpose(2, 0, 1)
    one = P.preprocess_array(chw)
    assert np.array_equal(one, P.preprocess_pil(img))
    batch = np.stack([chw, chw[:, ::-1]])
    out = P.preprocess_batch_array(batch)
    assert out.shape == (2, 3, 224, 224)
    assert np.array_equal(out[0], one) and np.array_equal(out[1], P.preprocess_array(chw[:, ::-1]))
    ready = np.random.default_rng(0).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    passthrough = P.preprocess_batch_array(ready)
    assert passthrough is ready  # no work, no copy
    assert np.array_equal(P.preprocess_array(ready[0]), ready[0])
    assert not np.shares_memory(P.preprocess_array(ready[0]), ready)


# ----------------------------------------------------------------------------------------------
# fast path
# ----------------------------------------------------------------------------------------------

def test_fast_path_agrees_on_large_jpeg(big_jpeg):
    exact = P.preprocess_bytes(big_jpeg).astype(int)
    fast = P.preprocess_bytes(big_jpeg, fast=True).astype(int)
    diff = np.abs(exact - fast)
    # Measured 0.16 mean, 2 max on this image (docs/preprocess-ingest.md); bounds leave margin.
    assert diff.mean() < 0.5 and diff.max() <= 8
    assert not np.array_equal(exact, fast)  # the fast path really took the reduced decode


def test_fast_path_agrees_on_cmyk_jpeg():
    # CMYK JPEGs are reduced by the same draft decode.
    cmyk = encode(photo_like(1800, 1200, seed=9).convert("CMYK"), "JPEG", quality=90)
    exact = P.preprocess_bytes(cmyk).astype(int)
    fast = P.preprocess_bytes(cmyk, fast=True).astype(int)
    assert np.abs(exact - fast).mean() < 1.0
    assert not np.array_equal(exact, fast)  # reduced, not silently exact


@pytest.mark.parametrize("size", [(425, 425), (1024, 768), (890, 2000)])
def test_fast_path_identical_when_no_reduction_fits(size):
    # Short side < 2 * 448: no DCT reduction keeps it >= 448, so fast == exact bit for bit.
    data = encode(photo_like(*size, seed=1), "JPEG", quality=90)
    assert np.array_equal(P.preprocess_bytes(data), P.preprocess_bytes(data, fast=True))


def test_fast_path_non_jpeg_is_exact():
    data = encode(photo_like(1000, 1000, seed=2), "PNG")
    assert np.array_equal(P.preprocess_bytes(data), P.preprocess_bytes(data, fast=True))
