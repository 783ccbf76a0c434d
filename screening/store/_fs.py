"""Old home of the filesystem helpers; they live in :mod:`screening.fs`.

Kept as a re-export until the pipeline, rank and ingest import :mod:`screening.fs` directly.
"""

__all__ = ["KNOWN_BUCKET_REGIONS", "filesystem_for", "is_remote", "join", "resolve_anonymous", "resolve_endpoint_url",
           "write_atomic"]

from screening.fs import (KNOWN_BUCKET_REGIONS, filesystem_for, is_remote, join, resolve_anonymous,  # noqa: F401
                          resolve_endpoint_url, write_atomic)
