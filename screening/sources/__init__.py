"""Input kinds: one module each, registered here; everything else asks this package about inputs.

``find(images)`` classifies what a user points at, ``plan(images, ...)`` turns it into units on the driver,
``read_units`` (a ``map_batches`` function) reads units into ``READ_COLUMNS`` rows on workers, and ``open_images``
streams image files one by one for the driver-side commands (``ingest``, ``encode``).

To add a kind: write a :class:`~screening.sources.base.Source` subclass in a new module and add an instance to
:data:`SOURCES` (the order messages list them in). Its ``precedence`` decides which kind a folder holding several
is read as; its ``options`` (:class:`~screening.sources.base.SourceOption`) become run options
(:func:`source_options`); ``made`` / ``picture`` read its recorded sources back for pictures of results
(:func:`read_image`).
"""

from __future__ import annotations

import collections
import posixpath
from concurrent.futures import ThreadPoolExecutor

from screening.exceptions import InvalidParameterError
from screening.sources.base import (DIRECT_SPEC, READ_COLUMNS, ColumnSpec, Found, ImageRef, PlanContext, Source,
                                    SourceOption, Unit, read_recorded)
from screening.sources.files import ImageFilesSource, ListSource
from screening.sources.hdf5 import Hdf5Source
from screening.sources.listing import LINKED_FOLDER, expand_braces, followed, walk_folder
from screening.sources.parquet import ParquetSource
from screening.sources.tar import TarSource

__all__ = ["SOURCES", "source", "source_options", "find", "plan", "readers", "read_units", "read_image",
           "open_images", "accepted", "Unit", "Found", "ColumnSpec", "DIRECT_SPEC", "READ_COLUMNS", "PlanContext",
           "ImageRef", "Source", "SourceOption", "LINKED_FOLDER"]

#: Every input kind.
SOURCES: tuple[Source, ...] = (ParquetSource(), TarSource(), ImageFilesSource(), ListSource(), Hdf5Source())


def source(kind: str) -> Source:
    """The registered source of ``kind`` (a unit's or a ``Found``'s)."""
    for s in SOURCES:
        if s.kind == kind:
            return s
    raise InvalidParameterError(f"input kind {kind!r} is not one of {', '.join(s.kind for s in SOURCES)}")


def _images() -> Source:
    """The source of loose image files: what a folder holds besides shards."""
    return source(ImageFilesSource.kind)


def source_options() -> tuple[SourceOption, ...]:
    """The options the registered kinds own (``RunConfig`` takes each as an option of its own)."""
    return tuple(o for s in SOURCES for o in s.options)


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
    images_source = _images()
    files = [(p, i) for p, i in entries if i.get("type", "file") == "file"]
    imgs = [(p, i) for p, i in files if images_source.claims(p)]
    for src in sorted(SOURCES, key=lambda s: s.precedence):
        if not src.in_folders or src is images_source:
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
        return Found(images_source.kind, fs, images, tuple(p for p, _ in imgs), tuple(i for _, i in imgs),
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


def readers(units) -> dict[str, Source]:
    """The registered source of each kind among ``units``: what the read tasks get from the driver (a kind
    registered on the driver reads on every worker)."""
    return {u.kind: source(u.kind) for u in units}


def read_units(batch, *, spec: ColumnSpec, storage=None, chunk_rows: int = 256, kinds=None):
    """``map_batches`` generator over planned units (``Unit.read_item`` rows): each read by its kind's source
    (``kinds``: the driver's, :func:`readers`; default this process's registry).

    One Ray task per unit (``from_items(..., override_num_blocks=len(units))``) keeps a unit's rows together, so
    units finish (and commit) one after another instead of all at the end; chunks keep blocks bounded in size.
    """
    for item in batch.to_pylist():
        kind = item.get("kind") or ParquetSource.kind
        reader = (kinds or {}).get(kind) or source(kind)
        yield from reader.read(item, spec=spec, storage=storage, chunk_rows=chunk_rows)


class ImageStream:
    """Image files, an archive or a list, streamed in order on the driver (``screening ingest``): what it holds
    (``kind``), how many where known (``total``), and how many other entries it passed over (``skipped``)."""

    def __init__(self, src: str, storage=None, *, what: str = "SRC"):
        from screening.fs import filesystem_for

        self.src, self.storage, self.skipped = src, storage, 0
        fs, path = filesystem_for(src, storage)
        if fs.isdir(path):
            root = path.rstrip("/")
            entries, images_source = walk_folder(fs, root), _images()
            imgs = [(f"{root}/{rel}", i) for rel, i in entries if images_source.claims(rel)]
            self.skipped = len(entries) - len(imgs)
            self.found = Found(images_source.kind, fs, src, tuple(p for p, _ in imgs), tuple(i for _, i in imgs))
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


def read_image(source: str, storage=None, options=None) -> bytes | None:
    """Encoded bytes of one screened image from its recorded source, for pictures of results: read back by the kind
    that made the row (:meth:`Source.made` / :meth:`Source.picture`; an HDF5 ``FILE#index`` as PNG), else as a
    file, an ``s3://`` object or a ``tar://member::archive`` URL. ``options``: the run's options (its manifest's
    ``config``), for a kind's own (``hdf5_dataset``). None where the source is gone or is a row of a Parquet shard
    (read those by id)."""
    try:
        maker = next((s for s in SOURCES if s.made(source)), None)
        return maker.picture(source, options, storage) if maker is not None else read_recorded(source, storage)
    except Exception:  # noqa: BLE001 - moved or deleted since the run: the caller draws a placeholder
        return None


def open_images(src: str, storage=None, *, what: str = "SRC") -> ImageStream:
    return ImageStream(src, storage, what=what)
