"""``RunConfig``: what one screening run was asked to do, checked once, when it is built.

The CLI and ``jobs/screen.py`` build it with :meth:`RunConfig.from_args`, the API with :meth:`RunConfig.of`
(what :func:`screening.pipeline.screen` does). :func:`screening.pipeline.plan.build_plan` then resolves it (store,
model, fingerprint, ROI sets, input shards) into a ``ScreeningPlan``; nothing after that checks an option again.
Every bad value raises :class:`~screening.exceptions.InvalidParameterError` naming it and the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from screening.validation import (check_bool, check_choice, check_finite_number, check_nonneg_number,
                                   check_positive_int, parse_subjects)
from screening.exceptions import InvalidParameterError
from screening.fs import StorageOptions
from screening.hardware import PRECISION_CHOICES
from screening.pipeline.decode_modes import decode_mode

NOISE_CEILINGS = tuple(f"{part}_{kind}" for part in ("test", "train", "artificial") for kind in ("n-avg", "n-1"))
ENCODER_STAGES = ("model", "null")


@dataclass(frozen=True)
class RunConfig:
    """Every option of a screening run (see :func:`screening.pipeline.screen` for what each one means).

    Built values are normalised: ``subjects`` is a tuple of ``sub-NN``, ``rois`` a tuple of names or ``None``,
    ``fast_decode`` is False with ``decode="gpu"`` (GPU decode is a full-size decode), ``storage`` a
    :class:`~screening.fs.StorageOptions`.
    """

    images: str
    store: Any                       # a location (path / s3://) or an opened ModelStore
    out: str
    model_id: str | None = None
    subjects: Any = "all"
    rois: Any = None
    composites: Mapping | None = None
    custom_rois: Mapping | None = None
    precision: str = "auto"         # resolved where the encoders run (screening.hardware)
    batch_size: int | None = None
    write_batch_size: int | None = None
    num_encoders: int | tuple[int, int] | None = None
    num_gpus_per_encoder: float | None = None
    num_cpus_per_encoder: float | None = None   # None: sized from the cluster (plan.check_resources)
    fast_decode: bool = True
    decode: str = "cpu"
    image_column: str = "image"
    id_column: str = "image_id"
    storage: StorageOptions = field(default_factory=StorageOptions)
    progress: bool = True
    reliability_threshold: float | None = None
    noise_ceiling: str = "test_n-avg"
    redo_changed: bool = False
    throttle_s: float = 0.0          # tests only: sleep per encoder batch, so a run stays in flight
    encoder_stage: str = "model"     # "null": benchmarks only (stages.NullEncoderActor)

    def __post_init__(self):
        for name, value in _checked(self).items():
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, images, store, out, *, storage_options=None, endpoint_url=None, anonymous=None,
           **options) -> "RunConfig":
        """From the API's keyword arguments; an unknown one is named with the valid ones (not a TypeError)."""
        valid = [f.name for f in dataclasses.fields(cls) if f.name not in ("images", "store", "out", "storage")]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise InvalidParameterError(f"unknown option(s) {', '.join(unknown)}; valid options: "
                                        f"{', '.join(valid + ['storage_options', 'endpoint_url', 'anonymous'])}")
        storage = StorageOptions.of(storage_options, endpoint_url=endpoint_url, anonymous=anonymous)
        return cls(images=images, store=store, out=out, storage=storage, **options)

    @classmethod
    def from_args(cls, args) -> "RunConfig":
        """From ``screening run``'s parsed arguments (``pipeline.cli.configure_parser``)."""
        return cls(images=args.images, store=args.store, out=args.out, model_id=args.model_id, subjects=args.subjects,
                   rois=args.rois, composites=_json_arg(args.composites, "--composites"),
                   custom_rois=_json_arg(args.custom_rois, "--custom-rois"), precision=args.precision,
                   batch_size=args.batch_size, write_batch_size=args.write_batch_size,
                   num_encoders=args.num_encoders, num_gpus_per_encoder=args.num_gpus_per_encoder,
                   num_cpus_per_encoder=args.num_cpus_per_encoder, fast_decode=not args.exact_decode,
                   decode=args.decode, image_column=args.image_column, id_column=args.id_column,
                   storage=StorageOptions.from_args(args), progress=not args.no_progress,
                   reliability_threshold=args.reliability_threshold, noise_ceiling=args.noise_ceiling,
                   redo_changed=args.redo_changed, throttle_s=args.test_throttle_s)

    def record(self) -> dict:
        """The options as the manifest records them (JSON; the store as its location)."""
        return {"images": self.images, "out": self.out, "model_id": self.model_id, "subjects": list(self.subjects),
                "store": str(getattr(self.store, "location", self.store)),
                "endpoint_url": self.storage.endpoint_url, "anonymous": self.storage.anonymous,
                "composites": {k: list(v) for k, v in (self.composites or {}).items()},
                "custom_rois": sorted(self.custom_rois or {}), "precision": self.precision,
                "fast_decode": self.fast_decode, "decode": self.decode, "image_column": self.image_column,
                "id_column": self.id_column, "batch_size": self.batch_size, "write_batch_size": self.write_batch_size,
                "num_encoders": self.num_encoders, "num_gpus_per_encoder": self.num_gpus_per_encoder,
                "num_cpus_per_encoder": self.num_cpus_per_encoder,
                "reliability_threshold": self.reliability_threshold, "noise_ceiling": self.noise_ceiling}


