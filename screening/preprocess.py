"""Encoded image bytes -> RGB -> centre crop -> 224x224 uint8 ``(3, 224, 224)``.

This module is the one preprocessing path of the engine: the in-memory API, the Ray pipeline and
the report all call it, so an image gets the same pixels wherever it is screened.

The exact path follows the MOSAIC training transform (see ``shared/design/model-spec.md``): a PIL
RGB image is centre-cropped to a square of side ``min(w, h)`` with torchvision's ``CenterCrop``
rounding, then resized to 224x224 with ``Image.BILINEAR`` (PIL's bilinear filter is antialiased
when it downscales). Normalisation is not done here: the encoder takes uint8 and normalises inside.

Decoding rules (:func:`decode_image`)
-------------------------------------
- Formats: JPEG (and MPO, the multi-picture JPEG many phones write), PNG, WebP, GIF (first frame),
  BMP and TIFF. Anything else is refused before a decoder runs, which also keeps Pillow's less
  common plugins (EPS calls Ghostscript) out of reach of untrusted bytes.
- Declared size: ``width * height`` from the header is checked against ``max_pixels`` *before*
  any pixel is decoded (decompression bombs). The check does not depend on Pillow's process-global
  ``Image.MAX_IMAGE_PIXELS``.
- Truncated or corrupt data raises :class:`~screening.exceptions.ImageDecodeError`; a truncated
  JPEG is never returned as a partly grey image (this relies on Pillow's default
  ``ImageFile.LOAD_TRUNCATED_IMAGES = False``, which this module never changes).
- EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo is screened the
  way it is displayed. Unreadable EXIF is ignored: the pixels are still good.
- Colour: ICC profiles are not applied (neither did the training pipeline). Grayscale, 1-bit and
  CMYK are converted with Pillow's conversions; 16-bit grayscale is scaled to 8 bit with
  rounding, ``round(v * 255 / 65535)`` (so 65535 -> 255, not clipped). Pillow reads 16-bit
  RGB(A) PNGs by keeping the high byte (at most 1 level below the rounded value).
- Transparency (RGBA, LA, palette with a transparent entry) is composited onto
  :data:`ALPHA_BACKGROUND`, white, which is how viewers and web pages show a cut-out object.
  Dropping alpha instead would reveal whatever colour happens to sit under transparent pixels.
- Tiny and elongated images are accepted: a 1x1 image becomes a flat 224x224 image; a 4000x10
  strip is centre-cropped to 10x10 and upsampled, as the spec's centre crop prescribes.

Fast path (``preprocess_bytes(..., fast=True)``)
------------------------------------------------
For a JPEG whose short side is at least ``2 * FAST_MIN_SIDE``, libjpeg decodes straight to 1/2,
1/4 or 1/8 size with its scaled IDCT (Pillow's ``draft``), choosing the strongest reduction that
keeps the short side >= ``FAST_MIN_SIDE`` = 448, twice the target, so the final antialiased
resize still does the real filtering; then the exact path's crop and resize. Everything else
(other formats, smaller JPEGs) is bit-identical to the exact path. ``simplejpeg`` was measured
too: the same pixels at the same speed, so the one-decoder design was kept (CMYK, EXIF and
truncation handled alike). Numbers in ``docs/preprocess-ingest.md``.

Device path (``screening.device_decode``, ``screening run --decode gpu``)
-------------------------------------------------------------------------
:func:`jpeg_for_device` says which JPEGs a device decoder (nvJPEG) may take: a plain JPEG (not MPO) of RGB or
grayscale pixels that ends in its EOI marker (a truncated one is left to the exact path, which refuses it) and
passes ``max_pixels``. :func:`crop_resize_tensor` then does this module's steps on the decoded tensor: EXIF
orientation, the same centre-crop box, and an antialiased bilinear resize (torch's, a float port of PIL's filter;
PIL rounds to uint8 between its two passes, so pixels differ by about a level). Everything else takes the exact path.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps
# Importing the plugins registers them in Image.OPEN.
from PIL import (  # noqa: F401
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from screening.validation import check_bool, check_positive_int
from screening.exceptions import ImageDecodeError, InvalidParameterError

__all__ = [
    "TARGET_SIZE",
    "DEFAULT_MAX_PIXELS",
    "ALPHA_BACKGROUND",
    "SUPPORTED_FORMATS",
    "FAST_MIN_SIDE",
    "decode_image",
    "image_size",
    "preprocess_pil",
    "preprocess_bytes",
    "preprocess_array",
    "preprocess_batch_array",
    "center_crop_box",
    "jpeg_for_device",
    "crop_resize_tensor",
]

#: Side of the square image the encoder takes.
TARGET_SIZE = 224

#: Largest declared ``width * height`` accepted by default: 2**27 = 134,217,728 pixels.
#: This admits every common camera, 100-megapixel medium format included (11648x8736 =
#: 101.8 MP, which a round 100 MP cap would refuse), while bounding one decode to about
#: 400 MB of RGB (540 MB for CMYK/RGBA) per worker. Raise it per call for larger scans.
DEFAULT_MAX_PIXELS = 2**27

#: Colour that transparent pixels are composited onto (white).
ALPHA_BACKGROUND = (255, 255, 255)

#: Short side the fast path keeps before the final resize (twice the target size).
FAST_MIN_SIDE = 2 * TARGET_SIZE

# Pillow format ids we open. Opening through the registered plugin factories (not
# ``Image.open``) skips Pillow's global bomb check: ours, with the caller's ``max_pixels``,
# runs instead, before any pixel is decoded. The JPEG factory promotes MPO files itself.
_FORMAT_IDS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_OPENERS = tuple((fmt,) + tuple(Image.OPEN[fmt]) for fmt in _FORMAT_IDS)

#: Human-readable names of the accepted formats.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WebP", "GIF", "BMP", "TIFF")

# Errors Pillow's decoders raise on bad data; everything else is a bug and propagates.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
                  struct.error, zlib.error, Image.DecompressionBombError)

BytesLike = Union[bytes, bytearray, memoryview]


# ----------------------------------------------------------------------------------------------
# opening and decoding
# ----------------------------------------------------------------------------------------------

def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InvalidParameterError(
        f"data must be encoded image bytes (bytes, bytearray or memoryview); got {type(data).__name__}"
    )


def _describe_unknown(data: bytes) -> str:
    head = data[:64]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        kind = "looks like text, not an image"
    else:
        kind = "not a recognised image format"
    return (f"{kind} (first bytes {data[:12]!r}, {len(data)} bytes); supported formats: "
            f"{', '.join(SUPPORTED_FORMATS)}")


def _check_max_pixels(max_pixels: object) -> int:
    return check_positive_int("max_pixels", max_pixels, allow_none=False)


def _open(data: bytes) -> ImageFile.ImageFile:
    """Parse the header only; no pixel is decoded. Raises ImageDecodeError."""
    if len(data) == 0:
        raise ImageDecodeError("empty input: 0 bytes")
    prefix = data[:16]
    for name, factory, accept in _OPENERS:
        accepted = accept(prefix) if accept else True
        if isinstance(accepted, str):  # Pillow built without this codec
            raise ImageDecodeError(f"{name} data, but this Pillow cannot decode it: {accepted}")
        if not accepted:
            continue
        try:
            return factory(io.BytesIO(data), "")
        except _DECODE_ERRORS as e:
            raise ImageDecodeError(f"unreadable {name} header: {e} ({len(data)} bytes)") from None
    raise ImageDecodeError(_describe_unknown(data))


def _open_checked(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    img = _open(data)
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageDecodeError(f"declared size {w}x{h} has no pixels")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"declared size {w}x{h} = {w * h:,} pixels exceeds max_pixels={max_pixels:,} "
            "(possible decompression bomb); pass a larger max_pixels to accept it"
        )
    return img


def _load(img: ImageFile.ImageFile) -> None:
    fmt = img.format or "image"
    try:
        img.load()
    except _DECODE_ERRORS as e:
        raise ImageDecodeError(f"corrupt or truncated {fmt} data: {e}") from None


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:
        # Bad EXIF says nothing about the pixels; keep them as stored.
        return img
    return img if out is None else out


def _composite(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if arr.dtype.kind == "f" or arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
        raise ImageDecodeError(
            f"integer image mode {img.mode!r} holds values outside 0..65535 "
            f"(range {arr.min()}..{arr.max()}); only 8- and 16-bit images are supported"
        )
    # Round, not truncate: v * 255 / 65535 to the nearest level (65535 -> 255, 257 -> 1).
    eight = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(eight, mode="L").convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB with the documented rules."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite(img)
    if mode == "P":
        if "transparency" in img.info or img.has_transparency_data:
            return _composite(img)
        return img.convert("RGB")
    if mode == "I" or mode.startswith("I;16"):
        return _sixteen_to_rgb(img)
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    raise ImageDecodeError(
        f"image mode {mode!r} has no defined conversion to RGB; supported modes: "
        "RGB, RGBA, L, LA, 1, P, PA, CMYK, YCbCr, I, I;16"
    )


#: Raw RGB pixels (HDF5 stimulus arrays such as NSD's ``imgBrick``) travel through the read and decode stages as this
#: container: the magic, height and width (uint32 little-endian), then ``height * width * 3`` uint8 in row order.
RAW_MAGIC = b"\x93SCREENING-RGB8"


def raw_pixels(pixels: np.ndarray) -> bytes:
    """The container of one ``(H, W, 3)`` uint8 image: decoded by :func:`preprocess_bytes` like a PNG of the same
    pixels, through the same centre crop and resize."""
    a = np.ascontiguousarray(pixels)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise InvalidParameterError(f"pixels must be (H, W, 3) uint8; got {a.dtype} {a.shape}")
    return RAW_MAGIC + np.array(a.shape[:2], "<u4").tobytes() + a.tobytes()


def _raw_image(data: bytes, max_pixels: int) -> Image.Image:
    h, w = (int(v) for v in np.frombuffer(data, "<u4", 2, len(RAW_MAGIC)))
    start = len(RAW_MAGIC) + 8
    if h * w > max_pixels:
        raise ImageDecodeError(f"raw pixels of {w}x{h} = {w * h} pixels exceed max_pixels={max_pixels}")
    if len(data) - start != h * w * 3:
        raise ImageDecodeError(f"raw pixels of {w}x{h} need {h * w * 3} bytes; got {len(data) - start}")
    return Image.fromarray(np.frombuffer(data, np.uint8, h * w * 3, start).reshape(h, w, 3), "RGB")


def _decode(data: bytes, max_pixels: int, draft_min_side: int | None) -> Image.Image:
    if data.startswith(RAW_MAGIC):
        return _raw_image(data, max_pixels)
    img = _open_checked(data, max_pixels)
    if draft_min_side is not None and img.format in ("JPEG", "MPO"):
        w, h = img.size
        # Pillow picks the largest of 1/2, 1/4, 1/8 with min(w, h) // scale >= draft_min_side.
        if min(w, h) >= 2 * draft_min_side:
            img.draft("RGB", (draft_min_side, draft_min_side))
    _load(img)
    img = _exif_transpose(img)
    try:
        return _to_rgb(img)
    except ImageDecodeError:
        raise
    except _DECODE_ERRORS as e:
        raise ImageDecodeError(f"cannot convert {img.format or 'image'} mode {img.mode!r} to RGB: {e}") from None


def decode_image(data: BytesLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes to a fully loaded RGB PIL image.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The encoded file (JPEG, PNG, WebP, GIF, BMP or TIFF).
    max_pixels : int, default=DEFAULT_MAX_PIXELS
        Largest declared ``width * height`` accepted; checked from the header before decoding.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, EXIF orientation applied, transparency composited onto white.

    Raises
    ------
    ImageDecodeError
        Empty input, unknown format (random bytes, text), declared size above ``max_pixels``,
        truncated or corrupt data. The message names the reason.
    InvalidParameterError
        ``data`` is not bytes-like, or ``max_pixels`` is not a positive int.

    Notes
    -----
    See the module docstring for the full conversion rules.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("L", (8, 4), 200).save(buf, "PNG")
    >>> decode_image(buf.getvalue()).getpixel((0, 0))
    (200, 200, 200)
    """
    return _decode(_as_bytes(data), _check_max_pixels(max_pixels), None)


