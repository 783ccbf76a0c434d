"""``UnitSink``: one object owns a run's outputs, from lock to final manifest.

The shape is Ray Data's ``Datasink`` (``on_write_start`` / ``write`` / ``on_write_complete``), but a unit commits as
soon as its receipts account for every row (docs/pipeline.md, "Commit"), not once at the end:

- ``read_markers``: the one read of the output's commit markers (the plan's, ``open``'s, ``on_write_complete``'s);
- ``open``: take the output's lock, uncommit changed units that are to be redone, read the markers, say what is
  pending; ``check_compatible``: earlier results of another configuration are refused;
- ``on_write_start``: remove leftovers of earlier attempts, write the manifest of a running run;
- ``write_task``: what the worker write tasks run (``parts.write_parts``: part files, then receipts);
- ``ledger``: receipts in, unit commits out (``commit.UnitLedger``), with compaction as Ray tasks;
- ``on_write_complete``: the final manifest and the :class:`ScreeningResult`; ``close`` releases the lock.
"""

from __future__ import annotations

import contextlib

from screening.exceptions import InvalidParameterError, OutputError, ScreeningError, UnitsFailedError
from screening.pipeline.commit import UnitLedger
from screening.pipeline.lock import RunLock
from screening.pipeline.outputs import MANIFEST, OutputLayout, RunOutputs, build_manifest
from screening.pipeline.result import ScreeningResult
from screening.pipeline.tables import MEAN_SUBJECT
from screening.pipeline.timeline import setup_record

# A write task's working set: its input batch (up to 8192 images x 9 x 379 float32 = 112 MiB), the Arrow table and
# the Parquet encoder's buffers.
WRITE_TASK_MEMORY = 512 * 2**20
# Writing is mostly Arrow/Parquet encoding and I/O (~0.1 ms/image). With any CPU request, Ray Data's resource
# allocator gave the write stage a CPU budget of 0 on a busy node (read and decode hold the reservations), so its
# input piled up in the object store and the run crawled (seen at 1M rows); 0 CPUs lets it always run.
WRITE_TASK_CPUS = 0


def read_markers(layout: OutputLayout) -> dict[str, dict]:
    """unit -> marker of every committed unit of the output: what the plan resumes from, what ``open`` and
    ``on_write_complete`` find (the one place a run reads its markers)."""
    return layout.markers()


def check_compatible(markers: dict[str, dict], config_key: str, out: str) -> None:
    """Resuming into ``out`` is only allowed with the same model, subjects, ROIs and precision."""
    other = {m.get("config_key") for m in markers.values()} - {config_key}
    if other:
        raise InvalidParameterError(
            f"out={out!r} already holds results of a different configuration (model, subjects, ROIs, precision, "
            f"features or decode options differ: config key {sorted(other)[0]} vs {config_key}); use a new out directory, or "
            f"delete it to start over")


