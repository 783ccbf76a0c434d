"""``screening ingest SRC OUT``: turn images into Parquet image shards the pipeline reads.

Sources (``SRC``)
-----------------
- a folder (local or ``s3://bucket/prefix``), walked recursively; files are taken by extension
  (:data:`IMAGE_EXTENSIONS`, any case) in sorted order of their relative path; hidden files and
  folders (name starting with ``.``, e.g. macOS ``._x.jpg``) are skipped; other files are counted
  as ``skipped`` and reported in the summary;
- a tar archive (``.tar``, ``.tar.gz``, ``.tgz``; local or ``s3://``), streamed in archive order
  (same archive -> same order), members filtered as for folders; ``source`` is the fsspec URL of
  the member, ``tar://<member>::<archive>``;
- a list file: ``.csv`` (header row; the column named ``path``, else ``uri``, else the first) or
  ``.txt``/``.lst`` (one entry per line; blank lines and ``#`` comments ignored). Entries are
  local paths (relative ones resolve against the list file's folder) or ``s3://`` URIs, taken in
  list order;
- a single image file.

Rows (the *image shards* table of ``docs/contracts.md``)
-------------------------------------------------------
``image_id`` string, ``image`` binary (the original encoded bytes, untouched), ``source`` string,
``width`` int32, ``height`` int32 (declared in the header, before EXIF orientation).

``image_id`` is content-addressed: the first 16 hex digits (64 bits) of the SHA-256 of the bytes.
It is stable across machines, paths and re-ingests. Identical bytes get the same id: the first
occurrence is kept, later ones are listed in ``OUT/ingest_duplicates.csv``. Two different
files whose ids collide (chance about n**2 / 2**65) are detected with the full digest and the
second is reported as an error rather than merged.

What ingest checks
------------------
Each file is read and its header parsed (:func:`screening.preprocess.image_size`): files that
cannot be read, and files whose header cannot be parsed (empty, text, random bytes, unknown
format), go to ``OUT/ingest_errors.csv`` (``source``, ``error``) and the summary, never
dropped silently. Pixel data is *not* decoded here: a truncated JPEG or a decompression bomb with
a valid header is ingested, and the pipeline decodes it and reports it in its errors table.

Output (``OUT``, local or ``s3://bucket/prefix``)
-------------------------------------------------
``shard-00000.parquet``, ``shard-00001.parquet`` ... of ``shard_rows`` rows each (row groups of
``row_group_rows``), then ``ingest_errors.csv``, ``ingest_duplicates.csv`` (CSV so that the only
``.parquet`` files in ``OUT`` are image shards) and, last, ``_manifest.json`` (shards with rows, bytes and sha256; counts). The same input gives byte-identical
files (no timestamps; deterministic order). Each file is written atomically: locally to a temporary
name then renamed, on S3 as one object upload (visible only when complete). A reader should trust
the shards listed in ``_manifest.json``; an ``OUT`` without it is an interrupted ingest.
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import io
import json
import os
import posixpath
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from screening.validation import check_positive_int
from screening.exceptions import ImageDecodeError, InvalidParameterError
from screening.fs import StorageOptions, add_storage_arguments, filesystem_for, is_local, to_uri

from screening.sources import ImageRef, ImageStream, open_images
from screening.sources.listing import IMAGE_EXTENSIONS, link_problem

__all__ = [
    "ingest",
    "IngestResult",
    "image_id_for",
    "IMAGE_EXTENSIONS",
    "SHARD_SCHEMA_FIELDS",
    "configure_parser",
    "run_from_args",
]

#: Column names and Arrow types of an image shard.
SHARD_SCHEMA_FIELDS = (("image_id", "string"), ("image", "binary"), ("source", "string"),
                       ("width", "int32"), ("height", "int32"))

MANIFEST_NAME = "_manifest.json"
# CSV, not Parquet: a reader that globs OUT for *.parquet must see only image shards.
ERRORS_NAME = "ingest_errors.csv"
DUPLICATES_NAME = "ingest_duplicates.csv"
_ID_HEX = 16
_READ_WINDOW = 32  # files read ahead by the I/O threads; bounds memory to ~32 images


def image_id_for(data: bytes) -> str:
    """The content-addressed id: first 16 hex digits of ``sha256(data)``."""
    return hashlib.sha256(data).hexdigest()[:_ID_HEX]


@dataclass
class IngestResult:
    """What :func:`ingest` wrote.

    Attributes
    ----------
    out : str
        The output location as given.
    shards : list of str
        Shard locations (``s3://...`` or absolute local paths), in order.
    rows : int
        Rows written over all shards (unique images).
    errors : list of (str, str)
        ``(source, error)`` for files that could not be read or whose header did not parse.
    duplicates : list of (str, str, str)
        ``(source, image_id, duplicate_of)``: files with the same bytes as an earlier one.
    skipped : int
        Files in a folder or archive passed over for their extension.
    manifest : str
        Location of ``_manifest.json``.
    """

    out: str
    shards: list[str] = field(default_factory=list)
    rows: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: int = 0
    manifest: str = ""

    def summary(self) -> str:
        """A few lines for humans."""
        lines = [f"ingested {self.rows} images into {len(self.shards)} shard(s) at {self.out}"]
        if self.skipped:
            lines.append(f"skipped {self.skipped} file(s) without an image extension "
                         f"({', '.join(IMAGE_EXTENSIONS)})")
        if self.duplicates:
            lines.append(f"{len(self.duplicates)} duplicate file(s) (same bytes as an earlier one; "
                         f"first kept), listed in {DUPLICATES_NAME}")
        if self.errors:
            lines.append(f"{len(self.errors)} unreadable file(s), listed in {ERRORS_NAME}:")
            for source, error in self.errors[:10]:
                lines.append(f"  {source}: {error}")
            if len(self.errors) > 10:
                lines.append(f"  ... and {len(self.errors) - 10} more")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# reading, checking, sharding
# ----------------------------------------------------------------------------------------------

def _load(item: ImageRef) -> tuple[str, bytes | None, str | None, tuple[int, int] | None, str | None]:
    """(source, data, sha256 hex, (w, h), error) — runs on an I/O thread."""
    from screening.preprocess import image_size

    try:
        data = item.read()
    except Exception as e:  # noqa: BLE001 — any failure to read is reported per file, by design
        note = link_problem(item.source)
        return item.source, None, None, None, f"read failed: {type(e).__name__}: {e}{note}"
    digest = hashlib.sha256(data).hexdigest()
    try:
        size = image_size(data)
    except ImageDecodeError as e:
        return item.source, None, None, None, str(e)
    return item.source, data, digest, size, None


def _ordered_prefetch(fn, items: Iterable[ImageRef], workers: int) -> Iterator:
    """``map(fn, items)`` on a thread pool, in order, at most ``_READ_WINDOW`` in flight."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-read") as pool:
        window: collections.deque = collections.deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= _READ_WINDOW:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ in SHARD_SCHEMA_FIELDS])


