"""``ScreeningPlan``: everything a run needs, built and validated on the driver before any Ray work.

``build_plan`` resolves the store, model, subjects and ROIs, lists the input shards with their row counts (Parquet
footers), checks the columns, reads the output's commit markers and decides which units are pending. Every bad value
raises :class:`~screening.exceptions.InvalidParameterError` naming the parameter, the value and the valid ones.
Cluster resources (GPUs) are checked by :func:`check_resources` once Ray is connected, still before any task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from screening.hardware import AUTO, CUDA_ONLY_PRECISIONS, PRECISIONS
from screening.exceptions import InputChangedError, InvalidParameterError
from screening.fs import StorageOptions
from screening import sources
from screening.sources import ColumnSpec, PlanContext, Unit
from screening.pipeline.config import RunConfig
from screening.pipeline.decode_modes import decode_mode
from screening.pipeline.outputs import OutputLayout
from screening.pipeline.sink import check_compatible, read_markers

# Rows per encoder actor call (Ray's batch). On CPU the actor runs them as forwards of a few images
# (sizing.CpuPool.forward_chunk), which bounds its activations.
ACTOR_BATCH_ROWS = {"cpu": 64, "gpu": 256}
# Images per part file: 8192 x 9 labels = 73,728 response rows (one row group) on GPU; CPU encoders fill parts
# ~100x slower, so a smaller part keeps commits (restart points) minutes, not hours, apart.
DEFAULT_WRITE_BATCH_SIZE = {"cpu": 1024, "gpu": 8192}
DECODE_BATCH_SIZE = 32
# docs/pipeline.md "Driver capacity" / "Sizing": images/s per GPU encoder (estimated from FLOPs, not measured), and
# what one driver core schedules on the decode-task plan (measured 26,000-55,000 on an AMD EPYC; the lower end here)
GPU_ENCODER_IMAGES_PER_S = 1_500
DECODE_TASKS_DRIVER_IMAGES_PER_S = 25_000
SYNTHETIC_RELIABILITY_NOTE = ("noise ceilings of a synthetic store are synthetic: reliability filtering is "
                              "meaningless here")


@dataclass(frozen=True)
class ScreeningPlan:
    """One run, resolved (see ``build_plan``): the checked options and what they resolve to.

    ``options`` is what was asked (a :class:`RunConfig`); the other fields are what planning found: the opened
    store, the model and its fingerprint, the subjects and ROI sets, the input shards and which are pending.
    """

    options: RunConfig
    shards: tuple[Unit, ...]
    pending: tuple[Unit, ...]
    spec: ColumnSpec
    store: Any
    model_id: str
    fingerprint: Mapping
    rois: Mapping[str, np.ndarray]
    n_vertices: Mapping
    config: Mapping              # the manifest's record of the run's options, resolved
    config_key: str | None       # None until precision="auto" is resolved (with_precision)
    reliability: Mapping | None = None
    redo: tuple[str, ...] = ()     # committed units whose input changed, to be redone (redo_changed=True)
    decode_batch_size: int = DECODE_BATCH_SIZE
    precision: str | None = None   # the core precision; None: "auto", resolved where the encoders run (run.py)
    key_source: Mapping = field(default_factory=dict)   # what the config key hashes, but the precision

    def with_precision(self, precision: str, choice: Mapping) -> "ScreeningPlan":
        """This plan with ``auto`` resolved: ``choice`` (``hardware.PrecisionChoice.record()``) goes to the manifest."""
        config = {**self.config, "precision": precision, "precision_choice": dict(choice)}
        return dataclasses.replace(self, precision=precision, config=config,
                                   config_key=_config_key(self.key_source, precision))

    @property
    def precision_choice(self) -> Mapping:
        """How precision="auto" was resolved (precision, why, hardware, rule, probe); empty for an asked precision."""
        return self.config.get("precision_choice") or {}

    @property
    def out(self) -> str:
        return self.options.out

    @property
    def subjects(self) -> tuple[str, ...]:
        return self.options.subjects

    @property
    def roi_names(self) -> tuple[str, ...]:
        return tuple(self.rois)

    @property
    def reliability_threshold(self) -> float | None:
        return None if self.reliability is None else self.reliability["threshold"]

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.options.out, storage=self.options.storage)

    @property
    def pending_rows(self) -> int:
        return sum(s.rows for s in self.pending)


def resolve_store(store, *, storage: StorageOptions | None = None):
    if isinstance(store, (str, os.PathLike)):
        from screening.store import open_store

        return open_store(os.fspath(store), storage_options=storage)
    for attr in ("load_model", "fingerprint", "model_ids"):
        if not hasattr(store, attr):
            raise InvalidParameterError(f"store must be a location (path or s3:// URI) or a ModelStore; got "
                                        f"{type(store).__name__} without .{attr}()")
    return store


def resolve_model_id(store, model_id) -> str:
    from screening.models.registry import DEFAULT_MODEL_ID

    ids = list(store.model_ids())
    if model_id is None:
        if len(ids) == 1:
            return ids[0]
        model_id = DEFAULT_MODEL_ID
    if model_id not in ids:
        raise InvalidParameterError(f"model_id={model_id!r} is not in the store; models in the store: "
                                    f"{', '.join(ids) or '(none)'}")
    return model_id


def reliability_rois(store, model_id: str, variant: str, roi_set, subjects, threshold: float, noise_ceiling: str,
                     synthetic: bool):
    """Per-subject reliability-filtered ROI columns (name -> {subject -> columns}) and the manifest record."""
    from screening.rois import reliability_filter

    if not hasattr(store, "metadata"):
        raise InvalidParameterError(f"reliability_threshold needs the store's metadata (noise ceilings); "
                                    f"{type(store).__name__} has no .metadata()")
    key = f"{noise_ceiling}_noiseceiling"
    ncs = {}
    for s in subjects:
        table = store.metadata(model_id, s).get("noise_ceiling") or {}
        if key not in table:
            raise InvalidParameterError(f"the store's metadata for {model_id} / {s} has no noise ceiling {key!r}; "
                                        f"it has: {', '.join(sorted(table)) or '(none)'}")
        ncs[s] = np.asarray(table[key])
    record = {"threshold": threshold, "noise_ceiling": noise_ceiling, "metadata_key": key,
              "rule": "per subject, keep ROI vertices with noise ceiling >= threshold"}
    if synthetic:
        import warnings

        record["note"] = SYNTHETIC_RELIABILITY_NOTE
        warnings.warn(SYNTHETIC_RELIABILITY_NOTE, UserWarning, stacklevel=4)
    return reliability_filter(roi_set, ncs, threshold, variant), record


def build_plan(config: RunConfig) -> ScreeningPlan:
    """Resolve a checked :class:`RunConfig`: open the store, find the model and its ROI sets, list the input shards
    (Parquet footers, tar member counts), read the output's commit markers and decide which units are pending."""
    from screening import __version__

    if not isinstance(config, RunConfig):
        raise InvalidParameterError(f"build_plan takes a RunConfig (RunConfig.of(images, store, out, ...)); got "
                                    f"{type(config).__name__}")
    store = resolve_store(config.store, storage=config.storage)
    model_id = resolve_model_id(store, config.model_id)
    if config.vertex_stats:
        from screening.models.registry import get_weights
        from screening.pipeline.vertex_sink import check_request

        check_request(config.vertex_stats, config.images, config.storage, len(config.subjects),
                      get_weights(model_id).n_vertices)
    fingerprint = dict(store.fingerprint(model_id))
    roi_set, reliability, nv = resolve_rois(store, model_id, fingerprint, config)
    layout = OutputLayout(config.out, storage=config.storage)
    markers = read_markers(layout)   # committed tar units keep their recorded row counts (no recount)
    shards, spec, skipped = sources.plan(config.images, PlanContext(
        markers, image_column=config.image_column, id_column=config.id_column, storage=config.storage,
        remote_map=remote_map, source_options=dict(config.source_options),
        label_column=label_column(config.vertex_stats)))
    record = {**config.record(), "model_id": model_id, "rois": list(roi_set), "id_derived": spec.id_column is None,
              "engine_version": __version__, "not_screened": dict(skipped)}
    key_source = _key_source(fingerprint, nv, roi_set, config)
    auto = config.precision == AUTO
    precision = recorded_precision(markers, key_source) if auto else config.precision   # None: resolved in run.py
    if precision is not None or markers:   # other results than these options give are refused
        check_compatible(markers, _config_key(key_source, precision or "fp32"), config.out)
    redo = check_inputs(markers, shards, config.out, config.redo_changed)
    pending = tuple(s for s in shards if s.unit not in markers or s.unit in redo)
    plan = ScreeningPlan(options=config, shards=shards, pending=pending, spec=spec, store=store, model_id=model_id,
                         fingerprint=fingerprint, rois=roi_set, n_vertices=nv, config=record,
                         config_key=None if precision is None else _config_key(key_source, precision),
                         reliability=reliability, redo=redo, precision=precision, key_source=key_source)
    if auto and precision is not None:
        plan = plan.with_precision(precision, {"precision": precision, "why": f"out already holds units screened in "
                                               f"{precision}: a resumed run keeps the recorded precision"})
    return plan