def _checked(c: RunConfig) -> dict:
    """The normalised value of every option that needs one; raises on the first bad one."""
    if c.precision not in PRECISION_CHOICES:
        raise InvalidParameterError(f"precision={c.precision!r} is not valid; valid precisions: "
                                    f"{', '.join(PRECISION_CHOICES)}")
    mode = decode_mode(c.decode)
    check_choice("encoder_stage", c.encoder_stage, ENCODER_STAGES)
    if not isinstance(c.noise_ceiling, str) or c.noise_ceiling not in NOISE_CEILINGS:
        raise InvalidParameterError(f"noise_ceiling={c.noise_ceiling!r} is not valid; valid noise ceilings: "
                                    f"{', '.join(NOISE_CEILINGS)}")
    for name in ("images", "out"):
        value = getattr(c, name)
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise InvalidParameterError(f"{name} must be a path or an s3:// URI; got {value!r}")
    for name in ("image_column", "id_column"):
        value = getattr(c, name)
        if not isinstance(value, str) or not value:
            raise InvalidParameterError(f"{name} must be a non-empty string; got {value!r}")
    if not isinstance(c.storage, StorageOptions):
        raise InvalidParameterError(f"storage must be a StorageOptions; got {type(c.storage).__name__}")
    gpus = check_nonneg_number("num_gpus_per_encoder", c.num_gpus_per_encoder)
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        raise InvalidParameterError(f"num_gpus_per_encoder above 1 must be a whole number; got {gpus}")
    return {"images": os.fspath(c.images), "out": os.fspath(c.out),
            "subjects": parse_subjects("all" if c.subjects is None else c.subjects, name="subjects"),
            "rois": _rois(c.rois),
            "composites": None if c.composites is None else _mapping("composites", c.composites),
            "custom_rois": None if c.custom_rois is None else _mapping("custom_rois", c.custom_rois),
            "batch_size": check_positive_int("batch_size", c.batch_size),
            "write_batch_size": check_positive_int("write_batch_size", c.write_batch_size),
            "num_encoders": _num_encoders(c.num_encoders), "num_gpus_per_encoder": gpus,
            "num_cpus_per_encoder": check_nonneg_number("num_cpus_per_encoder", c.num_cpus_per_encoder),
            # GPU decode and its CPU fallback are full-size decodes
            "fast_decode": check_bool("fast_decode", c.fast_decode) and not mode.full_size,
            "progress": check_bool("progress", c.progress), "redo_changed": check_bool("redo_changed", c.redo_changed),
            "reliability_threshold": check_finite_number("reliability_threshold", c.reliability_threshold,
                                                           what=" (noise-ceiling units, as in the store's metadata)"),
            "throttle_s": check_nonneg_number("throttle_s", c.throttle_s, allow_none=False)}


def _num_encoders(v):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise InvalidParameterError(f"num_encoders must be an int or a (min, max) pair; got {v!r}")
        lo, hi = (check_positive_int("num_encoders", x, allow_none=False) for x in v)
        if lo > hi:
            raise InvalidParameterError(f"num_encoders=(min, max) needs min <= max; got {v!r}")
        return lo, hi
    return check_positive_int("num_encoders", v)


def _rois(v) -> tuple[str, ...] | None:
    if v is None:
        return None
    names = [r.strip() for r in v.split(",")] if isinstance(v, str) else list(v)
    if not all(isinstance(r, str) for r in names):
        raise InvalidParameterError(f"rois must be ROI names (a list, or one comma-separated string); got {v!r}")
    return tuple(r for r in names if r)


def _mapping(name, v) -> dict:
    if not isinstance(v, Mapping):
        raise InvalidParameterError(f"{name} must be a mapping of name -> members; got {type(v).__name__}")
    return dict(v)


def _json_arg(value: str | None, name: str):
    """A CLI JSON option: inline JSON, or the path of a JSON file."""
    if value is None:
        return None
    text = value
    if not value.lstrip().startswith("{") and os.path.exists(value):
        with open(value) as f:
            text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParameterError(f"{name} must be JSON (inline or a file path); got {value!r}: {exc}") from None
