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
from screening.fs import StorageOptions, filesystem_for
from screening.rank import config as _config
from screening.rank._engine import (
    RANKINGS_SCHEMA,
    scan_row_groups,
    RankingNote,
    SETS_SCHEMA,
    Ranker,
)
from screening.rank.config import RankConfig
from screening.rank.kinds import BOTTOMK, TOPK, documented as _documented_kinds
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


def rank_with_labels(responses, out=None, *, labels=None, diverse=None, composites=None, roi_config=None,
                     manifest=None, storage_options=None, endpoint_url=None, anonymous=None, progress=None,
                     **options) -> RankResult:
    # the ranking options are RankConfig's fields: the signature and the Parameters below are made from them
    unknown = sorted(set(options) - set(RankConfig.names()))
    if unknown:
        raise TypeError(f"rank_with_labels() got an unexpected keyword argument {unknown[0]!r}")
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
    options = {**RankConfig.defaults(), **options}
    rho, k_listed, (options["top_k"], options["bottom_k"]) = _diverse_pool(diverse, options["top_k"],
                                                                           options["bottom_k"])
    cfg = RankConfig.of(**options)
    ranker = Ranker(dataset, cfg, composites=composites, manifest=manifest, progress=progress)
    rows, sets = ranker.run()
    if k_listed is not None:
        rows, notes = diversify(rows, _unit_features(rows, fs, path, storage), rho, k_listed)
        ranker.notes += notes + [f"diverse: lists ranked over {DIVERSE_POOL}x k candidates; the set-level null "
                                 f"(_sets) describes those pools"]
    result = RankResult(rows, sets)
    if labels is not None:
        result.labels = _labels_of(labels, ranker, fs, path, storage, manifest)
        result.label_means = label_means(ranker, result.labels, memory_budget_mb=cfg.memory_budget_mb)
        result.enrichment = enrichment(rows, result.labels, sets=sets, means=result.label_means)
    if out is not None:
        ofs, opath = filesystem_for(out, storage)
        meta = {"screening.rank": json.dumps({
            **cfg.record(ranker), "n_rows": ranker.n_rows,
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
    k_listed = {TOPK.name: top_k, BOTTOMK.name: top_k if bottom_k is None else bottom_k}
    if isinstance(top_k, int) and not isinstance(top_k, bool) and isinstance(k_listed[BOTTOMK.name], int):
        return rho, k_listed, (top_k * DIVERSE_POOL, k_listed[BOTTOMK.name] * DIVERSE_POOL)
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
    <parameters>

    Returns
    -------
    pandas.DataFrame
        The rankings table: ``roi, subject, rank, image_id, response, z, margin, p_null, kind,
        score, n_subjects_topk, duplicate_of`` (see ``docs/rank-report.md``). ``rank`` 1 is best;
        ``kind`` is one of <kinds>.

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


_WITH_LABELS_DOC = """:func:`rank`, and with ``labels`` what the ranked images are (a :class:`RankResult`).

    ``labels`` is resolved against the run's recorded sources; with ``out``, ``enrichment.parquet`` and
    ``label_means.parquet`` are written beside the rankings (docs/rank-report.md). With ``diverse``, skipped
    near-copies stay in the rankings (:mod:`screening.rank._diverse`).

    Parameters
    ----------
    <parameters>

    Returns
    -------
    RankResult
        The rankings and set table (as :func:`rank_with_sets`), and with ``labels`` the enrichment, the label
        means and the resolved labels.
    """


def _documented(doc: str) -> str:
    """``doc`` with every parameter's entry (from RankConfig's fields and the call's arguments) and the kinds."""
    return doc.replace("    <parameters>", _config.parameters_doc()).replace("<kinds>", _documented_kinds())


rank_with_labels.__signature__ = _config.signature()
rank_with_labels.__doc__ = _documented(_WITH_LABELS_DOC)
rank.__doc__ = _documented(rank.__doc__)


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
    """Add ``screening rank`` arguments (one per option: :mod:`screening.rank.config`)."""
    _config.configure_parser(parser, RankConfig)


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
        result = rank_with_labels(**_config.from_args(args, RankConfig), progress=progress)
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
