"""What the screened images are: category labels per ``image_id``, from a label spec.

A spec is one of:

- ``folder``: the name of the image's parent folder (THINGS keeps one folder per concept; many labs one per
  category); for a tar member, the member's folder;
- ``name:REGEX``: the first group of ``REGEX`` searched in the file name (``name:^([a-z]+)-`` gives fLoc's
  ``adult-12.jpg`` the label ``adult``); the whole match when the pattern has no group;
- ``column:NAME``: a column of the input Parquet shards (Hugging Face ImageNet's ``label``); integer class ids are
  mapped to class names where the shard's metadata has them (``datasets``' ``ClassLabel``);
- a ``.csv`` or ``.parquet`` table with a ``label`` column and a key column, ``image_id``, ``source`` or ``file``
  (the file name); several rows per image give several labels (multi-label, like COCO categories).

The run records every screened image's source (its ``sources`` table), so each spec resolves without the images.
An image without a label is counted as unlabelled, never dropped silently.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from screening.exceptions import InvalidParameterError

LABEL_SPECS = ("folder", "name:REGEX", "column:NAME", "a .csv or .parquet table (label + image_id|source|file)")
TABLE_KEYS = ("image_id", "source", "file")


def id_strings(ids) -> np.ndarray:
    """Image ids as the strings every label join uses (object array): a responses table may hold integer ids, the
    labels and the rankings hold their text. The one normalisation for labels, enrichment and label means."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
            ids = ids.cast(pa.string())
        return np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    values = np.asarray(ids, dtype=object)
    if pd.api.types.infer_dtype(values, skipna=False) in ("string", "empty"):
        return values
    return values.astype(str).astype(object)


def isin(values, among) -> np.ndarray:
    """Boolean mask of ``values`` found in ``among`` (string ids): one Arrow hash table, probed in C++."""
    import pyarrow.compute as pc

    found = pc.is_in(pa.array(id_strings(values), pa.string()),
                     value_set=pa.array(id_strings(among), pa.string()).unique())
    return found.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class Labels:
    """``pairs``: one row per (image_id, label); ``images``: every screened image id (labelled or not). Every join
    on ids is a hash join (Arrow ``is_in``, a cached ``pandas.Index``): linear in the number of images."""

    spec: str
    pairs: pd.DataFrame
    images: np.ndarray

    @property
    def n_images(self) -> int:
        return int(self.images.size)

    @cached_property
    def n_unlabelled(self) -> int:
        return int((~isin(self.images, self.pairs.image_id.to_numpy())).sum())

    @cached_property
    def names(self) -> list[str]:
        return sorted(self.pairs.label.unique())

    @cached_property
    def _membership(self):
        """(index of labelled ids, CSR matrix labelled ids x labels)."""
        from scipy import sparse

        keys = pd.Index(id_strings(self.pairs.image_id.to_numpy()), dtype=object)
        ids = pd.Index(pd.unique(keys), dtype=object)
        rows = ids.get_indexer(keys)
        cols = pd.Index(self.names, dtype=object).get_indexer(pd.Index(self.pairs.label.to_numpy(), dtype=object))
        m = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(len(ids), len(self.names)))
        m.sum_duplicates()
        m.data[:] = 1.0   # a pair given twice is one membership
        return ids, m

    def positions(self, ids) -> np.ndarray:
        """Each id's row among the labelled images (-1: unlabelled); ``ids`` of any type. The index keeps its hash
        table between calls, so a streamed scan costs one probe per row."""
        return self._membership[0].get_indexer(pd.Index(id_strings(ids), dtype=object))

    def membership_at(self, positions: np.ndarray):
        """Sparse ``(len(positions), labels)`` 0/1 rows of labelled images (``positions`` from :meth:`positions`,
        all >= 0)."""
        return self._membership[1][positions]

    def membership(self, ids):
        """Sparse ``(len(ids), labels)`` 0/1 matrix of ``ids`` (any id type); None when none is labelled."""
        at = self.positions(ids)
        if not (at >= 0).any():
            return None
        from scipy import sparse

        hit = np.flatnonzero(at >= 0)
        pick = sparse.csr_matrix((np.ones(hit.size), (hit, at[hit])), shape=(at.size, self._membership[1].shape[0]))
        return pick @ self._membership[1]

    def summary(self) -> str:
        return (f"labels ({self.spec}): {len(self.names)} label(s) on {self.n_images - self.n_unlabelled} of "
                f"{self.n_images} image(s); {self.n_unlabelled} unlabelled")


def file_name(source: str) -> str:
    """The file name in a source: a path, an ``s3://`` URI, a ``tar://member::archive`` URL or ``shard#row=3``."""
    return file_names([source])[0]


def parent_folder(source: str) -> str:
    """The name of the folder holding the file a source names ("" when there is none)."""
    return parent_folders([source])[0]


def file_names(sources) -> np.ndarray:
    """:func:`file_name` of every source, vectorised (Arrow kernels: a million sources in about a second)."""
    return _path_parts(sources, 1)


