"""Image shards: find them, check their columns on the driver, and turn Arrow rows into (id, source, bytes).

Two layouts are read (``docs/pipeline.md``):

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
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from screening.exceptions import InvalidParameterError

PATH_COLUMN = "path"  # what ray.data.read_parquet(include_paths=True) adds
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


@dataclass(frozen=True)
class Shard:
    """One input Parquet file = one unit of work."""

    path: str      # scheme-less path inside the filesystem (what Ray's ``path`` column holds)
    uri: str       # as the user would write it (s3://bucket/key or a local path)
    unit: str      # output file stem, deterministic per input path
    rows: int


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
    stems = [_UNSAFE.sub("_", posixpath.basename(p).removesuffix(".parquet")) or "shard" for p in paths]
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


def extract_rows(table: pa.Table, spec: ColumnSpec, shard_path_column: str = PATH_COLUMN):
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
    shard_paths = (table.column(shard_path_column).to_pylist() if shard_path_column in table.column_names
                   else [""] * len(datas))
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


def read_shards(batch, *, spec: ColumnSpec, endpoint_url=None, anonymous=None, chunk_rows: int = 256):
    """``map_batches`` generator: rows ``{uri}`` -> Arrow tables of ``chunk_rows`` image rows plus the shard path.

    One Ray task per shard (``from_items(..., override_num_blocks=len(shards))``) keeps a shard's rows together, so
    shards finish (and commit) one after another instead of all at the end; chunks keep blocks bounded in size.
    """
    from screening.io._fs import filesystem_for

    for uri in batch["uri"].to_pylist():
        fs, path = filesystem_for(uri, endpoint_url=endpoint_url, anonymous=anonymous)
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for rb in pf.iter_batches(batch_size=chunk_rows, columns=spec.read_columns):
                t = pa.Table.from_batches([rb])
                yield t.append_column(PATH_COLUMN, pa.array([path] * t.num_rows, pa.string()))
