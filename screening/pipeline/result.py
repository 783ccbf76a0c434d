"""What a run produced (``ScreeningResult``): its counts and summary, and its committed rows, read through
:class:`~screening.pipeline.outputs.RunOutputs` like every other reader of a run."""

from __future__ import annotations

from dataclasses import dataclass, field

from screening.fs import StorageOptions, arrow_filesystem, filesystem_for
from screening.pipeline.outputs import ERRORS, FEATURES, RESPONSES, RunOutputs
from screening.pipeline.tables import ERROR_SCHEMA, responses_schema


@dataclass
class ScreeningResult:
    """What a run produced. Readers only see committed units."""

    out: str
    manifest_path: str
    responses_files: list[str]
    errors_files: list[str]
    counts: dict
    units_run: int
    units_skipped: int
    seconds: float
    images_this_run: int
    storage: StorageOptions = field(default_factory=StorageOptions)
    roi_names: tuple = field(default_factory=tuple)
    failed: dict = field(default_factory=dict)
    unreadable: dict = field(default_factory=dict)
    synthetic: bool = False
    not_screened: dict = field(default_factory=dict)   # what the input folder held besides images, by extension
    precision: str | None = None        # the core precision the encoders ran (None: nothing was screened)
    precision_why: str | None = None    # precision="auto": why this one

    @property
    def images_per_s(self) -> float:
        return self.images_this_run / self.seconds if self.seconds > 0 and self.images_this_run else 0.0

    @property
    def outputs(self) -> RunOutputs:
        return RunOutputs(self.out, storage=self.storage)

    def responses(self):
        """All committed response rows as a pandas DataFrame (long format, see docs/pipeline.md)."""
        return self.outputs.table(RESPONSES, responses_schema(self.roi_names).empty_table()).to_pandas()

    def features(self):
        """Each screened image's embedding (``image_id``, ``f000`` .. ``f383``, float16) as a DataFrame; empty when
        the run kept none (``features=False``)."""
        import pyarrow as pa

        return self.outputs.table(FEATURES, pa.table({"image_id": pa.array([], pa.string())})).to_pandas()

    def vertex_stats(self):
        """The merged per-label vertex statistics of a ``vertex_stats=`` run (:class:`screening.vertex_stats.VertexStats`:
        ``.mean(label)``, ``.var(label)``; what ``screening contrast`` reads)."""
        import os

        from screening.pipeline.outputs import VERTEX_STATS
        from screening.vertex_stats import VertexStats

        return VertexStats.load(os.path.join(str(self.out).removeprefix("file://"), VERTEX_STATS))

    def errors(self):
        """All committed error rows (``image_id``, ``source``, ``stage``, ``error``) as a DataFrame."""
        return self.outputs.table(ERRORS, ERROR_SCHEMA.empty_table()).to_pandas()

    def responses_dataset(self):
        """The committed responses as a Ray Dataset (for data too big for one pandas frame)."""
        import ray

        if not self.responses_files:
            return ray.data.from_arrow(responses_schema(self.roi_names).empty_table())
        fs, _ = filesystem_for(self.responses_files[0], self.storage)
        paths = [filesystem_for(u, self.storage)[1]
                 for u in self.responses_files]
        return ray.data.read_parquet(paths, filesystem=arrow_filesystem(fs))

    def _not_screened(self) -> str:
        if not self.not_screened:
            return ""
        n = sum(self.not_screened.values())
        return (f"  not screened: {n} other file(s) beside the images ("
                + ", ".join(f"{k} {v}" for k, v in self.not_screened.items()) + ")\n")

    def summary(self) -> str:
        c = self.counts
        precision = ""
        if self.precision:
            precision = f"  precision: {self.precision}" + (f" (auto: {self.precision_why})" if self.precision_why else "") + "\n"
        return (("SYNTHETIC WEIGHTS (a synthetic model store: these responses are not brain predictions)\n"
                 if self.synthetic else "") + f"screened {c['images']} images ({c['errors']} errors, {c['responses_rows']} response rows); "
                f"this run: {self.units_run} unit(s), {self.images_this_run} images in {self.seconds:.1f} s "
                f"= {self.images_per_s:.1f} images/s, {self.units_skipped} unit(s) already committed\n"
                + precision + self._not_screened() +
                f"  responses: {self.out.rstrip('/')}/responses/  errors: {self.out.rstrip('/')}/errors/  "
                f"manifest: {self.manifest_path}"
                + "".join(f"\n  UNREADABLE: {n} row(s) of {uri} could not be read (stage 'read' in errors/)"
                          for uri, n in self.unreadable.values())
                + "".join(f"\n  FAILED {why}" for why in self.failed.values()))
