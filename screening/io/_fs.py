"""Local / s3:// filesystems for the pipeline (fsspec; wrapped for pyarrow where Ray needs it)."""

from __future__ import annotations

from screening.store._fs import filesystem_for  # noqa: F401  (the one implementation, re-exported)


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
