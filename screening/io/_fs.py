"""Old home of ``to_uri`` / ``arrow_filesystem``; they live in :mod:`screening.fs`.

Kept as a re-export until the pipeline and ``io.image_source`` import :mod:`screening.fs` directly.
"""

__all__ = ["arrow_filesystem", "filesystem_for", "to_uri"]

from screening.fs import arrow_filesystem, filesystem_for, to_uri  # noqa: F401
