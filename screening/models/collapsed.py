"""Node-local cache of collapsed ROI matrices: collapse once per machine, memory-map it in every encoder.

The collapsed matrix of the published model with every ROI of all 8 subjects is (384·26·26) × (8·379) float32 =
2.9 GiB; building it costs tens of seconds and a multi-GiB peak. Every encoder process on a machine maps the same
file read-only (``MAP_PRIVATE``, never written), so its pages live once in the page cache, shared by all of them.

Layout under ``<cache root>/collapsed/`` (``cache_root``: ``$SCREENING_CACHE_DIR``, else ``~/.cache/screening``):
``<key>.f32`` holds the raw (C·P, S·R) float32 matrix, row-major (``RoiEncoder.roi_weights_t``); ``<key>.json``
its header: format, key, shape, the bias (S·R float32, hex) and the CRC-32 of the data. The key
(:func:`collapse_key`) is a digest of the checkpoint's sha256, the subjects and every ROI's vertex indices; the
precision does not enter it, as the ROI matmul is fp32 under both precisions.

Writes go to temporary names, the data first, then ``os.replace`` data and header: a reader sees a complete entry
or none. Builders serialise on a per-key ``flock``: actors that start together build once (and the driver of a run
on a local Ray builds it while Ray starts, ``screening.pipeline.prebuild``). A builder that was killed leaves its
temporary files; the next builder of that key deletes them under the lock. A reader checks the
header's key and shape, the file size and the CRC (about 2 s for 2.9 GiB); an entry that fails any check is refused,
deleted and rebuilt. A cache directory that cannot be written falls back to collapsing in memory (a warning).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import warnings
import zlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

FORMAT = 1
_CRC_CHUNK = 64 << 20


def collapse_key(checkpoint_sha256: str, subjects: Sequence[str],
                 rois: Mapping[str, np.ndarray | Mapping[str, np.ndarray]]) -> str:
    """What the collapsed matrix depends on: the weights, the subjects and each ROI's vertices (per subject)."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, "checkpoint": checkpoint_sha256,
                                   "subjects": list(subjects)}).encode())
    for name, v in rois.items():
        h.update(name.encode() + b"\0")
        for s in subjects:
            idx = np.asarray(v[s] if isinstance(v, Mapping) else v, dtype=np.int64)
            h.update(idx.tobytes() + b"\1")
    return h.hexdigest()[:40]


def cache_dir_for(cache_dir: str | os.PathLike | None = None) -> Path:
    from screening.fs import cache_root

    return cache_root(cache_dir) / "collapsed"


def _crc(t: torch.Tensor) -> int:
    flat = t.view(-1).numpy().view(np.uint8)
    crc = 0
    for lo in range(0, flat.size, _CRC_CHUNK):
        crc = zlib.crc32(flat[lo:lo + _CRC_CHUNK], crc)
    return crc


def _header(d: Path, key: str, shape: tuple[int, int]) -> dict | str:
    """The entry's header where it and the data's size match ``key`` and ``shape``, else why not (a string)."""
    try:
        meta = json.loads((d / f"{key}.json").read_text())
        size = (d / f"{key}.f32").stat().st_size
    except FileNotFoundError:
        return "absent"
    except (OSError, ValueError) as exc:
        return f"unreadable header ({type(exc).__name__}: {exc})"
    n = shape[0] * shape[1]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
        return "foreign entry (format or key differs)"
    if meta.get("shape") != list(shape) or size != 4 * n:
        return f"shape {meta.get('shape')} / {size} bytes, expected {list(shape)} / {4 * n} bytes"
    return meta


def read_entry(d: Path, key: str, shape: tuple[int, int], *,
               verify: bool = True) -> tuple[torch.Tensor, torch.Tensor] | str:
    """The mapped (C·P, S·R) matrix and the bias, or why the entry is refused (a string). ``verify=False`` skips the
    CRC: only for the builder, right after it computed the CRC from the very pages it wrote."""
    meta = _header(d, key, shape)
    if isinstance(meta, str):
        return meta
    n = shape[0] * shape[1]
    try:
        bias = torch.from_numpy(np.frombuffer(bytes.fromhex(meta["bias"]), dtype=np.float32).copy())
    except (KeyError, TypeError, ValueError):
        return "bias unreadable"
    if bias.numel() != shape[1]:
        return f"bias has {bias.numel()} values, expected {shape[1]}"
    w_t = torch.from_file(str(d / f"{key}.f32"), shared=False, size=n, dtype=torch.float32).view(shape)
    if verify and _crc(w_t) != meta.get("crc32"):
        return "data checksum differs (corrupt)"
    return w_t, bias


