"""Output layout, per-unit commit markers, resume and the manifest.

Layout of ``OUT`` (local directory or ``s3://bucket/prefix``)::

    OUT/responses/<unit>.parquet     one file per input shard (unit), long format (contracts.md)
    OUT/errors/<unit>.parquet        one file per unit (zero rows when the unit had no errors)
    OUT/_committed/<unit>.json       commit marker, written LAST; a unit is done iff its marker exists
    OUT/manifest.json                written at start (shard states) and rewritten at the end

Readers must use :func:`committed_files` (or the ``files`` list of a finished run's manifest): a data file whose unit
has no marker is a leftover of an interrupted run and is overwritten when the unit is redone.
"""

from __future__ import annotations

import datetime as _dt
import json
import posixpath
from concurrent.futures import ThreadPoolExecutor

from screening.exceptions import InvalidParameterError
from screening.io._fs import filesystem_for, to_uri
from screening.store._fs import write_atomic

RESPONSES = "responses"
ERRORS = "errors"
COMMITTED = "_committed"
MANIFEST = "manifest.json"


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class OutputLayout:
    """Paths and marker I/O under one output root (picklable: holds only the URI and options)."""

    def __init__(self, out, *, endpoint_url=None, anonymous=None):
        self.out = str(out)
        self.endpoint_url = endpoint_url
        self.anonymous = anonymous
        self.fs, self.root = filesystem_for(self.out, endpoint_url=endpoint_url, anonymous=anonymous)

    def __getstate__(self):
        return {"out": self.out, "endpoint_url": self.endpoint_url, "anonymous": self.anonymous}

    def __setstate__(self, state):
        self.__init__(state["out"], endpoint_url=state["endpoint_url"], anonymous=state["anonymous"])

    # -- paths (scheme-less, inside self.fs) --------------------------------------------------
    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def rel_responses(self, unit: str) -> str:
        return f"{RESPONSES}/{unit}.parquet"

    def rel_errors(self, unit: str) -> str:
        return f"{ERRORS}/{unit}.parquet"

    def marker_path(self, unit: str) -> str:
        return self.join(COMMITTED, f"{unit}.json")

    def uri(self, rel: str) -> str:
        return to_uri(self.fs, self.join(rel))

    # -- markers ------------------------------------------------------------------------------
    def markers(self) -> dict[str, dict]:
        """unit -> marker of every committed unit."""
        d = self.join(COMMITTED)
        try:
            if not self.fs.exists(d):
                return {}
            self.fs.invalidate_cache(d)
            paths = [p for p in self.fs.ls(d, detail=False) if p.endswith(".json")]
        except FileNotFoundError:
            return {}

        def read(p):
            with self.fs.open(p, "rb") as f:
                return json.loads(f.read().decode())

        with ThreadPoolExecutor(max(1, min(16, len(paths)))) as pool:
            ms = list(pool.map(read, paths))
        return {m["unit"]: m for m in ms}

    def write_marker(self, unit: str, marker: dict) -> None:
        """Small JSON, written atomically (S3 PUT is atomic; locally: temp file + rename)."""
        self.write_json(self.marker_path(unit), marker)

    def write_json(self, path: str, obj: dict) -> None:
        data = json.dumps(obj, indent=1, sort_keys=False).encode()
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        write_atomic(self.fs, path, data)  # a marker must never be seen half-written

    def remove_leftovers(self, units) -> int:
        """Delete data files of units without a marker (an interrupted run's partial output)."""
        n = 0
        for unit in units:
            for rel in (self.rel_responses(unit), self.rel_errors(unit)):
                p = self.join(rel)
                if self.fs.exists(p):
                    self.fs.rm(p)
                    n += 1
        return n

    def prepare(self) -> None:
        for d in (RESPONSES, ERRORS, COMMITTED):
            self.fs.makedirs(self.join(d), exist_ok=True)

    def read_manifest(self) -> dict | None:
        p = self.join(MANIFEST)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "rb") as f:
            return json.loads(f.read().decode())


def check_compatible(markers: dict[str, dict], config_key: str, out: str) -> None:
    """Resuming into ``out`` is only allowed with the same model, subjects, ROIs and precision."""
    other = {m.get("config_key") for m in markers.values()} - {config_key}
    if other:
        raise InvalidParameterError(
            f"out={out!r} already holds results of a different configuration (model, subjects, ROIs, precision or "
            f"decode options differ: config key {sorted(other)[0]} vs {config_key}); use a new out directory, or "
            f"delete it to start over")


def committed_files(out, *, endpoint_url=None, anonymous=None) -> dict[str, list[str]]:
    """``{"responses": [...], "errors": [...]}``: URIs of the data files of committed units only.

    This is what every reader of a run (``ScreeningResult``, ``screening rank``) should open; files of units without
    a commit marker are leftovers of an interrupted run.
    """
    layout = out if isinstance(out, OutputLayout) else OutputLayout(out, endpoint_url=endpoint_url, anonymous=anonymous)
    markers = layout.markers()
    files = {RESPONSES: [], ERRORS: []}
    for unit in sorted(markers):
        for kind, rel in markers[unit]["files"].items():
            files[kind].append(layout.uri(rel))
    return files


def build_manifest(*, engine_version, config, model, rois, shards, markers, layout: OutputLayout, run=None,
                   reliability=None) -> dict:
    counts = {"images": 0, "responses_rows": 0, "errors": 0}
    for m in markers.values():
        counts["images"] += m["rows"]
        counts["responses_rows"] += m["responses_rows"]
        counts["errors"] += m["errors"]
    files = {RESPONSES: [], ERRORS: []}
    for unit in sorted(markers):
        for kind, rel in markers[unit]["files"].items():
            files[kind].append(rel)
    manifest = {
        "engine_version": engine_version,
        "created": utcnow(),
        "config": config,
        "model": model,
        "rois": rois,
        "shards": [{"path": s.uri, "unit": s.unit, "rows": s.rows,
                    "state": "committed" if s.unit in markers else "pending"} for s in shards],
        "counts": counts,
        "files": files,
        "run": run or {},
    }
    if reliability is not None:
        # threshold, noise ceiling; the per-subject vertex counts that survived are in rois[name]["n_vertices"]
        manifest["reliability"] = {k: v for k, v in reliability.items() if k != "note"}
        if reliability.get("note"):
            manifest["reliability_note"] = reliability["note"]
    return manifest
