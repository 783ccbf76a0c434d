"""Driver side of the write path: account for every row by identity, commit a unit when it is whole.

The driver reads only the workers' receipts (``parts.RECEIPT_SCHEMA``: unit, part paths, row indices, counts). For
each unit in flight it keeps one byte per input row: how many times that row has arrived. A unit commits when every
row of its shard has arrived exactly once; then the unit's files that no receipt named (leftovers of retried or killed
tasks) are deleted and the marker, listing exactly the received parts, is written last.

A row that arrives twice, a row that never arrives, or a part that could not be written fails that unit only: it is
not committed, the failure names the unit and the rows, and the run reports it at the end (``UnitsFailedError``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from screening.exceptions import IntegrityError
from screening.pipeline.outputs import ERRORS, FEATURES, RESPONSES, SOURCES, VSTATS, OutputLayout, utcnow
from screening.pipeline.parts import describe_rows


@dataclass
class UnitState:
    shard: object
    seen: np.ndarray
    received: int = 0
    ok: int = 0
    errors: int = 0
    read_errors: int = 0
    responses_rows: int = 0
    parts: list = field(default_factory=list)
    failures: list = field(default_factory=list)


@dataclass
class CommitStats:
    images: int = 0
    responses_rows: int = 0
    errors: int = 0
    committed: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)   # unit -> reason
    unreadable: dict = field(default_factory=dict)   # unit -> (shard uri, rows with stage "read")


class UnitLedger:
    """See the module docstring. ``add(receipts)`` takes one ``pyarrow.Table`` of receipts; returns rows accounted."""

    def __init__(self, layout: OutputLayout, shards, config_key: str, *, labels: int, run_id: str = "",
                 on_commit=None, compactor=None):
        self.layout = layout
        self.compactor = compactor   # merges a unit's parts on a worker before its commit (see run.py)
        self.compacting: dict = {}   # compactor key -> UnitState
        self.units = {s.unit: UnitState(s, np.zeros(s.rows, np.uint8)) for s in shards}
        self.expected = list(self.units)
        self.config_key = config_key
        self.n_labels = labels
        self.run_id = run_id
        self.on_commit = on_commit
        self.stats = CommitStats()

    def add(self, receipts) -> int:
        n = 0
        cols = {k: receipts.column(k).to_pylist() for k in ("unit", "responses", "errors", "sources", "features",
                                                              "vstats", "n_ok", "n_err", "n_read", "responses_rows",
                                                              "failure")}
        rows = receipts.column("rows").to_pylist()
        for i, unit in enumerate(cols["unit"]):
            st = self.units.get(unit)
            if st is None:
                if unit in self.stats.failed or unit in self.stats.committed:
                    # a unit already decided can still receive a late duplicate; it stays as decided, but say so
                    self.stats.failed.setdefault(unit, f"unit {unit!r} received rows after it was decided")
                    continue
                raise KeyError(f"internal error: a receipt for unknown unit {unit!r}")
            idx = np.frombuffer(rows[i], dtype=np.int32)
            n += idx.size
            self._account(st, idx, {k: cols[k][i] for k in cols})
            if st.received >= st.shard.rows:
                self._decide(st)
        self._drain(block=False)
        return n

    def _account(self, st: UnitState, idx: np.ndarray, r: dict) -> None:
        if idx.size and (idx.min() < 0 or idx.max() >= st.shard.rows):
            st.failures.append(f"rows outside the shard's {st.shard.rows}: {describe_rows(idx)}")
            idx = idx[(idx >= 0) & (idx < st.shard.rows)]
        np.add.at(st.seen, idx, 1)
        st.received += idx.size
        twice = idx[st.seen[idx] > 1]
        if twice.size:
            st.failures.append(f"{describe_rows(twice)} delivered more than once")
        if r["failure"]:
            st.failures.append(r["failure"])
        st.ok += r["n_ok"]
        st.errors += r["n_err"]
        st.read_errors += r["n_read"]
        st.responses_rows += r["responses_rows"]
        st.parts.append({RESPONSES: r["responses"], ERRORS: r["errors"], SOURCES: r["sources"],
                         FEATURES: r["features"], VSTATS: r["vstats"], "rows": int(idx.size),
                         "responses_rows": r["responses_rows"]})

    def _decide(self, st: UnitState) -> None:
        missing = np.flatnonzero(st.seen == 0)
        if missing.size:
            st.failures.append(f"{describe_rows(missing)} never arrived")
        if st.failures:
            self._fail(st)
        elif self.compactor is not None and sum(1 for p in st.parts if p[RESPONSES]) > 1:
            del self.units[st.shard.unit]
            key = self.compactor.submit(st.shard.unit, [p[RESPONSES] for p in st.parts if p[RESPONSES]])
            self.compacting[key] = st
        else:
            self._commit(st)

    def _drain(self, block: bool) -> None:
        """Commit the units whose compaction has finished (all of them when ``block``)."""
        while self.compacting:
            done = self.compactor.ready(block=block)
            for key, result in done:
                st = self.compacting.pop(key)
                self.units[st.shard.unit] = st
                self._commit(st, compacted=result)
            if not block:
                return
            if not done:   # the compactor lost track of these: never wait forever, never commit unchecked
                for st in list(self.compacting.values()):
                    self.units[st.shard.unit] = st
                    st.failures.append("its compaction never reported back")
                    self._fail(st)
                self.compacting.clear()

    def _fail(self, st: UnitState) -> None:
        unit = st.shard.unit
        self.stats.failed[unit] = f"unit {unit!r} ({st.shard.uri}): " + "; ".join(dict.fromkeys(st.failures))
        del self.units[unit]

    def _commit(self, st: UnitState, compacted: dict | None = None) -> None:
        unit = st.shard.unit
        files = {RESPONSES: [p[RESPONSES] for p in st.parts if p[RESPONSES]],
                 ERRORS: [p[ERRORS] for p in st.parts if p[ERRORS]],
                 SOURCES: [p[SOURCES] for p in st.parts if p[SOURCES]],
                 FEATURES: [p[FEATURES] for p in st.parts if p.get(FEATURES)]}
        vstats = sorted({v for p in st.parts for v in (p.get(VSTATS) or "").split("\n") if v})
        if vstats:   # partial statistics (by first row), merged into vertex_stats/ once committed (UnitSink)
            files[VSTATS] = vstats
        if compacted and "file" in compacted:
            files[RESPONSES] = [compacted["file"]]
        marker = {
            "unit": unit, "input": st.shard.identity(), "rows": st.shard.rows, "images_ok": st.ok,
            "errors": st.errors, "read_errors": st.read_errors, "responses_rows": st.responses_rows, "files": files,
            "parts": [p for p in st.parts if p[RESPONSES] or p[ERRORS]],   # as written by the workers
            "compacted": ({"file": compacted["file"], "from_parts": len(st.parts)} if compacted and "file" in compacted
                          else {"failure": compacted["failure"]} if compacted else None),
            "config_key": self.config_key, "run_id": self.run_id, "committed": utcnow(),
        }
        try:
            self.layout.remove_unlisted(unit, files)   # leftovers of retried / killed tasks
            self.layout.write_marker(unit, marker)     # LAST: the unit now counts as done
        except Exception as exc:  # noqa: BLE001 - e.g. disk full: this unit is not committed, the run goes on
            st.failures.append(f"committing failed: {type(exc).__name__}: {exc}")
            self._fail(st)
            return
        self.stats.images += st.shard.rows
        self.stats.responses_rows += st.responses_rows
        self.stats.errors += st.errors
        self.stats.committed.append(unit)
        if st.read_errors:
            self.stats.unreadable[unit] = (st.shard.uri, st.read_errors)
        del self.units[unit]
        if self.on_commit is not None:
            self.on_commit(marker)

    def stop(self, reason: str) -> None:
        """No more receipts will come (the stream failed): each open unit missing rows fails with ``reason`` at
        ``finish``; a unit whose every row arrived still commits."""
        for st in self.units.values():
            if (st.seen == 0).any():
                st.failures.append(reason)

    def commit_empty_units(self) -> None:
        """Shards with zero rows are complete before any row arrives."""
        for st in [s for s in self.units.values() if s.shard.rows == 0]:
            self._decide(st)

    def finish(self) -> CommitStats:
        """After the stream ends, every unit still open is missing rows: it fails, naming them.

        Returns only when each unit given to the ledger is either committed or failed: a run never reports success
        for a unit it did not decide."""
        for st in list(self.units.values()):
            self._decide(st)
        self._drain(block=True)
        decided = set(self.stats.committed) | set(self.stats.failed)
        undecided = [u for u in self.expected if u not in decided]
        if undecided:
            raise IntegrityError(f"internal error: {len(undecided)} unit(s) neither committed nor failed at the end "
                                 f"of the run: {', '.join(undecided[:10])}; nothing was reported as done for them")
        return self.stats
