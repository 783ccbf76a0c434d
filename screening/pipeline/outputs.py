"""Output layout, per-unit commit markers, cleanup on resume, and the manifest.

Layout of ``OUT`` (local directory or ``s3://bucket/prefix``)::

    OUT/responses/<unit>/part-*.parquet   response parts, written by Ray workers (long format, contracts.md)
    OUT/errors/<unit>/part-*.parquet      error parts (only where a batch had error rows)
    OUT/_committed/<unit>.json            commit marker, written LAST by the driver; lists exactly the unit's parts
    OUT/_lock.json                        the live run's lock (owner, heartbeat)
    OUT/manifest.json                     written at start (shard states) and rewritten at the end

A unit is done iff its marker exists, and its outputs are exactly the parts its marker lists. Readers must use
:func:`committed_files` (or the ``files`` list of a finished run's manifest): any other file under ``responses/`` or
``errors/`` is a leftover of a retried task or an interrupted run, removed when its unit commits or the run resumes.
"""

from __future__ import annotations

import datetime as _dt
import json
import posixpath
from concurrent.futures import ThreadPoolExecutor

from screening.fs import StorageOptions, filesystem_for, is_local, to_uri, write_atomic

RESPONSES = "responses"
ERRORS = "errors"
SOURCES = "sources"   # (image_id, source) of every screened image: where the report finds names and originals
COMMITTED = "_committed"
MANIFEST = "manifest.json"
LOCK = "_lock.json"
FEATURES = "features"   # (image_id, f000..) the core output's spatial mean per image, float16
KINDS = (RESPONSES, ERRORS, SOURCES, FEATURES)
VSTATS = "vstats"   # --vertex-stats partials of a unit (.npz): merged into vertex_stats/ once the unit commits
VERTEX_STATS = "vertex_stats"   # the merged per-label vertex statistics (screening.vertex_stats format)


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def marker_files(marker: dict) -> dict[str, list[str]]:
    """``{"responses": [...], "errors": [...], "sources": [...]}`` (relative paths) of one marker; a single path is
    one part; a kind the marker does not have (runs before ``sources``) is empty."""
    files = marker.get("files") or {}
    return {k: ([files[k]] if isinstance(files.get(k), str) else list(files.get(k) or [])) for k in KINDS}


class OutputLayout:
    """Paths and marker I/O under one output root (picklable: holds only the URI and options)."""

    def __init__(self, out, *, storage=None):
        self.out = str(out)
        self.storage = StorageOptions.of(storage)
        self.fs, self.root = filesystem_for(self.out, self.storage)

    def __getstate__(self):
        return {"out": self.out, "storage": self.storage}

    def __setstate__(self, state):
        self.__init__(state["out"], storage=state["storage"])

    # -- paths (scheme-less, inside self.fs) --------------------------------------------------
    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def rel_part(self, kind: str, unit: str, name: str) -> str:
        return f"{kind}/{unit}/{name}"

    def marker_path(self, unit: str) -> str:
        return self.join(COMMITTED, f"{unit}.json")

    def uri(self, rel: str) -> str:
        return to_uri(self.fs, self.join(rel))

    def is_local(self) -> bool:
        return is_local(self.fs)

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
        """Small JSON, written atomically (S3 PUT is atomic; locally: temp file + fsync + rename)."""
        self.write_json(self.marker_path(unit), marker)

    def remove_marker(self, unit: str) -> None:
        p = self.marker_path(unit)
        if self.fs.exists(p):
            self.fs.rm(p)

    def write_json(self, path: str, obj: dict) -> None:
        data = json.dumps(obj, indent=1, sort_keys=False).encode()
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        write_atomic(self.fs, path, data)  # a marker must never be seen half-written

    # -- data files ---------------------------------------------------------------------------
    def _files_under(self, rel_dir: str) -> list[str]:
        d = self.join(rel_dir)
        try:
            self.fs.invalidate_cache(d)
            return [p for p in self.fs.find(d) if not posixpath.basename(p).startswith(".")]
        except FileNotFoundError:
            return []

    def unit_files(self, unit: str) -> list[str]:
        """Every data file of ``unit`` on storage (listed parts or not), as paths inside ``self.fs``."""
        return [p for kind in KINDS for p in self._files_under(f"{kind}/{unit}")]

    def remove_unlisted(self, unit: str, keep: dict[str, list[str]] | None = None) -> int:
        """Delete ``unit``'s data files that ``keep`` (a marker's files) does not list; all of them if None."""
        listed = {self.join(rel) for rels in (keep or {}).values() for rel in rels}
        gone = [p for p in self.unit_files(unit) if p not in listed]
        for kind in KINDS:  # the single-file layout of engine versions before the part files
            p = self.join(f"{kind}/{unit}.parquet")
            if p not in listed and self.fs.exists(p):
                gone.append(p)
        for p in gone:
            self.fs.rm(p)
        return len(gone)

    def remove_leftovers(self, units, markers: dict[str, dict]) -> int:
        """Resume: drop every file no marker lists, for pending (``units``) and committed units alike."""
        n = sum(self.remove_unlisted(u) for u in units)
        return n + sum(self.remove_unlisted(u, marker_files(m)) for u, m in markers.items())

    def prepare(self) -> None:
        for d in (RESPONSES, ERRORS, COMMITTED):
            self.fs.makedirs(self.join(d), exist_ok=True)

    def read_manifest(self) -> dict | None:
        p = self.join(MANIFEST)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "rb") as f:
            return json.loads(f.read().decode())


