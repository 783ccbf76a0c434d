"""The one filesystem module: a location (local path, ``file://``, ``s3://``) to an fsspec filesystem, and the
few helpers every package needs around it (protocol, local or not, display URI, atomic write, JSON read).

S3 options travel as one :class:`StorageOptions` value (fsspec's ``storage_options`` convention), not as
separate ``endpoint_url`` / ``anonymous`` arguments.

Credentials (``anonymous``), one meaning everywhere (the API, ``run``, ``ingest``, ``encode``, ``rank``,
``report``, ``demo``):

- ``None`` (the default; the CLI without ``--anonymous``): sign with the credentials botocore finds
  (environment, shared config/credentials files, SSO, instance role); when there are none, send unsigned
  requests, so public buckets such as the BERG bucket work with no setup;
- ``True`` (``--anonymous``): always unsigned, even when credentials are configured;
- ``False``: always signed; fails without credentials.

Endpoint: ``endpoint_url`` wins; else ``$AWS_ENDPOINT_URL_S3``, else ``$AWS_ENDPOINT_URL`` (the variables the
AWS SDKs honour), else AWS itself. Region: ``$AWS_REGION`` / ``$AWS_DEFAULT_REGION``, else the known region of
a public bucket we use, else ``us-east-1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from screening.exceptions import InvalidParameterError

__all__ = ["StorageOptions", "add_storage_arguments", "filesystem_for", "protocol_of", "is_local", "is_remote", "to_uri", "join",
           "arrow_filesystem", "write_atomic", "read_json", "resolve_anonymous", "resolve_endpoint_url",
           "KNOWN_BUCKET_REGIONS"]

#: Public buckets whose region we know, so anonymous access needs no region lookup.
KNOWN_BUCKET_REGIONS = {"brain-encoding-response-generator": "us-west-2", "mosaicfmri": "us-east-1"}
_CRED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED")
_LOCAL_PROTOCOLS = ("file", "local")
_S3_PROTOCOLS = ("s3", "s3a")


@dataclass(frozen=True)
class StorageOptions:
    """How to reach S3 (ignored for local paths). Small, frozen, picklable: it travels to Ray workers.

    ``endpoint_url``: an S3-compatible endpoint (MinIO, moto, ...); ``None`` = the environment's or AWS.
    ``anonymous``: ``None`` = sign when credentials are configured, else unsigned; ``True`` = always unsigned;
    ``False`` = always signed (see the module docstring).
    """

    endpoint_url: str | None = None
    anonymous: bool | None = None

    @classmethod
    def of(cls, storage_options=None, *, endpoint_url: str | None = None,
           anonymous: bool | None = None) -> "StorageOptions":
        """One value from what a caller has: a ``StorageOptions``, a mapping of its fields, or the two fields."""
        if storage_options is None:
            return cls(endpoint_url=endpoint_url, anonymous=anonymous)
        if endpoint_url is not None or anonymous is not None:
            raise InvalidParameterError("give storage_options or endpoint_url/anonymous, not both")
        if isinstance(storage_options, cls):
            return storage_options
        if isinstance(storage_options, Mapping):
            unknown = sorted(set(storage_options) - {"endpoint_url", "anonymous"})
            if unknown:
                raise InvalidParameterError(f"storage_options keys {unknown} are not valid; valid keys: "
                                            "'endpoint_url', 'anonymous'")
            return cls(**storage_options)
        raise InvalidParameterError(f"storage_options must be a StorageOptions or a dict; got "
                                    f"{type(storage_options).__name__}")

    @classmethod
    def from_args(cls, args) -> "StorageOptions":
        """From the ``--endpoint-url`` / ``--anonymous`` flags of :func:`add_storage_arguments` (absent: ``None``)."""
        anonymous = getattr(args, "anonymous", None)
        return cls(endpoint_url=getattr(args, "endpoint_url", None),
                   anonymous=None if anonymous is None else bool(anonymous))

    def to_fsspec(self, bucket: str | None = None) -> dict:
        """The ``storage_options`` dict ``s3fs.S3FileSystem(**...)`` takes (credentials and endpoint resolved)."""
        client_kwargs = {"region_name": _region_for(bucket)}
        endpoint = resolve_endpoint_url(self.endpoint_url)
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        return {"anon": resolve_anonymous(self.anonymous), "client_kwargs": client_kwargs}


def add_storage_arguments(parser) -> None:
    """``--endpoint-url`` and ``--anonymous``, with the one meaning every subcommand gives them."""
    parser.add_argument("--endpoint-url", default=None,
                        help="S3-compatible endpoint for s3:// locations (default $AWS_ENDPOINT_URL_S3 / AWS)")
    parser.add_argument("--anonymous", action="store_true", default=None,
                        help="always send unsigned S3 requests; without it requests are signed when "
                             "credentials are configured and unsigned when there are none")


def is_remote(uri: str) -> bool:
    """True for ``s3://``, ``http(s)://`` (anything with a scheme other than ``file``)."""
    scheme = urlparse(str(uri)).scheme
    return len(scheme) > 1 and scheme != "file"


