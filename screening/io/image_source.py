"""Image inputs: check Parquet shards on the driver, and read every kind of unit into rows (id, source, bytes).

Units (planned by ``screening.pipeline.plan``, listed by ``screening.io.inputs``): a Parquet shard, a tar archive
(``read_tar``: image members in archive order) or a list of image files (``read_files``). All three read tasks emit
the same ``READ_COLUMNS`` rows with their identity (unit, row); what cannot be read becomes an error row.

Two Parquet layouts are read (``docs/pipeline.md``):

- the engine's own shards (``screening ingest``): ``image_id`` string, ``image`` binary, ``source`` string, ...;
- Hugging Face ``datasets`` Parquet: ``image`` is a struct ``{bytes: binary, path: string}``.

The image column and the id column are configurable. When the id column does not exist, the id is derived from the
bytes: ``sha256(image bytes)`` as 16 hex digits (the same image always gets the same id, wherever and whenever it is
read). The ``source`` reported in errors is the ``source`` column if there is one, else the struct's ``path``, else
the shard path.
"""

from __future__ import annotations

import hashlib
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from screening.exceptions import InvalidParameterError
from screening.io.inputs import file_version, iter_tar_images, link_problem, stem


@dataclass(frozen=True)
class Shard:
    """One input Parquet file = one unit of work, with the identity its results are recorded against."""

    path: str      # scheme-less path inside the filesystem
    uri: str       # as the user would write it (s3://bucket/key or a local path)
    unit: str      # output stem, deterministic per input path
    rows: int
    size: int = -1
    version: str = ""   # S3: the ETag; local: mtime in ns (see file_version); files: a digest (inputs.FileUnit)
    kind: str = "parquet"           # "parquet" | "tar" (its image members) | "files" (image files, ``files``)
    files: tuple[str, ...] = ()     # kind "files": the image files' locations, in row order
    sizes: tuple[int, ...] = ()     # kind "files": their listed sizes (-1: could not be stat'ed)
    broken: str = ""                # kind "tar": why the archive could not be read to its end (its last row)

    def identity(self) -> dict:
        return {"uri": self.uri, "size": self.size, "version": self.version, "rows": self.rows}

    def read_item(self) -> dict:
        """What the read task gets (``from_items``): Parquet items keep their original fields only."""
        item = {"uri": self.uri, "unit": self.unit, "rows": self.rows, "size": self.size, "version": self.version}
        if self.kind != "parquet":
            item.update(kind=self.kind, files=list(self.files), sizes=list(self.sizes), broken=self.broken)
        return item


def stat_shards(fs, paths: list[str], threads: int = 16) -> list[tuple[int, str]]:
    """``(size, version)`` of each path, fetched in parallel (one HEAD per object on S3)."""

    def one(p):
        info = fs.info(p)
        return int(info.get("size", -1)), file_version(info)

    with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(one, paths))


@dataclass(frozen=True)
class ColumnSpec:
    """How to read an image shard's rows."""

    image_column: str
    image_is_struct: bool
    id_column: str | None      # None: derive the id from the bytes
    source_column: str | None

    @property
    def read_columns(self) -> list[str]:
        cols = [self.image_column]
        for c in (self.id_column, self.source_column):
            if c and c not in cols:
                cols.append(c)
        return cols


def list_shards(fs, path: str) -> list[str]:
    """Parquet files under ``path`` (a file, a directory searched recursively, or a glob), sorted."""
    if any(ch in path for ch in "*?["):
        files = fs.glob(path)
    elif fs.isdir(path):
        files = [p for p in fs.find(path) if p.endswith(".parquet")]
    elif fs.exists(path):
        files = [path]
    else:
        raise InvalidParameterError(f"images={path!r} does not exist")
    files = sorted(f for f in files if not posixpath.basename(f).startswith(("_", ".")))
    return files


def unit_names(paths: list[str]) -> list[str]:
    """Output stems: the file stem, plus 8 hex of sha1(path) where two inputs share a stem."""

    stems = [stem(p) for p in paths]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    return [s if seen[s] == 1 else f"{s}-{hashlib.sha1(p.encode()).hexdigest()[:8]}" for s, p in zip(stems, paths)]


