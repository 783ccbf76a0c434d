"""The driver's side of ``--vertex-stats``: committed units' partial statistics merged into ``OUT/vertex_stats/``.

A unit's partials (one ``.npz`` per encoder batch, named by their first row) are listed in its commit marker, so only
what the exactly-once commit counted is merged: leftovers of retried tasks never are. Units are merged in the plan's
unit order, partials in row order, so an interrupted and resumed run merges the same partials in the same order as an
uninterrupted one. A unit that commits before an earlier one waits (its partials stay on disk) until that one has
committed. After each merge the folder is rewritten atomically, recording the merged units, and then the unit's
partials are deleted: a crash in between merges nothing twice (the unit is recorded) and loses nothing (its
partials are deleted only after). Disk and memory: the merged statistics (labels x subjects x vertices x 16 B) plus
the partials of units not yet merged.
"""

from __future__ import annotations

import json
import os

from screening.exceptions import InvalidParameterError
from screening.pipeline.outputs import VERTEX_STATS, VSTATS
from screening.vertex_stats import VertexStats, bytes_needed, load_partial


def max_bytes() -> int:
    """The statistics the driver may hold: 40% of this machine's memory, at most 16 GiB."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(16 * 2**30, 0.4 * total))


def check_fits(n_labels: int, n_subjects: int, n_vertices: int) -> None:
    need, limit = bytes_needed(n_labels, n_subjects, n_vertices), max_bytes()
    if need > limit:
        raise InvalidParameterError(
            f"--vertex-stats: {n_labels} labels x {n_subjects} subjects x {n_vertices} vertices need {_size(need)} "
            f"of statistics (16 B per label and vertex) in memory and on disk; this machine allows {_size(limit)} "
            f"(40% of its memory). Use fewer labels (coarser categories), fewer subjects (--subjects), or the visual "
            f"model")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_request(spec: str, images, storage, n_subjects: int, n_vertices: int) -> None:
    """Refuse at planning a request whose labels are known and do not fit: a table's labels, or a local folder's
    (its files listed as the run lists them), or the class names of a Hugging Face ``ClassLabel`` column. Other
    inputs' labels (a plain column's values too) appear as they stream; the merger checks them."""
    from screening.labels import Labeler

    labeler = Labeler(spec, storage)
    if labeler.column is not None:   # an input column: its Hugging Face class names where it has them
        n = column_classes(images, storage, labeler.column)
        if n is None:   # plain values: seen as the rows stream
            return
    elif labeler.table is not None:
        n = labeler.table.label.nunique()
    elif os.path.isdir(str(images)):
        from screening.sources.listing import IMAGE_EXTENSIONS

        files = [os.path.join(d, f) for d, _, fs in os.walk(str(images)) for f in fs
                 if f.lower().endswith(tuple(IMAGE_EXTENSIONS))]
        n = len(labeler.labels_of_sources(files))
    else:
        return
    check_fits(n, n_subjects, n_vertices)


def column_classes(images, storage, column: str) -> int | None:
    """How many classes the input's ``column`` names (``ClassLabel`` metadata of its first Parquet shard), else None
    (not Parquet, which the plan refuses, or a column of plain values)."""
    from screening import sources
    from screening.sources.parquet import class_names, read_footers

    found = sources.find(images, storage=storage)
    if found.kind != sources.ParquetSource.kind:
        return None
    names = class_names(read_footers(found.fs, list(found.paths[:1]))[0].schema.to_arrow_schema(), column)
    return None if names is None else len(names)


class VertexStatsMerger:
    """``add(marker)`` per committed unit (the ledger's ``on_commit``); ``merged`` is the statistics so far."""

    def __init__(self, layout, units, subjects, n_vertices: int, *, model_id: str, variant: str):
        self.layout = layout
        self.order = list(units)
        self.folder = layout.join(VERTEX_STATS)
        self.merged = (VertexStats.load(self.folder, mmap=False) if os.path.isfile(os.path.join(self.folder,
                                                                                                 "meta.json"))
                       else VertexStats.empty([], list(subjects), n_vertices, model_id=model_id, variant=variant))
        self.done = set(self._recorded_units())
        self.ready: dict[str, list] = {}

    def _recorded_units(self) -> list:
        try:
            with open(os.path.join(self.folder, "meta.json")) as f:
                return list(json.load(f).get("units") or [])
        except (OSError, ValueError):
            return []

    def resume(self, markers: dict) -> None:
        """Units committed by an earlier run and not yet merged (it stopped in between): merged now, in order."""
        for unit, marker in markers.items():
            if unit not in self.done:
                self.ready[unit] = list((marker.get("files") or {}).get(VSTATS) or [])
        self._advance()

    def add(self, marker: dict) -> None:
        self.ready[marker["unit"]] = list((marker.get("files") or {}).get(VSTATS) or [])
        self._advance()

    def _advance(self) -> None:
        merged_any = []
        for unit in self.order:
            if unit in self.done:
                continue
            if unit not in self.ready:
                break
            for rel in sorted(self.ready.pop(unit)):
                part = load_partial(self.layout.fs, self.layout.join(rel))
                check_fits(len(set(self.merged.labels) | set(part.labels)), len(self.merged.subjects),
                           self.merged.n_vertices)
                self.merged = self.merged.merge(part)
            self.done.add(unit)
            merged_any.append(unit)
        if merged_any:
            self.merged.save(self.folder, extra={"units": sorted(self.done)})
            for unit in merged_any:   # only now: a crash before the save merges them again, never twice
                d = self.layout.join(VSTATS, unit)
                if self.layout.fs.exists(d):
                    self.layout.fs.rm(d, recursive=True)


def remove_partials(layout, units) -> None:
    """Partials of units about to be redone (leftovers of an interrupted run): never merged, so simply deleted."""
    for unit in units:
        d = layout.join(VSTATS, unit)
        if layout.fs.exists(d):
            layout.fs.rm(d, recursive=True)