def image_size(data: BytesLike) -> tuple[int, int]:
    """Return ``(width, height)`` as declared in the header, without decoding pixels.

    The size is the stored one, before EXIF orientation (a portrait phone photo stored
    landscape with orientation 6 reports its landscape size). No ``max_pixels`` check is
    made: this function is how callers find out the size of a bomb.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The encoded file.

    Returns
    -------
    tuple of int
        ``(width, height)``.

    Raises
    ------
    ImageDecodeError
        Empty input, unknown format, or a header that cannot be parsed.
    """
    img = _open(_as_bytes(data))
    return int(img.size[0]), int(img.size[1])


# ----------------------------------------------------------------------------------------------
# crop and resize
# ----------------------------------------------------------------------------------------------

def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Return the ``(left, top, right, bottom)`` box of the centred ``min(w, h)`` square.

    Uses torchvision ``CenterCrop``'s rounding: ``top = int(round((h - s) / 2.0))`` (Python's
    round-half-to-even), likewise ``left``.
    """
    s = min(width, height)
    top = int(round((height - s) / 2.0))
    left = int(round((width - s) / 2.0))
    return left, top, left + s, top + s


def _crop_resize(img: Image.Image) -> np.ndarray:
    w, h = img.size
    if w != h:
        box = center_crop_box(w, h)
        s = box[2] - box[0]
        if Image.MAX_IMAGE_PIXELS is not None and s * s > Image.MAX_IMAGE_PIXELS:
            # Image.crop applies Pillow's global bomb check to the crop (warning or error);
            # ours, with the caller's max_pixels, already ran. Same pixels by slicing.
            left, top, right, bottom = box
            img = Image.fromarray(np.asarray(img)[top:bottom, left:right])
        else:
            img = img.crop(box)
    if img.size != (TARGET_SIZE, TARGET_SIZE):
        img = img.resize((TARGET_SIZE, TARGET_SIZE), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)  # (224, 224, 3)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess_pil(img: Image.Image) -> np.ndarray:
    """Centre-crop and resize a PIL image to the encoder's input (exact path).

    Parameters
    ----------
    img : PIL.Image.Image
        Any mode; non-RGB images are converted with :func:`decode_image`'s rules.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(3, 224, 224)``.
    """
    if not isinstance(img, Image.Image):
        raise InvalidParameterError(f"img must be a PIL.Image.Image; got {type(img).__name__}")
    return _crop_resize(_to_rgb(img))


def preprocess_bytes(data: BytesLike, *, fast: bool = False,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode and preprocess one encoded image to the encoder's input.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The encoded file.
    fast : bool, default=False
        ``False``: the exact path (full decode, crop, antialiased bilinear resize).
        ``True``: a JPEG whose short side is at least ``2 * FAST_MIN_SIDE`` is decoded at 1/2, 1/4
        or 1/8 scale by libjpeg's scaled IDCT (Pillow ``draft``), keeping the short side
        >= ``FAST_MIN_SIDE`` (448), then the same crop and resize. Other input takes the exact path.
        About 6x faster on 12-megapixel photos, mean difference 0.16 levels (see
        ``docs/preprocess-ingest.md``).
    max_pixels : int, default=DEFAULT_MAX_PIXELS
        Largest declared ``width * height`` accepted.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(3, 224, 224)``.

    Raises
    ------
    ImageDecodeError
        As :func:`decode_image`.
    """
    data = _as_bytes(data)
    max_pixels = _check_max_pixels(max_pixels)
    if check_bool("fast", fast):
        return _crop_resize(_decode(data, max_pixels, FAST_MIN_SIDE))
    return _crop_resize(_decode(data, max_pixels, None))


