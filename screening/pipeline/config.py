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

from screening.validation import (CheckedOnce, check_bool, check_choice, check_finite_number, check_nonneg_number,
                                   check_positive_int, parse_subjects)
from screening.exceptions import InvalidParameterError
from screening.fs import StorageOptions
from screening.hardware import PRECISION_CHOICES
from screening.pipeline.decode_modes import DECODES, decode_mode
from screening.sources import source_options

NOISE_CEILINGS = tuple(f"{part}_{kind}" for part in ("test", "train", "artificial") for kind in ("n-avg", "n-1"))
ENCODER_STAGES = ("model", "null")


def option(default=dataclasses.MISSING, *, doc: str, help: str | None = None, flag: str | None = None,
           cli: Mapping | None = None, from_cli=None, record=True, key=None, from_record=None,
           default_factory=dataclasses.MISSING):
    """A ``RunConfig`` field with everything said about it in one place.

    ``doc``: its entry in the documented parameter list (first line the type, then the description);
    ``help``/``flag``/``cli``: its ``screening run`` argument (no flag: not on the command line), ``from_cli`` turning
    the parsed value into the option's; ``record`` / ``key``: kept in the manifest / part of the configuration key
    (``True``, or a function of the config giving the fields to hold, or None); ``from_record``: the field's value
    read back from a record (a function of the record giving ``{name: value}``; default: a field recorded as
    itself is read under its name, any other keeps its default)."""
    meta = {"doc": doc, "help": help, "flag": flag, "cli": dict(cli or {}), "from_cli": from_cli, "record": record,
            "key": key, "from_record": from_record}
    return field(default=default, default_factory=default_factory, metadata=meta)


def _recorded(name: str, read=lambda v: v):
    """``from_record`` of a field recorded under its own name (``read``: the recorded value to the option's)."""
    return lambda r: {name: read(r[name])} if name in r else {}


def _decode_key(c) -> dict | None:
    return {"decode": c.decode} if decode_mode(c.decode).in_config_key else None   # GPU decode changes pixels slightly


def _not(v):
    return not v


def _vertex_stats(c) -> str | None:
    """A streaming label spec, for a local output, without --redo-changed (a merged unit cannot be unmerged)."""
    if c.vertex_stats is None:
        return None
    from screening.labels import Labeler

    Labeler(c.vertex_stats, c.storage)   # a bad spec, regex or table is refused here, not in an encoder
    out = os.fspath(c.out)
    if "://" in out and not out.startswith("file://"):
        raise InvalidParameterError(f"--vertex-stats writes its statistics beside a local output; out={out!r} is "
                                    f"object storage: screen into a local or shared-filesystem folder")
    if c.redo_changed:
        raise InvalidParameterError("--vertex-stats with --redo-changed: a unit's statistics are already merged and "
                                    "cannot be taken out again; screen changed inputs into a new output")
    return c.vertex_stats