def _parquet_bytes(table, row_group_rows: int, *, binary_column: str | None = None) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    # Encoded images do not compress: store them plain and without min/max statistics (which
    # would copy image bytes into the footer); the small columns get zstd.
    compression = {name: ("none" if name == binary_column else "zstd") for name in table.column_names}
    stats = [n for n in table.column_names if n != binary_column]
    pq.write_table(table, buf, row_group_size=row_group_rows, compression=compression,
                   use_dictionary=False, write_statistics=stats)
    return buf.getvalue()


class _Writer:
    """Atomic whole-file writes to a local folder or an S3 prefix."""

    def __init__(self, out: str, storage: StorageOptions):
        self.fs, self.root = filesystem_for(out, storage)
        self.local = is_local(self.fs)
        if self.local:
            os.makedirs(self.root, exist_ok=True)

    def location(self, name: str) -> str:
        return to_uri(self.fs, f"{self.root.rstrip('/')}/{name}")

    def write(self, name: str, data: bytes) -> str:
        from screening.fs import write_atomic

        write_atomic(self.fs, f"{self.root.rstrip('/')}/{name}", data)
        return self.location(name)

    def existing(self) -> list[str]:
        try:
            names = [posixpath.basename(p) for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n == MANIFEST_NAME or (n.startswith("shard-") and n.endswith(".parquet")))

    def remove(self, name: str) -> None:
        path = f"{self.root.rstrip('/')}/{name}"
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass


