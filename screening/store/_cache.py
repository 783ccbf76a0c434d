"""Download cache for remote model files (``s3://…`` and ``https://…``).

Layout: ``<cache>/<sha256(url)[:32]>/<filename>`` plus ``<filename>.sha256`` (``sha256sum`` format), written
only after a verified download, and ``url.txt`` for humans. ``<cache>`` is ``cache_dir``, else
``$SCREENING_CACHE_DIR``, else ``~/.cache/screening``.

A download streams into a temporary file in the same directory while hashing, checks the byte count
against the size the server announced (S3 object size / ``Content-Length``) and the sha256 against the
expected one when known, ``fsync``s, and only then ``os.replace``s it onto the final name. A file under the
final name is therefore always complete; an interrupted download leaves at most a ``.part`` file, which is
removed (and ignored by every reader). Concurrent processes (Ray actors) serialise on a per-entry lock.

A cache hit is re-verified once per process: the file's sha256 is recomputed and compared with the sidecar
(and with ``expected_sha256``); later hits in the same process trust an unchanged ``stat``. A mismatch
deletes the entry and downloads again. When the source can still be reached its size is compared too, so a
replaced remote file is fetched again.

No sha256 is published for the MOSAIC checkpoints (model card, BERG bucket), so a full-length download with
wrong bytes cannot be caught by its digest. A checkpoint (``.pth`` / ``.pt``) is therefore checked as what it is,
a torch zip archive with a CRC32 per member: the whole archive is read back and every member's CRC compared
before the file is renamed into place (``zipfile.testzip``; a one-byte flip anywhere in the tensor data fails it).

``http://`` is accepted only for loopback hosts (local test servers); use ``https://`` elsewhere.

Why hand-written: ``pooch.retrieve(known_hash=...)`` has no S3 downloader (anonymous or signed), no lock (two Ray
actors download the same 2 GB twice), and re-hashes a cached file on every call (no per-process memo);
fsspec's ``filecache::`` does no size or digest check and its cache index is not safe across processes. With
either, this module's download, check and lock would still have to be written around it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import sys
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from screening.exceptions import IntegrityError, InvalidParameterError, StoreError
from screening.fs import cache_root

__all__ = ["entry_path", "fetch", "file_sha256", "read_sidecar", "sha256_of_file"]

CHUNK = 8 << 20
#: Files checked as torch zip archives (CRC32 of every member) before they are cached.
TORCH_ARCHIVE_SUFFIXES = (".pth", ".pt")
PROGRESS_MIN_BYTES = 64 << 20
_VERIFIED: dict[str, tuple] = {}  # path -> (stat key, sha256) verified in this process




def entry_path(url: str, cache_dir: str | os.PathLike | None = None, filename: str | None = None) -> Path:
    """Final cache path of ``url`` (whether or not it is cached)."""
    name = filename or os.path.basename(urlparse(url).path.rstrip("/")) or "file"
    return cache_root(cache_dir) / hashlib.sha256(url.encode()).hexdigest()[:32] / name


def sha256_of_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def read_sidecar(path: str | os.PathLike) -> str | None:
    """The sha256 recorded next to a cached file, or None."""
    try:
        text = Path(str(path) + ".sha256").read_text().split()
    except OSError:
        return None
    return text[0].lower() if text and len(text[0]) == 64 else None


def _atomic_write_text(path: Path, text: str) -> None:
    from fsspec.implementations.local import LocalFileSystem

    from screening.fs import write_atomic

    write_atomic(LocalFileSystem(), str(path), text.encode())


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> str:
    """sha256 of a local file, computed once and remembered (keyed by path and ``stat``).

    Cached downloads use their ``.sha256`` sidecar; other files (a local store) keep the digest under
    ``<cache>/sha256/`` so the next process does not hash a 2 GB checkpoint again.
    """
    path = Path(path).resolve()
    key = _stat_key(path)
    hit = _VERIFIED.get(str(path))
    if hit and hit[0] == key:
        return hit[1]
    side = read_sidecar(path)
    if side and _sidecar_trusted(path, key):
        _VERIFIED[str(path)] = (key, side)
        return side
    memo = _memo_path(path, cache_dir)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        rec = json.loads(memo.read_text())
        if rec["path"] == str(path) and tuple(rec["stat"]) == key:
            _VERIFIED[str(path)] = (key, rec["sha256"])
            return rec["sha256"]
    digest = sha256_of_file(path)
    _VERIFIED[str(path)] = (key, digest)
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(memo, json.dumps({"path": str(path), "stat": list(key), "sha256": digest}))
    return digest


def remember_sha256(path: str | os.PathLike, digest: str, *, cache_dir: str | os.PathLike | None = None) -> None:
    """Record a digest computed elsewhere (e.g. before a rename) for :func:`file_sha256`."""
    path = Path(path).resolve()
    key = _stat_key(path)
    _VERIFIED[str(path)] = (key, digest)
    with contextlib.suppress(OSError):
        memo = _memo_path(path, cache_dir)
        memo.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(memo, json.dumps({"path": str(path), "stat": list(key), "sha256": digest}))


def _memo_path(path: Path, cache_dir) -> Path:
    return cache_root(cache_dir) / "sha256" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")


def _sidecar_trusted(path: Path, key: tuple) -> bool:
    """A sidecar is trusted without re-hashing only after this process verified that exact file."""
    hit = _VERIFIED.get(str(path))
    return bool(hit and hit[0] == key)


# ----------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------
class _Source:
    """Where bytes come from: ``size()`` (None if unknown) and ``open()`` → binary stream."""

    def __init__(self, url: str, size: Callable[[], int | None], open_: Callable):
        self.url, self.size, self.open = url, size, open_


def check_http_url(url: str) -> None:
    p = urlparse(url)
    if p.scheme == "https":
        return
    if p.scheme == "http":
        host = (p.hostname or "").lower()
        try:
            loop = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loop = host == "localhost"
        if loop:
            return
        raise InvalidParameterError(f"refusing plain http:// for non-loopback host in {url!r}; use https://")
    raise InvalidParameterError(f"not an http(s) URL: {url!r}")


def http_source(url: str, timeout: float = 60.0) -> _Source:
    import urllib.request

    check_http_url(url)

    def size():
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            n = r.headers.get("Content-Length")
            return int(n) if n is not None else None

    def open_():
        r = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 — scheme checked above
        n = r.headers.get("Content-Length")
        r.announced_size = int(n) if n is not None else None
        return r

    return _Source(url, size, open_)


def fs_source(url: str, fs, path: str) -> _Source:
    def size():
        return int(fs.info(path)["size"])

    def open_():
        f = fs.open(path, "rb", block_size=CHUNK, cache_type="none")
        f.announced_size = getattr(f, "size", None)
        return f

    return _Source(url, size, open_)


# ----------------------------------------------------------------------------------------------------
# fetch
# ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _entry_lock(d: Path):
    from screening.fs import file_lock

    d.mkdir(parents=True, exist_ok=True)
    with file_lock(d / ".lock"):
        yield


def fetch(url: str, *, cache_dir: str | os.PathLike | None = None, expected_sha256: str | None = None,
          source: _Source | None = None, filename: str | None = None, progress: bool | None = None) -> Path:
    """Return a local, verified copy of ``url``, downloading it into the cache if needed.

    Parameters
    ----------
    url : str
        ``https://…`` (or ``http://`` on loopback), or any URL when ``source`` says how to read it.
    cache_dir : path, optional
        Default ``$SCREENING_CACHE_DIR`` or ``~/.cache/screening``.
    expected_sha256 : str, optional
        Refuse (``IntegrityError``) a download whose digest differs; a cached copy with another digest is
        fetched again.
    source : optional
        From :func:`fs_source` (S3 and other fsspec filesystems); default :func:`http_source`.
    progress : bool, optional
        tqdm bar on stderr; default on for files over 64 MiB.

    Raises
    ------
    IntegrityError
        Size or sha256 of the downloaded bytes is wrong.
    StoreError
        The source cannot be read (missing, connection dropped, …).
    """
    source = source or http_source(url)
    expected = expected_sha256.lower() if expected_sha256 else None
    final = entry_path(url, cache_dir, filename)
    with _entry_lock(final.parent):
        if final.exists():
            if _cache_hit_ok(final, source, expected):
                return final
            _evict(final)
        _download(source, final, expected, progress)
    return final


def _cache_hit_ok(final: Path, source: _Source, expected: str | None) -> bool:
    side = read_sidecar(final)
    if side is None or (expected and side != expected):
        return False
    key = _stat_key(final)
    try:
        remote = source.size()
    except Exception:  # noqa: BLE001 — offline: the local verification below still has to pass
        remote = None
    if remote is not None and remote != key[0]:
        return False
    hit = _VERIFIED.get(str(final))
    if hit and hit[0] == key and hit[1] == side:
        return True
    digest = sha256_of_file(final)
    if digest != side:
        warnings.warn(f"cached file {final} does not match its recorded sha256; downloading it again",
                      RuntimeWarning, stacklevel=3)
        return False
    _VERIFIED[str(final)] = (key, digest)
    return True


def check_torch_archive(path: str | os.PathLike, *, what: str) -> None:
    """Raise ``IntegrityError`` unless ``path`` is a readable torch zip archive whose members all match their CRC32."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise IntegrityError(f"{what} is not a readable torch checkpoint archive ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise IntegrityError(f"{what} is corrupt: member {bad!r} does not match its CRC32")