@contextlib.contextmanager
def _key_lock(d: Path, key: str):
    from screening.fs import file_lock

    with file_lock(d / f"{key}.lock"):
        yield


def _write_entry(d: Path, key: str, shape: tuple[int, int],
                 build: Callable[[torch.Tensor], torch.Tensor]) -> None:
    tag = uuid.uuid4().hex[:8]
    tmp, tmp_head = d / f".{key}.{tag}.f32.part", d / f".{key}.{tag}.json.part"
    try:
        with open(tmp, "wb") as f:  # allocated up front: a full disk is an OSError here, not a SIGBUS later
            os.posix_fallocate(f.fileno(), 0, 4 * shape[0] * shape[1])
        out = torch.from_file(str(tmp), shared=True, size=shape[0] * shape[1], dtype=torch.float32).view(shape)
        bias = build(out)
        meta = {"format": FORMAT, "key": key, "shape": list(shape), "crc32": _crc(out),
                "bias": bias.detach().float().cpu().numpy().tobytes().hex()}
        del out
        tmp_head.write_text(json.dumps(meta))
        os.replace(tmp, d / f"{key}.f32")
        os.replace(tmp_head, d / f"{key}.json")
    finally:
        for p in (tmp, tmp_head):
            p.unlink(missing_ok=True)


def _present(d: Path, key: str, shape: tuple[int, int]) -> bool:
    """An entry with the right header and size (the CRC is left to the reader that maps it)."""
    return not isinstance(_header(d, key, shape), str)


def sweep_parts(d: Path, key: str) -> None:
    """Delete the temporary files of ``key``'s builder: one that was killed (called under the key's lock), or the
    caller's own build that the run outlived (``pipeline.prebuild``)."""
    for p in d.glob(f".{key}.*.part"):
        p.unlink(missing_ok=True)


def ensure_entry(key: str, shape: tuple[int, int], build: Callable[[torch.Tensor], torch.Tensor], *,
                 cache_dir: str | os.PathLike | None = None, on_lock: Callable[[], None] | None = None) -> str:
    """Build the entry unless present: ``"present"`` or ``"built"``; raises OSError where the cache is not usable
    (no in-memory fallback: the caller, unlike an encoder, has no use for the matrix). ``on_lock`` is called once
    the key's lock is held, before any build."""
    d = cache_dir_for(cache_dir)
    if _present(d, key, shape):
        return "present"
    d.mkdir(parents=True, exist_ok=True)
    with _key_lock(d, key):
        if on_lock is not None:
            on_lock()
        if _present(d, key, shape):
            return "present"
        sweep_parts(d, key)
        _write_entry(d, key, shape, build)
        return "built"


def load_or_build(key: str, shape: tuple[int, int], build: Callable[[torch.Tensor], torch.Tensor], *,
                  cache_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(C·P, S·R) matrix, bias and how it was obtained: ``"hit"``, ``"built"`` or ``"memory"`` (no cache).

    ``build(out)`` fills ``out`` (a (C·P, S·R) float32 tensor) and returns the bias.
    """
    d = cache_dir_for(cache_dir)
    got = read_entry(d, key, shape)
    if not isinstance(got, str):
        return got[0], got[1], "hit"
    try:
        d.mkdir(parents=True, exist_ok=True)
        with _key_lock(d, key):
            got = read_entry(d, key, shape)  # another process may have built it while this one waited
            if isinstance(got, str):
                if got != "absent":
                    warnings.warn(f"collapsed-matrix cache entry {d / key}.f32 refused ({got}); rebuilding it",
                                  RuntimeWarning, stacklevel=2)
                sweep_parts(d, key)
                _write_entry(d, key, shape, build)
                got = read_entry(d, key, shape, verify=False)
                if isinstance(got, str):
                    raise OSError(f"the entry just written was refused: {got}")
                return got[0], got[1], "built"
            return got[0], got[1], "hit"
    except OSError as exc:
        warnings.warn(f"collapsed-matrix cache {d} not usable ({type(exc).__name__}: {exc}); collapsing in memory",
                      RuntimeWarning, stacklevel=2)
        out = torch.empty(shape, dtype=torch.float32)
        return out, build(out), "memory"