def protocol_of(fs) -> str:
    """The filesystem's main protocol (fsspec gives a string or a tuple of aliases)."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def is_local(fs) -> bool:
    return protocol_of(fs) in _LOCAL_PROTOCOLS


def to_uri(fs, path: str) -> str:
    """Inverse of :func:`filesystem_for` for display and manifests (``bucket/key`` -> ``s3://bucket/key``)."""
    return f"s3://{path}" if protocol_of(fs) in _S3_PROTOCOLS else path


def join(base: str, *parts: str) -> str:
    """Join with ``/`` (fsspec paths are always ``/``-separated)."""
    out = str(base).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def resolve_endpoint_url(endpoint_url: str | None = None) -> str | None:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def resolve_anonymous(anonymous: bool | None = None) -> bool:
    """``anonymous=None`` -> anonymous exactly when botocore finds no credentials."""
    if anonymous is not None:
        return bool(anonymous)
    return not _have_credentials(tuple(os.environ.get(k) for k in _CRED_ENV))


@lru_cache(maxsize=8)
def _have_credentials(_env_key: tuple) -> bool:
    # The env tuple is only the cache key: a change of credential variables re-runs the lookup.
    try:
        import botocore.session

        return botocore.session.get_session().get_credentials() is not None
    except Exception:  # noqa: BLE001 — any failure to find credentials means "none"
        return False


def _region_for(bucket: str | None) -> str:
    return (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            or KNOWN_BUCKET_REGIONS.get(bucket or "", "us-east-1"))


def filesystem_for(uri: str | os.PathLike, storage_options: StorageOptions | Mapping | None = None, *,
                   endpoint_url: str | None = None, anonymous: bool | None = None):
    """Return ``(filesystem, path)`` for a location.

    Parameters
    ----------
    uri : str or path-like
        A local path, ``file://…`` or ``s3://bucket/key``.
    storage_options : StorageOptions or dict, optional
        S3 endpoint and credentials mode (see the module docstring).
    endpoint_url, anonymous
        The two fields of ``storage_options``, for callers that still pass them separately.

    Returns
    -------
    (fsspec.AbstractFileSystem, str)
        The filesystem and the path to use with it (no scheme for S3: ``bucket/key``; absolute for local).

    Raises
    ------
    InvalidParameterError
        For schemes other than local/``file``/``s3`` (``http(s)://`` is read through the download cache).
    """
    options = StorageOptions.of(storage_options, endpoint_url=endpoint_url, anonymous=anonymous)
    uri = os.fspath(uri)
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in _S3_PROTOCOLS:
        import s3fs

        if not parsed.netloc:
            raise InvalidParameterError(f"S3 location {uri!r} has no bucket; expected s3://bucket[/prefix]")
        return s3fs.S3FileSystem(**options.to_fsspec(parsed.netloc)), join(parsed.netloc, parsed.path)
    if scheme in ("", "file") or len(scheme) == 1:  # len 1: a Windows drive letter
        from fsspec.implementations.local import LocalFileSystem

        path = parsed.path if scheme == "file" else uri
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    raise InvalidParameterError(
        f"unsupported location {uri!r}; valid forms: a local path, file://…, s3://bucket/prefix")


def arrow_filesystem(fs):
    """A pyarrow filesystem over an fsspec one (what ``ray.data.read_parquet(filesystem=...)`` takes)."""
    import pyarrow.fs as pafs

    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def write_atomic(fs, path: str, data: bytes) -> None:
    """Write ``data`` so that no reader ever sees a partial file at ``path``.

    Local: a uniquely named temp file beside it, fsynced, then ``os.replace`` (atomic rename).
    S3 and other object stores: one PUT (or one multipart upload), which is visible only when complete.
    """
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def read_json(fs, path: str):
    """Parsed JSON at ``path``, or ``None`` if there is no such file."""
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return json.loads(f.read().decode())


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """This machine's cache folder: ``cache_dir``, else ``$SCREENING_CACHE_DIR``, else ``~/.cache/screening`` (the
    download cache of stores and the node cache of collapsed ROI matrices live under it)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("SCREENING_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "screening"


@contextlib.contextmanager
def file_lock(path):
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block: one process of a node at a
    time (cache fills)."""
    import fcntl

    with open(path, "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lk, fcntl.LOCK_UN)