def label_column(vertex_stats: str | None) -> str | None:
    """The input column ``--vertex-stats column:NAME`` reads each image's label from (None for other specs)."""
    if vertex_stats and vertex_stats.startswith("column:"):
        return vertex_stats[len("column:"):]
    return None


def recorded_precision(markers: Mapping[str, dict], key_source: Mapping) -> str | None:
    """The precision whose config key the committed units carry (``auto`` resuming an output), else None."""
    keys = {m.get("config_key") for m in markers.values()}
    for p in PRECISIONS:
        if _config_key(key_source, p) in keys:
            return p
    return None


def resolve_rois(store, model_id, fingerprint, config: RunConfig):
    """``(roi_set, reliability or None, vertices per ROI)``: named ROIs, composites and custom sets, per subject."""
    from screening.rois import build_roi_set, default_roi_names, n_vertices

    variant = fingerprint["variant"]
    names = None if config.rois is None else list(config.rois)
    parcels = {}
    if config.parcellation is not None:   # the user's own labels: per-subject exact ROI columns
        from screening.parcellation import load_parcellation

        parcellation = load_parcellation(config.parcellation, config.subjects, prefix=config.parcellation_prefix)
        parcels = parcellation.roi_columns(variant, config.subjects)
        if names is not None:   # named ones only, unless none is named
            listed = [n for n in names if n in parcels]
            parcels = {n: parcels[n] for n in listed} if listed else parcels
            names = [n for n in names if n not in parcels]
    if config.composites:  # composites are screened too: appended after the named ROIs unless listed there
        names = default_roi_names(variant) if names is None else names
        names += [c for c in config.composites if c not in names]
    roi_set = build_roi_set(variant, names, composites=config.composites, custom=config.custom_rois,
                            allow_empty=bool(parcels))
    if parcels:
        from screening.parcellation import add_columns

        roi_set = add_columns(roi_set, parcels, "--parcellation-prefix")
    reliability = None
    if config.reliability_threshold is not None:
        # Per subject, keep the ROI vertices whose noise ceiling passes; the collapse stays exact (one matmul).
        roi_set, reliability = reliability_rois(store, model_id, variant, roi_set, config.subjects,
                                                config.reliability_threshold, config.noise_ceiling,
                                                bool(fingerprint.get("synthetic")))
    return roi_set, reliability, n_vertices(roi_set, config.subjects)