def ingest(src, out, *, shard_rows: int = 1000, row_group_rows: int = 128,
           storage_options=None, endpoint_url: str | None = None, anonymous: bool | None = None,
           overwrite: bool = False, workers: int = 8, progress: bool | None = None) -> IngestResult:
    """Write the images of ``src`` as Parquet image shards under ``out``.

    Parameters
    ----------
    src : str or path-like
        A folder, a tar archive, a ``.csv``/``.txt``/``.lst`` list of paths or ``s3://`` URIs, or one
        image; local or ``s3://``. See the module docstring for the rules of each.
    out : str or path-like
        Output folder, local or ``s3://bucket/prefix``.
    shard_rows : int, default=1000
        Rows per shard (about 100 MB of typical photos).
    row_group_rows : int, default=128
        Rows per Parquet row group: the unit a reader fetches, ~13 MB at ~100 kB per image.
    storage_options : screening.fs.StorageOptions or dict, optional
        S3 endpoint and credentials mode for ``s3://`` locations (``endpoint_url=`` / ``anonymous=`` may be
        given instead; see :mod:`screening.fs`).
    overwrite : bool, default=False
        Replace an earlier ingest in ``out``. Without it, an ``out`` holding shards or a manifest
        is refused, so two datasets never mix.
    workers : int, default=8
        Threads reading files (I/O bound; decoding is not done here).
    progress : bool, optional
        tqdm bar on stderr; ``None`` shows it when stderr is a terminal.

    Returns
    -------
    IngestResult

    Raises
    ------
    InvalidParameterError
        Bad ``src`` / ``out`` / sizes, ``src`` holds no image (an empty folder, archive or list), or
        ``out`` already holds an ingest and ``overwrite`` is False.
    """
    src, out = os.fspath(src), os.fspath(out)
    shard_rows = check_positive_int("shard_rows", shard_rows, allow_none=False)
    row_group_rows = check_positive_int("row_group_rows", row_group_rows, allow_none=False)
    workers = check_positive_int("workers", workers, allow_none=False)
    storage = StorageOptions.of(storage_options, endpoint_url=endpoint_url, anonymous=anonymous)
    sources = open_images(src, storage)
    items = _nonempty_items(sources)
    writer, old = _claim_out(out, storage, overwrite)
    result = IngestResult(out=out, manifest=writer.location(MANIFEST_NAME))
    shards = _ShardWriter(writer, result, shard_rows, row_group_rows)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    _ingest_items(items, sources.total, shards, result, workers, show)
    result.skipped = sources.skipped
    _finish(writer, result, shards.meta, old, src)
    return result


def _nonempty_items(sources: ImageStream) -> Iterator[ImageRef]:
    """The items of ``sources``; nothing to read is a mistake in SRC, refused before OUT is touched."""
    items = sources.items()
    first = next(items, None)  # lists and folders know their size once the first item is out
    if first is None:
        looked = {"folder": f"files ending in {', '.join(IMAGE_EXTENSIONS)} (any case, subfolders too, hidden "
                            "files skipped)",
                  "tar": f"members ending in {', '.join(IMAGE_EXTENSIONS)}",
                  "list": "entries (one path or URI per line / in the path column)"}.get(sources.kind, "images")
        other = f"; {sources.skipped} other file(s) were passed over" if sources.skipped else ""
        raise InvalidParameterError(f"SRC {sources.src!r} holds no images: looked for {looked}{other}")
    return _chain(first, items)


def _claim_out(out: str, storage: StorageOptions, overwrite: bool) -> tuple[_Writer, list[str]]:
    """The writer for OUT and the files of an earlier ingest there (refused unless ``overwrite``)."""
    writer = _Writer(out, storage)
    old = writer.existing()
    if old and not overwrite:
        raise InvalidParameterError(
            f"OUT {out!r} already holds an ingest ({', '.join(old[:3])}{' ...' if len(old) > 3 else ''}); "
            "pass overwrite=True (--overwrite) to replace it, or choose an empty OUT")
    if MANIFEST_NAME in old:
        writer.remove(MANIFEST_NAME)  # first: a crash from here on leaves no valid manifest
    return writer, old


