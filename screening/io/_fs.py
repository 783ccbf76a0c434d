"""Local / s3:// filesystems for the pipeline (fsspec; wrapped for pyarrow where Ray needs it)."""

from __future__ import annotations

import os

from screening.exceptions import InvalidParameterError


def filesystem_for(uri, *, endpoint_url=None, anonymous=None):
    """``(fs, path)``: an fsspec filesystem and the scheme-less path inside it.

    ``s3://`` uses s3fs (``endpoint_url`` for S3-compatible servers, ``anonymous`` for public buckets);
    a plain path or ``file://`` is local (made absolute).
    """
    uri = os.fspath(uri)
    if uri.startswith("s3://"):
        import s3fs

        kwargs = {"anon": bool(anonymous)}
        if endpoint_url:
            kwargs["client_kwargs"] = {"endpoint_url": endpoint_url}
        return s3fs.S3FileSystem(**kwargs), uri[len("s3://"):].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise InvalidParameterError(f"path {uri!r} has an unsupported scheme; valid: a local path, file:// or s3://")
    import fsspec

    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return fsspec.filesystem("file"), os.path.abspath(path)


def is_s3(uri) -> bool:
    return os.fspath(uri).startswith("s3://")


def to_uri(fs, path: str) -> str:
    """Inverse of ``filesystem_for`` for display and manifests."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"s3://{path}" if protocol in ("s3", "s3a") else path


def arrow_filesystem(fs):
    """A pyarrow filesystem over an fsspec one (what ``ray.data.read_parquet(filesystem=...)`` takes)."""
    import pyarrow.fs as pafs

    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
