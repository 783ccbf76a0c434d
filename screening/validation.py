"""Checks shared by the API and the pipeline. Each names the parameter, what it got, and what is valid."""

from __future__ import annotations

import numbers
import re
import warnings
from typing import Iterable

import numpy as np

from screening.exceptions import InvalidParameterError, StimulusError
from screening.models.registry import SUBJECTS

DEVICES = ("cpu", "cuda", "auto")


class SmallImageWarning(UserWarning):
    """Images smaller than the model's 224×224 input are upsampled, which blurs them."""


def is_int(x) -> bool:
    return isinstance(x, (numbers.Integral, np.integer)) and not isinstance(x, (bool, np.bool_))


# Spellings of one NSD subject: 1, "1", "01", "sub-1", "sub-01", "sub01", "sub_01", "subj01", "subject01",
# "s1", "S01", "NSD-01" (the BERG visual card's form), any case, surrounding spaces ignored.
_SUBJECT_RE = re.compile(r"^(?:(?:sub(?:j|ject)?|s|nsd)[-_ ]?)?0*(\d+)$", re.IGNORECASE)
_VALID_SUBJECTS = ("1, 2, 3, 4, 5, 6, 7, 8 (also written '01', 'sub-01', 'sub01', 'subj01', 's1', 'NSD-01'), "
                   "a list or comma-separated string of those, or 'all'")


def _one_subject(item) -> str | None:
    """Canonical ``sub-0N`` of one spelling, or None if it is not one."""
    if is_int(item):
        n = int(item)
    elif isinstance(item, str):
        m = _SUBJECT_RE.match(item.strip())
        if not m:
            return None
        n = int(m.group(1))
    else:
        return None
    return SUBJECTS[n - 1] if 1 <= n <= len(SUBJECTS) else None


def parse_subjects(value, *, name: str = "subject") -> tuple[str, ...]:
    """Every way a user writes NSD subjects → canonical ids ``("sub-01", ...)``, in the given order.

    Accepted: an int 1..8; a string spelling of one (``"1"``, ``"01"``, ``"sub-1"``, ``"sub-01"``,
    ``"sub01"``, ``"sub_01"``, ``"subj01"``, ``"subject01"``, ``"s1"``, ``"NSD-01"``; any case); a
    comma-separated string of those (``"1,3"``, ``"sub-01, sub-03"``); a list/tuple/array of those;
    ``"all"`` (any case) for the eight subjects. ``name`` is the parameter named in errors.

    Raises
    ------
    InvalidParameterError
        For an empty value, an unknown spelling, a subject outside 1..8 or one given twice; the
        message names the bad value and the valid ones.
    """
    if isinstance(value, str) and value.strip().lower() == "all":
        return tuple(SUBJECTS)
    if isinstance(value, str):
        items, whole = [p for p in (x.strip() for x in value.split(",")) if p], "," in value
    elif isinstance(value, (list, tuple, range, np.ndarray)):
        items, whole = list(np.asarray(value).ravel()) if isinstance(value, np.ndarray) else list(value), True
    else:
        items, whole = [value], False
    if not items:
        raise InvalidParameterError(f"{name}={value!r} is empty; valid values: {_VALID_SUBJECTS}")
    out: list[str] = []
    for item in items:
        sid = _one_subject(item)
        if sid is None:
            # a str value is shown with '=' (subject='x'), other values as written (subject 9)
            what = f"{name} {item!r} in {value!r}" if whole else (
                f"{name}={item!r}" if isinstance(item, str) else f"{name} {item!r}")
            raise InvalidParameterError(f"{what} is not valid; valid values: {_VALID_SUBJECTS}")
        if sid in out:
            raise InvalidParameterError(f"{name} {item!r} is given twice in {value!r} (both mean {sid})")
        out.append(sid)
    return tuple(out)


def check_subjects(subject) -> list[str]:
    """:func:`parse_subjects` as a list (what the API used before)."""
    return list(parse_subjects(subject))


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
    if not is_int(value) or int(value) < 1:
        raise InvalidParameterError(f"{name}={value!r} must be a positive integer")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def _is_number(value) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))


def check_nonneg_number(name: str, value, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if not _is_number(value) or not value >= 0:
        raise InvalidParameterError(f"{name} must be a number >= 0{' or None' if allow_none else ''}; got {value!r}")
    return float(value)


def check_finite_number(name: str, value, *, what: str = "", allow_none: bool = True) -> float | None:
    """A finite number or (``allow_none``) None; ``what`` says its units in the message."""
    if value is None and allow_none:
        return None
    if not _is_number(value) or not np.isfinite(value):
        raise InvalidParameterError(f"{name} must be a finite number{what}{' or None' if allow_none else ''}; "
                                    f"got {value!r}")
    return float(value)


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


class CheckedOnce:
    """Base of the frozen option dataclasses (``RunConfig``, ``RankConfig``): checked once, when built, and every
    value replaced by its normalised form (``_normalised()``, which raises naming the first bad value)."""

    def __post_init__(self):
        for name, value in self._normalised().items():
            object.__setattr__(self, name, value)

    def _normalised(self) -> dict:
        raise NotImplementedError
