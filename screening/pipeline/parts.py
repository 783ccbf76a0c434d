"""Worker side of the write path: encoder rows -> part files, and a small receipt per part for the driver.

``write_parts`` is the plan's last ``map_batches`` stage (a Ray task, scheduled where its input blocks are, i.e. on
the node that encoded them). For each unit present in its batch it writes one responses part and, if the batch holds
error rows of that unit, one errors part, under ``OUT/responses/<unit>/`` and ``OUT/errors/<unit>/``. Part names are
unique per attempt (``part-<first row>-<random>``), so a retried or killed task never overwrites a part that the
driver counted; its leftovers are simply never listed in a marker (and are removed when the unit commits or the run
resumes).

What goes back to the driver is one receipt row per (batch, unit): the unit, the part paths, the row indices the
part holds (int32, 4 bytes per image) and counts. Never ROI values.

A write that fails is retried ``WRITE_ATTEMPTS`` times with backoff (S3 5xx, dropped connections); if it still fails
the receipt says so (``failure``), the driver fails that unit only, and the rest of the run goes on.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from screening.pipeline.tables import (PARQUET_OPTIONS, STAGE_OK, error_table, feature_table, response_table,
                                       responses_schema, source_table)

WRITE_ATTEMPTS = 3
RECEIPT_SCHEMA = pa.schema([("unit", pa.string()), ("responses", pa.string()), ("errors", pa.string()),
                            ("sources", pa.string()), ("features", pa.string()), ("vstats", pa.string()),
                            ("rows", pa.binary()), ("n_ok", pa.int64()), ("n_err", pa.int64()), ("n_read", pa.int64()),
                            ("responses_rows", pa.int64()), ("failure", pa.string())])


def row_ranges(idx) -> list[list[int]]:
    """Sorted row indices as half-open ``[start, stop)`` runs: ``[0, 1, 2, 7]`` -> ``[[0, 3], [7, 8]]``."""
    idx = np.unique(np.asarray(idx, dtype=np.int64))
    if idx.size == 0:
        return []
    cut = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[idx[0]], idx[cut]])
    stops = np.concatenate([idx[cut - 1] + 1, [idx[-1] + 1]])
    return [[int(a), int(b)] for a, b in zip(starts, stops)]


def describe_rows(idx, limit: int = 6) -> str:
    """``rows 3-5, 9`` (at most ``limit`` runs, then ``and N more``)."""
    runs = row_ranges(idx)
    text = ", ".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in runs[:limit])
    more = f" and {len(runs) - limit} more run(s)" if len(runs) > limit else ""
    return f"row{'s' if len(runs) != 1 or runs[0][1] - runs[0][0] > 1 else ''} {text}{more}"


def _write_parquet(fs, path: str, table: pa.Table, meta: dict) -> None:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"screening.part": json.dumps(meta).encode()})
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        opts = PARQUET_OPTIONS if "subject" in table.column_names else {}
        pq.write_table(table, f, row_group_size=max(1, table.num_rows), **opts)


def _write_with_retries(fs, path, table, meta, sleep=time.sleep) -> str | None:
    """None on success, else the last error (after ``WRITE_ATTEMPTS``); a partial object is removed if possible."""
    last = None
    for attempt in range(WRITE_ATTEMPTS):
        try:
            _write_parquet(fs, path, table, meta)
            return None
        except Exception as exc:  # noqa: BLE001 - any failure is retried, then reported for this unit only
            last = f"{type(exc).__name__}: {exc}"
            try:
                if fs.exists(path):
                    fs.rm(path)
            except Exception:  # noqa: BLE001 - best effort; an unlisted part is never read
                pass
            if attempt + 1 < WRITE_ATTEMPTS:
                sleep(0.5 * 2 ** attempt)
    return f"writing {path} failed {WRITE_ATTEMPTS} times; last error: {last}"


def write_parts(batch: dict, *, layout, labels, roi_names, config_key: str) -> pa.Table:
    """``map_batches`` function: see the module docstring."""
    units = np.asarray(batch["unit"], dtype=object)
    rows = np.asarray(batch["row"], dtype=np.int64)
    stage = np.asarray(batch["stage"], dtype=object)
    ids = np.asarray(batch["image_id"], dtype=object)
    schema = responses_schema(roi_names)
    fs = layout.fs
    receipts = []
    for unit in dict.fromkeys(units.tolist()):
        sel = units == unit
        ok, bad = sel & (stage == STAGE_OK), sel & (stage != STAGE_OK)
        idx = rows[sel]
        name = f"part-{int(idx.min()):09d}-{uuid.uuid4().hex[:12]}.parquet"
        meta = {"unit": unit, "rows": row_ranges(idx), "config_key": config_key}
        resp_rel = err_rel = src_rel = feat_rel = ""
        failure = None
        n_resp = 0
        if ok.any():
            table = response_table(ids[ok], np.asarray(batch["roi"])[ok], labels, schema)
            n_resp = table.num_rows
            resp_rel = layout.rel_part("responses", unit, name)
            failure = _write_with_retries(fs, layout.join(resp_rel), table, meta)
        if ok.any() and failure is None:
            src_rel = layout.rel_part("sources", unit, name)
            failure = _write_with_retries(fs, layout.join(src_rel), source_table(
                ids[ok], np.asarray(batch["source"], dtype=object)[ok]), meta)
        if ok.any() and failure is None and "features" in batch:
            feat_rel = layout.rel_part("features", unit, name)
            failure = _write_with_retries(fs, layout.join(feat_rel), feature_table(
                ids[ok], np.asarray(batch["features"])[ok]), meta)
        if bad.any() and failure is None:
            table = error_table(ids[bad], np.asarray(batch["source"], dtype=object)[bad], stage[bad],
                                np.asarray(batch["error"], dtype=object)[bad])
            err_rel = layout.rel_part("errors", unit, name)
            failure = _write_with_retries(fs, layout.join(err_rel), table, meta)
        vstats = ("\n".join(dict.fromkeys(p for p in np.asarray(batch["vstats"], dtype=object)[ok] if p))
                  if "vstats" in batch else "")
        receipts.append({"unit": unit, "responses": resp_rel, "errors": err_rel, "sources": src_rel,
                         "features": feat_rel, "vstats": vstats,
                         "rows": idx.astype(np.int32).tobytes(), "n_ok": int(ok.sum()), "n_err": int(bad.sum()),
                         "n_read": int((sel & (stage == "read")).sum()),
                         "responses_rows": n_resp, "failure": failure or ""})
    return pa.Table.from_pylist(receipts, schema=RECEIPT_SCHEMA)


def compact_unit(layout, unit: str, parts: list[str], *, row_group_rows: int) -> dict:
    """Merge a unit's response parts into one file of ``row_group_rows``-row groups (a Ray task, never the driver).

    Streams part by part, so memory stays about two row groups whatever the unit's size. Returns
    ``{"file": rel path, "rows": n}``, or ``{"failure": ...}``: then the unit is committed with its parts as they are.
    The parts themselves are removed by the commit, once the marker no longer lists them.
    """
    fs = layout.fs
    rel = layout.rel_part("responses", unit, f"unit-{uuid.uuid4().hex[:12]}.parquet")
    path = layout.join(rel)
    try:
        covered, buf, total = [], [], 0
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as f:
            writer = None
            for part in parts:
                with fs.open(layout.join(part), "rb") as pf:
                    t = pq.read_table(pf)
                covered += json.loads((t.schema.metadata or {}).get(b"screening.part", b"{}")).get("rows", [])
                t = t.replace_schema_metadata(None)
                if writer is None:
                    meta = {b"screening.part": json.dumps({"unit": unit, "parts": len(parts)}).encode()}
                    writer = pq.ParquetWriter(f, t.schema.with_metadata(meta), **PARQUET_OPTIONS)
                buf.append(t)
                total += t.num_rows
                pending = pa.concat_tables(buf)
                while pending.num_rows >= row_group_rows:
                    writer.write_table(pending.slice(0, row_group_rows), row_group_size=row_group_rows)
                    pending = pending.slice(row_group_rows)
                buf = [pending]
            if buf and buf[0].num_rows:
                writer.write_table(buf[0], row_group_size=row_group_rows)
            writer.close()
        with fs.open(path, "rb") as f:  # what the marker will promise must be what is stored
            n = pq.ParquetFile(f).metadata.num_rows
        if n != total:
            raise OSError(f"wrote {n} rows, expected {total}")
        return {"file": rel, "rows": n, "covered": sorted(covered)}
    except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; the parts stay valid
        try:
            if fs.exists(path):
                fs.rm(path)
        except Exception:  # noqa: BLE001
            pass
        return {"failure": f"{type(exc).__name__}: {exc}"}
