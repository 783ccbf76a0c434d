"""Rank stimuli per ROI from a responses table: ``screening rank`` and :func:`rank`.

Streams the table (pyarrow.dataset record batches, column projection) and keeps only running
statistics and top-k buffers, so a table of millions of rows ranks in bounded memory. See
``docs/rank-report.md`` for the exact definitions of every output column.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import time
import warnings
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from screening.exceptions import InvalidParameterError
from screening.fs import StorageOptions, add_storage_arguments, filesystem_for
from screening.rank._engine import (
    CONSENSUS_SUBJECT,
    RANKINGS_SCHEMA,
    scan_row_groups,
    RankingNote,
    SETS_SCHEMA,
    RankConfig,
    Ranker,
)
from screening.rank._enrichment import ENRICHMENT_FILE, LABEL_MEANS_FILE, best_labels, enrichment, label_means
from screening.rank._diverse import DIVERSE_POOL, diversify, unit_vectors
from screening.rank._io import find_manifest, open_responses, run_features, run_sources, write_table
from screening.rank._rois import DEFAULT_COMPOSITES, load_roi_config, parse_contrast, validate_composites

__all__ = [
    "rank",
    "rank_with_sets",
    "rank_with_labels",
    "RankResult",
    "scan_row_groups",
    "ENRICHMENT_FILE",
    "LABEL_MEANS_FILE",
    "read_rankings",
    "read_rankings_metadata",
    "roi_values",
    "RankingNote",
    "DEFAULT_COMPOSITES",
    "RANKINGS_SCHEMA",
    "SETS_SCHEMA",
    "RANKINGS_FILE",
    "SETS_FILE",
    "load_roi_config",
    "parse_contrast",
    "configure_parser",
    "run_from_args",
]

#: File names written under ``out``; the set table starts with ``_`` so ``pyarrow.dataset`` on the
#: directory ignores it and ``rankings/*.parquet`` keeps one schema.
RANKINGS_FILE = "rankings.parquet"
SETS_FILE = "_sets.parquet"


def _as_dataset(responses, storage: StorageOptions):
    if isinstance(responses, ds.Dataset):
        return responses, None, None
    if isinstance(responses, pd.DataFrame):
        return ds.dataset(pa.Table.from_pandas(responses, preserve_index=False)), None, None
    if isinstance(responses, pa.Table):
        return ds.dataset(responses), None, None
    if isinstance(responses, (str, os.PathLike)):
        dataset, fs, path = open_responses(responses, storage)
        return dataset, fs, path
    raise InvalidParameterError(
        f"responses must be a path (local or s3://), a pyarrow Table/Dataset or a pandas DataFrame; "
        f"got {type(responses).__name__}")


@dataclass
class RankResult:
    """What :func:`rank_with_labels` computed: the rankings and set table, and with labels the enrichment of every
    top-k / bottom-k list, each ranked ROI's response per label, and the resolved labels (with their unlabelled
    count)."""

    rankings: pd.DataFrame
    sets: pd.DataFrame
    enrichment: pd.DataFrame | None = None
    label_means: pd.DataFrame | None = None
    labels: object = None


def rank_with_sets(responses, out=None, **options):
    """Like :func:`rank`, but return ``(rankings, sets)``; ``sets`` is the per-(roi, subject, kind) summary.

    See :func:`rank` for the parameters. The ``sets`` table has one row per ranked list with the
    ROI's ``mean``/``std`` over the screened set, ``set_score`` (mean score of the listed images),
    and the set-level null: ``null_mean``, ``null_q`` (its 95th percentile; 5th for ``bottomk``),
    ``set_margin`` and ``set_p_null``.
    """
    result = rank_with_labels(responses, out, **options)
    return result.rankings, result.sets


def rank_with_labels(responses, out=None, *, labels=None, diverse=None, rois=None, top_k=25, bottom_k=None, contrasts=(),
                     contrast_by="z", selectivity=True, comparison=None, consensus=True, n_null=10_000,
                     null_draws=10_000, null_quantile=0.95, seed=0, composites=None, roi_config=None, manifest=None,
                     batch_size=65_536, memory_budget_mb=512.0, storage_options=None, endpoint_url=None,
                     anonymous=None, progress=None) -> RankResult:
    """:func:`rank`, and with ``labels`` what the ranked images are (a :class:`RankResult`).

    ``labels`` is a label spec (``folder``, ``name:REGEX``, ``column:NAME`` or a CSV / Parquet table; see
    :mod:`screening.labels`) resolved against the run's recorded sources, or a :class:`screening.labels.Labels`.
    With ``out``, ``enrichment.parquet`` and ``label_means.parquet`` are written beside the rankings
    (docs/rank-report.md). ``diverse=RHO`` lists no image whose embedding (the run's ``features/``) has a cosine
    above RHO with one listed before it (:mod:`screening.rank._diverse`); skipped images stay in the rankings.
    """
    storage = StorageOptions.of(storage_options, endpoint_url=endpoint_url, anonymous=anonymous)
    dataset, fs, path = _as_dataset(responses, storage)
    if manifest is None and fs is not None:
        manifest = find_manifest(fs, path)
    elif isinstance(manifest, (str, os.PathLike)):
        mfs, mpath = filesystem_for(manifest, storage)
        with mfs.open(mpath, "rb") as f:
            manifest = json.loads(f.read().decode())
    if composites is not None and roi_config is not None:
        raise InvalidParameterError("give composites= or roi_config=, not both")
    if roi_config is not None:
        composites = {**DEFAULT_COMPOSITES, **load_roi_config(roi_config)}
    elif composites is not None:
        composites = validate_composites(composites)
    rho, k_listed, (top_k, bottom_k) = _diverse_pool(diverse, top_k, bottom_k)
    cfg = RankConfig.of(rois=rois, top_k=top_k, bottom_k=bottom_k, contrasts=contrasts, contrast_by=contrast_by,
                        selectivity=selectivity, comparison=comparison, consensus=consensus, n_null=n_null,
                        null_draws=null_draws, null_quantile=null_quantile, seed=seed, batch_size=batch_size,
                        memory_budget_mb=memory_budget_mb)
    ranker = Ranker(dataset, cfg, composites=composites, manifest=manifest, progress=progress)
    rows, sets = ranker.run()
    if k_listed is not None:
        rows, notes = diversify(rows, _unit_features(rows, fs, path, storage), rho, k_listed)
        ranker.notes += notes + [f"diverse: lists ranked over {DIVERSE_POOL}x k candidates; the set-level null "
                                 f"(_sets) describes those pools"]
    result = RankResult(rows, sets)
    if labels is not None:
        result.labels = _labels_of(labels, ranker, fs, path, storage, manifest)
        result.label_means = label_means(ranker, result.labels, memory_budget_mb=memory_budget_mb)
        result.enrichment = enrichment(rows, result.labels, sets=sets, means=result.label_means)
    if out is not None:
        ofs, opath = filesystem_for(out, storage)
        meta = {"screening.rank": json.dumps({
            **cfg.record(), "contrasts": [c[0] for c in ranker.contrast_pairs], "selectivity": ranker.selectivity,
            "n_rows": ranker.n_rows,
            "n_images": len(ranker.image_ids), "subjects": ranker.subjects,
            # what was left out and why (e.g. selectivity without a comparison set); the report shows these
            "notes": ranker.notes,
            # the table columns each ranked ROI averages (vertex-weighted), so a reader can see what "faces" was
            "members": {t.name: list(t.members) for t in ranker.targets
                        if t.name in set(ranker.ranked_names) | {n for c in ranker.contrast_pairs for n in c[1:]}},
            **({} if k_listed is None else {"diverse": rho, "k_listed": k_listed}),
            **({} if result.labels is None else {"labels": result.labels.spec,
                                                  "n_labels": len(result.labels.names),
                                                  "n_unlabelled": result.labels.n_unlabelled}),
        })}
        t = pa.Table.from_pandas(rows, schema=RANKINGS_SCHEMA, preserve_index=False)
        write_table(t.replace_schema_metadata(meta), ofs, posixpath.join(opath, RANKINGS_FILE))
        write_table(pa.Table.from_pandas(sets, schema=SETS_SCHEMA, preserve_index=False), ofs,
                    posixpath.join(opath, SETS_FILE))
        if result.labels is not None:
            for name, frame in ((ENRICHMENT_FILE, result.enrichment), (LABEL_MEANS_FILE, result.label_means)):
                write_table(pa.Table.from_pandas(frame, preserve_index=False), ofs, posixpath.join(opath, name))
    return result


def _diverse_pool(diverse, top_k, bottom_k):
    """``(rho, k listed per list kind, (top_k, bottom_k) to rank))``: with ``diverse``, lists of DIVERSE_POOL x k
    candidates are ranked, then cut to k by :func:`diversify`."""
    if diverse is None:
        return None, None, (top_k, bottom_k)
    from screening.validation import check_finite_number

    rho = check_finite_number("diverse", diverse, allow_none=False)
    if not -1.0 < rho < 1.0:
        raise InvalidParameterError(f"diverse must be a cosine bound in (-1, 1), e.g. 0.95; got {diverse!r}")
    k_listed = {"topk": top_k, "bottomk": top_k if bottom_k is None else bottom_k}
    if isinstance(top_k, int) and not isinstance(top_k, bool) and isinstance(k_listed["bottomk"], int):
        return rho, k_listed, (top_k * DIVERSE_POOL, k_listed["bottomk"] * DIVERSE_POOL)
    return rho, k_listed, (top_k, bottom_k)   # RankConfig refuses them, naming the value


def _unit_features(rows, fs, path, storage) -> dict:
    """image_id -> centred unit embedding of every listed candidate (from the run's ``features/``)."""
    import numpy as np

    dataset = run_features(fs, path, storage) if fs is not None else None
    if dataset is None:
        raise InvalidParameterError("diverse= needs the run's image features (RUN/features/): give a pipeline run's "
                                    "RUN/responses screened with features on (the default)")
    cols = [c for c in dataset.schema.names if c != "image_id"]
    total, n = np.zeros(len(cols)), 0
    for b in dataset.to_batches(columns=cols, batch_readahead=0):
        x = np.column_stack([b.column(c).to_numpy(zero_copy_only=False) for c in cols]).astype(np.float64)
        total += x.sum(axis=0)
        n += x.shape[0]
    ids = sorted(set(rows.image_id))
    table = dataset.to_table(filter=ds.field("image_id").isin(ids)).to_pandas().drop_duplicates("image_id")
    return unit_vectors(table, (total / max(n, 1)).astype(np.float32))


def _labels_of(labels, ranker, fs, path, storage, manifest):
    """The labels of the ranked images: a ``Labels`` as given, or a spec resolved against the run's sources."""
    import numpy as np

    from screening.labels import Labels, id_strings, image_labels, isin

    ids = id_strings(ranker.image_ids)
    if not isinstance(labels, Labels):
        cfg = (manifest or {}).get("config") or {}
        sources = run_sources(fs, path, storage) if fs is not None else None
        if sources is None:
            if not str(labels).lower().endswith((".csv", ".parquet")):
                raise InvalidParameterError(
                    f"labels={labels!r} needs the run's record of each image's source (RUN/sources/), and these "
                    f"responses have none: give a pipeline run's RUN/responses, or a label table keyed by image_id")
            sources = pd.DataFrame({"image_id": ids, "source": ""})
        shards = [s.get("path") for s in (manifest or {}).get("shards") or []
                  if isinstance(s, dict) and str(s.get("path", "")).endswith(".parquet")]
        labels = image_labels(str(labels), sources, shards=shards, id_column=cfg.get("id_column") or "image_id",
                              image_column=cfg.get("image_column") or "image", storage=storage)
    pairs = labels.pairs.assign(image_id=id_strings(labels.pairs.image_id.to_numpy()))
    pairs = pairs[isin(pairs.image_id.to_numpy(), ids)]
    return Labels(labels.spec, pairs.reset_index(drop=True), np.asarray(pd.unique(ids), dtype=object))


def rank(responses, out=None, **options) -> pd.DataFrame:
    """Rank the screened images per ROI, streaming the responses table.

    Parameters
    ----------
    responses : str, os.PathLike, pyarrow.Table, pyarrow.dataset.Dataset or pandas.DataFrame
        The responses table (``image_id``, ``subject``, one float column per ROI); a path is a
        directory of Parquet files or one file, local or ``s3://``. A pipeline run's ``RUN/responses``
        (``RUN/_committed/`` exists) is read as its committed files only.
    out : str or os.PathLike, optional
        Directory to write ``rankings.parquet`` and ``_sets.parquet`` into (local or ``s3://``).
    rois : list of str, optional
        ROIs to rank: table columns (``L_FFC``, ``group_04``), bilateral areas (``FFC``), composites
        (``faces``) and their hemisphere versions (``L_faces``). Default: every column, every
        bilateral area and every composite that resolves.
    top_k : int, default=25
        Images kept per list (RNC keeps 25).
    bottom_k : int, optional
        Lowest-response images kept per ROI and subject; default ``top_k``; 0 disables.
    contrasts : sequence of str or (str, str), default=()
        ``"A:B"`` ranks images by ROI A minus ROI B (rows named ``A>B``); for names without
        hemisphere prefix the ``L_`` and ``R_`` versions are ranked too.
    contrast_by : {"z", "response"}, default="z"
        Contrast score: ``z_A - z_B`` (default) or ``response_A - response_B``.
    selectivity : bool, default=True
        Rank every ROI by ``z_roi - mean(z of the comparison set)``.
    comparison : list of str, optional
        Comparison set for selectivity; default every area column, minus those overlapping the ROI.
    consensus : bool, default=True
        Rank by the mean z over subjects (rows with ``subject="consensus"``).
    n_null : int, default=10_000
        Images drawn (seeded, without replacement) from the screened set for the single-image null.
    null_draws : int, default=10_000
        Random k-image sets drawn for the set-level null (the ``_sets`` table); 0 disables.
    null_quantile : float, default=0.95
        Quantile of the null that ``margin`` is measured from.
    seed : int, default=0
        Seeds every random draw; equal inputs and seed give equal outputs.
    composites : dict of str to list of str, optional
        Named composite ROIs (replaces the defaults); or ``roi_config`` (a YAML/TOML/JSON file,
        merged over the defaults).
    roi_config : str or os.PathLike, optional
    manifest : dict or str, optional
        The run manifest (for per-subject vertex counts); default: ``manifest.json`` beside the
        responses directory when ``responses`` is a path.
    batch_size : int, default=65_536
        Rows per streamed record batch.
    memory_budget_mb : float, default=512
        Bound on the consensus accumulators (9 bytes per image and ROI); above it the ROIs are
        processed in chunks, one column-projected scan each.
    storage_options : screening.fs.StorageOptions or dict, optional
        S3 endpoint and credentials mode for ``s3://`` paths (``screening.fs``); ``endpoint_url=`` /
        ``anonymous=`` may be given instead.
    progress : callable, optional
        Called with a short message after each scan.

    Returns
    -------
    pandas.DataFrame
        The rankings table: ``roi, subject, rank, image_id, response, z, margin, p_null, kind,
        score, n_subjects_topk`` (see ``docs/rank-report.md``). ``rank`` 1 is best; ``kind`` is one
        of ``topk``, ``bottomk`` (rank 1 = lowest), ``contrast``, ``selectivity``, ``consensus``.

    Raises
    ------
    InvalidParameterError
        On an unknown ROI, a malformed contrast, a table without ``image_id``/``subject`` or a
        parameter out of range; the message names the value and the valid ones.

    Notes
    -----
    Rows whose score is NaN are skipped. Ties are broken by ``image_id`` ascending. A list holds
    fewer than ``k`` rows when fewer images have a finite score.

    Examples
    --------
    >>> rankings = rank("run/responses", "run/rankings", rois=["FFC", "faces"],
    ...                 contrasts=["FFC:PHA1-3"])  # doctest: +SKIP
    """
    return rank_with_sets(responses, out, **options)[0]


def read_rankings(path, *, storage_options=None, endpoint_url=None, anonymous=None) -> pd.DataFrame:
    """Read a rankings directory (or file) written by :func:`rank`."""
    fs, p = filesystem_for(path, StorageOptions.of(storage_options, endpoint_url=endpoint_url, anonymous=anonymous))
    if not fs.exists(p):
        raise InvalidParameterError(f"rankings={path!r} does not exist")
    if fs.isdir(p) and fs.exists(posixpath.join(p, RANKINGS_FILE)):   # beside it: enrichment and tuning tables
        p = posixpath.join(p, RANKINGS_FILE)
    return ds.dataset(p, format="parquet", filesystem=fs).to_table().to_pandas()


def read_rankings_metadata(path, *, storage_options=None, endpoint_url=None, anonymous=None) -> dict:
    """The parameters and notes :func:`rank` stored with ``rankings.parquet`` (schema metadata key
    ``screening.rank``); ``{}`` for a file written without them."""
    import pyarrow.parquet as pq

    fs, p = filesystem_for(path, StorageOptions.of(storage_options, endpoint_url=endpoint_url, anonymous=anonymous))
    if fs.isdir(p):
        p = posixpath.join(p, RANKINGS_FILE)
    if not fs.exists(p):
        raise InvalidParameterError(f"rankings={path!r} has no {RANKINGS_FILE}")
    with fs.open(p, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    raw = meta.get(b"screening.rank")
    return json.loads(raw.decode()) if raw else {}


def roi_values(responses, roi: str, subject: str, *, manifest=None, members=None, storage_options=None):
    """Every finite value of one ROI for one subject, as :func:`rank` computes it (the report's histograms).

    ``responses`` as for :func:`rank`; ``members`` are the columns rank averaged for this ROI (rankings metadata
    ``members``); without them the name is resolved again against the table. Streamed; only the member columns
    of that subject's rows are read.
    """
    import numpy as np

    from screening.rank._engine import KEY_COLUMNS, _batch_matrix, _Evaluator
    from screening.rank._rois import RoiResolver, Target

    dataset, _, _ = _as_dataset(responses, StorageOptions.of(storage_options))
    cols = [f.name for f in dataset.schema if f.name not in KEY_COLUMNS]
    res = RoiResolver(cols, [subject], manifest_rois=(manifest or {}).get("rois"))
    if members and all(c in cols for c in members):
        members = tuple(members)
        w = np.ones(1) if len(members) == 1 else np.array([res.vertex_count(c, subject) for c in members])
        target = Target(roi, members, frozenset(), {subject: w})
    else:
        target = res.resolve(roi)
    ev = _Evaluator([target], list(target.members))
    parts = []
    for b in dataset.to_batches(columns=list(target.members), filter=ds.field("subject") == subject):
        v = ev(_batch_matrix(b, list(target.members)), subject)[:, 0]
        parts.append(v[np.isfinite(v)])
    return np.concatenate(parts) if parts else np.empty(0)


# -- CLI -------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``screening rank`` arguments."""
    parser.add_argument("responses", help="responses table: directory of Parquet files or a file (local or s3://); "
                             "a pipeline run's RUN/responses is read as its committed files only")
    parser.add_argument("out", help="output directory for rankings.parquet and _sets.parquet (local or s3://)")
    parser.add_argument("--roi", action="append", dest="rois", metavar="NAME",
                        help="ROI to rank (repeatable): L_FFC, FFC (bilateral), group_04, faces, L_faces ...; "
                             "default all")
    parser.add_argument("--parcellation", metavar="FILE",
                        help="rank the ROI columns of this parcellation of your own (the file the run was screened "
                             "with; with --roi, those too)")
    parser.add_argument("--parcellation-prefix", default=None, help="its column prefix (default: the file stem)")
    parser.add_argument("--top-k", type=int, default=25, help="images per list (default 25)")
    parser.add_argument("--bottom-k", type=int, default=None, help="lowest images per ROI (default = top-k; 0 = off)")
    parser.add_argument("--contrast", action="append", default=[], metavar="A:B",
                        help="rank by ROI A minus ROI B, e.g. FFC:PHA1-3 (repeatable)")
    parser.add_argument("--contrast-by", choices=("z", "response"), default="z",
                        help="contrast score: difference of z (default) or of responses")
    parser.add_argument("--no-selectivity", action="store_true", help="skip the selectivity lists")
    parser.add_argument("--comparison", action="append", metavar="NAME",
                        help="selectivity comparison ROI (repeatable; default all area columns)")
    parser.add_argument("--no-consensus", action="store_true", help="skip the cross-subject consensus lists")
    parser.add_argument("--roi-config", metavar="FILE", help="YAML/TOML/JSON file of composites, e.g. faces: [FFC, PIT]")
    parser.add_argument("--manifest", help="manifest.json (default: beside RESPONSES)")
    parser.add_argument("--diverse", type=float, default=None, metavar="RHO",
                        help="no two listed images with embeddings closer than cosine RHO (e.g. 0.95): near-copies "
                             "are skipped and recorded (kind *_skipped, duplicate_of); needs the run's features/")
    parser.add_argument("--labels", metavar="SPEC",
                        help="what the images are, for enrichment and tuning tables: folder (parent folder name), "
                             "name:REGEX (first group over the file name), column:NAME (input shard column), or a "
                             ".csv/.parquet table with label and image_id|source|file")
    parser.add_argument("--n-null", type=int, default=10_000, help="images in the single-image null (default 10000)")
    parser.add_argument("--null-draws", type=int, default=10_000, help="random k-sets in the set null (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--batch-size", type=int, default=65_536, help="rows per streamed batch")
    parser.add_argument("--memory-budget-mb", type=float, default=512.0, help="bound on consensus accumulators")
    add_storage_arguments(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``screening rank``; returns the exit status."""
    t0 = time.perf_counter()

    def progress(msg):
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr)

    if "://" not in str(args.out) and os.path.isfile(args.out):  # found only after the scans otherwise
        raise InvalidParameterError(f"out={args.out!r} is a file; give a folder for {RANKINGS_FILE}")
    if args.parcellation:
        from screening.parcellation import column_names

        args.rois = list(args.rois or []) + column_names(args.parcellation, prefix=args.parcellation_prefix)
    with warnings.catch_warnings(record=True) as caught:  # printed once below as plain notes
        warnings.simplefilter("always", RankingNote)
        result = rank_with_labels(args.responses, args.out, labels=args.labels, diverse=args.diverse, rois=args.rois, top_k=args.top_k, bottom_k=args.bottom_k,
                    contrasts=args.contrast, contrast_by=args.contrast_by, selectivity=not args.no_selectivity,
                    comparison=args.comparison, consensus=not args.no_consensus, n_null=args.n_null,
                    null_draws=args.null_draws, seed=args.seed, roi_config=args.roi_config, manifest=args.manifest,
                    batch_size=args.batch_size, memory_budget_mb=args.memory_budget_mb,
                    storage_options=StorageOptions.from_args(args), progress=progress)
    for w in caught:
        if issubclass(w.category, RankingNote):
            print(f"screening rank: note: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    rows = result.rankings
    counts = rows.groupby("kind").size().to_dict()
    print(f"wrote {len(rows)} ranking rows {counts} to {posixpath.join(str(args.out), RANKINGS_FILE)} "
          f"in {time.perf_counter() - t0:.1f}s")
    if result.labels is not None:
        print(_enrichment_summary(result))
    return 0


def _enrichment_summary(result: RankResult, most: int = 20) -> str:
    """The labels, and per ranked ROI its most enriched label in the top list (mean subject where ranked)."""
    e = result.enrichment
    subject = "mean" if (e.subject == "mean").any() else (e.subject.iloc[0] if len(e) else "mean")
    best = best_labels(e, subject=subject)
    lines = [f"{result.labels.summary()}; enrichment: {ENRICHMENT_FILE}, tuning: {LABEL_MEANS_FILE}",
             f"most enriched label in each top-k ({subject}):"]
    for r in best.head(most).itertuples(index=False):
        lines.append(f"  {r.roi}: {r.label}  {r.hits}/{r.k} vs base {r.base_rate:.1%}  fold {r.fold:.2f}  "
                     f"q {r.q:.2g}")
    if len(best) > most:
        lines.append(f"  ... {len(best) - most} more ROI(s) in {ENRICHMENT_FILE}")
    return "\n".join(lines)