def read_footers(fs, paths: list[str], threads: int = 16) -> list[pq.FileMetaData]:
    """Parquet footers, fetched in parallel (row counts are known before any Ray work)."""

    def one(p):
        try:
            with fs.open(p, "rb") as f:
                return pq.ParquetFile(f).metadata
        except Exception as exc:  # noqa: BLE001 - report which file, keep the cause
            raise InvalidParameterError(f"input shard {p!r} is not a readable Parquet file: {exc}") from exc

    with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(one, paths))


def column_spec(schema: pa.Schema, image_column: str, id_column: str) -> ColumnSpec:
    """Check the shard schema against the requested columns; raise naming what is there."""
    names = schema.names
    if image_column not in names:
        raise InvalidParameterError(
            f"image_column={image_column!r} is not a column of the input shards; columns: {', '.join(names)}")
    t = schema.field(image_column).type
    if pa.types.is_struct(t):
        fields = [t.field(i).name for i in range(t.num_fields)]
        if "bytes" not in fields:
            raise InvalidParameterError(f"image_column={image_column!r} is a struct without a 'bytes' field "
                                        f"(fields: {', '.join(fields)}); expected the Hugging Face {{bytes, path}} layout")
        is_struct = True
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        is_struct = False
    else:
        raise InvalidParameterError(f"image_column={image_column!r} has type {t}; expected binary or a "
                                    f"struct {{bytes, path}}")
    id_col = id_column if id_column in names else None
    if id_col is not None and not (pa.types.is_string(schema.field(id_col).type)
                                   or pa.types.is_large_string(schema.field(id_col).type)
                                   or pa.types.is_integer(schema.field(id_col).type)):
        raise InvalidParameterError(f"id_column={id_column!r} has type {schema.field(id_col).type}; expected string or int")
    source_col = "source" if "source" in names and "source" != image_column else None
    return ColumnSpec(image_column, is_struct, id_col, source_col)


def derived_id(data: bytes) -> str:
    """The id of a row without an id column: the first 16 hex digits of sha256(bytes)."""
    return hashlib.sha256(data).hexdigest()[:16]


def extract_rows(table: pa.Table, spec: ColumnSpec, default_source: str = ""):
    """``(ids, sources, datas)`` as Python lists; ``datas[i]`` is ``None`` where the bytes are null."""
    col = table.column(spec.image_column)
    if spec.image_is_struct:
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        datas = col.field("bytes").to_pylist()
        names = col.type.get_field_index("path")
        struct_paths = col.field("path").to_pylist() if names >= 0 else [None] * len(datas)
    else:
        datas = col.to_pylist()
        struct_paths = [None] * len(datas)
    shard_paths = [default_source] * len(datas)
    if spec.source_column:
        sources = [s if s is not None else (sp or p) for s, sp, p in
                   zip(table.column(spec.source_column).to_pylist(), struct_paths, shard_paths)]
    else:
        sources = [sp or p for sp, p in zip(struct_paths, shard_paths)]
    if spec.id_column:
        ids = [None if v is None else str(v) for v in table.column(spec.id_column).to_pylist()]
    else:
        ids = [None] * len(datas)
    for i, (v, d) in enumerate(zip(ids, datas)):
        if v is None:
            ids[i] = derived_id(d) if d is not None else "sha256-null:" + derived_id(str(sources[i]).encode())
    return ids, [str(s) for s in sources], datas


READ_COLUMNS = ("unit", "row", "image_id", "source", "data", "read_error")


def _rows_table(unit, rows, ids, sources, datas, read_error=None) -> pa.Table:
    n = len(rows)
    return pa.table({"unit": pa.array([unit] * n, pa.string()), "row": pa.array(rows, pa.int64()),
                     "image_id": pa.array(ids, pa.string()), "source": pa.array(sources, pa.string()),
                     "data": pa.array(datas, pa.binary()),
                     "read_error": pa.array([read_error or ""] * n, pa.string())})


