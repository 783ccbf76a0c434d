"""Input kinds: one module each, registered here; everything else asks this package about inputs.

``find(images)`` classifies what a user points at, ``plan(images, ...)`` turns it into units on the driver,
``read_units`` (a ``map_batches`` function) reads units into ``READ_COLUMNS`` rows on workers, and ``open_images``
streams image files one by one for the driver-side commands (``ingest``, ``encode``).

To add a kind: write a :class:`~screening.sources.base.Source` subclass in a new module and add an instance to
:data:`SOURCES` (the order messages list them in). Its ``precedence`` decides which kind a folder holding several
is read as.
"""

from __future__ import annotations

import collections
import posixpath
from concurrent.futures import ThreadPoolExecutor

from screening.exceptions import InvalidParameterError
from screening.sources.base import (DIRECT_SPEC, READ_COLUMNS, ColumnSpec, Found, ImageRef, PlanContext, Source,
                                    Unit)
from screening.sources.files import ImageFilesSource, ListSource
from screening.sources.hdf5 import Hdf5Source
from screening.sources.listing import LINKED_FOLDER, expand_braces, followed, walk_folder
from screening.sources.parquet import ParquetSource
from screening.sources.tar import TarSource

__all__ = ["SOURCES", "source", "find", "plan", "read_units", "open_images", "accepted", "Unit", "Found",
           "ColumnSpec", "DIRECT_SPEC", "READ_COLUMNS", "PlanContext", "ImageRef", "Source", "LINKED_FOLDER"]

#: Every input kind.
SOURCES: tuple[Source, ...] = (ParquetSource(), TarSource(), ImageFilesSource(), ListSource(), Hdf5Source())
_IMAGES = SOURCES[2]


def source(kind: str) -> Source:
    """The registered source of ``kind`` (a unit's or a ``Found``'s)."""
    for s in SOURCES:
        if s.kind == kind:
            return s
    raise InvalidParameterError(f"input kind {kind!r} is not one of {', '.join(s.kind for s in SOURCES)}")


def accepted() -> str:
    """The kinds screening run reads, for messages."""
    return ", ".join(s.describe for s in SOURCES) + ", or a glob / brace pattern (shard-{000..009}.tar) of these"


def _by_ext(entries) -> collections.Counter:
    """How many listed entries of each extension (a linked folder counts as :data:`LINKED_FOLDER`)."""
    return collections.Counter(
        LINKED_FOLDER if i.get("type") == LINKED_FOLDER else (posixpath.splitext(p)[1].lower() or "(no extension)")
        for p, i in entries)


def _classify(images: str, fs, entries: list[tuple[str, dict]]) -> Found:
    """One kind from a listing: the source of lowest ``precedence`` that claims any file. Shards beside
    image files are refused as a mix; other files beside shards are their metadata; other files beside images are
    counted as not screened."""
    files = [(p, i) for p, i in entries if i.get("type", "file") == "file"]
    imgs = [(p, i) for p, i in files if _IMAGES.claims(p)]
    for src in sorted(SOURCES, key=lambda s: s.precedence):
        if not src.in_folders or src is _IMAGES:
            continue
        chosen = [(p, i) for p, i in files if src.claims(p)]
        if chosen and imgs:
            raise InvalidParameterError(
                f"images={images!r} mixes {len(chosen)} {src.kind} file(s) with {len(imgs)} image file(s); point "
                f"images= at one kind (accepted: {accepted()})")
        if chosen:
            return Found(src.kind, fs, images, tuple(p for p, _ in chosen), tuple(i for _, i in chosen))
    if imgs:
        taken = {p for p, _ in imgs}
        return Found(_IMAGES.kind, fs, images, tuple(p for p, _ in imgs), tuple(i for _, i in imgs),
                     tuple(_by_ext((p, i) for p, i in entries if p not in taken).most_common()))
    exts = _by_ext(entries)
    what = ("found " + ", ".join(f"{n} {e}" for e, n in exts.most_common(6)) + (", ..." if len(exts) > 6 else "")
            if entries else "it is empty")
    raise InvalidParameterError(f"images={images!r} holds nothing screening run reads ({what}); accepted: "
                                f"{accepted()}")


def find(images: str, *, storage=None) -> Found:
    """Classify ``images`` (file, folder, glob or brace pattern; local or ``s3://``); raise naming what was found."""
    from screening.fs import filesystem_for

    fs, path = filesystem_for(images, storage)
    if "{" in path or any(ch in path for ch in "*?["):
        paths = sorted({p for pat in expand_braces(path) for p in
                        (fs.glob(pat) if any(ch in pat for ch in "*?[") else [pat] if fs.isfile(pat) else [])})
        if not paths:
            raise InvalidParameterError(f"images={images!r} matches no file")
        with ThreadPoolExecutor(max(1, min(16, len(paths)))) as pool:
            infos = list(pool.map(fs.info, paths))
        return _classify(images, fs, [(p, followed(p, i)) for p, i in zip(paths, infos)
                                      if i.get("type", "file") == "file" or i.get("islink")])
    if fs.isdir(path):
        root = path.rstrip("/")
        return _classify(images, fs, [(f"{root}/{rel}", info) for rel, info in walk_folder(fs, root)])
    if not fs.exists(path):
        raise InvalidParameterError(f"images={images!r} does not exist")
    for src in SOURCES:
        if not src.in_folders and src.claims(path):
            return Found(src.kind, fs, images, (path,), (fs.info(path),))
    if any(src.claims(path) for src in SOURCES):
        return _classify(images, fs, [(path, followed(path, fs.info(path)))])
    ext = posixpath.splitext(path)[1] or "(no extension)"
    raise InvalidParameterError(f"images={images!r} is a {ext} file, which screening run does not read; "
                                f"accepted: {accepted()}")


