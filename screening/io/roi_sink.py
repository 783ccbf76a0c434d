"""``_RoiTableSink``: turns encoder output rows into per-unit response/error files and commits each unit.

It runs on the driver and consumes the streaming output of the Ray Data plan (``Dataset.iter_batches``). Rows of a
unit (input shard) arrive in any order and interleaved with other units; the sink buffers them per unit (flushing
row groups to the unit's open Parquet writer past ``flush_rows``), and when a unit has received all of its rows
(known from the shard footer before the run) it closes the unit's files and writes the commit marker last.
Only ROI means travel to the driver (S+1 rows x R float32 per image), never pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from screening.exceptions import ScreeningError
from screening.pipeline.outputs import ERRORS, RESPONSES, OutputLayout, utcnow

MEAN_SUBJECT = "mean"
ERROR_SCHEMA = pa.schema([("image_id", pa.string()), ("source", pa.string()), ("stage", pa.string()),
                          ("error", pa.string())])


def responses_schema(roi_names) -> pa.Schema:
    return pa.schema([("image_id", pa.string()), ("subject", pa.string())]
                     + [(n, pa.float32()) for n in roi_names])


class _UnitState:
    def __init__(self, shard):
        self.shard = shard
        self.seen = 0
        self.ok = 0
        self.resp_buf: list[pa.Table] = []
        self.resp_buffered = 0
        self.err_buf: list[pa.Table] = []
        self.resp_writer = None
        self.resp_file = None


@dataclass
class SinkStats:
    images: int = 0
    responses_rows: int = 0
    errors: int = 0
    committed: list = field(default_factory=list)


class _RoiTableSink:
    """Driver-side writer; see the module docstring. ``add`` takes encoder output batches (numpy dicts)."""

    def __init__(self, layout: OutputLayout, shards, subjects, roi_names, config_key: str, *,
                 flush_rows: int = 65_536, on_commit=None):
        self.layout = layout
        self.units = {s.unit: _UnitState(s) for s in shards}
        self.subjects = list(subjects)
        self.labels = np.array(self.subjects + [MEAN_SUBJECT], dtype=object)
        self.roi_names = list(roi_names)
        self.schema = responses_schema(self.roi_names)
        self.config_key = config_key
        self.flush_rows = flush_rows
        self.on_commit = on_commit
        self.stats = SinkStats()

    # -- input ------------------------------------------------------------------------------
    def add(self, batch: dict) -> int:
        units = np.asarray(batch["unit"], dtype=object)
        n = units.shape[0]
        if n == 0:
            return 0
        stage = np.asarray(batch["stage"], dtype=object)
        ids = np.asarray(batch["image_id"], dtype=object)
        roi = np.asarray(batch["roi"])
        for unit in np.unique(units):
            if unit not in self.units:
                raise ScreeningError(f"internal error: rows for unknown unit {unit!r}")
            sel = units == unit
            st = self.units[unit]
            ok = sel & (stage == "")
            bad = sel & (stage != "")
            if ok.any():
                self._add_responses(st, ids[ok], roi[ok])
            if bad.any():
                st.err_buf.append(pa.table({
                    "image_id": pa.array(ids[bad].tolist(), pa.string()),
                    "source": pa.array(np.asarray(batch["source"], dtype=object)[bad].tolist(), pa.string()),
                    "stage": pa.array(stage[bad].tolist(), pa.string()),
                    "error": pa.array(np.asarray(batch["error"], dtype=object)[bad].tolist(), pa.string()),
                }, schema=ERROR_SCHEMA))
            st.seen += int(sel.sum())
            if st.seen > st.shard.rows:
                raise ScreeningError(f"internal error: unit {unit!r} received {st.seen} rows; its shard has "
                                     f"{st.shard.rows} (a row was delivered twice)")
            if st.seen == st.shard.rows:
                self._commit(st)
        return n

    def _add_responses(self, st: _UnitState, ids: np.ndarray, roi: np.ndarray) -> None:
        k, s1, r = roi.shape
        cols = {"image_id": pa.array(np.repeat(ids, s1).tolist(), pa.string()),
                "subject": pa.array(np.tile(self.labels, k).tolist(), pa.string())}
        flat = np.ascontiguousarray(roi.reshape(k * s1, r), dtype=np.float32)
        for j, name in enumerate(self.roi_names):
            cols[name] = pa.array(flat[:, j], pa.float32())
        st.resp_buf.append(pa.table(cols, schema=self.schema))
        st.ok += k
        st.resp_buffered += k * s1
        if st.resp_buffered >= self.flush_rows:
            self._flush(st)

    def _flush(self, st: _UnitState) -> None:
        if st.resp_writer is None:
            path = self.layout.join(self.layout.rel_responses(st.shard.unit))
            st.resp_file = self.layout.fs.open(path, "wb")
            st.resp_writer = pq.ParquetWriter(st.resp_file, self.schema)
        if st.resp_buf:
            st.resp_writer.write_table(pa.concat_tables(st.resp_buf))
        st.resp_buf, st.resp_buffered = [], 0

    # -- commit -----------------------------------------------------------------------------
    def _commit(self, st: _UnitState) -> None:
        unit = st.shard.unit
        fs = self.layout.fs
        self._flush(st)
        st.resp_writer.close()
        st.resp_file.close()
        st.resp_writer = st.resp_file = None
        errors = pa.concat_tables(st.err_buf) if st.err_buf else ERROR_SCHEMA.empty_table()
        with fs.open(self.layout.join(self.layout.rel_errors(unit)), "wb") as f:
            pq.write_table(errors, f)
        n_err = errors.num_rows
        marker = {
            "unit": unit, "input": st.shard.uri, "rows": st.shard.rows, "images_ok": st.ok, "errors": n_err,
            "responses_rows": st.ok * len(self.labels),
            "files": {RESPONSES: self.layout.rel_responses(unit), ERRORS: self.layout.rel_errors(unit)},
            "config_key": self.config_key, "committed": utcnow(),
        }
        self.layout.write_marker(unit, marker)  # LAST: the unit now counts as done
        self.stats.images += st.shard.rows
        self.stats.responses_rows += marker["responses_rows"]
        self.stats.errors += n_err
        self.stats.committed.append(unit)
        del self.units[unit]
        if self.on_commit is not None:
            self.on_commit(marker)

    def commit_empty_units(self) -> None:
        """Shards with zero rows are complete before any row arrives."""
        for st in [s for s in self.units.values() if s.shard.rows == 0]:
            self._commit(st)

    def finish(self) -> SinkStats:
        """After the stream ends: every unit must be complete."""
        if self.units:
            missing = ", ".join(f"{u} ({s.seen}/{s.shard.rows} rows)" for u, s in list(self.units.items())[:5])
            self.abort()
            raise ScreeningError(f"the pipeline ended with {len(self.units)} incomplete unit(s): {missing}; "
                                 f"they stay uncommitted and are redone on the next run")
        return self.stats

    def abort(self) -> None:
        """Close open files without committing (their units are redone on the next run)."""
        for st in self.units.values():
            try:
                if st.resp_writer is not None:
                    st.resp_writer.close()
                if st.resp_file is not None:
                    st.resp_file.close()
            except Exception:  # noqa: BLE001 - best effort; the unit has no marker either way
                pass
            st.resp_writer = st.resp_file = None