def _check_chw(stim: np.ndarray, name: str, ndim: int) -> None:
    if not isinstance(stim, np.ndarray):
        raise InvalidParameterError(f"{name} must be a numpy.ndarray; got {type(stim).__name__}")
    if stim.ndim != ndim or stim.shape[-3] != 3:
        want = "(3, H, W)" if ndim == 3 else "(N, 3, H, W)"
        raise InvalidParameterError(f"{name} must have shape {want}; got {stim.shape}")
    if stim.dtype != np.uint8:
        raise InvalidParameterError(f"{name} must have dtype uint8; got {stim.dtype}")
    if stim.shape[-1] < 1 or stim.shape[-2] < 1:
        raise InvalidParameterError(f"{name} must have H, W >= 1; got {stim.shape}")


def preprocess_array(stim: np.ndarray) -> np.ndarray:
    """Centre-crop and resize one ``(3, H, W)`` uint8 image through PIL (exact path).

    Parameters
    ----------
    stim : numpy.ndarray
        uint8, shape ``(3, H, W)``, RGB.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(3, 224, 224)``; a new array.
    """
    _check_chw(stim, "stim", 3)
    img = Image.fromarray(np.ascontiguousarray(stim.transpose(1, 2, 0)), mode="RGB")
    out = _crop_resize(img)
    return out.copy() if np.shares_memory(out, stim) else out