def _unreadable(item: dict, rows, reason: str) -> pa.Table:
    """Error rows for input rows that cannot be read: no id (null), the shard and row as the source."""
    rows = list(rows)
    return _rows_table(item["unit"], rows, [None] * len(rows), [f"{item['uri']}#row={r}" for r in rows],
                       [None] * len(rows), reason)


def read_shard(item: dict, *, spec: ColumnSpec, storage=None, chunk_rows: int = 256):
    """Rows of one planned shard as ``READ_COLUMNS`` tables; what cannot be read becomes error rows, never a crash.

    The shard is read only if it is still the file that was planned (same size and version); else, or if it is gone
    or its footer no longer parses, every row is an error row (stage ``read``) naming the reason. A row group that
    fails to decode makes error rows of its unread rows, and reading goes on with the next row group.
    """
    from screening.fs import filesystem_for

    fs, path = filesystem_for(item["uri"], storage)
    n = int(item["rows"])
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
    except FileNotFoundError:
        yield _unreadable(item, range(n), "the shard was deleted after the run was planned")
        return
    size, version = int(info.get("size", -1)), file_version(info)
    if (size, version) != (item["size"], item["version"]):
        yield _unreadable(item, range(n), f"the shard changed after the run was planned (size {item['size']} -> "
                                          f"{size}, version {item['version']} -> {version}); rerun to screen it")
        return
    try:
        f = fs.open(path, "rb")
        pf = pq.ParquetFile(f)
        if pf.metadata.num_rows != n:
            raise ValueError(f"it now has {pf.metadata.num_rows} rows, {n} were planned")
    except Exception as exc:  # noqa: BLE001 - the shard's own problem: its rows become error rows
        yield _unreadable(item, range(n), f"the shard is not readable Parquet: {type(exc).__name__}: {exc}")
        return
    with f:
        start = 0
        for g in range(pf.num_row_groups):
            g_rows = pf.metadata.row_group(g).num_rows
            done = start
            try:
                for rb in pf.iter_batches(batch_size=chunk_rows, row_groups=[g], columns=spec.read_columns):
                    t = pa.Table.from_batches([rb])
                    ids, sources, datas = extract_rows(t, spec, default_source=item["uri"])
                    yield _rows_table(item["unit"], list(range(done, done + t.num_rows)), ids, sources, datas)
                    done += t.num_rows
                if done != start + g_rows:
                    raise ValueError(f"row group {g} gave {done - start} of its {g_rows} rows")
            except Exception as exc:  # noqa: BLE001
                yield _unreadable(item, range(done, start + g_rows),
                                  f"row group {g} is unreadable: {type(exc).__name__}: {exc}")
            start += g_rows


def _changed_since_plan(item: dict, fs, path: str) -> str | None:
    """Why the planned input (size, version) is no longer the file there, or None."""
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
    except FileNotFoundError:
        return "the input was deleted after the run was planned"
    size, version = int(info.get("size", -1)), file_version(info)
    if (size, version) != (item["size"], item["version"]):
        return (f"the input changed after the run was planned (size {item['size']} -> {size}, version "
                f"{item['version']} -> {version}); rerun to screen it")
    return None


class _Chunks:
    """Collects rows of one unit and hands them out as ``READ_COLUMNS`` tables of ``chunk_rows``."""

    def __init__(self, unit: str, chunk_rows: int):
        self.unit, self.chunk_rows = unit, chunk_rows
        self.rows, self.ids, self.sources, self.datas, self.errors = [], [], [], [], []

    def add(self, row: int, source: str, data: bytes | None, error: str = ""):
        self.rows.append(row)
        self.ids.append(derived_id(data) if data is not None else None)
        self.sources.append(source)
        self.datas.append(data)
        self.errors.append(error)
        return self.take() if len(self.rows) >= self.chunk_rows else None

    def take(self) -> pa.Table | None:
        if not self.rows:
            return None
        n = len(self.rows)
        t = pa.table({"unit": pa.array([self.unit] * n, pa.string()), "row": pa.array(self.rows, pa.int64()),
                      "image_id": pa.array(self.ids, pa.string()), "source": pa.array(self.sources, pa.string()),
                      "data": pa.array(self.datas, pa.binary()), "read_error": pa.array(self.errors, pa.string())})
        self.rows, self.ids, self.sources, self.datas, self.errors = [], [], [], [], []
        return t


