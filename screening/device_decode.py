"""Batched JPEG decoding on a device (nvJPEG via torchvision) with the exact CPU path as the per-image fallback.

``screening run --decode gpu`` calls :func:`decode_on_device` inside the GPU encoder actors: raw bytes in, uint8
(N, 3, 224, 224) on the GPU out, so no decoded pixels cross the object store. The decoder is a parameter
(``gpu_decode(tensors, device) -> tensors``, the contract of ``torchvision.io.decode_jpeg`` on a list), so the
batching and fallback logic is the same code on a CPU, with :func:`pil_decode_jpeg` standing in for nvJPEG.

- Which images go to the decoder: :func:`screening.preprocess.jpeg_for_device` (plain RGB/grayscale JPEGs ending in
  EOI, within ``max_pixels``), in sub-batches of at most :data:`BATCH_PIXELS` declared pixels.
- A failed batch is retried image by image (nvJPEG fails a whole batch for one bad image); an image the decoder
  still refuses, and every other image, takes ``preprocess_bytes(fast=False)``: the exact CPU path's pixels, or its
  error.
- Decoded images are oriented, cropped and resized on the device by :func:`screening.preprocess.crop_resize_tensor`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from screening.preprocess import (DEFAULT_MAX_PIXELS, TARGET_SIZE, crop_resize_tensor, jpeg_for_device,
                                  preprocess_bytes)

#: Declared pixels per decoder call: 2**28 (~0.8 GB of RGB, 22 twelve-megapixel photos) bounds device memory.
BATCH_PIXELS = 2**28

GpuDecode = Callable[[Sequence[torch.Tensor], torch.device], Sequence[torch.Tensor]]


@dataclass
class DeviceDecoded:
    """``pixels`` uint8 (N, 3, 224, 224) on the device (zeros where ``errors[i]``); ``how[i]``: "device" or "cpu"."""

    pixels: torch.Tensor
    errors: list
    how: list


def torchvision_decoder() -> GpuDecode:
    """``torchvision.io.decode_jpeg`` on a list, RGB out (grayscale replicated, as Pillow's RGB conversion)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(tensors, device):
        return decode_jpeg(list(tensors), mode=ImageReadMode.RGB, device=device)

    return decode


def pil_decode_jpeg(tensors: Sequence[torch.Tensor], device) -> list[torch.Tensor]:
    """``decode_jpeg``'s batch contract with Pillow's libjpeg: uint8 (3, H, W) on ``device`` per input, EXIF not
    applied; one undecodable image fails the whole call with RuntimeError, as nvJPEG's batched decode does.

    The stand-in for nvJPEG where there is no CUDA (tests, ``gpu_bench.py``'s CPU check).
    """
    from PIL import Image

    out = []
    for t in tensors:
        try:
            with Image.open(io.BytesIO(t.numpy().tobytes())) as img:
                arr = np.asarray(img.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - any failure fails the batch, as the real decoder's does
            raise RuntimeError(f"decode_jpeg stand-in: {type(exc).__name__}: {exc}") from exc
        out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).to(device))
    return out


def _decode_batch(datas: Sequence[bytes], gpu_decode: GpuDecode, device) -> list:
    """Decoded tensors, None where the decoder refused the image."""
    tensors = [torch.from_numpy(np.frombuffer(d, dtype=np.uint8).copy()) for d in datas]
    try:
        return list(gpu_decode(tensors, device))
    except Exception:  # noqa: BLE001 - one bad image fails the batch: find it image by image
        out = []
        for t in tensors:
            try:
                out.append(gpu_decode([t], device)[0])
            except Exception:  # noqa: BLE001 - that image takes the CPU path, which names its error
                out.append(None)
        return out


def _sub_batches(candidates: dict[int, tuple[int, int]]) -> list[list[int]]:
    groups, cur, cur_px = [], [], 0
    for i, (_orient, px) in candidates.items():
        if cur and cur_px + px > BATCH_PIXELS:
            groups.append(cur)
            cur, cur_px = [], 0
        cur.append(i)
        cur_px += px
    return groups + ([cur] if cur else [])


def decode_on_device(datas: Sequence[bytes], *, device, gpu_decode: GpuDecode,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> DeviceDecoded:
    """Encoded images -> :class:`DeviceDecoded`; one failing image never fails the others."""
    device = torch.device(device)
    n = len(datas)
    pixels = torch.zeros((n, 3, TARGET_SIZE, TARGET_SIZE), dtype=torch.uint8, device=device)
    errors, how = [None] * n, ["cpu"] * n
    candidates = {i: c for i, d in enumerate(datas) if (c := jpeg_for_device(d, max_pixels)) is not None}
    for group in _sub_batches(candidates):
        for i, image in zip(group, _decode_batch([datas[i] for i in group], gpu_decode, device)):
            if image is None or image.ndim != 3 or image.shape[0] != 3:
                continue   # refused, or not RGB: the CPU path decides
            try:
                pixels[i] = crop_resize_tensor(image, candidates[i][0])
                how[i] = "device"
            except RuntimeError:   # e.g. out of device memory for one huge image: the CPU path takes it
                pass
    for i in (i for i in range(n) if how[i] == "cpu"):
        try:
            pixels[i] = torch.from_numpy(preprocess_bytes(datas[i], max_pixels=max_pixels)).to(device)
        except Exception as exc:  # noqa: BLE001 - any failure of one image is that image's error
            errors[i] = f"{type(exc).__name__}: {exc}"
    return DeviceDecoded(pixels, errors, how)