def preprocess_batch_array(stimulus: np.ndarray) -> np.ndarray:
    """Preprocess a batch ``(N, 3, H, W)`` uint8 to ``(N, 3, 224, 224)`` uint8.

    A batch already at 224x224 is returned as is (made C-contiguous, no copy when it already
    is): the crop and resize are the identity there.
    """
    _check_chw(stimulus, "stimulus", 4)
    if stimulus.shape[-2:] == (TARGET_SIZE, TARGET_SIZE):
        return np.ascontiguousarray(stimulus)
    out = np.empty((stimulus.shape[0], 3, TARGET_SIZE, TARGET_SIZE), dtype=np.uint8)
    for i in range(stimulus.shape[0]):
        out[i] = preprocess_array(stimulus[i])
    return out


# ----------------------------------------------------------------------------------------------
# device path: what a device JPEG decoder may take, and crop/resize of its output
# ----------------------------------------------------------------------------------------------

_JPEG_EOI = b"\xff\xd9"
# EXIF orientation -> the tensor op of ImageOps.exif_transpose's transpose for it, on (..., H, W)
_ORIENT = {
    2: lambda x: x.flip(-1),                                # FLIP_LEFT_RIGHT
    3: lambda x: x.flip((-2, -1)),                          # ROTATE_180
    4: lambda x: x.flip(-2),                                # FLIP_TOP_BOTTOM
    5: lambda x: x.transpose(-2, -1),                       # TRANSPOSE
    6: lambda x: x.rot90(-1, (-2, -1)),                     # ROTATE_270 (90 degrees clockwise)
    7: lambda x: x.transpose(-2, -1).flip((-2, -1)),        # TRANSVERSE
    8: lambda x: x.rot90(1, (-2, -1)),                      # ROTATE_90 (counter-clockwise)
}