def parent_folders(sources) -> np.ndarray:
    """:func:`parent_folder` of every source, vectorised."""
    return _path_parts(sources, 2)


def _path_parts(sources, from_end: int) -> np.ndarray:
    """The ``from_end``-th component from the end of each source's path (1: the file, 2: its folder; "" if none)."""
    import pyarrow.compute as pc

    parts = pc.split_pattern(_paths_in(sources), "/", max_splits=2, reverse=True)
    parts = parts.combine_chunks() if isinstance(parts, pa.ChunkedArray) else parts
    ends = parts.offsets.to_numpy()[1:]
    have = (ends - parts.offsets.to_numpy()[:-1]) >= from_end
    out = np.full(len(parts), "", dtype=object)
    out[have] = np.asarray(parts.values.take(pa.array(ends[have] - from_end)).to_numpy(zero_copy_only=False),
                           dtype=object)
    return out


def _paths_in(sources) -> pa.Array:
    """The file path inside each recorded source: a tar member (``tar://member::archive``), a URI without its
    scheme, without a ``#row=``/``#index`` suffix, repeated or trailing slashes. Each rewrite runs only where its
    pattern occurs (a substring test is ~100x cheaper than a regex pass)."""
    import pyarrow.compute as pc

    s = pa.array(id_strings(sources), pa.string())   # str() of each, as a Python object array
    for needle, rx, rep in (("tar://", r"^tar://(.*?)(?:::.*)?$", r"\1"), ("#", r"#.*", ""),
                            ("://", r"^.*?://", ""), ("//", r"/+", "/")):
        if pc.any(pc.match_substring(s, needle)).as_py():
            s = pc.replace_substring_regex(s, rx, rep, max_replacements=None if needle == "//" else 1)
    return pc.replace_substring_regex(s, r"/+$", "") if pc.any(pc.ends_with(s, "/")).as_py() else s


def image_labels(spec: str, sources: pd.DataFrame, *, shards=None, id_column: str = "image_id",
                 image_column: str = "image", storage=None) -> Labels:
    """Resolve ``spec`` against the screened images.

    Parameters
    ----------
    spec : str
        See the module docstring.
    sources : pandas.DataFrame
        ``image_id`` and ``source`` of every screened image (a run's ``sources`` table).
    shards : list of str, optional
        The run's input Parquet shards (``column:NAME`` reads them).
    id_column, image_column : str
        The shards' id and image columns (the run's ``config``); without an id column the ids are derived from the
        image bytes, as the run derived them.
    """
    if not isinstance(spec, str) or not spec:
        raise InvalidParameterError(f"labels={spec!r} is not a label spec; valid: {', '.join(LABEL_SPECS)}")
    sources = sources[["image_id", "source"]].drop_duplicates()
    sources = sources.assign(image_id=id_strings(sources.image_id.to_numpy()))
    images = np.asarray(pd.unique(sources.image_id), dtype=object)
    if spec == "folder":
        pairs = sources.assign(label=parent_folders(sources.source.to_numpy()))
    elif spec.startswith("name:"):
        rx = _regex(spec)
        pairs = sources.assign(label=[_match(rx, n) for n in file_names(sources.source.to_numpy())])
    elif spec.startswith("column:"):
        pairs = _column_labels(spec[len("column:"):], shards, id_column, image_column, storage)
    elif spec.lower().endswith((".csv", ".parquet")):
        pairs = _table_labels(spec, sources, storage)
    else:
        raise InvalidParameterError(f"labels={spec!r} is not a label spec; valid: {', '.join(LABEL_SPECS)}")
    pairs = pairs[["image_id", "label"]].dropna()
    pairs = pairs.assign(image_id=id_strings(pairs.image_id.to_numpy()), label=pairs.label.astype(str))
    pairs = pairs[(pairs.label != "").to_numpy() & isin(pairs.image_id.to_numpy(), images)]
    return Labels(spec, pairs.drop_duplicates().reset_index(drop=True), images)


def _regex(spec: str):
    try:
        return re.compile(spec[len("name:"):])
    except re.error as exc:
        raise InvalidParameterError(f"labels={spec!r}: the regex does not compile: {exc}") from None


def _match(rx, name: str):
    m = rx.search(name)
    if m is None:
        return None
    return m.group(1) if rx.groups else m.group(0)


def _table_labels(path: str, sources: pd.DataFrame, storage) -> pd.DataFrame:
    return join_label_table(read_label_table(path, storage), sources)


def read_label_table(path: str, storage=None) -> pd.DataFrame:
    """A label table's ``(key, label)`` rows; its key column (``image_id``, ``source`` or ``file``) keeps its name."""
    from screening.fs import filesystem_for

    fs, p = filesystem_for(path, storage)
    if not fs.exists(p):
        raise InvalidParameterError(f"labels={path!r} does not exist")
    with fs.open(p, "rb") as f:
        table = pd.read_parquet(f) if p.lower().endswith(".parquet") else pd.read_csv(f, dtype=str)
    key = next((k for k in TABLE_KEYS if k in table.columns), None)
    if "label" not in table.columns or key is None:
        raise InvalidParameterError(f"labels={path!r} needs a 'label' column and one of {', '.join(TABLE_KEYS)}; "
                                    f"its columns: {', '.join(map(str, table.columns))}")
    return table[[key, "label"]].dropna().astype(str)


