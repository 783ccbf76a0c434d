"""What every input kind shares: the planned ``Unit``, the rows its read emits, and the ``Source`` shape.

A source is shaped like Ray Data's ``Datasource``: on the driver it turns what ``find`` listed into units (paths,
sizes, versions, row counts; never image bytes), and on a worker it reads one unit into ``READ_COLUMNS`` tables.
Whatever cannot be read becomes error rows that name the input, never a crash and never a silent gap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping

import pyarrow as pa

#: The columns of every read task's output, whatever the input kind.
READ_COLUMNS = ("unit", "row", "image_id", "source", "data", "read_error")
#: The one more column a read emits when the run reads labels from the input (``--vertex-stats column:NAME``): each
#: row's value of that column, as text (null: unlabelled); it travels with the row to the encoders.
LABEL = "label"

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


@dataclass(frozen=True)
class Unit:
    """One unit of work (a commit / restart point), with the identity its results are recorded against."""

    path: str      # scheme-less path inside its filesystem
    uri: str       # as the user would write it (s3://bucket/key or a local path)
    unit: str      # output stem, deterministic per input
    rows: int
    size: int = -1
    version: str = ""   # S3: the ETag; local: mtime in ns (file_version); lists of files: a digest over them
    kind: str = "parquet"   # the Source that reads it
    detail: tuple[tuple[str, Any], ...] = ()   # what that source's read needs besides the identity

    def __getattr__(self, name):   # a kind's details read as attributes (unit.files, unit.broken)
        for key, value in self.__dict__.get("detail", ()):
            if key == name:
                return value
        raise AttributeError(f"{type(self).__name__} of kind {self.__dict__.get('kind')!r} has no {name!r}")

    def identity(self) -> dict:
        return {"uri": self.uri, "size": self.size, "version": self.version, "rows": self.rows}

    def read_item(self) -> dict:
        """What the read task gets (one ``from_items`` row)."""
        return {"uri": self.uri, "unit": self.unit, "rows": self.rows, "size": self.size, "version": self.version,
                "kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.detail}}


@dataclass(frozen=True)
class ColumnSpec:
    """How a unit's rows name their image bytes, id and source (Parquet's columns; direct inputs: DIRECT_SPEC)."""

    image_column: str
    image_is_struct: bool
    id_column: str | None      # None: derive the id from the bytes
    source_column: str | None
    label_column: str | None = None   # read beside the image, carried as LABEL (--vertex-stats column:NAME)

    @property
    def read_columns(self) -> list[str]:
        cols = [self.image_column]
        for c in (self.id_column, self.source_column, self.label_column):
            if c and c not in cols:
                cols.append(c)
        return cols


#: Folders, tars and lists have no id column: the id is derived from the bytes, as for Parquet without one.
DIRECT_SPEC = ColumnSpec("image", False, None, None)


@dataclass(frozen=True)
class Found:
    """What ``images=`` holds: one kind, its files (scheme-less paths of ``fs``) and, for listings, their infos;
    ``skipped``: what a folder or glob held besides them, as (extension or kind, count) pairs."""

    kind: str
    fs: object
    root: str                 # the location as given (display form)
    paths: tuple[str, ...]
    infos: tuple[dict, ...] = ()
    skipped: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class PlanContext:
    """What a source's ``plan`` may use: the output's commit markers (recorded row counts), the user's column
    options, S3 access, and ``remote_map(fn, args)``: run ``fn`` once per argument on the cluster (the planner
    supplies it; sources stay free of Ray)."""

    markers: Mapping[str, dict]
    image_column: str = "image"
    id_column: str = "image_id"
    storage: object = None
    remote_map: Callable[[Callable, list], list] | None = None
    source_options: Mapping = dataclasses.field(default_factory=dict)   # the kinds' own options, by name
    label_column: str | None = None   # a column each row's label is read from (only Parquet shards have columns)


@dataclass(frozen=True)
class SourceOption:
    """An option that one input kind owns (a :class:`Source`'s ``options``). ``RunConfig`` takes it as an option of
    its own: ``name=`` in ``screen`` / ``RunConfig.of``, ``flag`` on ``screening run`` (with ``help``), ``doc`` in
    the documented parameters (first line the type, then the description), its value under ``name`` in the
    manifest's ``config``. ``check(name, value)`` returns the normalised value or raises naming it."""

    name: str
    default: Any
    flag: str
    help: str
    doc: str
    check: Callable[[str, Any], Any] | None = None


def non_empty_string(name: str, value):
    """A :class:`SourceOption` check: a non-empty string."""
    from screening.exceptions import InvalidParameterError

    if not isinstance(value, str) or not value:
        raise InvalidParameterError(f"{name} must be a non-empty string; got {value!r}")
    return value


@dataclass(frozen=True)
class ImageRef:
    """One image on the driver's side (``screening ingest``, ``screening encode``): where it is, how to read it."""

    source: str
    read: Callable[[], bytes]


class Source:
    """One input kind. Subclasses set the class attributes and implement ``plan`` and ``read``."""

    kind: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()   # names it claims (lower-case endings)
    describe: ClassVar[str] = ""               # for the "accepted:" part of messages
    in_folders: ClassVar[bool] = True          # taken from folders and globs (a list file is not)
    precedence: ClassVar[int] = 5              # a folder holding several kinds is read as the lowest one's
    options: ClassVar[tuple[SourceOption, ...]] = ()   # the kind's own run options

    def claims(self, name: str) -> bool:
        return name.lower().endswith(self.suffixes)

    def option(self, options: Mapping | None, name: str):
        """This kind's option ``name`` from a run's options (``PlanContext.source_options``, or a manifest's
        ``config``), its default where they do not give it."""
        for o in self.options:
            if o.name == name:
                value = (options or {}).get(name)
                return o.default if value is None else value
        raise KeyError(f"{self.kind} has no option {name!r}")

    def made(self, source: str) -> bool:
        """Whether a recorded source (a row's ``source``) names a row of this kind that :meth:`picture` reads back
        itself; a source no kind claims is read as a file, object or ``tar://`` URL (:func:`read_recorded`)."""
        return False

    def picture(self, source: str, options: Mapping | None = None, storage=None) -> bytes | None:
        """Encoded bytes of the image a recorded source of this kind names (``options``: the run's options, as for
        :meth:`option`); None where it cannot be read back."""
        return read_recorded(source, storage)

    def plan(self, found: Found, ctx: PlanContext) -> tuple[tuple[Unit, ...], ColumnSpec]:
        raise NotImplementedError

    def read(self, item: dict, *, spec: ColumnSpec, storage=None, chunk_rows: int = 256) -> Iterator[pa.Table]:
        """``READ_COLUMNS`` tables of one planned unit (``item``: its ``Unit.read_item``), on a worker."""
        return chunked(item["unit"], chunk_rows, self.rows(item, storage))

    def rows(self, item: dict, storage) -> Iterator[tuple]:
        """``(row, source, bytes or None, error[, image_id])`` of one unit, in row order; a kind that builds its own
        tables (Parquet) overrides ``read`` instead."""
        raise NotImplementedError

    def images(self, found: Found, *, storage=None, on_other: Callable[[str], None] | None = None
               ) -> Iterator[ImageRef]:
        """The images in order, read one by one on the driver (ingest, encode); kinds that are already shards of
        images say so instead."""
        from screening.exceptions import InvalidParameterError

        raise InvalidParameterError(f"{found.root!r} holds {self.kind} input, which screening run reads as it is; "
                                    f"this command takes image files, folders, tar archives or lists")

    def count(self, found: Found) -> int | None:
        """How many images ``images`` will yield, where known without reading them."""
        return None


def read_recorded(source: str, storage=None) -> bytes | None:
    """The bytes a recorded source names as a file, an ``s3://`` object or a ``tar://member::archive`` URL; None for
    a row of a shard (``shard#row=3``: read those by id)."""
    import fsspec

    from screening.fs import StorageOptions

    if "#" in source and source.rpartition("#")[2]:
        return None
    options = StorageOptions.of(storage)
    kw = (options.to_fsspec() if source.startswith("s3://")
          else {"s3": options.to_fsspec()} if "::s3://" in source else {})  # chained: per layer
    with fsspec.open(source, "rb", **kw) as f:
        return f.read()


# ----------------------------------------------------------------------------------------------
# identity helpers every source uses
# ----------------------------------------------------------------------------------------------

def stem(path: str, suffixes: tuple[str, ...] = ()) -> str:
    """A file's name without its input suffix, safe as an output stem."""
    name = posixpath.basename(path.rstrip("/"))
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _UNSAFE.sub("_", name) or "shard"


def unit_names(paths: list[str], suffixes: tuple[str, ...] = ()) -> list[str]:
    """Output stems: the file stem, plus 8 hex of sha1(path) where two inputs share a stem."""
    stems = [stem(p, suffixes) for p in paths]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    return [s if seen[s] == 1 else f"{s}-{hashlib.sha1(p.encode()).hexdigest()[:8]}" for s, p in zip(stems, paths)]


def file_version(info: dict) -> str:
    """What changes when a file is rewritten, read from a listing/HEAD at no extra cost.

    S3: the ETag (content MD5 for single-part uploads, a hash of part hashes for multipart; any rewrite changes it).
    Local: the modification time in nanoseconds. Together with the size and the row count this is the input's
    fingerprint recorded in each commit marker.
    """
    for key in ("ETag", "etag"):
        if info.get(key):
            return "etag:" + str(info[key]).strip('"')
    mtime = info.get("mtime", info.get("LastModified"))
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"mtime_ns:{int(round(float(mtime or 0) * 1e9))}"


def stat_files(fs, paths: list[str], threads: int = 16) -> list[tuple[int, str]]:
    """``(size, version)`` of each path, fetched in parallel (one HEAD per object on S3)."""

    def one(p):
        info = fs.info(p)
        return int(info.get("size", -1)), file_version(info)

    with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        return list(pool.map(one, paths))


def changed_since_plan(item: dict, fs, path: str, what: str = "the input") -> str | None:
    """Why the planned input (size, version) is no longer the file there, or None."""
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
    except FileNotFoundError:
        return f"{what} was deleted after the run was planned"
    size, version = int(info.get("size", -1)), file_version(info)
    if (size, version) != (item["size"], item["version"]):
        return (f"{what} changed after the run was planned (size {item['size']} -> {size}, version "
                f"{item['version']} -> {version}); rerun to screen it")
    return None


def derived_id(data: bytes) -> str:
    """The id of a row without an id column: the first 16 hex digits of sha256(bytes)."""
    return hashlib.sha256(data).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# building READ_COLUMNS tables
# ----------------------------------------------------------------------------------------------

def rows_table(unit: str, rows, ids, sources, datas, errors) -> pa.Table:
    n = len(rows)
    return pa.table({"unit": pa.array([unit] * n, pa.string()), "row": pa.array(rows, pa.int64()),
                     "image_id": pa.array(ids, pa.string()), "source": pa.array(sources, pa.string()),
                     "data": pa.array(datas, pa.binary()), "read_error": pa.array(errors, pa.string())})


def unreadable(item: dict, rows, reason: str) -> pa.Table:
    """Error rows for input rows that cannot be read: no id (null), the input and row as the source."""
    rows = list(rows)
    return rows_table(item["unit"], rows, [None] * len(rows), [f"{item['uri']}#row={r}" for r in rows],
                      [None] * len(rows), [reason] * len(rows))


def chunked(unit: str, chunk_rows: int, rows) -> Iterator[pa.Table]:
    """``READ_COLUMNS`` tables of ``chunk_rows`` from ``(row, source, bytes or None, error)`` tuples of one unit;
    the id of a row is derived from its bytes, unless the tuple gives it as a fifth item."""
    batch: list = []
    for r in rows:
        batch.append(r)
        if len(batch) >= chunk_rows:
            yield _table(unit, batch)
            batch = []
    if batch:
        yield _table(unit, batch)


def _table(unit: str, batch: list) -> pa.Table:
    rows, sources, datas, errors = (list(c) for c in zip(*(r[:4] for r in batch)))
    ids = [r[4] if len(r) > 4 else (derived_id(r[2]) if r[2] is not None else None) for r in batch]
    return rows_table(unit, rows, ids, sources, datas, errors)