@dataclass(frozen=True)
class RunConfig(CheckedOnce):
    """Every option of a screening run, each defined once (its doc, CLI flag, record and key: :func:`option`).

    Built values are normalised: ``subjects`` is a tuple of ``sub-NN``, ``rois`` a tuple of names or ``None``,
    ``fast_decode`` is False with ``decode="gpu"`` (GPU decode is a full-size decode), ``storage`` a
    :class:`~screening.fs.StorageOptions`.
    """

    images: str = option(flag="images", doc="""str
        Parquet shards (a file, a folder of them, a glob), a folder of images, ``.tar`` / WebDataset shards, or a
        ``.csv`` / ``.txt`` list of paths or ``s3://`` URIs; local or ``s3://``.""",
        help="Parquet shards, a folder of images, .tar / WebDataset shards (shard-{000..009}.tar), a .csv/.txt list "
             "of paths or s3:// URIs, or a glob; local or s3://")
    store: Any = option(flag="--store", cli={"required": True}, help="model store location (path or s3://)",
                        record=lambda c: {"store": str(getattr(c.store, "location", c.store))},
                        from_record=_recorded("store"), doc="""str or ModelStore
        The BERG-layout model store (path / ``s3://``), or an opened ``screening.store.ModelStore``.""")
    out: str = option(flag="--out", cli={"required": True}, help="output root (path or s3://)", doc="""str
        Output root (local or ``s3://``): ``responses/``, ``errors/``, ``_committed/``, ``manifest.json``.""")
    model_id: str | None = option(None, flag="--model-id", help="default: the store's only model, else the published "
                                  "'all'", doc="""str, optional
        Default: the store's only model, else ``DEFAULT_MODEL_ID``.""")
    subjects: Any = option("all", flag="--subjects", help="'all' or comma-separated sub-01..sub-08",
                           record=lambda c: {"subjects": list(c.subjects)}, from_record=_recorded("subjects"),
                           key=True, doc=""""all" or list of str, default="all"
        ``sub-01`` .. ``sub-08``; a ``mean`` row over these is added per image.""")
    rois: Any = option(None, flag="--rois", help="comma-separated ROI names (default: all areas + groups)",
                       record=False, from_record=_recorded("rois"), doc="""list of str or str, optional
        ROI names as :func:`screening.rois.build_roi_set` takes them; default: all areas of the variant + its Glasser
        groups. The manifest records the resolved list (``config.rois``).""")
    composites: Mapping | None = option(None, flag="--composites", from_cli=lambda v: _json_arg(v, "--composites"),
                                        help='JSON {"name": ["FFC", ...]} or a JSON file',
                                        record=lambda c: {"composites": {k: list(x) for k, x in (c.composites or {}).items()}},
                                        from_record=_recorded("composites", lambda v: v or None),
                                        doc="""mapping of str to list of str, optional
        Named unions of ROIs (:func:`screening.rois.build_roi_set`), screened as extra columns.""")
    custom_rois: Mapping | None = option(None, flag="--custom-rois", from_cli=lambda v: _json_arg(v, "--custom-rois"),
                                         help='JSON {"name": [grayordinate, ...]} or a JSON file',
                                         record=lambda c: {"custom_rois": sorted(c.custom_rois or {})},
                                         doc="""mapping of str to grayordinate indices, optional
        ROIs of your own as 91,282-grayordinate index lists (:func:`screening.rois.build_roi_set`). The manifest
        records their names only.""")
    parcellation: str | None = option(None, flag="--parcellation", help="a parcellation of your own: .dlabel.nii or "
                                      ".npy + .tsv in the 91k grayordinate space, {subject} for one file per subject; "
                                      "each label becomes an ROI column (docs/guide.md)", doc="""str, optional
        A parcellation of your own (:mod:`screening.parcellation`): a CIFTI ``.dlabel.nii``, or a ``.npy`` of 91,282
        integers beside a ``.tsv`` of ``index<TAB>name``, in the 91,282-grayordinate space; ``{subject}`` in the path
        (``rois/sub-{subject}_floc-faces.dlabel.nii``) reads one file per subject. Each label becomes an ROI column
        ``PREFIX_LABEL``, an exact mean over the label's model vertices like every other column.""")
    parcellation_prefix: str | None = option(None, flag="--parcellation-prefix",
                                             help="column prefix of the parcellation's labels (default: the file "
                                                  "stem)", doc="""str, optional
        The parcellation's column prefix; default the file's stem without its subject part (``floc-faces``).""")
    precision: str = option("auto", flag="--precision", cli={"choices": PRECISION_CHOICES},
                            help="core precision (default auto: bf16 where the encoders' hardware computes it "
                                 "natively and a probe confirms it is faster, fp16 on pre-Ampere GPUs, else fp32; "
                                 "fp16 needs GPU encoders)", doc="""{"auto", "fp32", "bf16", "fp16"}, default="auto"
        ``auto``: the fastest precision where the encoders run (``screening.hardware``, docs/precision.md), resolved
        once per run on a node of the encoders' kind and used by every encoder; an output keeps the precision it
        was first screened in (a resumed ``auto`` run uses the recorded one). ``fp32`` is the published maths;
        ``fp16`` needs GPU encoders. The run summary and the manifest (``config.precision_choice``) say which, and
        why.""")
    batch_size: int | None = option(None, flag="--batch-size", cli={"type": int},
                                    help="encoder batch (default 256 on GPU, 64 on CPU)", doc="""int, optional
        Encoder batch; default 256 on GPU, 64 on CPU.""")
    write_batch_size: int | None = option(None, flag="--write-batch-size", cli={"type": int},
                                          help="images per part file (default 8192 on GPU encoders, 1024 on CPU)",
                                          doc="""int, optional
        Images per part file (one row group): default 8192 on GPU encoders (73,728 response rows with 8
        subjects), 1024 on CPU ones, where a part takes much longer to fill (see docs/pipeline.md).""")
    num_encoders: int | tuple[int, int] | None = option(None, flag="--num-encoders", cli={"type": int},
                                                        help="actor pool size (default: autoscaled)",
                                                        doc="""int or (min, max), optional
        Actor pool size; default autoscaling 1..(GPUs / num_gpus_per_encoder), or on CPU nodes as many actors as
        their cores and memory hold (docs/pipeline.md, "Sizing on CPU").""")
    num_gpus_per_encoder: float | None = option(None, flag="--num-gpus-per-encoder", cli={"type": float},
                                                help="default: 1 when the cluster has GPUs, else 0",
                                                doc="""float, optional
        Default: 1 if the cluster has GPUs, else 0. Asking for GPUs on a cluster without them raises.""")
    num_cpus_per_encoder: float | None = option(None, flag="--num-cpus-per-encoder", cli={"type": float},
                                                help="default: 1 with GPUs; on CPU-only clusters sized from the "
                                                     "nodes (docs/pipeline.md)", doc="""float, optional
        Default: 1 for GPU encoders; for CPU encoders nearly all of a node's cores (up to 16 per actor, as many
        torch threads), less a read / decode share sized from their measured costs.""")
    fast_decode: bool = option(True, flag="--exact-decode", cli={"action": "store_true"}, from_cli=_not, key=True,
                               help="decode JPEGs at full size before resizing (default: DCT-domain downscale of "
                                    "JPEGs >= 896 px, min per-ROI r 0.99992 vs exact; smaller images are "
                                    "bit-identical)", doc="""bool, default=True
        JPEG DCT-domain downscaling (``preprocess_bytes(fast=True)``) for JPEGs whose short side is >= 896 px:
        min per-ROI r 0.99992 against the exact path, measured on ~4000 px photos; smaller JPEGs and other
        formats are bit-identical. False (``--exact-decode``): the exact path (the in-memory API always uses it).""")
    decode: str = option("cpu", flag="--decode", cli={"choices": DECODES}, key=_decode_key,
                         help="where images are decoded: cpu tasks (default); gpu: nvJPEG inside the GPU encoders "
                              "(needs torchvision; other formats fall back to the exact CPU path); actor: the "
                              "encoder actors' own CPU threads (--num-cpus-per-encoder, default 4 per GPU encoder; "
                              "the same pixels as cpu, with less driver work per image)",
                         doc="""{"cpu", "gpu", "actor"}, default="cpu"
        ``"actor"``: no decode tasks; each encoder actor decodes its batch's raw bytes in ``num_cpus_per_encoder``
        threads (default 4 per GPU encoder; on CPU encoders their torch threads) with the decode tasks' code, so
        the pixels and results are those of ``"cpu"`` (and a run resumes across the two). Decoding then uses the
        encoder nodes' CPUs only; the driver's cost per image is the ``"gpu"`` plan's (docs/pipeline.md).
        ``"gpu"``: no decode tasks; GPU encoder actors decode JPEGs with nvJPEG (``torchvision.io.decode_jpeg``)
        and crop/resize them on the GPU as the exact path does; other formats and any image nvJPEG refuses take the
        exact CPU path in the actor (``screening.device_decode``). Needs GPU encoders and torchvision (refused
        before any task otherwise); ignores ``fast_decode``. Its results differ slightly from CPU decode, so an
        output screened with one is not resumed with the other.""")
    source_options: Any = option(default_factory=tuple, record=lambda c: dict(c.source_options),
                                 from_record=lambda r: {"source_options": {o.name: r[o.name] for o in
                                                                           source_options() if o.name in r}},
                                 doc="""mapping of str to value, optional
        The input kinds' own options, by name: each kind defines its own (``options`` of its
        :class:`~screening.sources.base.Source`), and each is taken as an option of its own as well (listed next),
        as a flag of ``screening run``, and recorded under its name in the manifest. Normalised to ``(name, value)``
        pairs of every kind's options; ``config.<name>`` reads one.""")
    image_column: str = option("image", flag="--image-column", key=True, help="the image column of Parquet inputs",
                               doc="""str, default="image"
        ``image`` may be binary or the Hugging Face struct ``{bytes, path}``.""")
    id_column: str = option("image_id", flag="--id-column", key=True, help="the id column of Parquet inputs",
                            doc="""str, default="image_id"
        A missing id column derives the id as the first 16 hex digits of sha256(image bytes).""")
    storage: StorageOptions = option(default_factory=StorageOptions, flag="storage",
                                     record=lambda c: {"endpoint_url": c.storage.endpoint_url, "anonymous": c.storage.anonymous},
                                     from_record=lambda r: {"storage": StorageOptions(
                                         endpoint_url=r.get("endpoint_url"), anonymous=r.get("anonymous"))},
                                     doc="""screening.fs.StorageOptions or dict, optional
        S3 options (``endpoint_url``, ``anonymous``) for the inputs, the outputs and (when given as a location) the
        store; ``RunConfig.of`` / ``screen`` take them as ``storage_options=`` or ``endpoint_url=`` /
        ``anonymous=``.""")
    features: bool = option(True, flag="--no-features", cli={"action": "store_true"}, from_cli=_not,
                            key=lambda c: {"features": "core-spatial-mean-fp16"} if c.features else None,
                            help="do not keep each image's 384-d core embedding in features/",
                            doc="""bool, default=True
        Keep each image's embedding, the core output's spatial mean (384 values, float16), in ``features/`` parts
        under the same exactly-once commit as the responses (``screening search --space features``, ``rank
        --diverse``). An output keeps what it was first screened with.""")
    vertex_stats: str | None = option(None, flag="--vertex-stats", cli={"metavar": "LABELS"},
                                      key=lambda c: {"vertex_stats": c.vertex_stats} if c.vertex_stats else None,
                                      help="LABELS (folder, name:REGEX, column:NAME of Parquet input or a label "
                                           "table): also accumulate each label's per-vertex n, sum and sum of "
                                           "squares (vertex_stats/, for screening contrast)",
                                      doc="""str, optional
        A label spec (``folder``, ``name:REGEX``, ``column:NAME``: a column of the input Parquet shards, read with
        each image, integer class ids named from Hugging Face metadata; a ``.csv`` / ``.parquet`` table of ``label``
        and ``image_id``, ``source`` or ``file``, where an image may carry several labels). The encoders then also
        read every labelled image through the full readout (57,051 vertices x 8 subjects) and accumulate, per label,
        subject and vertex, n, the sum and the centred sum of squares (float64, Chan merges); each unit's partials
        commit with it and are merged into ``OUT/vertex_stats/`` in unit order (``screening.vertex_stats``). Local
        outputs only.""")
    progress: bool = option(True, flag="--no-progress", cli={"action": "store_true"}, from_cli=_not, record=False,
                            help="no progress bar", doc="""bool, default=True
        A progress bar of committed-ready images on stderr.""")
    reliability_threshold: float | None = option(
        None, flag="--reliability-threshold", cli={"type": float},
        key=lambda c: None if c.reliability_threshold is None else {"reliability": [c.reliability_threshold,
                                                                                   c.noise_ceiling]},
        help="keep, per subject, ROI vertices whose noise ceiling is >= this (store metadata units)",
        doc="""float, optional
        Keep, per subject, only the ROI vertices whose noise ceiling (store metadata, 91k space) is
        ``>= reliability_threshold``; the ROI mean is then over those vertices (still exact: same readout collapse).
        An ROI left with no vertex for a subject raises. The ``mean`` row averages subject means over different
        vertex sets. On a synthetic store the noise ceilings are synthetic and the filter is meaningless (warned,
        and noted in the manifest).""")
    noise_ceiling: str = option("test_n-avg", flag="--noise-ceiling",
                                help="which noise ceiling: {test,train,artificial}_{n-avg,n-1} (default test_n-avg)",
                                doc="""str, default="test_n-avg"
        Which noise ceiling: ``{test,train,artificial}_{n-avg,n-1}``.""")
    redo_changed: bool = option(False, flag="--redo-changed", cli={"action": "store_true"}, record=False,
                                help="OUT holds results for shards that changed since: screen them again "
                                     "(default: refuse)", doc="""bool, default=False
        ``out`` already holds committed results for a shard that has changed since (URI, size, version or row
        count): by default the run is refused, naming the shard and the change; True uncommits and redoes it.""")
    throttle_s: float = option(0.0, flag="--test-throttle-s", cli={"type": float}, record=False, doc="""float
        Tests only: sleep this long per encoder batch, so a run stays in flight long enough to be killed.""")
    encoder_stage: str = option("model", record=False, doc="""{"model", "null"}
        Benchmarks only: ``"null"`` computes nothing (``stages.NullEncoderActor``).""")

    def _normalised(self) -> dict:
        return _checked(self)

    def __getattr__(self, name):   # a kind's own option reads as an attribute (config.hdf5_dataset)
        for key, value in self.__dict__.get("source_options", ()):
            if key == name:
                return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def _option_names(cls) -> list[str]:
        """The API's option names, in field order, each kind's own options in place of ``source_options``."""
        names = []
        for f in dataclasses.fields(cls):
            if f.name == "source_options":
                names += [o.name for o in source_options()]
            elif f.name not in ("images", "store", "out", "storage"):
                names.append(f.name)
        return names

    @classmethod
    def of(cls, images, store, out, *, storage_options=None, endpoint_url=None, anonymous=None,
           **options) -> "RunConfig":
        """From the API's keyword arguments; an unknown one is named with the valid ones (not a TypeError). A
        kind's own option (``hdf5_dataset=``) is taken by its name."""
        valid = cls._option_names()
        unknown = sorted(set(options) - set(valid) - {"source_options"})
        if unknown:
            raise InvalidParameterError(f"unknown option(s) {', '.join(unknown)}; valid options: "
                                        f"{', '.join(valid + ['storage_options', 'endpoint_url', 'anonymous'])}")
        own = {o.name: options.pop(o.name) for o in source_options() if o.name in options}
        if own:
            options["source_options"] = {**_pairs(options.get("source_options")), **own}
        storage = StorageOptions.of(storage_options, endpoint_url=endpoint_url, anonymous=anonymous)
        return cls(images=images, store=store, out=out, storage=storage, **options)

    @classmethod
    def from_record(cls, record: Mapping, *, storage=None) -> "RunConfig":
        """The config a run recorded (:meth:`record`, as a manifest's ``config`` holds it with the plan's resolved
        ``model_id``, ``rois`` and ``precision``), each field read back as its ``from_record`` says; a field that is
        not recorded keeps its default, and ``custom_rois`` (recorded by name only) is None. ``storage``: S3 options
        to use instead of the recorded ones."""
        missing = [n for n in ("images", "store", "out") if not record.get(n)]
        if missing:
            raise InvalidParameterError(f"the run's record has no {', '.join(missing)}: it is not a screening run's "
                                        f"configuration")
        values = {}
        for f in dataclasses.fields(cls):
            read_back = f.metadata["from_record"]
            if read_back is not None:
                values.update(read_back(record))
            elif f.metadata["record"] is True and f.name in record:
                values[f.name] = record[f.name]
        if storage is not None:
            values["storage"] = StorageOptions.of(storage)
        return cls(**values)

    @classmethod
    def configure_parser(cls, parser) -> None:
        """``screening run``'s arguments, one per option that has a flag."""
        import argparse

        from screening.fs import add_storage_arguments

        for f in dataclasses.fields(cls):
            m = f.metadata
            if m["flag"] == "storage":
                add_storage_arguments(parser)
            elif f.name == "source_options":   # each kind's own options, a flag each
                for o in source_options():
                    parser.add_argument(o.flag, dest=o.name, default=o.default, help=o.help)
            elif m["flag"] == f.name:   # positional
                parser.add_argument(f.name, help=m["help"])
            elif m["flag"]:
                kw = dict(m["cli"])
                if "action" not in kw and not kw.get("required"):
                    kw["default"] = f.default
                parser.add_argument(m["flag"], dest=f.name, help=m["help"] or argparse.SUPPRESS, **kw)

    @classmethod
    def from_args(cls, args) -> "RunConfig":
        """From parsed arguments (:meth:`configure_parser`)."""
        values = {}
        for f in dataclasses.fields(cls):
            m = f.metadata
            if m["flag"] == "storage":
                values[f.name] = StorageOptions.from_args(args)
            elif f.name == "source_options":
                values[f.name] = {o.name: getattr(args, o.name, o.default) for o in source_options()}
            elif m["flag"]:
                v = getattr(args, f.name)
                values[f.name] = m["from_cli"](v) if m["from_cli"] else v
        return cls(**values)

    def record(self) -> dict:
        """The options as the manifest records them (JSON)."""
        return self._collect("record")

    def key_fields(self) -> dict:
        """The options the results depend on (besides the model, ROIs and precision), as the configuration key
        holds them."""
        return self._collect("key")

    def _collect(self, what: str) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            spec = f.metadata[what]
            if spec is True:
                out[f.name] = getattr(self, f.name)
            elif spec:
                out.update(spec(self) or {})
        return out

    @classmethod
    def parameters_doc(cls, indent: str = "    ") -> str:
        """The numpydoc parameter entries of every option (what :func:`screening.pipeline.screen` documents)."""
        lines = []
        for f in dataclasses.fields(cls):
            entries = [(f.name, f.metadata["doc"])]
            if f.name == "source_options":
                entries += [(o.name, o.doc) for o in source_options()]
            for name, doc in entries:
                first, _, rest = doc.partition("\n")
                lines.append(f"{indent}{name} : {first.strip()}")
                lines += [f"{indent}{ln.strip() and ln[4:] if ln.startswith('        ') else ln}" for ln in
                          rest.splitlines()]
        return "\n".join(lines)


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
            "parcellation": None if c.parcellation is None else os.fspath(c.parcellation),
            "composites": None if c.composites is None else _mapping("composites", c.composites),
            "custom_rois": None if c.custom_rois is None else _mapping("custom_rois", c.custom_rois),
            "batch_size": check_positive_int("batch_size", c.batch_size),
            "write_batch_size": check_positive_int("write_batch_size", c.write_batch_size),
            "num_encoders": _num_encoders(c.num_encoders), "num_gpus_per_encoder": gpus,
            "num_cpus_per_encoder": check_nonneg_number("num_cpus_per_encoder", c.num_cpus_per_encoder),
            # GPU decode and its CPU fallback are full-size decodes
            "fast_decode": check_bool("fast_decode", c.fast_decode) and not mode.full_size,
            "vertex_stats": _vertex_stats(c), "source_options": _source_options(c.source_options),
            "progress": check_bool("progress", c.progress), "features": check_bool("features", c.features), "redo_changed": check_bool("redo_changed", c.redo_changed),
            "reliability_threshold": check_finite_number("reliability_threshold", c.reliability_threshold,
                                                           what=" (noise-ceiling units, as in the store's metadata)"),
            "throttle_s": check_nonneg_number("throttle_s", c.throttle_s, allow_none=False)}


def _pairs(v) -> dict:
    """Source options as given: a mapping, or ``(name, value)`` pairs (the normalised form)."""
    if v is None:
        return {}
    if isinstance(v, Mapping):
        return dict(v)
    if isinstance(v, (tuple, list)) and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in v):
        return dict(v)
    raise InvalidParameterError(f"source_options must be a mapping of option name -> value; got {v!r}")


def _source_options(v) -> tuple[tuple[str, Any], ...]:
    """Every registered kind's options, checked by their own checks, as ``(name, value)`` pairs (defaults filled)."""
    given = _pairs(v)
    known = source_options()
    unknown = sorted(set(given) - {o.name for o in known})
    if unknown:
        raise InvalidParameterError(f"unknown source option(s) {', '.join(unknown)}; the input kinds' options: "
                                    f"{', '.join(o.name for o in known) or '(none)'}")
    out = []
    for o in known:
        value = given.get(o.name, o.default)
        out.append((o.name, o.check(o.name, value) if o.check else value))
    return tuple(out)


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
