"""Restricted reading of BERG metadata files (``np.save`` of a dict → a 0-d object array, pickled).

BERG reads them with ``np.load(allow_pickle=True).item()``, which runs any code a file asks for.
Here the ``.npy`` header is parsed with ``numpy.lib.format`` and the pickle that follows is read by
an unpickler whose ``find_class`` allows only numpy array/dtype/scalar reconstruction and plain
builtin containers and numbers. Anything else raises :class:`~screening.exceptions.UnsafePickleError`
naming the ``module.global`` the file asked for — before that global is imported or called.
"""

from __future__ import annotations

import io
import pickle
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from screening.exceptions import ModelLoadError, UnsafePickleError

__all__ = ["load_metadata_npy", "RestrictedUnpickler", "ALLOWED_GLOBALS"]

_ndarray_reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy._core.multiarray._reconstruct
_scalar = np.float64(0).__reduce__()[0]                         # numpy._core.multiarray.scalar

#: (module, name) → object. numpy 1.x pickles name ``numpy.core``, numpy 2.x ``numpy._core``;
#: both resolve to the running numpy's objects without importing the deprecated ``numpy.core``.
ALLOWED_GLOBALS = {
    **{(m, "_reconstruct"): _ndarray_reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{("builtins", t.__name__): t for t in (dict, list, tuple, set, frozenset, str, bytes, bytearray,
                                              int, float, bool, complex)},
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: metadata files may only contain numpy arrays, "
                "dicts, lists, tuples, strings and numbers") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing persistent id {pid!r} in a metadata pickle")


def load_metadata_npy(src: bytes | bytearray | BinaryIO, *, name: str = "<metadata>") -> dict:
    """Read a BERG metadata ``.npy`` (a pickled dict) without running code.

    Parameters
    ----------
    src : bytes or binary file object
        The whole file, or an open file positioned at its start.
    name : str, optional
        Used in error messages (the path or URL).

    Returns
    -------
    dict

    Raises
    ------
    UnsafePickleError
        The pickle asks for anything outside :data:`ALLOWED_GLOBALS`.
    ModelLoadError
        Not an ``.npy`` file, not an object array, or not holding a dict.
    """
    f = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as e:
        raise ModelLoadError(f"{name}: not a readable .npy file: {e}") from None
    if not dtype.hasobject:
        raise ModelLoadError(f"{name}: expected a pickled metadata dict (object array), got dtype {dtype} "
                             f"shape {shape}")
    try:
        obj = RestrictedUnpickler(f).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 — truncated/garbled pickles raise many types
        raise ModelLoadError(f"{name}: metadata pickle could not be read: {type(e).__name__}: {e}") from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{name}: expected a metadata dict, got {type(obj).__name__}")
    return obj