def _key_source(fingerprint, nv, roi_set, config: RunConfig) -> dict:
    """What the results depend on, but the precision (``_config_key`` adds it once resolved): the model, the ROI
    vertex sets, and the options marked as part of the key (``RunConfig.key_fields``)."""
    subjects = config.subjects
    return {"fingerprint": fingerprint, "n_vertices": nv,
            "roi_hash": {n: hashlib.sha1(np.asarray(v if not isinstance(v, Mapping) else
                                                    np.concatenate([v[s] for s in subjects])).tobytes()).hexdigest()
                         for n, v in roi_set.items()},
            **config.key_fields()}


def _config_key(key_source: Mapping, precision: str) -> str:
    """A resume with another key is refused. Keys of earlier versions stay valid (the same JSON is hashed)."""
    return hashlib.sha256(json.dumps({**key_source, "precision": precision}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def remote_map(fn, args: list) -> list:
    """``[fn(*a) for a in args]``, one Ray task each (a source's planning work that reads input bytes, such as
    counting a tar's members, runs on the cluster, never on the driver)."""
    from screening.pipeline.ray_session import ensure_ray

    ray = ensure_ray()
    task = ray.remote(num_cpus=1, max_retries=3)(fn)
    return ray.get([task.remote(*a) for a in args])


def _what_changed(recorded: dict | None, shard: Unit) -> str | None:
    if not isinstance(recorded, dict):
        return "its marker records no input identity (written by an older engine)"
    now = shard.identity()
    diffs = [f"{k} {recorded.get(k)!r} -> {now[k]!r}" for k in ("uri", "rows", "size", "version")
             if recorded.get(k) != now[k]]
    return ", ".join(diffs) or None


def check_inputs(markers: Mapping[str, dict], shards, out: str, redo_changed: bool) -> tuple[str, ...]:
    """Committed units must have been computed from these very inputs (see docs/pipeline.md, "Resume").

    A committed unit that is not among the inputs is refused (its results would be reported as this run's). A unit
    whose shard changed (URI, size, version or row count) is refused, naming the shard and the change, unless
    ``redo_changed``: then it is returned, to be uncommitted and redone.
    """
    by_unit = {s.unit: s for s in shards}
    foreign = sorted(set(markers) - set(by_unit))
    if foreign:
        src = [(markers[u].get("input") or {}).get("uri", "?") for u in foreign[:3]]
        raise InputChangedError(
            f"out={out!r} holds committed results for {len(foreign)} shard(s) that are not among this run's inputs "
            f"({', '.join(f'{u} from {s}' for u, s in zip(foreign, src))}{', ...' if len(foreign) > 3 else ''}); "
            f"use a new out, or the same inputs as before")
    changed = {u: c for u in markers if (c := _what_changed(markers[u].get("input"), by_unit[u]))}
    if changed and not redo_changed:
        items = list(changed.items())
        raise InputChangedError(
            f"out={out!r} holds results for {len(changed)} shard(s) that changed since they were screened: "
            + "; ".join(f"{by_unit[u].uri}: {c}" for u, c in items[:3]) + ("; ..." if len(items) > 3 else "")
            + ". Use a new out, or redo_changed=True (--redo-changed) to screen the changed shards again")
    return tuple(sorted(changed))


@dataclass(frozen=True)
class Resources:
    """What the actor pool asks for, resolved against the connected cluster."""

    num_gpus: float
    num_cpus: float
    min_size: int
    max_size: int
    batch_size: int
    device: str
    write_batch_size: int
    threads: int | None = None     # torch threads per actor (CPU encoders; GPU ones keep torch's default)
    task_cpus: float = 1.0         # Ray CPUs per read / decode task
    memory: int | None = None      # Ray memory per actor (CPU encoders: its private part, sizing.actor_footprint)
    forward_chunk: int | None = None  # images per forward inside one actor batch (CPU: bounds activations)
    decode_threads: int = 1        # decode="actor": threads decoding inside each encoder actor


def check_resources(plan: ScreeningPlan, cluster: Mapping[str, float], nodes=None) -> Resources:
    """Resolve GPUs / pool size / batch size against ``ray.cluster_resources()`` and, for CPU encoders, the alive
    nodes' resources (``nodes``: their ``CPU`` / ``memory``; default: the cluster as one node); raise instead of
    waiting forever."""
    gpus = float(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 0))
    g = plan.options.num_gpus_per_encoder
    if g is None:
        g = 1.0 if gpus >= 1 else 0.0
    if g > 0 and gpus < g:
        raise InvalidParameterError(
            f"num_gpus_per_encoder={plan.options.num_gpus_per_encoder} but the Ray cluster has {gpus:g} GPU(s); "
            f"use num_gpus_per_encoder=0 (CPU encoders) or connect to a cluster with GPUs")
    if g == 0:
        _check_cpu_encoders(plan)
        return _cpu_resources(plan, cluster, nodes)
    c = plan.options.num_cpus_per_encoder
    if c is None:   # decode="actor": the actor's CPUs decode (NSD-sized JPEGs: ~520 images/s per core)
        c = decode_mode(plan.options.decode).gpu_encoder_cpus
    if c > cpus:
        raise InvalidParameterError(f"num_cpus_per_encoder={c:g} but the Ray cluster has {cpus:g} CPU(s); "
                                    f"valid: 0 .. {cpus:g}")
    if plan.options.num_encoders is None:
        lo, hi = 1, max(1, int(gpus // g))
    elif isinstance(plan.options.num_encoders, tuple):
        lo, hi = plan.options.num_encoders
    else:
        lo = hi = plan.options.num_encoders
    if lo * g > gpus:
        raise InvalidParameterError(f"num_encoders={plan.options.num_encoders!r} x num_gpus_per_encoder={g:g} needs "
                                    f"{lo * g:g} GPUs; the cluster has {gpus:g}")
    if cpus - lo * c < 1:
        # read and decode tasks each need a whole CPU: without one left they never start (the run would hang)
        raise InvalidParameterError(
            f"the Ray cluster has {cpus:g} CPU(s) and {lo} encoder(s) x num_cpus_per_encoder={c:g} hold "
            f"{lo * c:g}; at least 1 CPU must stay free for reading and decoding. Use a smaller "
            f"num_cpus_per_encoder (e.g. {max(0.0, (cpus - 1) / max(lo, 1)):g}) or a cluster with more CPUs")
    if c > 0:   # more encoders than that, however Ray places them, could take that last CPU too
        hi = min(hi, max(lo, int((cpus - 1) / c + 1e-9)))
    decode_mode(plan.options.decode).check_gpu_encoders()
    return Resources(num_gpus=g, num_cpus=c, min_size=lo, max_size=hi, batch_size=plan.options.batch_size or
                     ACTOR_BATCH_ROWS["gpu"], device="cuda",
                     write_batch_size=plan.options.write_batch_size or DEFAULT_WRITE_BATCH_SIZE["gpu"],
                     decode_threads=max(1, int(c)))


def driver_notice(plan: ScreeningPlan, res: Resources) -> str | None:
    """A GPU pool that could outrun one driver on the decode-task plan: say so, and what to use instead."""
    if res.device != "cuda" or not decode_mode(plan.options.decode).decode_tasks:
        return None
    rate = int(res.max_size * res.num_gpus * GPU_ENCODER_IMAGES_PER_S)
    if rate < DECODE_TASKS_DRIVER_IMAGES_PER_S:
        return None
    return (f"screening: {res.max_size} GPU encoders can take ~{rate:,} images/s, more than one driver core schedules "
            f"with decode tasks (~{DECODE_TASKS_DRIVER_IMAGES_PER_S:,}); use --decode actor (decode='actor': the "
            f"encoders decode, ~135,000 images/s per driver core) or split the inputs over several drivers")


def _cpu_resources(plan: ScreeningPlan, cluster: Mapping[str, float], nodes) -> Resources:
    """CPU encoders: nearly every core to few multi-threaded actors, bounded by memory (``sizing``)."""
    from screening.pipeline.sizing import actor_footprint, size_cpu_pool

    width = int(plan.fingerprint.get("width") or 384)
    # auto not yet resolved: size for fp32, the larger of the two CPU precisions
    footprint = actor_footprint(width, len(plan.subjects) * len(plan.roi_names), plan.precision or "fp32")
    per_node = [(float(n.get("CPU", 0)), n.get("memory")) for n in (nodes or [cluster])]
    pool = size_cpu_pool(per_node, footprint, width, num_encoders=plan.options.num_encoders,
                         num_cpus_per_encoder=plan.options.num_cpus_per_encoder)
    return Resources(num_gpus=0.0, num_cpus=pool.num_cpus, min_size=pool.min_size, max_size=pool.max_size,
                     batch_size=plan.options.batch_size or ACTOR_BATCH_ROWS["cpu"], device="cpu",
                     write_batch_size=plan.options.write_batch_size or DEFAULT_WRITE_BATCH_SIZE["cpu"],
                     threads=pool.threads, task_cpus=pool.task_cpus, memory=pool.memory,
                     forward_chunk=pool.forward_chunk, decode_threads=max(1, pool.threads or 1))


def _check_cpu_encoders(plan: ScreeningPlan) -> None:
    """CPU encoders cannot take the GPU-only options; refused before any task (CLI: exit 2)."""
    if plan.precision in CUDA_ONLY_PRECISIONS:
        raise InvalidParameterError(
            f"precision={plan.precision!r} (--precision {plan.precision}) needs GPU encoders, but this run's "
            f"encoders are CPU ones (no GPUs in the cluster, or num_gpus_per_encoder=0); use precision='auto', "
            f"'fp32' or 'bf16'")
    decode_mode(plan.options.decode).check_cpu_encoders(null_stage=plan.options.encoder_stage == "null")

