"""Parquet image shards: one unit per file.

Two layouts are read (``docs/pipeline.md``):

- the engine's own shards (``screening ingest``): ``image_id`` string, ``image`` binary, ``source`` string, ...;
- Hugging Face ``datasets`` Parquet: ``image`` is a struct ``{bytes: binary, path: string}``.

The image column and the id column are configurable. When the id column does not exist, the id is derived from the
bytes (``base.derived_id``). The ``source`` reported in errors is the ``source`` column if there is one, else the
struct's ``path``, else the shard path. Row counts come from the footers, read on the driver before any Ray work.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from screening.exceptions import InvalidParameterError
from screening.sources.base import (LABEL, ColumnSpec, Found, PlanContext, Source, Unit, changed_since_plan,
                                    derived_id, rows_table, stat_files, unit_names, unreadable)


class ParquetSource(Source):
    kind = "parquet"
    suffixes = (".parquet",)
    describe = "Parquet image shards (.parquet: engine or Hugging Face layout)"

    def claims(self, name: str) -> bool:
        # _manifest / _SUCCESS-style files beside shards are their metadata
        return super().claims(name) and not name.rsplit("/", 1)[-1].startswith(("_", "."))

    def plan(self, found: Found, ctx: PlanContext) -> tuple[tuple[Unit, ...], ColumnSpec]:
        """Footers (row counts) and one column layout for every shard, checked on the driver."""
        fs, paths = found.fs, list(found.paths)
        metas = read_footers(fs, paths)
        spec = column_spec(metas[0].schema.to_arrow_schema(), ctx.image_column, ctx.id_column, ctx.label_column)
        for p, m in zip(paths[1:], metas[1:]):
            other = column_spec(m.schema.to_arrow_schema(), ctx.image_column, ctx.id_column, ctx.label_column)
            if other != spec:
                raise InvalidParameterError(f"input shard {p!r} has a different layout ({other}) than {paths[0]!r} "
                                            f"({spec}); all shards of a run must share one layout")
        from screening.fs import to_uri

        stats = stat_files(fs, paths)
        return tuple(Unit(p, to_uri(fs, p), u, int(m.num_rows), size, version)
                     for p, u, m, (size, version) in zip(paths, unit_names(paths, self.suffixes), metas, stats)), spec

    def read(self, item: dict, *, spec: ColumnSpec, storage=None, chunk_rows: int = 256):
        """Rows of one planned shard; what cannot be read becomes error rows, never a crash.

        The shard is read only if it is still the file that was planned (same size and version); else, or if it is
        gone or its footer no longer parses, every row is an error row (stage ``read``) naming the reason. A row group
        that fails to decode makes error rows of its unread rows, and reading goes on with the next row group. With a
        label column (``spec.label_column``) every table also has ``LABEL``, null on error rows.
        """
        for table in self._read(item, spec=spec, storage=storage, chunk_rows=chunk_rows):
            if spec.label_column and LABEL not in table.column_names:   # error rows: one schema for every block
                table = table.append_column(LABEL, pa.nulls(table.num_rows, pa.string()))
            yield table

    def _read(self, item: dict, *, spec: ColumnSpec, storage=None, chunk_rows: int = 256):
        from screening.fs import filesystem_for

        fs, path = filesystem_for(item["uri"], storage)
        n = int(item["rows"])
        if (reason := changed_since_plan(item, fs, path, "the shard")) is not None:
            yield unreadable(item, range(n), reason)
            return
        try:
            f = fs.open(path, "rb")
            pf = pq.ParquetFile(f)
            if pf.metadata.num_rows != n:
                raise ValueError(f"it now has {pf.metadata.num_rows} rows, {n} were planned")
        except Exception as exc:  # noqa: BLE001 - the shard's own problem: its rows become error rows
            yield unreadable(item, range(n), f"the shard is not readable Parquet: {type(exc).__name__}: {exc}")
            return
        with f:
            classes = None
            if spec.label_column:
                classes = class_names(pf.schema_arrow, spec.label_column)
            start = 0
            for g in range(pf.num_row_groups):
                g_rows = pf.metadata.row_group(g).num_rows
                done = start
                try:
                    for rb in pf.iter_batches(batch_size=chunk_rows, row_groups=[g], columns=spec.read_columns):
                        t = pa.Table.from_batches([rb])
                        ids, sources, datas = extract_rows(t, spec, default_source=item["uri"])
                        rows = rows_table(item["unit"], list(range(done, done + t.num_rows)), ids, sources, datas,
                                          [""] * t.num_rows)
                        if spec.label_column:
                            rows = rows.append_column(LABEL, label_values(t.column(spec.label_column), classes))
                        yield rows
                        done += t.num_rows
                    if done != start + g_rows:
                        raise ValueError(f"row group {g} gave {done - start} of its {g_rows} rows")
                except Exception as exc:  # noqa: BLE001
                    yield unreadable(item, range(done, start + g_rows),
                                     f"row group {g} is unreadable: {type(exc).__name__}: {exc}")
                start += g_rows


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


def column_spec(schema: pa.Schema, image_column: str, id_column: str, label_column: str | None = None) -> ColumnSpec:
    """Check the shard schema against the requested columns; raise naming what is there."""
    names = schema.names
    if label_column is not None:
        if label_column not in names:
            raise InvalidParameterError(f"column:{label_column} (the labels) is not a column of the input shards; "
                                        f"their columns: {', '.join(names)}")
        t = schema.field(label_column).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
                or pa.types.is_boolean(t) or pa.types.is_dictionary(t)):
            raise InvalidParameterError(f"column:{label_column} (the labels) has type {t}; a label column holds one "
                                        f"string or integer per image (for several labels an image, use a label "
                                        f"table)")
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
    return ColumnSpec(image_column, is_struct, id_col, source_col, label_column)


def label_values(column, classes: list | None = None) -> pa.Array:
    """A label column's values as text (null stays null: unlabelled); integer class ids become their class names
    where the shard's Hugging Face metadata has them (as ``rank --labels column:NAME`` maps them)."""
    values = column.to_pylist()
    if classes is not None:
        values = [classes[v] if isinstance(v, int) and 0 <= v < len(classes) else v for v in values]
    return pa.array([None if v is None else str(v) for v in values], pa.string())


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


def class_names(schema: pa.Schema, column: str) -> list | None:
    """Hugging Face ``datasets`` class names of an integer column (``ClassLabel`` in the schema metadata)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        features = json.loads(raw.decode())["info"]["features"]
        names = features[column].get("names")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return list(names) if isinstance(names, list) else None
