"""``ScreeningPlan``: everything a run needs, built and validated on the driver before any Ray work.

``build_plan`` resolves the store, model, subjects and ROIs, lists the input shards with their row counts (Parquet
footers), checks the columns, reads the output's commit markers and decides which units are pending. Every bad value
raises :class:`~screening.exceptions.InvalidParameterError` naming the parameter, the value and the valid ones.
Cluster resources (GPUs) are checked by :func:`check_resources` once Ray is connected, still before any task.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from screening.exceptions import InputChangedError, InvalidParameterError
from screening.io._fs import filesystem_for, to_uri
from screening.io.image_source import (ColumnSpec, Shard, column_spec, list_shards, read_footers, stat_shards,
                                       unit_names)
from screening.pipeline.outputs import OutputLayout, check_compatible

PRECISIONS = ("fp32", "bf16")
DEFAULT_BATCH_SIZE = {"cpu": 64, "gpu": 256}
# Images per part file: 8192 x 9 labels = 73,728 response rows (one row group) on GPU; CPU encoders fill parts
# ~100x slower, so a smaller part keeps commits (restart points) minutes, not hours, apart.
DEFAULT_WRITE_BATCH_SIZE = {"cpu": 1024, "gpu": 8192}
DECODE_BATCH_SIZE = 32
NOISE_CEILINGS = tuple(f"{part}_{kind}" for part in ("test", "train", "artificial") for kind in ("n-avg", "n-1"))
SYNTHETIC_RELIABILITY_NOTE = ("noise ceilings of a synthetic store are synthetic: reliability filtering is "
                              "meaningless here")


@dataclass(frozen=True)
class ScreeningPlan:
    """A validated, immutable description of one screening run (see ``build_plan``)."""

    images: str
    out: str
    shards: tuple[Shard, ...]
    pending: tuple[Shard, ...]
    spec: ColumnSpec
    store: Any
    model_id: str
    fingerprint: Mapping
    subjects: tuple[str, ...]
    rois: Mapping[str, np.ndarray]
    roi_names: tuple[str, ...]
    n_vertices: Mapping
    precision: str
    batch_size: int | None
    write_batch_size: int | None
    decode_batch_size: int
    fast_decode: bool
    num_encoders: int | tuple[int, int] | None
    num_gpus_per_encoder: float | None
    num_cpus_per_encoder: float
    endpoint_url: str | None
    anonymous: bool | None
    progress: bool
    config: Mapping
    config_key: str
    throttle_s: float = 0.0
    reliability: Mapping | None = None
    redo: tuple[str, ...] = ()     # committed units whose input changed, to be redone (redo_changed=True)
    encoder_stage: str = "model"   # "null": benchmarks only (stages.NullEncoderActor)

    @property
    def reliability_threshold(self) -> float | None:
        return None if self.reliability is None else self.reliability["threshold"]

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.out, endpoint_url=self.endpoint_url, anonymous=self.anonymous)

    @property
    def pending_rows(self) -> int:
        return sum(s.rows for s in self.pending)


def _check_bool(name, v):
    if not isinstance(v, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} must be True or False; got {v!r}")
    return bool(v)


def _check_pos_int(name, v, allow_none=True):
    if v is None and allow_none:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidParameterError(f"{name} must be a positive integer{' or None' if allow_none else ''}; got {v!r}")
    return int(v)


def _check_nonneg(name, v, allow_none=True):
    if v is None and allow_none:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) or v < 0:
        raise InvalidParameterError(f"{name} must be a number >= 0{' or None' if allow_none else ''}; got {v!r}")
    return float(v)


def resolve_subjects(subjects) -> tuple[str, ...]:
    from screening.models._weights import SUBJECTS

    if subjects is None or (isinstance(subjects, str) and subjects == "all"):
        return tuple(SUBJECTS)
    if isinstance(subjects, str):
        subjects = [s for s in subjects.split(",") if s]
    subjects = list(subjects)
    if not subjects:
        raise InvalidParameterError(f"subjects must name at least one subject; valid subjects: 'all', {', '.join(SUBJECTS)}")
    for s in subjects:
        if s not in SUBJECTS:
            raise InvalidParameterError(f"subjects: {s!r} is not a subject; valid subjects: 'all', {', '.join(SUBJECTS)}")
    if len(set(subjects)) != len(subjects):
        raise InvalidParameterError(f"subjects lists a subject twice: {subjects}")
    return tuple(subjects)


def resolve_store(store, *, endpoint_url=None, anonymous=None):
    if isinstance(store, (str, os.PathLike)):
        from screening.store import open_store

        return open_store(os.fspath(store), endpoint_url=endpoint_url, anonymous=anonymous)
    for attr in ("load_model", "fingerprint", "model_ids"):
        if not hasattr(store, attr):
            raise InvalidParameterError(f"store must be a location (path or s3:// URI) or a ModelStore; got "
                                        f"{type(store).__name__} without .{attr}()")
    return store


def resolve_model_id(store, model_id) -> str:
    from screening.models._weights import DEFAULT_MODEL_ID

    ids = list(store.model_ids())
    if model_id is None:
        if len(ids) == 1:
            return ids[0]
        model_id = DEFAULT_MODEL_ID
    if model_id not in ids:
        raise InvalidParameterError(f"model_id={model_id!r} is not in the store; models in the store: "
                                    f"{', '.join(ids) or '(none)'}")
    return model_id


def check_reliability_args(reliability_threshold, noise_ceiling) -> tuple[float | None, str]:
    """Validate ``reliability_threshold`` (a finite number or None) and ``noise_ceiling`` (one of NOISE_CEILINGS)."""
    if not isinstance(noise_ceiling, str) or noise_ceiling not in NOISE_CEILINGS:
        raise InvalidParameterError(f"noise_ceiling={noise_ceiling!r} is not valid; valid noise ceilings: "
                                    f"{', '.join(NOISE_CEILINGS)}")
    if reliability_threshold is None:
        return None, noise_ceiling
    if (isinstance(reliability_threshold, (bool, np.bool_))
            or not isinstance(reliability_threshold, (int, float, np.integer, np.floating))
            or not np.isfinite(reliability_threshold)):
        raise InvalidParameterError(f"reliability_threshold must be a finite number (noise-ceiling units, as in the "
                                    f"store's metadata) or None; got {reliability_threshold!r}")
    return float(reliability_threshold), noise_ceiling


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


def build_plan(images, store, out, *, model_id=None, subjects="all", rois=None, composites=None, custom_rois=None,
               batch_size=None, precision="bf16", num_encoders=None, num_gpus_per_encoder=None,
               num_cpus_per_encoder=1, fast_decode=True, image_column="image", id_column="image_id",
               endpoint_url=None, anonymous=None, progress=True, throttle_s=0.0, reliability_threshold=None,
               noise_ceiling="test_n-avg", redo_changed=False, write_batch_size=None,
               encoder_stage="model") -> ScreeningPlan:
    """Validate every argument of :func:`screening.pipeline.screen` and return the frozen plan."""
    from screening import __version__
    from screening.rois import build_roi_set, default_roi_names, n_vertices

    if precision not in PRECISIONS:
        raise InvalidParameterError(f"precision={precision!r} is not valid; valid precisions: {', '.join(PRECISIONS)}")
    batch_size = _check_pos_int("batch_size", batch_size)
    write_batch_size = _check_pos_int("write_batch_size", write_batch_size)
    fast_decode = _check_bool("fast_decode", fast_decode)
    progress = _check_bool("progress", progress)
    redo_changed = _check_bool("redo_changed", redo_changed)
    num_gpus_per_encoder = _check_nonneg("num_gpus_per_encoder", num_gpus_per_encoder)
    num_cpus_per_encoder = _check_nonneg("num_cpus_per_encoder", num_cpus_per_encoder, allow_none=False)
    if num_gpus_per_encoder is not None and num_gpus_per_encoder > 1 and num_gpus_per_encoder != int(num_gpus_per_encoder):
        raise InvalidParameterError(f"num_gpus_per_encoder above 1 must be a whole number; got {num_gpus_per_encoder}")
    if isinstance(num_encoders, (tuple, list)):
        if len(num_encoders) != 2:
            raise InvalidParameterError(f"num_encoders must be an int or a (min, max) pair; got {num_encoders!r}")
        lo, hi = (_check_pos_int("num_encoders", v, allow_none=False) for v in num_encoders)
        if lo > hi:
            raise InvalidParameterError(f"num_encoders=(min, max) needs min <= max; got {num_encoders!r}")
        num_encoders = (lo, hi)
    else:
        num_encoders = _check_pos_int("num_encoders", num_encoders)
    for name, v in (("image_column", image_column), ("id_column", id_column)):
        if not isinstance(v, str) or not v:
            raise InvalidParameterError(f"{name} must be a non-empty string; got {v!r}")
    subjects = resolve_subjects(subjects)
    reliability_threshold, noise_ceiling = check_reliability_args(reliability_threshold, noise_ceiling)

    store = resolve_store(store, endpoint_url=endpoint_url, anonymous=anonymous)
    model_id = resolve_model_id(store, model_id)
    fingerprint = dict(store.fingerprint(model_id))
    variant = fingerprint["variant"]
    if isinstance(rois, str):
        rois = [r for r in rois.split(",") if r]
    names = None if rois is None else list(rois)
    if composites:  # composites are screened too: appended after the named ROIs unless listed there
        names = default_roi_names(variant) if names is None else names
        names += [c for c in composites if c not in names]
    roi_set = build_roi_set(variant, names, composites=composites, custom=custom_rois)
    reliability = None
    if reliability_threshold is not None:
        # Per subject, keep the ROI vertices whose noise ceiling passes; the collapse stays exact (one matmul).
        roi_set, reliability = reliability_rois(store, model_id, variant, roi_set, subjects, reliability_threshold,
                                                noise_ceiling, bool(fingerprint.get("synthetic")))
    nv = n_vertices(roi_set, subjects)

    # Inputs: list shards, read footers (row counts), check columns on the first schema.
    in_fs, in_path = filesystem_for(os.fspath(images), endpoint_url=endpoint_url, anonymous=anonymous)
    paths = list_shards(in_fs, in_path)
    if not paths:
        raise InvalidParameterError(f"images={os.fspath(images)!r} holds no .parquet files")
    metas = read_footers(in_fs, paths)
    spec = column_spec(metas[0].schema.to_arrow_schema(), image_column, id_column)
    for p, m in zip(paths[1:], metas[1:]):
        other = column_spec(m.schema.to_arrow_schema(), image_column, id_column)
        if other != spec:
            raise InvalidParameterError(f"input shard {p!r} has a different layout ({other}) than {paths[0]!r} "
                                        f"({spec}); all shards of a run must share one layout")
    stats = stat_shards(in_fs, paths)
    shards = tuple(Shard(p, to_uri(in_fs, p), u, int(m.num_rows), size, version)
                   for p, u, m, (size, version) in zip(paths, unit_names(paths), metas, stats))

    config = {
        "images": os.fspath(images), "out": os.fspath(out), "model_id": model_id, "subjects": list(subjects),
        "store": str(getattr(store, "location", store)), "endpoint_url": endpoint_url, "anonymous": anonymous,
        "rois": list(roi_set), "composites": {k: list(v) for k, v in (composites or {}).items()},
        "custom_rois": sorted(custom_rois or {}), "precision": precision, "fast_decode": fast_decode,
        "image_column": image_column, "id_column": id_column, "id_derived": spec.id_column is None,
        "batch_size": batch_size, "write_batch_size": write_batch_size, "num_encoders": num_encoders, "num_gpus_per_encoder": num_gpus_per_encoder,
        "num_cpus_per_encoder": num_cpus_per_encoder, "engine_version": __version__,
        "reliability_threshold": reliability_threshold, "noise_ceiling": noise_ceiling,
    }
    key_src = {"fingerprint": fingerprint, "subjects": subjects, "n_vertices": nv,
               "roi_hash": {n: hashlib.sha1(np.asarray(v if not isinstance(v, Mapping) else
                                                       np.concatenate([v[s] for s in subjects])).tobytes()).hexdigest()
                            for n, v in roi_set.items()},
               "precision": precision, "fast_decode": fast_decode, "image_column": image_column,
               "id_column": id_column}
    if reliability is not None:  # absent otherwise, so unfiltered outputs of earlier versions still resume
        key_src["reliability"] = [reliability_threshold, noise_ceiling]
    config_key = hashlib.sha256(json.dumps(key_src, sort_keys=True, default=str).encode()).hexdigest()[:16]

    layout = OutputLayout(os.fspath(out), endpoint_url=endpoint_url, anonymous=anonymous)
    markers = layout.markers()
    check_compatible(markers, config_key, os.fspath(out))
    redo = check_inputs(markers, shards, os.fspath(out), redo_changed)
    pending = tuple(s for s in shards if s.unit not in markers or s.unit in redo)
    return ScreeningPlan(
        images=os.fspath(images), out=os.fspath(out), shards=shards, pending=pending, spec=spec, store=store,
        model_id=model_id, fingerprint=fingerprint, subjects=subjects, rois=roi_set, roi_names=tuple(roi_set),
        n_vertices=nv, precision=precision, batch_size=batch_size, write_batch_size=write_batch_size,
        decode_batch_size=DECODE_BATCH_SIZE,
        fast_decode=fast_decode, num_encoders=num_encoders, num_gpus_per_encoder=num_gpus_per_encoder,
        num_cpus_per_encoder=num_cpus_per_encoder, endpoint_url=endpoint_url, anonymous=anonymous,
        progress=progress, config=config, config_key=config_key, throttle_s=float(throttle_s),
        reliability=reliability, redo=redo, encoder_stage=encoder_stage)


def _what_changed(recorded: dict | None, shard: Shard) -> str | None:
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


def check_resources(plan: ScreeningPlan, cluster: Mapping[str, float]) -> Resources:
    """Resolve GPUs / pool size / batch size against ``ray.cluster_resources()``; raise instead of waiting forever."""
    gpus = float(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 0))
    g = plan.num_gpus_per_encoder
    if g is None:
        g = 1.0 if gpus >= 1 else 0.0
    if g > 0 and gpus < g:
        raise InvalidParameterError(
            f"num_gpus_per_encoder={plan.num_gpus_per_encoder} but the Ray cluster has {gpus:g} GPU(s); "
            f"use num_gpus_per_encoder=0 (CPU encoders) or connect to a cluster with GPUs")
    c = plan.num_cpus_per_encoder
    if c > cpus:
        raise InvalidParameterError(f"num_cpus_per_encoder={c:g} but the Ray cluster has {cpus:g} CPU(s); "
                                    f"valid: 0 .. {cpus:g}")
    if g > 0:
        auto_max = max(1, int(gpus // g))
    else:
        # Leave at least one CPU for the decode tasks.
        auto_max = max(1, int((cpus - 1) // c) if c > 0 else 1)
    if plan.num_encoders is None:
        lo, hi = 1, auto_max
    elif isinstance(plan.num_encoders, tuple):
        lo, hi = plan.num_encoders
    else:
        lo = hi = plan.num_encoders
    if g > 0 and lo * g > gpus:
        raise InvalidParameterError(f"num_encoders={plan.num_encoders!r} x num_gpus_per_encoder={g:g} needs "
                                    f"{lo * g:g} GPUs; the cluster has {gpus:g}")
    if g == 0 and lo * c > cpus:
        raise InvalidParameterError(f"num_encoders={plan.num_encoders!r} x num_cpus_per_encoder={c:g} needs "
                                    f"{lo * c:g} CPUs; the cluster has {cpus:g}")
    if cpus - lo * c < 1:
        # read and decode tasks each need a whole CPU: without one left they never start (the run would hang)
        raise InvalidParameterError(
            f"the Ray cluster has {cpus:g} CPU(s) and {lo} encoder(s) x num_cpus_per_encoder={c:g} hold "
            f"{lo * c:g}; at least 1 CPU must stay free for reading and decoding. Use a smaller "
            f"num_cpus_per_encoder (e.g. {max(0.0, (cpus - 1) / max(lo, 1)):g}) or a cluster with more CPUs")
    kind = "gpu" if g > 0 else "cpu"
    batch = plan.batch_size or DEFAULT_BATCH_SIZE[kind]
    return Resources(num_gpus=g, num_cpus=c, min_size=lo, max_size=hi, batch_size=batch,
                     device="cuda" if g > 0 else "cpu",
                     write_batch_size=plan.write_batch_size or DEFAULT_WRITE_BATCH_SIZE[kind])