def read_tar(item: dict, *, storage=None, chunk_rows: int = 256):
    """Rows of one planned tar (its image members in archive order, ``inputs.iter_tar_images``).

    The archive is streamed once; members past a point where it breaks, and rows it no longer has, become error
    rows (stage ``read``) naming the archive, like an unreadable row group of a Parquet shard.
    """
    from screening.fs import filesystem_for

    fs, path = filesystem_for(item["uri"], storage)
    n, chunks, row = int(item["rows"]), _Chunks(item["unit"], chunk_rows), 0
    reason = _changed_since_plan(item, fs, path)
    if reason is None:
        try:
            with fs.open(path, "rb") as f:
                for name, data in iter_tar_images(f):
                    if row >= n:
                        break
                    if (t := chunks.add(row, f"tar://{name}::{item['uri']}", data)) is not None:
                        yield t
                    row += 1
        except Exception as exc:  # noqa: BLE001 - the archive's own problem: its remaining rows become error rows
            reason = f"the archive is unreadable after {row} image(s): {type(exc).__name__}: {exc}"
    reason = reason or item.get("broken") or f"the archive ended after {row} of its {n} planned image(s)"
    for r in range(row, n):
        if (t := chunks.add(r, f"{item['uri']}#image={r}", None, reason)) is not None:
            yield t
    if (t := chunks.take()) is not None:
        yield t


def read_files(item: dict, *, storage=None, chunk_rows: int = 256):
    """Rows of one planned unit of image files; a file that cannot be read, or whose size changed since the
    listing, is an error row naming it."""
    from screening.fs import filesystem_for

    chunks = _Chunks(item["unit"], chunk_rows)
    for row, (uri, size) in enumerate(zip(item["files"], item["sizes"])):
        data, error = None, ""
        try:
            fs, path = filesystem_for(uri, storage)
            data = fs.cat_file(path)
            if size >= 0 and len(data) != size:
                data, error = None, f"the file changed after the run was planned (size {size} -> {len(data)})"
        except Exception as exc:  # noqa: BLE001 - one file's problem is that file's error row
            error = f"read failed: {type(exc).__name__}: {exc}" + (link_problem(uri) if "://" not in uri else "")
        if (t := chunks.add(row, uri, data, error)) is not None:
            yield t
    if (t := chunks.take()) is not None:
        yield t


def count_tar_images(uri: str, storage=None) -> tuple[int, str]:
    """``(image members, why the archive broke or "")``: a tar unit's row count, counted by a task on a worker."""
    from screening.fs import filesystem_for

    fs, path = filesystem_for(uri, storage)
    n = 0
    try:
        with fs.open(path, "rb") as f:
            for _ in iter_tar_images(f):
                n += 1
    except Exception as exc:  # noqa: BLE001 - recorded; the unit gets one error row for it
        return n, f"the archive is unreadable after {n} image(s): {type(exc).__name__}: {exc}"
    return n, ""


_READERS = {"tar": read_tar, "files": read_files}


def read_shards(batch, *, spec: ColumnSpec, storage=None, chunk_rows: int = 256):
    """``map_batches`` generator over planned shard items (``Shard`` fields): see :func:`read_shard`.

    One Ray task per shard (``from_items(..., override_num_blocks=len(shards))``) keeps a shard's rows together, so
    shards finish (and commit) one after another instead of all at the end; chunks keep blocks bounded in size.
    """
    for item in batch.to_pylist():
        reader = _READERS.get(item.get("kind") or "parquet")
        if reader is None:
            yield from read_shard(item, spec=spec, storage=storage,
                                  chunk_rows=chunk_rows)
        else:
            yield from reader(item, storage=storage, chunk_rows=chunk_rows)
