"""One place that turns a location (local path, ``file://``, ``s3://``) into an fsspec filesystem.

Used by the store, ingest, pipeline and rank, so it stays small and general.

S3 credentials: ``anonymous=None`` (the default) means *use credentials if any are configured*
(environment, shared config/credentials files, SSO, instance role — whatever botocore finds),
*otherwise send unsigned (anonymous) requests*. ``anonymous=True`` always sends unsigned requests
(public buckets such as the BERG bucket); ``anonymous=False`` always signs and fails without credentials.

Endpoint: ``endpoint_url`` wins; else ``$AWS_ENDPOINT_URL_S3``, else ``$AWS_ENDPOINT_URL`` (the
variables the AWS SDKs honour), else AWS itself. Region: ``$AWS_REGION`` / ``$AWS_DEFAULT_REGION``,
else the known region of a public bucket we use, else ``us-east-1``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from urllib.parse import urlparse

from screening.exceptions import InvalidParameterError

__all__ = ["filesystem_for", "is_remote", "resolve_anonymous", "resolve_endpoint_url", "join", "write_atomic"]

#: Public buckets whose region we know, so anonymous access needs no region lookup.
KNOWN_BUCKET_REGIONS = {"brain-encoding-response-generator": "us-west-2", "mosaicfmri": "us-east-1"}
_CRED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
             "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED")


def is_remote(uri: str) -> bool:
    """True for ``s3://``, ``http(s)://`` (anything with a scheme other than ``file``)."""
    scheme = urlparse(str(uri)).scheme
    return len(scheme) > 1 and scheme != "file"


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
    """``anonymous=None`` → anonymous exactly when botocore finds no credentials."""
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


def _region_for(bucket: str) -> str:
    return (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            or KNOWN_BUCKET_REGIONS.get(bucket, "us-east-1"))


def filesystem_for(uri: str | os.PathLike, *, endpoint_url: str | None = None, anonymous: bool | None = None):
    """Return ``(filesystem, path)`` for a location.

    Parameters
    ----------
    uri : str or path-like
        A local path, ``file://…`` or ``s3://bucket/key``.
    endpoint_url : str, optional
        S3-compatible endpoint (MinIO, moto, …). Default: ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``.
    anonymous : bool, optional
        ``None``: sign when credentials are configured, else anonymous. See the module docstring.

    Returns
    -------
    (fsspec.AbstractFileSystem, str)
        The filesystem and the path to use with it (no scheme for S3: ``bucket/key``; absolute for local).

    Raises
    ------
    InvalidParameterError
        For schemes other than local/``file``/``s3`` (``http(s)://`` is read through the download cache).
    """
    uri = os.fspath(uri)
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("s3", "s3a"):
        import s3fs

        if not parsed.netloc:
            raise InvalidParameterError(f"S3 location {uri!r} has no bucket; expected s3://bucket[/prefix]")
        client_kwargs = {"region_name": _region_for(parsed.netloc)}
        ep = resolve_endpoint_url(endpoint_url)
        if ep:
            client_kwargs["endpoint_url"] = ep
        fs = s3fs.S3FileSystem(anon=resolve_anonymous(anonymous), client_kwargs=client_kwargs)
        return fs, join(parsed.netloc, parsed.path)
    if scheme in ("", "file") or len(scheme) == 1:  # len 1: a Windows drive letter
        from fsspec.implementations.local import LocalFileSystem

        path = parsed.path if scheme == "file" else uri
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    raise InvalidParameterError(
        f"unsupported location {uri!r}; valid forms: a local path, file://…, s3://bucket/prefix")


def write_atomic(fs, path: str, data: bytes) -> None:
    """Write ``data`` so that no reader ever sees a partial file at ``path``.

    Local: a uniquely named temp file beside it, fsynced, then ``os.replace`` (atomic rename).
    S3 and other object stores: one PUT (or one multipart upload), which is visible only when complete.
    """
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        fs.pipe_file(path, data)
        return
    import contextlib
    import uuid

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
