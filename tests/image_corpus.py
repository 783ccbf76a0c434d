"""Real image bytes for tests: a corpus of awkward and broken files, and photo-like JPEGs.

Everything is generated with PIL (or written chunk by chunk, for the decompression bomb), seeded,
so the corpus is identical on every run. Importable from any test file::

    from tests.image_corpus import bad_image_corpus, photo_like, encode

``bad_image_corpus()`` maps a case name to ``(bytes, expected)``: ``expected`` is ``"ok"`` when
:func:`screening.preprocess.decode_image` must succeed, else a regex that the
:class:`~screening.exceptions.ImageDecodeError` message must match (``re.search``).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

__all__ = ["bad_image_corpus", "photo_like", "encode", "png_chunk", "bomb_png", "OK"]

OK = "ok"


def encode(img: Image.Image, fmt: str, **save_kwargs) -> bytes:
    """Encode a PIL image to bytes in ``fmt`` (e.g. ``"JPEG"``, ``"PNG"``, ``"WEBP"``)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image with photo-like statistics: smooth gradients, shapes, fine noise.

    Smooth regions and edges exercise the resampling filters the way photos do, and the noise
    gives JPEG something to compress, so file sizes are realistic (about 1-2 bits per pixel at
    quality 90).
    """
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
    chans = []
    for c in range(3):
        f = 1.5 + c
        v = 0.5 + 0.25 * np.sin(2 * np.pi * f * x + phase[c]) * np.cos(2 * np.pi * (f - 0.5) * y)
        chans.append(v + 0.2 * (x * (c - 1) + y * (1 - c) * 0.5))
    arr = np.stack(chans, axis=-1)
    # A few filled discs and bars: sharp edges at several scales (drawn in their bounding boxes).
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.05, 0.25) * min(width, height)
        y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 1)
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        box = arr[y0:y1, x0:x1]
        box[mask] = box[mask] * 0.3 + 0.7 * rng.uniform(0, 1, size=3).astype(np.float32)
    for _ in range(3):
        x0 = int(rng.uniform(0, width))
        bw = max(1, int(rng.uniform(0.01, 0.05) * width))
        arr[:, x0:x0 + bw] = arr[:, x0:x0 + bw] * 0.5 + 0.5 * rng.uniform(0, 1, size=3).astype(np.float32)
    arr *= 255.0
    # Uniform sensor-like noise in [-8, 8); raw bytes are the cheapest random source at 12 MP.
    noise = np.frombuffer(rng.bytes(arr.size), np.uint8).reshape(arr.shape)
    arr += (noise >> 4).astype(np.float32) - 8.0
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), mode="RGB")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload and CRC-32 over type + payload."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking 8-bit grayscale PNG declaring ``width x height`` with a tiny payload.

    The IDAT holds a few compressed zero rows (a real bomb would hold all of them; a decoder that
    trusted the header would try to allocate ``width * height`` bytes first).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    rows = (b"\x00" + b"\x00" * width) * 4  # filter byte + pixels
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(rows, 9)) + png_chunk(b"IEND", b""))


def _exif_rotated_jpeg() -> bytes:
    # Stored 40x20: left half red, right half blue; orientation 6 = display rotated 90 deg CW,
    # so the displayed image is 20x40 with red on top.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())


def _palette_png_with_transparency() -> bytes:
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # index 0 black (transparent), 1 red
    img.paste(1, (0, 0, 16, 32))  # left half red, right half transparent
    return encode(img, "PNG", transparency=0)


def _rgba_png() -> bytes:
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[:, :16] = (0, 0, 255, 255)  # opaque blue
    arr[:, 16:] = (0, 0, 0, 0)  # fully transparent black -> background
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def _png16(value: int, size=(16, 16)) -> bytes:
    img = Image.new("I;16", size, value)
    return encode(img, "PNG")


@functools.lru_cache(maxsize=1)
def _corpus() -> dict[str, tuple[bytes, str]]:
    photo = photo_like(640, 480, seed=1)
    jpeg = encode(photo, "JPEG", quality=90)
    png = encode(photo.resize((64, 48)), "PNG")
    rng = np.random.default_rng(1234)
    random_bytes = rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    # Bit-flip the middle of an IDAT so its CRC (and zlib stream) no longer match.
    corrupt_png = bytearray(png)
    corrupt_png[len(png) // 2] ^= 0xFF
    gray = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1)), "L")
    return {
        # --- must be rejected ---
        "zero_bytes": (b"", r"empty input"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], r"corrupt or truncated JPEG"),
        "truncated_png": (png[: len(png) // 2], r"corrupt or truncated PNG"),
        "corrupt_png_crc": (bytes(corrupt_png), r"corrupt or truncated PNG"),
        "jpeg_header_only": (jpeg[:200], r"(unreadable JPEG header|corrupt or truncated JPEG)"),
        "random_bytes": (random_bytes, r"not a recognised image format"),
        "text_file": (b"image_id,path\nimg0,/data/a.jpg\nimg1,/data/b.jpg\n", r"looks like text"),
        "decompression_bomb_png": (bomb_png(100_000, 100_000), r"100000x100000 .* exceeds max_pixels"),
        # --- must decode ---
        "rgb_jpeg": (jpeg, OK),
        "rgb_png": (png, OK),
        "rgb_webp": (encode(photo, "WEBP", quality=90), OK),
        "grayscale_jpeg": (encode(gray, "JPEG", quality=95), OK),
        "grayscale_png": (encode(gray, "PNG"), OK),
        "la_png": (encode(Image.merge("LA", (gray, Image.new("L", gray.size, 255))), "PNG"), OK),
        "bilevel_png": (encode(gray.convert("1"), "PNG"), OK),
        "cmyk_jpeg": (encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)), "JPEG", quality=95), OK),
        "rgba_png": (_rgba_png(), OK),
        "palette_png_transparency": (_palette_png_with_transparency(), OK),
        "png16_white": (_png16(65535), OK),
        "png16_mid": (_png16(32768), OK),
        "gif": (encode(photo.resize((64, 48)).convert("P"), "GIF"), OK),
        "exif_rotated_jpeg": (_exif_rotated_jpeg(), OK),
        "one_by_one": (encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), OK),
        "wide_4000x10": (encode(photo_like(4000, 10, seed=2), "JPEG", quality=90), OK),
        "tall_10x4000": (encode(photo_like(10, 4000, seed=3), "PNG"), OK),
    }


def bad_image_corpus() -> dict[str, tuple[bytes, str]]:
    """Return ``{name: (bytes, expected)}``; ``expected`` is ``"ok"`` or an error regex.

    A fresh dict each call (the bytes are shared, immutable). Cases: empty, truncated JPEG and
    PNG, a PNG with a corrupted IDAT, a JPEG cut inside its header, random bytes, a CSV text
    file, a 100000x100000 PNG decompression bomb; and images that must decode: RGB JPEG/PNG/WebP,
    grayscale (L, LA, 1-bit), CMYK JPEG, RGBA PNG, palette PNG with transparency, 16-bit PNGs,
    GIF, an EXIF-rotated JPEG, 1x1, and 4000x10 / 10x4000 strips.
    """
    return dict(_corpus())