def jpeg_for_device(data: BytesLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int] | None:
    """``(EXIF orientation 1..8, declared pixels)`` of a JPEG a device decoder may take as is, else None.

    None means: decode it with :func:`preprocess_bytes` (other formats, MPO, CMYK, data not ending in EOI, a bad
    header or one over ``max_pixels``; the exact path then decodes it or names its error). Only the header is read.
    """
    data = _as_bytes(data)
    if not data.startswith(b"\xff\xd8") or not data.endswith(_JPEG_EOI):
        return None
    try:
        img = _open_checked(data, _check_max_pixels(max_pixels))
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        orientation = int(img.getexif().get(0x0112, 1))
    except (ImageDecodeError, *_DECODE_ERRORS):
        return None
    return (orientation if orientation in _ORIENT else 1), img.size[0] * img.size[1]


def crop_resize_tensor(image, orientation: int = 1):
    """A decoded uint8 ``(3, H, W)`` torch tensor (any device) -> uint8 ``(3, 224, 224)`` on the same device.

    The exact path's steps: EXIF ``orientation`` applied, :func:`center_crop_box`, then bilinear antialiased
    resize to 224 (none when already 224x224), rounded to the nearest level.
    """
    import torch

    image = _ORIENT.get(orientation, lambda x: x)(image)
    left, top, right, bottom = center_crop_box(int(image.shape[-1]), int(image.shape[-2]))
    image = image[:, top:bottom, left:right]
    if tuple(image.shape[-2:]) == (TARGET_SIZE, TARGET_SIZE):
        return image.contiguous()
    x = torch.nn.functional.interpolate(image[None].float(), size=(TARGET_SIZE, TARGET_SIZE), mode="bilinear",
                                        align_corners=False, antialias=True)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)