def _evict(final: Path) -> None:
    _VERIFIED.pop(str(final), None)
    for p in (final, Path(str(final) + ".sha256")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _download(source: _Source, final: Path, expected: str | None, progress: bool | None) -> None:
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
    h = hashlib.sha256()
    n = 0
    bar = None
    try:
        try:
            stream = source.open()
        except FileNotFoundError as e:
            raise StoreError(f"{source.url} not found ({e})") from None
        with contextlib.closing(stream) as r, open(tmp, "wb") as w:
            announced = getattr(r, "announced_size", None)
            show = progress if progress is not None else (announced or 0) >= PROGRESS_MIN_BYTES
            if show:
                from tqdm.auto import tqdm

                bar = tqdm(total=announced, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                           desc=f"download {final.name}")
            while chunk := r.read(CHUNK):
                w.write(chunk)
                h.update(chunk)
                n += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            w.flush()
            os.fsync(w.fileno())
        if announced is not None and n != announced:
            raise IntegrityError(f"download of {source.url} is incomplete: got {n} bytes, expected {announced}")
        digest = h.hexdigest()
        if expected and digest != expected:
            raise IntegrityError(f"download of {source.url} has sha256 {digest}, expected {expected}")
        if final.suffix.lower() in TORCH_ARCHIVE_SUFFIXES:
            check_torch_archive(tmp, what=f"download of {source.url}")
        os.replace(tmp, final)
        _atomic_write_text(Path(str(final) + ".sha256"), f"{digest}  {final.name}\n")
        with contextlib.suppress(OSError):
            (final.parent / "url.txt").write_text(source.url + "\n")
        _fsync_dir(final.parent)
        _VERIFIED[str(final)] = (_stat_key(final), digest)
    except (IntegrityError, StoreError, InvalidParameterError):
        raise
    except Exception as e:  # noqa: BLE001 — dropped connections surface as many types
        raise StoreError(f"download of {source.url} failed after {n} bytes: {type(e).__name__}: {e}") from None
    finally:
        if bar is not None:
            bar.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