def committed_files(out, *, storage=None) -> dict[str, list[str]]:
    """``{"responses": [...], "errors": [...], "sources": [...]}``: URIs of the parts of committed units only, as
    their markers list (:class:`RunOutputs`, which every reader of a run uses)."""
    return RunOutputs(out, storage=storage).files()


class RunOutputs:
    """A run's committed outputs, as every reader (``ScreeningResult``, ``screening rank``, ``screening report``)
    sees them: the parts that commit markers list (any other file under ``responses/`` or ``errors/`` is a leftover
    of a retried task or an interrupted run), the manifest, and why there is nothing to read when there is not."""

    def __init__(self, out, *, storage=None):
        self.layout = out if isinstance(out, OutputLayout) else OutputLayout(out, storage=storage)
        self._markers = None

    @property
    def markers(self) -> dict[str, dict]:
        if self._markers is None:
            self._markers = self.layout.markers()
        return self._markers

    def is_run(self) -> bool:
        """The root is a pipeline run's output (it has ``_committed/``), not a plain folder of tables."""
        try:
            return self.layout.fs.isdir(self.layout.join(COMMITTED))
        except (OSError, ValueError):
            return False

    def files(self) -> dict[str, list[str]]:
        files = {kind: [] for kind in KINDS}
        for unit in sorted(self.markers):
            for kind, rels in marker_files(self.markers[unit]).items():
                files[kind] += [self.layout.uri(rel) for rel in rels]
        return files

    def manifest(self) -> dict | None:
        return self.layout.read_manifest()

    def config(self, *, storage=None, without: tuple[str, ...] = ()):
        """The run's :class:`~screening.pipeline.config.RunConfig` as its manifest records it
        (:meth:`RunConfig.from_record <screening.pipeline.config.RunConfig.from_record>`: the resolved model, ROIs
        and precision; ``custom_rois`` are recorded by name only and come back as None); None where there is no
        manifest (a plain folder of tables). ``storage``: S3 options to use instead of the recorded ones.
        ``without``: options left at their defaults, for a caller that does not need them (encoding one new image
        needs no ``vertex_stats`` label table, which the config's check would read again)."""
        from screening.pipeline.config import RunConfig

        manifest = self.manifest()
        if manifest is None:
            return None
        record = {k: v for k, v in (manifest.get("config") or {}).items() if k not in without}
        return RunConfig.from_record(record, storage=storage)

    def dataset(self, kind: str = RESPONSES):
        """A ``pyarrow.dataset`` over the committed ``kind`` parts, or None where there are none. A plain folder of
        tables (no ``_committed/``: written by hand or by another tool) is read whole."""
        import pyarrow.dataset as ds

        from screening.fs import arrow_filesystem, filesystem_for

        if not self.is_run():
            path = self.layout.join(kind)
            return (ds.dataset(path, format="parquet", filesystem=arrow_filesystem(self.layout.fs))
                    if self.layout.fs.exists(path) else None)
        uris = self.files()[kind]
        if not uris:
            return None
        fs = filesystem_for(uris[0], self.layout.storage)[0]
        return ds.dataset([filesystem_for(u, self.layout.storage)[1] for u in uris], format="parquet",
                          filesystem=arrow_filesystem(fs))

    def table(self, kind: str, empty):
        """Every committed ``kind`` row as one Arrow table (``empty``: the schema's empty table when there are none)."""
        dataset = self.dataset(kind)
        return empty if dataset is None else dataset.to_table()

    def why_no(self, kind: str = RESPONSES) -> str:
        """Why the run has no committed ``kind`` rows: no unit committed yet, or every committed image failed."""
        if not self.markers:
            return (f"{self.layout.out!r} is a pipeline run with no committed unit yet (no marker in "
                    f"{self.layout.uri(COMMITTED)})")
        images = sum(int(m.get("rows", 0)) for m in self.markers.values())
        return (f"the run's {len(self.markers)} committed unit(s) hold no {kind.rstrip('s')} rows: all {images} "
                f"image(s) failed; see {self.layout.uri(ERRORS)}/ for each image and why")


def build_manifest(*, engine_version, config, model, rois, shards, markers, run=None, reliability=None) -> dict:
    counts = {"images": 0, "responses_rows": 0, "errors": 0}
    for m in markers.values():
        counts["images"] += m["rows"]
        counts["responses_rows"] += m["responses_rows"]
        counts["errors"] += m["errors"]
    files = {kind: [] for kind in KINDS}
    for unit in sorted(markers):
        for kind, rels in marker_files(markers[unit]).items():
            files[kind] += rels
    manifest = {
        "engine_version": engine_version,
        "created": utcnow(),
        "config": config,
        "model": model,
        "rois": rois,
        "shards": [{"path": s.uri, "unit": s.unit, "rows": s.rows, "size": s.size, "version": s.version,
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