@contextlib.contextmanager
def output_errors(out: str, doing: str):
    """An OSError on the output root (disk full, no permission, storage down) becomes one clear OutputError."""
    try:
        yield
    except ScreeningError:
        raise
    except (NotADirectoryError, FileExistsError, PermissionError) as exc:  # the user's path: exit 2 in the CLI
        raise InvalidParameterError(f"out={out!r} cannot be used: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise OutputError(f"out={out!r}: {doing} failed: {type(exc).__name__}: {exc}") from exc


class _RayCompactor:
    """Runs ``parts.compact_unit`` as Ray tasks for the ledger (which stays free of Ray)."""

    def __init__(self, layout, row_group_rows: int):
        import ray

        from screening.pipeline.parts import compact_unit

        self.ray = ray
        self.layout = layout
        self.row_group_rows = row_group_rows
        self.task = ray.remote(num_cpus=0, memory=WRITE_TASK_MEMORY)(compact_unit)
        self.refs: set = set()

    def submit(self, unit: str, parts: list[str]):
        ref = self.task.remote(self.layout, unit, parts, row_group_rows=self.row_group_rows)
        self.refs.add(ref)
        return ref

    def ready(self, block: bool) -> list:
        if not self.refs:
            return []
        done, _ = self.ray.wait(list(self.refs), num_returns=1 if block else len(self.refs),
                                timeout=None if block else 0)
        out = []
        for ref in done:
            self.refs.discard(ref)
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - e.g. its node died: commit the parts as written
                out.append((ref, {"failure": f"{type(exc).__name__}: {exc}"}))
        return out


def write_task(plan):
    """Datasink's ``write``, on workers: ``(fn, fn_kwargs, resources)`` of the tasks that write a plan's part files
    and return receipts (``parts.write_parts``)."""
    from screening.pipeline.parts import write_parts

    return write_parts, {"layout": plan.layout, "labels": list(plan.subjects) + [MEAN_SUBJECT],
                         "roi_names": list(plan.roi_names), "config_key": plan.config_key}, \
        {"num_cpus": WRITE_TASK_CPUS, "memory": WRITE_TASK_MEMORY}


class UnitSink:
    """See the module docstring. Use as a context manager: ``with UnitSink(plan) as sink: ...``."""

    def __init__(self, plan):
        from screening import __version__

        self.plan, self.layout = plan, plan.layout
        self.lock: RunLock | None = None
        self.pending: list = []
        self.markers: dict = {}
        self._manifest_args = dict(engine_version=__version__, model=dict(plan.fingerprint),
                                   rois={n: {"n_vertices": v} for n, v in plan.n_vertices.items()},
                                   shards=plan.shards, reliability=plan.reliability)

    # -- Datasink's on_write_start ---------------------------------------------------------------
    def open(self) -> "UnitSink":
        with output_errors(self.plan.out, "preparing"):
            self.layout.prepare()
            self.lock = RunLock(self.layout).acquire()
        for unit in self.plan.redo:   # changed inputs, redo_changed=True: uncommit first (marker, then its parts)
            self.layout.remove_marker(unit)
        self.markers = read_markers(self.layout)
        # another run may have committed some since the plan was made
        self.pending = [s for s in self.plan.pending if s.unit not in self.markers]
        self.vertex = self._vertex_merger()
        return self

    def check_compatible(self, config_key: str) -> None:
        """The output's committed units (read by ``open``) were screened with this configuration key, else the run
        is refused."""
        check_compatible(self.markers, config_key, self.plan.out)

    def _vertex_merger(self):
        """``--vertex-stats``: the merger of committed units' partials (leftover partials of pending units go)."""
        if not self.plan.options.vertex_stats:
            return None
        from screening.models.registry import get_weights
        from screening.pipeline.vertex_sink import VertexStatsMerger, remove_partials

        weights = get_weights(self.plan.model_id)
        remove_partials(self.layout, [s.unit for s in self.pending])
        merger = VertexStatsMerger(self.layout, [s.unit for s in self.plan.shards], list(self.plan.subjects),
                                   weights.n_vertices, model_id=self.plan.model_id, variant=weights.variant)
        merger.resume(self.markers)
        return merger

    def on_write_start(self, plan) -> None:
        """``plan``: the one the run executes (its precision resolved on the cluster)."""
        self.plan = plan
        with output_errors(plan.out, "removing leftovers and writing the manifest"):
            n_left = self.layout.remove_leftovers([s.unit for s in self.pending], self.markers)
            self.layout.write_json(self.layout.join(MANIFEST), self._manifest(self.markers, {
                "state": "running", "run_id": self.lock.run_id, "leftover_files_removed": n_left}))

    def _manifest(self, markers, run: dict) -> dict:
        return build_manifest(markers=markers, run=run, config=dict(self.plan.config), **self._manifest_args)

    # -- receipts -> commits (driver) ------------------------------------------------------------
    def ledger(self, write_batch_size: int) -> UnitLedger:
        labels = len(self.plan.subjects) + 1
        # Compacted files have row groups of at least 8192 images (73,728 rows with 8 subjects + mean)
        compactor = _RayCompactor(self.layout, max(8192, write_batch_size) * labels)
        return UnitLedger(self.layout, self.pending, self.plan.config_key, labels=labels, run_id=self.lock.run_id,
                          compactor=compactor, on_commit=self.vertex.add if self.vertex is not None else None)

    # -- Datasink's on_write_complete -------------------------------------------------------------
    def on_write_complete(self, stats, seconds: float, nodes_lost=()) -> ScreeningResult:
        """The final manifest (the markers are the truth; it is their summary) and the result; raises
        :class:`UnitsFailedError` naming the units that could not be committed."""
        plan, layout = self.plan, self.layout
        markers = self.markers = read_markers(layout)
        images_run = stats.images if stats else 0
        failed = dict(stats.failed) if stats else {}
        run_info = {"state": "complete" if all(s.unit in markers for s in plan.shards) else "incomplete",
                    "run_id": self.lock.run_id, "units_run": len(stats.committed) if stats else 0,
                    "units_failed": failed,
                    "unreadable_shards": {u: {"uri": uri, "rows": n}
                                          for u, (uri, n) in (stats.unreadable if stats else {}).items()},
                    "units_skipped": len(plan.shards) - len(plan.pending),
                    "nodes_lost": list(nodes_lost),
                    "seconds": round(seconds, 3),
                    "images_per_s": round(images_run / seconds, 2) if images_run else 0.0,
                    "setup": setup_record(plan.out)}
        manifest = self._manifest(markers, run_info)
        manifest_note = ""
        try:
            layout.write_json(layout.join(MANIFEST), manifest)
        except OSError as exc:
            manifest_note = (f"\n  the manifest could not be written ({type(exc).__name__}: {exc}); "
                             f"the commit markers are intact")
            if not failed:
                raise OutputError(f"out={plan.out!r}: every unit is committed, but{manifest_note[6:]}") from exc
        files = RunOutputs(layout).files()
        result = ScreeningResult(out=plan.out, manifest_path=layout.uri(MANIFEST), responses_files=files["responses"],
                                 precision=plan.precision, precision_why=plan.precision_choice.get("why"),
                                 not_screened=dict(plan.config.get("not_screened") or {}),
                                 errors_files=files["errors"], counts=manifest["counts"],
                                 units_run=run_info["units_run"], units_skipped=run_info["units_skipped"],
                                 seconds=seconds, images_this_run=images_run, storage=plan.options.storage,
                                 roi_names=plan.roi_names, failed=failed,
                                 unreadable=dict(stats.unreadable) if stats else {},
                                 synthetic=bool(plan.fingerprint.get("synthetic")))
        if failed:
            raise UnitsFailedError(
                f"{len(failed)} unit(s) could not be committed; the other {len(markers)} are, and a rerun redoes "
                f"only the failed ones:\n  " + "\n  ".join(list(failed.values())[:10])
                + (f"\n  ... ({len(failed) - 10} more in {result.manifest_path})" if len(failed) > 10 else "")
                + manifest_note)
        return result

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> "UnitSink":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
