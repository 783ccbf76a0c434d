"""Checks shared by the API and the pipeline. Each names the parameter, what it got, and what is valid."""

from __future__ import annotations

import numbers
import warnings
from typing import Iterable

import numpy as np

from screening.exceptions import InvalidParameterError, StimulusError
from screening.models._weights import SUBJECTS

DEVICES = ("cpu", "cuda", "auto")


class SmallImageWarning(UserWarning):
    """Images smaller than the model's 224×224 input are upsampled, which blurs them."""


def _is_int(x) -> bool:
    return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_subjects(subject) -> list[str]:
    """1..8, a list of those, ``"all"``, or canonical ``"sub-0N"`` ids → canonical ids, in the given order."""
    valid = "1, 2, 3, 4, 5, 6, 7, 8, a list of those, or 'all'"
    if isinstance(subject, str):
        if subject == "all":
            return list(SUBJECTS)
        if subject in SUBJECTS:
            return [subject]
        raise InvalidParameterError(f"subject={subject!r} is not valid; valid values: {valid}")
    items = list(subject) if isinstance(subject, (list, tuple, np.ndarray)) else [subject]
    if not items:
        raise InvalidParameterError(f"subject=[] is empty; valid values: {valid}")
    out = []
    for s in items:
        if isinstance(s, str) and s in SUBJECTS:
            sid = s
        elif _is_int(s) and 1 <= int(s) <= 8:
            sid = SUBJECTS[int(s) - 1]
        else:
            raise InvalidParameterError(f"subject {s!r} is not valid; valid values: {valid}")
        if sid in out:
            raise InvalidParameterError(f"subject {s!r} is given twice in {subject!r}")
        out.append(sid)
    return out


def check_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise InvalidParameterError(f"device={device!r} is not valid; valid devices: {', '.join(map(repr, DEVICES))}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError("device='cuda' was asked for but torch sees no CUDA device; "
                                    "use device='cpu' or device='auto'")
    return device


def check_choice(name: str, value, valid: Iterable):
    valid = tuple(valid)
    if value not in valid:
        raise InvalidParameterError(f"{name}={value!r} is not valid; valid values: {', '.join(map(repr, valid))}")
    return value


def check_positive_int(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if not _is_int(value) or int(value) < 1:
        raise InvalidParameterError(f"{name}={value!r} must be a positive integer")
    return int(value)


def check_stimulus(stimulus, *, min_size: int = 224, stacklevel: int = 3) -> np.ndarray:
    """Validate a BERG stimulus batch: numpy (N, 3, H, W), H == W, integer values in 0..255.

    Nothing is cast: float input is refused (the reference silently cast [0, 1] floats to 0).
    """
    if not isinstance(stimulus, np.ndarray):
        raise StimulusError(f"stimulus must be a numpy.ndarray of shape (N, 3, H, W); got {type(stimulus).__name__}")
    if stimulus.ndim != 4:
        raise StimulusError(f"stimulus must be 4-D (N, 3, H, W); got {stimulus.ndim}-D with shape {stimulus.shape}")
    n, c, h, w = stimulus.shape
    if n == 0:
        raise StimulusError(f"stimulus is an empty batch (shape {stimulus.shape}); give at least one image")
    if c != 3:
        hint = " (channels-last? use stimulus.transpose(0, 3, 1, 2))" if w == 3 else ""
        raise StimulusError(f"stimulus must have 3 RGB channels on axis 1; got {c} (shape {stimulus.shape}){hint}")
    if h != w:
        raise StimulusError(f"stimulus images must be square; got height {h} != width {w}. "
                            "Centre-crop them first, e.g. with screening.preprocess")
    if h == 0:
        raise StimulusError(f"stimulus images have zero size (shape {stimulus.shape})")
    kind = stimulus.dtype.kind
    if kind == "f":
        if np.isnan(stimulus).any():
            raise StimulusError(f"stimulus contains NaN ({int(np.isnan(stimulus).sum())} values); "
                                "images must be integers in 0..255")
        raise StimulusError(f"stimulus has float dtype {stimulus.dtype}; images must be integers in 0..255. "
                            "Nothing is cast silently: if your floats are in [0, 1], pass "
                            "(x * 255).round().astype(np.uint8)")
    if kind not in "ui":
        raise StimulusError(f"stimulus has dtype {stimulus.dtype}; images must be integers in 0..255 (uint8)")
    if stimulus.dtype != np.uint8:
        lo, hi = int(stimulus.min()), int(stimulus.max())
        if lo < 0 or hi > 255:
            raise StimulusError(f"stimulus values must lie in 0..255; got min {lo}, max {hi} (dtype {stimulus.dtype})")
    if h < min_size:
        warnings.warn(f"stimulus images are {h}x{w}, smaller than the model's {min_size}x{min_size} input; "
                      "they will be upsampled", SmallImageWarning, stacklevel=stacklevel)
    return stimulus