def join_label_table(table: pd.DataFrame, sources: pd.DataFrame) -> pd.DataFrame:
    """``(image_id, label)`` of ``sources`` (image_id, source) through a table of :func:`read_label_table`."""
    key = table.columns[0]
    if key == "image_id":
        return table[isin(table.image_id.to_numpy(), sources.image_id.to_numpy())]
    keyed = sources.assign(key=sources.source if key == "source" else file_names(sources.source.to_numpy()))
    return keyed.merge(table.rename(columns={key: "key"}), on="key")[["image_id", "label"]]


class Labeler:
    """Labels of images as they stream past (``screening run --vertex-stats SPEC``): ``folder``, ``name:REGEX`` or a
    table, resolved per batch from each image's id and source, the table read once; ``column:NAME``, each row's value
    of that input column, which the read stage carries with the row (``sources.base.LABEL``; Parquet shards only,
    checked when the run is planned)."""

    def __init__(self, spec: str, storage=None):
        if not isinstance(spec, str) or not spec or not (spec == "folder" or spec.startswith(("name:", "column:"))
                                                         or spec.lower().endswith((".csv", ".parquet"))):
            raise InvalidParameterError(
                f"vertex_stats={spec!r} is not a streaming label spec; valid: folder, name:REGEX, column:NAME (a "
                f"column of the input Parquet shards), a .csv or .parquet table (label + image_id|source|file)")
        self.spec = spec
        self.column = spec[len("column:"):] if spec.startswith("column:") else None
        if self.column == "":
            raise InvalidParameterError(f"vertex_stats={spec!r} names no column; e.g. column:label")
        self.table = read_label_table(spec, storage) if spec.lower().endswith((".csv", ".parquet")) else None
        if spec.startswith("name:"):
            _regex(spec)   # refused now, not in an encoder

    def pairs(self, ids, sources, values=None) -> pd.DataFrame:
        """``(image_id, label)`` rows of one batch (several per image for a multi-label table); ``values``: each
        row's value of the label column (``column:NAME``; None or "" is unlabelled)."""
        batch = pd.DataFrame({"image_id": id_strings(ids), "source": id_strings(sources)})
        if self.table is not None:
            return join_label_table(self.table, batch)
        if self.column is not None:
            if values is None:
                raise InvalidParameterError(f"vertex_stats={self.spec!r}: the rows carry no {self.column!r} values "
                                            f"(only Parquet input shards have columns)")
            found = batch.assign(label=[None if v is None else str(v) for v in values])
        elif self.spec == "folder":
            found = batch.assign(label=parent_folders(batch.source.to_numpy()))
        else:
            rx = _regex(self.spec)
            found = batch.assign(label=[_match(rx, n) for n in file_names(batch.source.to_numpy())])
        found = found[["image_id", "label"]].dropna()
        return found[found.label != ""]

    def labels_of_sources(self, sources) -> list[str]:
        """Every label of ``sources`` (paths known at planning: a folder input), for the memory check."""
        return sorted(set(self.pairs(np.asarray(sources, dtype=object), sources).label))


def _column_labels(name: str, shards, id_column: str, image_column: str, storage) -> pd.DataFrame:
    from screening.fs import arrow_filesystem, filesystem_for
    from screening.sources.base import derived_id
    from screening.sources.parquet import class_names

    if not name:
        raise InvalidParameterError("labels='column:' names no column; e.g. column:label")
    if not shards:
        raise InvalidParameterError(f"labels='column:{name}' reads the input Parquet shards, and the run lists "
                                    f"none (its input was not Parquet: use folder, name:REGEX or a table)")
    frames = []
    for uri in shards:
        fs, p = filesystem_for(uri, storage)
        dataset = ds.dataset(p, format="parquet", filesystem=arrow_filesystem(fs))
        names = dataset.schema.names
        if name not in names:
            raise InvalidParameterError(f"labels='column:{name}': {uri!r} has no column {name!r}; its columns: "
                                        f"{', '.join(names)}")
        classes = class_names(dataset.schema, name)
        by_id = id_column in names
        for batch in dataset.to_batches(columns=[id_column if by_id else image_column, name]):
            if by_id:
                ids = [None if v is None else str(v) for v in batch.column(0).to_pylist()]
            else:
                col = batch.column(0)
                if pa.types.is_struct(col.type):
                    col = col.field("bytes")
                ids = [None if d is None else derived_id(d) for d in col.to_pylist()]
            values = batch.column(1).to_pylist()
            if classes is not None:
                values = [classes[v] if isinstance(v, int) and 0 <= v < len(classes) else v for v in values]
            frames.append(pd.DataFrame({"image_id": ids, "label": values}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["image_id", "label"])
