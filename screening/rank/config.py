"""``RankConfig``: what one ranking was asked to do, each option one field.

A field (:func:`option`) carries its documented entry, its ``screening rank`` flag and help, its default, its check
and how the rankings' metadata records it; ``screening rank``'s parser, :func:`screening.rank.rank_with_labels`'
documented parameters and keyword arguments, and the metadata are all made from the fields, so adding a rank option
is adding one field. The call's other parameters (what is ranked, labels, ``--diverse``, where from and to) are
:class:`Argument` entries of :data:`ARGUMENTS`, each defined once the same way.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Mapping

import numpy as np

from screening.exceptions import InvalidParameterError
from screening.validation import CheckedOnce, check_bool

CONTRAST_BY = ("z", "response")


def option(default=dataclasses.MISSING, *, doc: str, help: str | None = None, flag: str | None = None,
           cli: Mapping | None = None, from_cli: Callable | None = None, check: Callable | None = None,
           record: bool | Callable = True):
    """A ``RankConfig`` field with everything said about it in one place.

    ``doc``: its entry in the documented parameters (first line the type and default, then the description);
    ``flag`` / ``help`` / ``cli``: its ``screening rank`` argument (no flag: API only), ``from_cli`` turning the
    parsed value into the option's; ``check(name, value, config)``: its normalised value, raising on a bad one;
    ``record``: kept in the rankings' metadata under its name (True), not (False), or ``record(config, ranker)``
    giving the entries to hold (what the ranking resolved it to)."""
    meta = {"doc": doc, "help": help, "flag": flag, "cli": dict(cli or {}), "from_cli": from_cli, "check": check,
            "record": record}
    return field(default=default, metadata=meta)


def _int_at_least(lo: int):
    def check(name, value, cfg=None):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise InvalidParameterError(f"{name} must be an integer >= {lo}; got {value!r}")
        return int(value)
    return check


def _bottom_k(name, value, cfg):
    return _int_at_least(0)(name, cfg.top_k if value is None else value)   # None: as many as top_k


def _names(name, value, cfg):
    """A list of names: one name may be given as a string."""
    return None if value is None else [value] if isinstance(value, str) else list(value)


def _contrasts(name, value, cfg):
    return (value,) if isinstance(value, str) else tuple(value)


def _comparison(name, value, cfg):
    return list(value) if value else None


def _contrast_by(name, value, cfg):
    if value not in CONTRAST_BY:
        raise InvalidParameterError(f"{name}={value!r} is not valid; valid: {', '.join(map(repr, CONTRAST_BY))}")
    return value


def _null_quantile(name, value, cfg):
    if not 0.5 < float(value) < 1.0:
        raise InvalidParameterError(f"{name} must be in (0.5, 1); got {value!r}")
    return value


def _positive(name, value, cfg):
    if not float(value) > 0:
        raise InvalidParameterError(f"{name} must be > 0; got {value!r}")
    return value


def _bool(name, value, cfg):
    return check_bool(name, value)


def _not(value):
    return not value


@dataclass(frozen=True)
class RankConfig(CheckedOnce):
    """Every option of one ranking, each defined once (:func:`option`), checked once, when it is built; each bad
    value names itself and the valid ones."""

    rois: list | None = option(None, flag="--roi", cli={"action": "append", "metavar": "NAME"},
                               check=_names, record=False,
                               help="ROI to rank (repeatable): L_FFC, FFC (bilateral), group_04, faces, L_faces ...; "
                                    "default all", doc="""list of str, optional
        ROIs to rank: table columns (``L_FFC``, ``group_04``), bilateral areas (``FFC``), composites
        (``faces``) and their hemisphere versions (``L_faces``). Default: every column, every
        bilateral area and every composite that resolves.""")
    top_k: int = option(25, flag="--top-k", cli={"type": int}, check=_int_at_least(1),
                        help="images per list (default 25)", doc="""int, default=25
        Images kept per list (RNC keeps 25).""")
    bottom_k: int | None = option(None, flag="--bottom-k", cli={"type": int}, check=_bottom_k,
                                  help="lowest images per ROI (default = top-k; 0 = off)", doc="""int, optional
        Lowest-response images kept per ROI and subject; default ``top_k``; 0 disables.""")
    contrasts: tuple = option((), flag="--contrast", cli={"action": "append", "default": [], "metavar": "A:B"},
                              check=_contrasts, record=lambda c, r: {"contrasts": [p[0] for p in r.contrast_pairs]},
                              help="rank by ROI A minus ROI B, e.g. FFC:PHA1-3 (repeatable)",
                              doc="""sequence of str or (str, str), default=()
        ``"A:B"`` ranks images by ROI A minus ROI B (rows named ``A>B``); for names without
        hemisphere prefix the ``L_`` and ``R_`` versions are ranked too.""")
    contrast_by: str = option("z", flag="--contrast-by", cli={"choices": CONTRAST_BY}, check=_contrast_by,
                              help="contrast score: difference of z (default) or of responses",
                              doc="""{"z", "response"}, default="z"
        Contrast score: ``z_A - z_B`` (default) or ``response_A - response_B``.""")
    selectivity: bool = option(True, flag="--no-selectivity", cli={"action": "store_true"}, from_cli=_not,
                               check=_bool, record=lambda c, r: {"selectivity": r.selectivity},   # as it ran
                               help="skip the selectivity lists", doc="""bool, default=True
        Rank every ROI by ``z_roi - mean(z of the comparison set)``.""")
    comparison: list | None = option(None, flag="--comparison", cli={"action": "append", "metavar": "NAME"},
                                     check=_comparison,
                                     help="selectivity comparison ROI (repeatable; default all area columns)",
                                     doc="""list of str, optional
        Comparison set for selectivity; default every area column, minus those overlapping the ROI.""")
    consensus: bool = option(True, flag="--no-consensus", cli={"action": "store_true"}, from_cli=_not, check=_bool,
                             help="skip the cross-subject consensus lists", doc="""bool, default=True
        Rank by the mean z over subjects (rows with ``subject="consensus"``).""")
    n_null: int = option(10_000, flag="--n-null", cli={"type": int}, check=_int_at_least(1),
                         help="images in the single-image null (default 10000)", doc="""int, default=10_000
        Images drawn (seeded, without replacement) from the screened set for the single-image null.""")
    null_draws: int = option(10_000, flag="--null-draws", cli={"type": int}, check=_int_at_least(0),
                             help="random k-sets in the set null (default 10000)", doc="""int, default=10_000
        Random k-image sets drawn for the set-level null (the ``_sets`` table); 0 disables.""")
    null_quantile: float = option(0.95, check=_null_quantile, doc="""float, default=0.95
        Quantile of the null that ``margin`` is measured from.""")
    seed: int = option(0, flag="--seed", cli={"type": int}, check=_int_at_least(0),
                       help="seed of every random draw (default 0)", doc="""int, default=0
        Seeds every random draw; equal inputs and seed give equal outputs.""")
    batch_size: int = option(65_536, flag="--batch-size", cli={"type": int}, check=_int_at_least(1), record=False,
                             help="rows per streamed batch", doc="""int, default=65_536
        Rows per streamed record batch.""")
    memory_budget_mb: float = option(512.0, flag="--memory-budget-mb", cli={"type": float}, check=_positive,
                                     record=False, help="bound on consensus accumulators", doc="""float, default=512
        Bound on the consensus accumulators (9 bytes per image and ROI); above it the ROIs are
        processed in chunks, one column-projected scan each.""")

    def _normalised(self) -> dict:
        # in field order, so a check reads the normalised fields above it (bottom_k: top_k)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for f in dataclasses.fields(self):
            if f.metadata["check"] is not None:
                values[f.name] = f.metadata["check"](f.name, values[f.name], SimpleNamespace(**values))
        return values

    @classmethod
    def of(cls, **options) -> "RankConfig":
        """From ``rank``'s keyword arguments (the fields: a list may be one string, ``bottom_k=None`` is ``top_k``)."""
        return cls(**options)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def record(self, ranker) -> dict:
        """The options as the rankings file's metadata records them (``ranker``: what the ranking resolved)."""
        out = {}
        for f in dataclasses.fields(self):
            spec = f.metadata["record"]
            if spec is True:
                out[f.name] = getattr(self, f.name)
            elif spec:
                out.update(spec(self, ranker))
        return out

    @classmethod
    def defaults(cls) -> dict:
        return {f.name: f.default for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Argument:
    """A parameter of :func:`screening.rank.rank_with_labels` that is not a ranking option (what is ranked and where
    to, labels, ``diverse``, ...), or a ``screening rank`` argument of the CLI only: its doc and its argument."""

    name: str
    doc: str | None = None               # None: documented with another entry (endpoint_url), or CLI only
    default: Any = None
    flag: str | None = None              # ``name``: positional; "storage": the S3 arguments (screening.fs)
    help: str | None = None
    cli: Mapping = field(default_factory=dict)
    api: bool = True                     # a parameter of rank_with_labels (else the CLI resolves it first)
    positional: bool = False


REQUIRED = inspect.Parameter.empty   # an argument without a default

#: The call's parameters before the ranking options, and after them (the CLI-only ones last).
LEADING = (
    Argument("responses", positional=True, default=REQUIRED, flag="responses",
             help="responses table: directory of Parquet files or a file (local or s3://); a pipeline run's "
                  "RUN/responses is read as its committed files only",
             doc="""str, os.PathLike, pyarrow.Table, pyarrow.dataset.Dataset or pandas.DataFrame
        The responses table (``image_id``, ``subject``, one float column per ROI); a path is a
        directory of Parquet files or one file, local or ``s3://``. A pipeline run's ``RUN/responses``
        (``RUN/_committed/`` exists) is read as its committed files only."""),
    Argument("out", positional=True, flag="out",
             help="output directory for rankings.parquet and _sets.parquet (local or s3://)",
             doc="""str or os.PathLike, optional
        Directory to write ``rankings.parquet`` and ``_sets.parquet`` into (local or ``s3://``)."""),
    Argument("labels", flag="--labels", cli={"metavar": "SPEC"},
             help="what the images are, for enrichment and tuning tables: folder (parent folder name), name:REGEX "
                  "(first group over the file name), column:NAME (input shard column), or a .csv/.parquet table "
                  "with label and image_id|source|file",
             doc="""str or screening.labels.Labels, optional
        A label spec (``folder``, ``name:REGEX``, ``column:NAME`` or a CSV / Parquet table; see
        :mod:`screening.labels`) resolved against the run's recorded sources, or a :class:`screening.labels.Labels`.
        With ``out``, ``enrichment.parquet`` and ``label_means.parquet`` are written beside the rankings
        (docs/rank-report.md)."""),
    Argument("diverse", flag="--diverse", cli={"type": float, "metavar": "RHO"},
             help="no two listed images with embeddings closer than cosine RHO (e.g. 0.95): near-copies are skipped "
                  "and recorded (kind *_skipped, duplicate_of); needs the run's features/",
             doc="""float, optional
        ``diverse=RHO`` lists no image whose embedding (the run's ``features/``) has a cosine above RHO with one
        listed before it (:mod:`screening.rank._diverse`); skipped images stay in the rankings."""),
)
TRAILING = (
    Argument("composites", doc="""dict of str to list of str, optional
        Named composite ROIs (replaces the defaults); or ``roi_config`` (a YAML/TOML/JSON file,
        merged over the defaults)."""),
    Argument("roi_config", flag="--roi-config", cli={"metavar": "FILE"},
             help="YAML/TOML/JSON file of composites, e.g. faces: [FFC, PIT]", doc="""str or os.PathLike, optional
        A YAML/TOML/JSON file of composites, merged over the defaults."""),
    Argument("manifest", flag="--manifest", help="manifest.json (default: beside RESPONSES)",
             doc="""dict or str, optional
        The run manifest (for per-subject vertex counts); default: ``manifest.json`` beside the
        responses directory when ``responses`` is a path."""),
    Argument("storage_options", flag="storage", doc="""screening.fs.StorageOptions or dict, optional
        S3 endpoint and credentials mode for ``s3://`` paths (``screening.fs``); ``endpoint_url=`` /
        ``anonymous=`` may be given instead."""),
    Argument("endpoint_url"),
    Argument("anonymous"),
    Argument("progress", doc="""callable, optional
        Called with a short message after each scan."""),
    Argument("parcellation", api=False, flag="--parcellation", cli={"metavar": "FILE"},
             help="rank the ROI columns of this parcellation of your own (the file the run was screened with; with "
                  "--roi, those too)"),
    Argument("parcellation_prefix", api=False, flag="--parcellation-prefix",
             help="its column prefix (default: the file stem)"),
)
ARGUMENTS = LEADING + TRAILING


def signature(config: type = RankConfig) -> inspect.Signature:
    """``rank_with_labels``' signature: the leading arguments, every ranking option (keyword only), the rest."""
    P = inspect.Parameter
    params = [P(a.name, P.POSITIONAL_OR_KEYWORD if a.positional else P.KEYWORD_ONLY,
                default=a.default) for a in LEADING]
    params += [P(f.name, P.KEYWORD_ONLY, default=f.default) for f in dataclasses.fields(config)]
    params += [P(a.name, P.KEYWORD_ONLY, default=a.default) for a in TRAILING if a.api]
    return inspect.Signature(params)


def parameters_doc(config: type = RankConfig, indent: str = "    ") -> str:
    """The numpydoc entries of every parameter, in signature order (what ``rank`` and ``rank_with_labels`` show)."""
    entries = [(a.name, a.doc) for a in LEADING]
    entries += [(f.name, f.metadata["doc"]) for f in dataclasses.fields(config)]
    entries += [(a.name, a.doc) for a in TRAILING if a.api]
    lines = []
    for name, doc in entries:
        if doc is None:
            continue
        first, _, rest = doc.partition("\n")
        lines.append(f"{indent}{name} : {first.strip()}")
        lines += [f"{indent}{ln[4:] if ln.startswith('        ') else ln.strip()}" for ln in rest.splitlines()]
    return "\n".join(lines)


def configure_parser(parser, config: type = RankConfig) -> None:
    """``screening rank``'s arguments: the positional ones, one per ranking option that has a flag, the rest."""
    from screening.fs import add_storage_arguments

    specs = [(a.name, a.flag, a.help, a.cli, None) for a in LEADING]
    specs += [(f.name, f.metadata["flag"], f.metadata["help"], f.metadata["cli"], f.default)
              for f in dataclasses.fields(config)]
    specs += [(a.name, a.flag, a.help, a.cli, None) for a in TRAILING]
    for name, flag, help, cli, default in specs:
        if flag == "storage":
            add_storage_arguments(parser)
        elif flag == name:   # positional
            parser.add_argument(name, help=help)
        elif flag:
            kw = dict(cli)
            if "action" not in kw:
                kw.setdefault("default", default)
            parser.add_argument(flag, dest=name, help=help, **kw)


def from_args(args, config: type = RankConfig) -> dict:
    """``rank_with_labels``' keyword arguments from parsed arguments (:func:`configure_parser`), ``responses`` and
    ``out`` included; the CLI-only ones are left to the caller."""
    from screening.fs import StorageOptions

    out = {}
    for a in ARGUMENTS:
        if a.flag == "storage":
            out[a.name] = StorageOptions.from_args(args)
        elif a.flag and a.api:
            out[a.name] = getattr(args, a.name)
    for f in dataclasses.fields(config):
        if f.metadata["flag"]:
            v = getattr(args, f.name)
            out[f.name] = f.metadata["from_cli"](v) if f.metadata["from_cli"] else v
    return out