class _ShardWriter:
    """Buffers rows and writes ``shard-NNNNN.parquet`` every ``shard_rows`` rows (and at the end)."""

    def __init__(self, writer: _Writer, result: IngestResult, shard_rows: int, row_group_rows: int):
        self.writer, self.result = writer, result
        self.shard_rows, self.row_group_rows = shard_rows, row_group_rows
        self.schema = _schema()
        self.columns: dict[str, list] = {name: [] for name, _ in SHARD_SCHEMA_FIELDS}
        self.meta: list[dict] = []

    def add(self, image_id: str, data: bytes, source: str, size: tuple[int, int]) -> None:
        for name, v in zip(("image_id", "image", "source", "width", "height"), (image_id, data, source, *size)):
            self.columns[name].append(v)
        if len(self.columns["image_id"]) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        n = len(self.columns["image_id"])
        if n == 0:
            return
        table = pa.table({k: pa.array(v, type=self.schema.field(k).type) for k, v in self.columns.items()},
                         schema=self.schema)
        name = f"shard-{len(self.meta):05d}.parquet"
        data = _parquet_bytes(table, self.row_group_rows, binary_column="image")
        self.result.shards.append(self.writer.write(name, data))
        self.meta.append({"path": name, "rows": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        self.result.rows += n
        for v in self.columns.values():
            v.clear()


def _ingest_items(items, total, shards: _ShardWriter, result: IngestResult, workers: int, show: bool) -> None:
    """Read and check every item on I/O threads (in order); keep the first of identical bytes."""
    from tqdm import tqdm

    seen: dict[str, tuple[str, str]] = {}  # image_id -> (full sha256, first source)
    with tqdm(total=total, unit="img", desc="ingest", file=sys.stderr, disable=not show) as bar:
        for source, data, digest, size, error in _ordered_prefetch(_load, items, workers):
            bar.update(1)
            if error is not None:
                result.errors.append((source, error))
                continue
            image_id = digest[:_ID_HEX]
            if image_id in seen:
                full, first_source = seen[image_id]
                if full == digest:
                    result.duplicates.append((source, image_id, first_source))
                else:
                    result.errors.append((source, f"image_id {image_id} collides with {first_source} "
                                                  "(different bytes, same 64-bit id prefix)"))
                continue
            seen[image_id] = (digest, source)
            shards.add(image_id, data, source, size)
        shards.flush()


def _finish(writer: _Writer, result: IngestResult, shard_meta: list[dict], old: list[str], src: str) -> None:
    """Side files, stale shards of an earlier ingest removed, and the manifest, written last."""
    from screening import __version__

    writer.write(ERRORS_NAME, _csv_bytes(("source", "error"), result.errors))
    writer.write(DUPLICATES_NAME, _csv_bytes(("source", "image_id", "duplicate_of"), result.duplicates))
    for name in old:  # shards of an earlier, larger ingest
        if name != MANIFEST_NAME and name not in {m["path"] for m in shard_meta}:
            writer.remove(name)
    manifest = {
        "format": "screening-image-shards",
        "engine_version": __version__,
        "source": src,
        "image_id": f"sha256[:{_ID_HEX}] of the encoded bytes",
        "schema": {name: typ for name, typ in SHARD_SCHEMA_FIELDS},
        "shards": shard_meta,
        "counts": {"images": result.rows, "errors": len(result.errors),
                   "duplicates": len(result.duplicates), "skipped": result.skipped},
        "errors": ERRORS_NAME,
        "duplicates": DUPLICATES_NAME,
    }
    writer.write(MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def _csv_bytes(header: tuple[str, ...], rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _chain(first, rest):
    yield first
    yield from rest


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``screening ingest`` arguments to ``parser``."""
    parser.add_argument("src", metavar="SRC",
                        help="folder, .tar/.tar.gz archive, .csv/.txt list of paths or s3:// URIs, "
                             "or one image; local or s3://")
    parser.add_argument("out", metavar="OUT", help="output folder, local or s3://bucket/prefix")
    parser.add_argument("--shard-rows", type=int, default=1000,
                        help="rows per shard (default 1000; 8192 or more for GPU screening runs)")
    parser.add_argument("--row-group-rows", type=int, default=128,
                        help="rows per Parquet row group (default 128)")
    add_storage_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier ingest in OUT")
    parser.add_argument("--workers", type=int, default=8, help="reader threads (default 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``screening ingest``; 0 on success, 1 when nothing could be ingested, 2 on bad arguments."""
    result = ingest(args.src, args.out, shard_rows=args.shard_rows, row_group_rows=args.row_group_rows,
                    storage_options=StorageOptions.from_args(args), overwrite=args.overwrite,
                    workers=args.workers, progress=False if args.quiet else None)
    print(result.summary(), file=sys.stderr)
    return 0 if result.rows or not result.errors else 1