def plan(images: str, ctx: PlanContext) -> tuple[tuple[Unit, ...], ColumnSpec, tuple[tuple[str, int], ...]]:
    """``(units, how to read their rows, what was not screened)`` from whatever ``images`` is; the last is
    (extension or kind, count) pairs of a folder's or glob's other files."""
    found = find(images, storage=ctx.storage)
    if ctx.label_column is not None and found.kind != ParquetSource.kind:
        raise InvalidParameterError(
            f"column:{ctx.label_column} reads labels from a column of Parquet input shards; images={images!r} is "
            f"{found.kind} input, which has no columns (each image has only its bytes, id and source): use folder, "
            f"name:REGEX or a label table")
    units, spec = source(found.kind).plan(found, ctx)
    return units, spec, found.skipped


def read_units(batch, *, spec: ColumnSpec, storage=None, chunk_rows: int = 256):
    """``map_batches`` generator over planned units (``Unit.read_item`` rows): each read by its kind's source.

    One Ray task per unit (``from_items(..., override_num_blocks=len(units))``) keeps a unit's rows together, so
    units finish (and commit) one after another instead of all at the end; chunks keep blocks bounded in size.
    """
    for item in batch.to_pylist():
        yield from source(item.get("kind") or "parquet").read(item, spec=spec, storage=storage,
                                                              chunk_rows=chunk_rows)


class ImageStream:
    """Image files, an archive or a list, streamed in order on the driver (``screening ingest``): what it holds
    (``kind``), how many where known (``total``), and how many other entries it passed over (``skipped``)."""

    def __init__(self, src: str, storage=None, *, what: str = "SRC"):
        from screening.fs import filesystem_for

        self.src, self.storage, self.skipped = src, storage, 0
        fs, path = filesystem_for(src, storage)
        if fs.isdir(path):
            root = path.rstrip("/")
            entries = walk_folder(fs, root)
            imgs = [(f"{root}/{rel}", i) for rel, i in entries if _IMAGES.claims(rel)]
            self.skipped = len(entries) - len(imgs)
            self.found = Found("files", fs, src, tuple(p for p, _ in imgs), tuple(i for _, i in imgs))
            self.kind = "folder"
        elif not fs.exists(path):
            raise InvalidParameterError(f"{what} {src!r} does not exist")
        else:
            claimed = [s for s in SOURCES if s.claims(path)]
            if not claimed or claimed[0].kind == "parquet":
                raise InvalidParameterError(
                    f"{what} {src!r} is not a folder, an image, a tar archive ({', '.join(TarSource.suffixes)}) "
                    f"or a list file ({', '.join(ListSource.suffixes)})")
            self.found = Found(claimed[0].kind, fs, src, (path,), (fs.info(path),))
            self.kind = {"files": "file"}.get(claimed[0].kind, claimed[0].kind)
        self.source = source(self.found.kind)
        self.total = self.source.count(self.found)

    def _skip(self, _name: str) -> None:
        self.skipped += 1

    def items(self):
        return self.source.images(self.found, storage=self.storage, on_other=self._skip)


def read_image(source: str, storage=None, *, hdf5_dataset: str | None = None) -> bytes | None:
    """Encoded bytes of one screened image from its recorded source (a file, an ``s3://`` object, a
    ``tar://member::archive`` URL or an HDF5 ``FILE#index``; the last as PNG), for pictures of results; None where
    the source is gone or is a row of a Parquet shard (read those by id)."""
    import io

    import fsspec

    from screening.fs import StorageOptions
    from screening.sources.hdf5 import DEFAULT_DATASET, HDF5_SUFFIXES, read_pixels

    options = StorageOptions.of(storage)
    try:
        path, _, fragment = source.rpartition("#") if "#" in source else (source, "", "")
        if fragment:
            if not path.lower().endswith(HDF5_SUFFIXES) or not fragment.isdigit():
                return None
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(read_pixels(path, int(fragment), hdf5_dataset or DEFAULT_DATASET, options)).save(buf, "PNG")
            return buf.getvalue()
        kw = (options.to_fsspec() if source.startswith("s3://")
              else {"s3": options.to_fsspec()} if "::s3://" in source else {})  # chained: per layer
        with fsspec.open(source, "rb", **kw) as f:
            return f.read()
    except Exception:  # noqa: BLE001 - moved or deleted since the run: the caller draws a placeholder
        return None


def open_images(src: str, storage=None, *, what: str = "SRC") -> ImageStream:
    return ImageStream(src, storage, what=what)
