"""``screening search``: which screened images evoke a given brain profile.

A query is a profile over ROI columns: an image of the run (``--like IMAGE_ID``), a new image file encoded on the
fly with the run's model and options (``--like photo.jpg``), or a target pattern (``--target FFC=+2,PHA1=-1,V1=0``
or a CSV of ``roi,value``; a measured pattern works too).

Similarity is the Pearson correlation, across the chosen columns, of the query with each image's profile, both
z-scored per column over the run: a column's z says how far the image is from the screened set's mean in that ROI,
in units of that ROI's spread. Without it every image correlates with the shared mean pattern of the ROIs (early
visual areas respond more than others to nearly everything), and the ROIs with the largest spread decide alone.
``metric="cosine"`` uses the cosine of the z-profiles instead (no centring across columns, so a profile that is
high everywhere matches one that is high everywhere). Target values are compared with z-profiles: give them in
z units; Pearson ignores a target's overall offset and scale.

Each query is scored over its own columns only, and over those of them that can tell images apart: a column with no
finite value in the run, the same value for every image, or no value in the query is left out, and the query is
centred and normalised over the columns that remain (so every score lies in [-1, 1] and an image is 1 to itself). An
image with a NaN in one of a query's scored columns has no score for that query, and only that one. Every column
and image left out is counted in the result's notes. A flat query (every value equal) has no Pearson correlation
and is refused, as are target ROIs outside ``rois``.

The search is exact and streams the committed responses twice (per-column mean and s.d., then the scores), a
record batch at a time: memory is one batch plus k rows per query, whatever the number of images. Several queries
are scored in the same pass as one matrix product.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from screening.exceptions import InvalidParameterError
from screening.fs import StorageOptions

METRICS = ("pearson", "cosine")
SPACES = ("responses", "features")
KEY_COLUMNS = ("image_id", "subject")
BATCH_ROWS = 65_536
CONSTANT_RTOL = 1e-9


@dataclass(frozen=True)
class Query:
    """One profile to search for: ``values`` over ``columns`` (z units unless ``raw``: then z-scored with the
    run's statistics, as an image's row is)."""

    name: str
    columns: tuple
    values: np.ndarray | None
    raw: bool
    image_id: str | None = None   # an image of the run whose row is the query


def parse_target(spec: str, storage=None) -> dict:
    """``FFC=+2,PHA1=-1`` or a CSV file of ``roi,value`` rows -> {roi: value}."""
    if str(spec).lower().endswith(".csv"):
        from screening.fs import filesystem_for

        fs, p = filesystem_for(str(spec), storage)
        if not fs.exists(p):
            raise InvalidParameterError(f"target file {spec!r} does not exist")
        with fs.open(p, "rb") as f:
            t = pd.read_csv(f)
        if not {"roi", "value"} <= set(t.columns):
            raise InvalidParameterError(f"target file {spec!r} needs columns roi,value; it has {list(t.columns)}")
        pairs = list(zip(t.roi.astype(str), t.value))
    else:
        pairs = []
        for part in str(spec).split(","):
            m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*", part)
            if not m:
                raise InvalidParameterError(f"target {spec!r}: {part.strip()!r} is not ROI=VALUE (e.g. FFC=+2,"
                                            f"PHA1=-1,V1=0) and the target is not a .csv of roi,value")
            pairs.append((m.group(1), m.group(2)))
    out = {}
    for roi, v in pairs:
        try:
            out[roi] = float(v)
        except ValueError:
            raise InvalidParameterError(f"target {spec!r}: value {v!r} of {roi} is not a number") from None
    if len(out) < 2:
        raise InvalidParameterError(f"target {spec!r} names {len(out)} ROI; a profile needs at least 2")
    return out


class _Run:
    """The committed responses of a run (or a plain responses table) and, where there is one, its manifest."""

    def __init__(self, run, storage: StorageOptions, space: str = "responses"):
        from screening.pipeline.outputs import RunOutputs

        self.outputs = RunOutputs(str(run), storage=storage)
        self.dataset = self.outputs.dataset(space)
        if self.dataset is None:
            if space == "features" and self.outputs.dataset("responses") is not None:
                raise InvalidParameterError(f"run={str(run)!r} kept no image features (screened with features off, "
                                            f"or by an engine before they were kept); search its responses instead")
            raise InvalidParameterError(f"run={str(run)!r}: " + (self.outputs.why_no() if self.outputs.is_run()
                                                                  else f"has no {space}/ to search"))
        self.space = space
        self.manifest = self.outputs.manifest() or {}
        names = self.dataset.schema.names
        self.columns = [c for c in names if c not in KEY_COLUMNS]

    def check_columns(self, columns, what: str) -> list:
        unknown = [c for c in columns if c not in self.columns]
        if unknown:
            from screening.rois import did_you_mean

            hint = did_you_mean(unknown[0], self.columns)
            raise InvalidParameterError(f"{what}: {unknown} are not response columns of the run{hint}; columns: "
                                        f"{', '.join(self.columns[:12])}{' ...' if len(self.columns) > 12 else ''}")
        return list(columns)

    def batches(self, columns, subject):
        """``subject``'s rows, one Parquet row group in memory at a time (``rank``'s scan)."""
        import pyarrow.compute as pc

        from screening.rank import scan_row_groups

        keyed = "subject" in self.dataset.schema.names   # features have one row per image, no subject
        cols = ["image_id"] + (["subject"] if keyed else []) + list(columns)
        if isinstance(self.dataset, ds.FileSystemDataset):
            stream = scan_row_groups(self.dataset, cols, BATCH_ROWS)
        else:
            stream = self.dataset.to_batches(columns=cols, batch_size=BATCH_ROWS, batch_readahead=0)
        for b in stream:
            if not keyed:
                yield b
                continue
            subj = b.column("subject")
            if pc.all(pc.equal(subj, subject)).as_py():
                yield b
            elif (b := b.filter(pc.equal(subj, subject))).num_rows:
                yield b



def _matrix(batch, columns) -> np.ndarray:
    """``(rows, columns)`` float64 in column order (Fortran), each column one contiguous copy."""
    out = np.empty((batch.num_rows, len(columns)), dtype=np.float64, order="F")
    for j, c in enumerate(columns):
        out[:, j] = batch.column(c).to_numpy(zero_copy_only=False)
    return out


def column_stats(run: _Run, columns, subject, capture=()) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Per-column mean and s.d. (ddof 0) over the run's finite values of ``subject``, each column's count of finite
    values, and the rows of the image ids in ``capture`` (``--like IMAGE_ID`` queries: read in the same pass)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    shift = s1 = s2 = n = None
    rows, captured = 0, {}
    wanted = pa.array(sorted(capture), pa.string()) if capture else None
    for b in run.batches(columns, subject):
        x = _matrix(b, columns)
        rows += x.shape[0]
        if shift is None:
            with warnings.catch_warnings():   # an all-NaN column: its shift is 0, its count stays 0
                warnings.simplefilter("ignore", RuntimeWarning)
                shift = np.nan_to_num(np.nanmean(x, axis=0)) if x.size else np.zeros(len(columns))
            s1, s2, n = np.zeros(len(columns)), np.zeros(len(columns)), np.zeros(len(columns))
        d = x - shift
        t1 = d.sum(0)
        if np.isfinite(t1).all():   # the common case: no NaN in the batch
            s1 += t1
            s2 += np.einsum("ij,ij->j", d, d)
            n += x.shape[0]
        else:
            ok = np.isfinite(d)
            d = np.where(ok, d, 0.0)
            s1 += d.sum(0)
            s2 += (d * d).sum(0)
            n += ok.sum(0)
        if wanted is not None:
            hit = np.flatnonzero(pc.is_in(b.column("image_id"), value_set=wanted).to_numpy(zero_copy_only=False))
            for i in hit:
                captured.setdefault(b.column("image_id")[int(i)].as_py(), x[int(i)].copy())
    if not rows:
        raise InvalidParameterError(f"the run has no response rows of subject {subject!r}")
    mean_d = s1 / np.maximum(n, 1)
    sd = np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean_d ** 2, 0.0))
    return shift + mean_d, sd, n, captured


def has_spread(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Columns whose values differ: an s.d. within rounding of the mean (float32 values, float64 sums) is none."""
    return sd > CONSTANT_RTOL * np.abs(mean)


def scored_columns(q: Query, mean: np.ndarray, sd: np.ndarray, n: np.ndarray, metric: str) -> tuple[list, list]:
    """``(positions in q.columns that are scored, notes on those left out)``: a column with no finite value in the
    run, no spread, or no value in the query cannot tell images apart; the query is then centred and normalised
    over exactly the columns that remain."""
    keep, notes = [], []
    spread = has_spread(mean, sd)
    values = np.asarray(q.values, dtype=np.float64)
    for j, c in enumerate(q.columns):
        if n[j] == 0:
            notes.append(f"{q.name}: column {c} left out: no finite value in the run (e.g. an ROI with no vertex "
                         f"over the reliability threshold)")
        elif not spread[j]:
            notes.append(f"{q.name}: column {c} left out: the same value for every image (s.d. 0)")
        elif not np.isfinite(values[j]):
            notes.append(f"{q.name}: column {c} left out: the query has no value there (NaN)")
        else:
            keep.append(j)
    need = 3 if metric == "pearson" else 2
    if len(keep) < need:
        left = [q.columns[j] for j in range(len(q.columns)) if j not in keep]
        raise InvalidParameterError(
            f"{q.name}: {len(keep)} of its {len(q.columns)} column(s) can be scored ({left} left out: constant, "
            f"all NaN or no query value); {metric} needs at least {need}")
    return keep, notes


def query_vector(q: Query, keep: list, mean: np.ndarray, sd: np.ndarray, metric: str) -> np.ndarray:
    """The unit query over its scored columns (centred first for Pearson); a flat profile is refused."""
    v = np.asarray(q.values, dtype=np.float64)[keep]
    if q.raw:
        v = (v - mean) / sd
    u = _normalise(v[None], metric)[0]
    if not np.isfinite(u).all():
        raise InvalidParameterError(
            f"{q.name}: the profile is flat over its scored columns (every value equal{' in z' if q.raw else ''}): "
            + ("it has no Pearson correlation with anything; give values that differ, or metric='cosine'"
               if metric == "pearson" else "a zero vector has no cosine with anything"))
    return u


def _normalise(z: np.ndarray, metric: str) -> np.ndarray:
    """Rows of ``z`` as unit vectors (centred across columns first for Pearson); NaN rows where undefined."""
    if metric == "pearson":
        z = z - z.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return z / np.where(norm > 1e-12, norm, np.nan)


class _Scorer:
    """Similarities of raw rows ``x`` to every query. ``z = (x - mu) / sd`` over the union of the queries' columns
    (0 in a column no query scores); a unit query ``u`` is 0 outside its scored columns S, so ``z . u`` sees S only,
    and the row's norm over S (centred for Pearson) follows from ``z**2 @ 1_S`` and ``z @ 1_S``. A batch costs two
    matrix products, whatever the number of queries; queries over the same columns share their norm terms. A row
    with a non-finite value in S has no score for that query (and only that query)."""

    def __init__(self, qmat: np.ndarray, masks: np.ndarray, mean: np.ndarray, sd: np.ndarray, metric: str):
        scored = masks.any(axis=0)
        self.inv = np.where(scored, 1.0 / np.where(scored, sd, 1.0), 0.0)
        self.mean = mean
        sets, self.set_of = np.unique(masks, axis=0, return_inverse=True)
        self.set_of = self.set_of.ravel()
        self.sets = sets.astype(np.float64)
        self.metric, self.n = metric, sets.sum(axis=1).astype(np.float64)
        self.lin = np.hstack([qmat.T, self.sets.T])    # [u | 1_S]: dot products and the sums of z per set
        self.nq = qmat.shape[0]
        self.nan_rows = np.zeros(self.nq, np.int64)    # rows left out of each query for a NaN in its columns
        self.flat_rows = np.zeros(self.nq, np.int64)   # rows whose profile is flat over the query's columns

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x``: a batch's float64 matrix, overwritten (it becomes the z-matrix)."""
        z = x
        z -= self.mean
        z *= self.inv
        hit = None
        if not np.isfinite(z.sum()):   # the common case has no NaN: one reduction instead of a mask
            bad = ~np.isfinite(z)
            z[bad] = 0.0
            hit = (bad.astype(np.float64) @ self.sets.T) > 0   # (rows, sets): a NaN among the set's columns
        lin = z @ self.lin
        dot, sum_z = lin[:, :self.nq], lin[:, self.nq:]
        sum_z2 = np.square(z, out=z) @ self.sets.T
        if self.metric == "pearson":
            sum_z2 = sum_z2 - sum_z ** 2 / np.maximum(self.n, 1.0)
        floor = 1e-12 * np.maximum(self.n, 1.0)
        flat = ~(sum_z2 > floor)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = np.sqrt(np.where(flat, np.nan, sum_z2))
            out = dot / norm[:, self.set_of]
        if hit is not None:
            lost = hit[:, self.set_of]
            out[lost] = np.nan
            self.nan_rows += lost.sum(axis=0)
            self.flat_rows += (flat[:, self.set_of] & ~lost).sum(axis=0)
        else:
            self.flat_rows += flat[:, self.set_of].sum(axis=0)
        return out


class _TopK:
    """The k best (similarity, image_id) of each query; ties broken by image_id ascending. Only a batch's own
    candidates (its k best, with every tie at the k-th value) have their ids read."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.sims = [np.empty(0) for _ in range(n_queries)]
        self.ids = [np.empty(0, dtype=object) for _ in range(n_queries)]

    def _candidates(self, s: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(np.isfinite(s))
        if idx.size > self.k:
            kth = np.partition(s[idx], idx.size - self.k)[idx.size - self.k]
            idx = idx[s[idx] >= kth]   # every tie at the threshold stays a candidate
        return idx

    def add(self, sims: np.ndarray, ids) -> None:
        """``sims`` (rows, queries); ``ids`` the batch's ``image_id`` Arrow array."""
        for q in range(sims.shape[1]):
            idx = self._candidates(sims[:, q])
            s = np.concatenate([self.sims[q], sims[idx, q]])
            i = np.concatenate([self.ids[q], np.asarray(ids.take(idx).to_pylist(), dtype=object)])
            keep = self._candidates(s)
            s, i = s[keep], i[keep]
            order = sorted(range(s.size), key=lambda j: (-s[j], i[j]))[: self.k]
            self.sims[q], self.ids[q] = s[order], i[order]


def search(run, *, like=(), target=(), rois=None, subject: str = "mean", k: int = 20, metric: str = "pearson",
           space: str = "responses", storage_options=None, endpoint_url=None, anonymous=None) -> pd.DataFrame:
    """The ``k`` screened images most similar to each query; see the module docstring.

    Parameters
    ----------
    run : str or os.PathLike
        A run's output root (its committed responses are read), local or ``s3://``.
    like : str or list of str
        ``image_id`` of the run, or the path of a new image (encoded with the run's model and options).
    target : str, dict or list of those
        ``"FFC=+2,PHA1=-1"``, a CSV of ``roi,value``, or ``{roi: value}`` (z units).
    rois : list of str, optional
        Columns to compare over; default a target's own ROIs, and for ``like`` every response column.
    subject : str, default="mean"
    k : int, default=20
    metric : {"pearson", "cosine"}, default="pearson"
    space : {"responses", "features"}, default="responses"
        ``features``: the images' embeddings (the core output's spatial mean, 384 values per image) instead of their
        ROI responses: images alike for the brain-optimised network. Only ``like`` queries; no subject.

    Returns
    -------
    pandas.DataFrame
        ``query, rank, image_id, similarity, source`` (rank 1 = most similar; ``source`` where the run recorded
        it). ``attrs["notes"]``: what each query left out and why (the CLI prints them): columns that are all NaN,
        constant or missing from the query are not scored, and images with a NaN in a scored column or a flat
        profile over them have no similarity; each is counted.
    """
    from screening.validation import check_choice, check_positive_int, parse_subjects

    storage = StorageOptions.of(storage_options, endpoint_url=endpoint_url, anonymous=anonymous)
    check_choice("metric", metric, METRICS)
    check_choice("space", space, SPACES)
    k = check_positive_int("k", k, allow_none=False)
    if subject != "mean":
        subject = parse_subjects(subject, name="subject")[0]
    likes = [like] if isinstance(like, (str, os.PathLike)) else list(like or ())
    targets = [target] if isinstance(target, (str, dict)) else list(target or ())
    if not likes and not targets:
        raise InvalidParameterError("give at least one query: like=IMAGE_ID or an image path, or target=ROI=VALUE,...")
    r = _Run(run, storage, space)
    if space == "features":
        if targets or rois:
            raise InvalidParameterError("space='features' takes like= queries only (targets and rois name ROI "
                                        "columns of the responses)")
        subject = "mean"
    queries = []
    for t in targets:
        values = t if isinstance(t, dict) else parse_target(t, storage)
        columns = r.check_columns(rois or list(values), "target")
        outside = [c for c in values if c not in columns]
        if outside:
            raise InvalidParameterError(f"target {t!r} names {outside}, which are not among rois={list(columns)}; "
                                        f"add them to the rois or drop them from the target")
        missing = [c for c in columns if c not in values]
        if missing:
            raise InvalidParameterError(f"target {t!r} gives no value for {missing}; give every ROI of --rois")
        queries.append(Query(f"target:{t if isinstance(t, str) else ','.join(f'{a}={b:g}' for a, b in values.items())}",
                             tuple(columns), np.array([values[c] for c in columns], float), raw=False))
    for like_one in likes:
        columns = tuple(r.check_columns(rois or r.columns, "rois"))
        like_one = os.fspath(like_one)
        if os.path.isfile(like_one) or "://" in like_one:
            values = (encode_features(r.manifest, like_one, storage) if space == "features"
                      else encode_profile(r.outputs, like_one, columns, subject, storage))
        else:
            values = None   # an image of the run: its row is read in the statistics pass
        queries.append(Query(f"like:{like_one}", columns, values, raw=True, image_id=None if values is not None
                             else like_one))
    for q in queries:
        if metric == "pearson" and len(q.columns) < 3:
            raise InvalidParameterError(f"{q.name}: a Pearson correlation over {len(q.columns)} ROI(s) is always "
                                        f"+1 or -1; compare over 3 or more ROIs, or use metric='cosine'")
    return _score(r, queries, subject, k, metric)


def _score(r: _Run, queries: list, subject: str, k: int, metric: str) -> pd.DataFrame:
    """One streamed pass for every query: queries over different columns are scored on their union, each over its
    own scored columns only. The table's ``attrs["notes"]`` says what each query left out and why."""
    union = list(dict.fromkeys(c for q in queries for c in q.columns))
    pos = {c: i for i, c in enumerate(union)}
    mean, sd, n, rows = column_stats(r, union, subject, capture={q.image_id for q in queries if q.image_id})
    masks = np.zeros((len(queries), len(union)), bool)
    qmat = np.zeros((len(queries), len(union)))
    notes = []
    for qi, q in enumerate(queries):
        idx = np.array([pos[c] for c in q.columns])
        if q.image_id is not None:
            if q.image_id not in rows:
                raise InvalidParameterError(f"--like {q.image_id!r} is neither an image_id of the run (subject "
                                            f"{subject}) nor an image file")
            q = queries[qi] = dataclasses.replace(q, values=rows[q.image_id][idx])
        keep, why = scored_columns(q, mean[idx], sd[idx], n[idx], metric)
        notes += why
        masks[qi, idx[keep]] = True
        qmat[qi, idx[keep]] = query_vector(q, keep, mean[idx[keep]], sd[idx[keep]], metric)
    score = _Scorer(qmat, masks, mean, sd, metric)
    top = _TopK(len(queries), k)
    for b in r.batches(union, subject):
        top.add(score(_matrix(b, union)), b.column("image_id"))
    for qi, q in enumerate(queries):
        if score.nan_rows[qi]:
            notes.append(f"{q.name}: {score.nan_rows[qi]} image(s) left out: NaN in a scored column")
        if score.flat_rows[qi]:
            notes.append(f"{q.name}: {score.flat_rows[qi]} image(s) left out: a flat profile over the scored "
                         f"columns has no {metric} similarity")
    out = pd.DataFrame([(q.name, rank, str(i), float(s)) for qi, q in enumerate(queries)
                        for rank, (s, i) in enumerate(zip(top.sims[qi], top.ids[qi]), 1)],
                       columns=["query", "rank", "image_id", "similarity"])
    out = out.merge(_sources(r, set(out.image_id)), on="image_id", how="left")
    out.attrs["notes"] = notes
    return out


def _sources(r: _Run, ids) -> pd.DataFrame:
    sources = r.outputs.dataset("sources") if r.outputs.is_run() else None
    if sources is None or not ids:
        return pd.DataFrame({"image_id": pd.Series(dtype=str), "source": pd.Series(dtype=str)})
    t = sources.to_table(filter=ds.field("image_id").isin(sorted(ids))).to_pandas()
    return t.drop_duplicates("image_id")[["image_id", "source"]]


def encode_profile(outputs, path: str, columns, subject: str, storage=None) -> np.ndarray:
    """A new image's responses over ``columns``, computed as the run computed its rows: the run's model, ROI sets,
    subjects and precision (its recorded :class:`RunConfig`: ``outputs.config()``, ``outputs`` the run's
    :class:`~screening.pipeline.outputs.RunOutputs`); ``subject="mean"`` the mean of the subjects' ROI means."""
    from screening.pipeline.plan import resolve_model_id, resolve_rois, resolve_store

    cfg = (outputs.manifest() or {}).get("config") or {}
    if not cfg.get("store"):
        raise InvalidParameterError("encoding a new image needs the run's manifest (config.store); this output has "
                                    "none: give an image_id of the run instead")
    if cfg.get("custom_rois"):
        raise InvalidParameterError("the run has custom ROIs (recorded by name only), so a new image cannot be "
                                    "encoded as the run was: give an image_id of the run instead")
    config = outputs.config(storage=StorageOptions.of(storage), without=("vertex_stats",))   # its table may be gone
    store = resolve_store(config.store, storage=config.storage)
    model_id = resolve_model_id(store, config.model_id)
    roi_set = resolve_rois(store, model_id, dict(store.fingerprint(model_id)), config)[0]
    missing = [c for c in columns if c not in roi_set]
    if missing:
        raise InvalidParameterError(f"the run's ROI sets do not hold {missing}")
    from screening.api import BERG
    from screening.fs import filesystem_for
    from screening.preprocess import preprocess_bytes

    fs, p = filesystem_for(path, storage)
    image = preprocess_bytes(fs.cat_file(p))[None]
    sets = {n: roi_set[n] for n in columns}
    union = np.unique(np.concatenate([c for v in sets.values() for c in (v.values() if isinstance(v, dict) else [v])]))
    precision = config.precision if config.precision in ("fp32", "bf16", "fp16") else "fp32"
    berg = BERG(str(config.store), storage_options=config.storage)
    model = berg.get_encoding_model(model_id, subject=list(config.subjects), device="cpu", precision=precision,
                                    selection={"voxel_index": _mask(union, model_id)})
    model.roi_sets = sets   # the run's exact ROI sets over the selected vertices
    per = berg.encode(model, image, reduce="roi_mean")[model.weights.dataset]
    if subject == "mean":   # as the pipeline's mean row: float64 mean of the subjects' float32 ROI means
        return np.mean(np.stack([per[s][0] for s in config.subjects]).astype(np.float32), axis=0,
                       dtype=np.float64).astype(np.float32).astype(np.float64)
    if subject not in per:
        raise InvalidParameterError(f"subject {subject!r} was not screened; the run has {sorted(per)}")
    return per[subject][0].astype(np.float64)


def encode_features(manifest: dict, path: str, storage=None) -> np.ndarray:
    """A new image's embedding as the run kept its images' (the core output's spatial mean, float16 values)."""
    import torch

    from screening.api import BERG
    from screening.fs import filesystem_for
    from screening.preprocess import preprocess_bytes

    cfg = manifest.get("config") or {}
    model_id = (manifest.get("model") or {}).get("model_id") or cfg.get("model_id")
    if not cfg.get("store") or not model_id:
        raise InvalidParameterError("encoding a new image needs the run's manifest (config.store, model.model_id)")
    fs, p = filesystem_for(path, storage)
    image = preprocess_bytes(fs.cat_file(p))[None]
    precision = cfg.get("precision") if cfg.get("precision") in ("fp32", "bf16", "fp16") else "fp32"
    berg = BERG(str(cfg["store"]), storage_options=StorageOptions(endpoint_url=cfg.get("endpoint_url"),
                                                                  anonymous=cfg.get("anonymous")))
    model = berg.get_encoding_model(model_id, subject=1, device="cpu", precision=precision,
                                    selection={"glasser_group": 1})   # the heads are not used: the core's output is
    with torch.inference_mode():
        feats = model.features(image).mean(dim=(2, 3))[0].numpy()
    return feats.astype(np.float16).astype(np.float64)


def _mask(columns: np.ndarray, model_id: str) -> np.ndarray:
    from screening.models.registry import get_weights

    m = np.zeros(get_weights(model_id).n_vertices, np.int8)
    m[columns] = 1
    return m


# -- CLI ----------------------------------------------------------------------------------------------------------
def configure_parser(p: argparse.ArgumentParser) -> None:
    from screening.fs import add_storage_arguments

    p.add_argument("run", help="a run's output root (local or s3://)")
    p.add_argument("--like", action="append", default=[], metavar="IMAGE",
                   help="an image_id of the run, or the path of a new image (encoded with the run's model); "
                        "repeatable")
    p.add_argument("--target", action="append", default=[], metavar="SPEC",
                   help="ROI=VALUE,... in z units (FFC=+2,PHA1=-1,V1=0) or a CSV of roi,value; repeatable")
    p.add_argument("--rois", default=None, help="comma-separated columns to compare over (default: a target's own "
                                                "ROIs; every column for --like)")
    p.add_argument("--subject", default="mean", help="mean (default) or sub-NN")
    p.add_argument("-k", type=int, default=20, help="images per query (default 20)")
    p.add_argument("--metric", choices=METRICS, default="pearson")
    p.add_argument("--space", choices=SPACES, default="responses",
                   help="responses (ROI profiles, default) or features: the images' 384-d core embeddings")
    p.add_argument("--out", default=None, help="write the table (.csv or .parquet)")
    p.add_argument("--sheet", "--report", dest="sheet", default=None, metavar="PNG",
                   help="also draw a contact sheet of each query's results")
    add_storage_arguments(p)


def run_from_args(args) -> int:
    rois = [r.strip() for r in args.rois.split(",") if r.strip()] if args.rois else None
    storage = StorageOptions.from_args(args)
    table = search(args.run, like=args.like, target=args.target, rois=rois, subject=args.subject, k=args.k,
                   metric=args.metric, space=args.space, storage_options=storage)
    for note in table.attrs.get("notes", ()):
        print(f"note: {note}", file=sys.stderr)
    if args.out:
        (table.to_parquet if args.out.endswith(".parquet") else table.to_csv)(args.out, index=False)
        print(f"wrote {len(table)} rows to {args.out}")
    if args.sheet:
        _sheet(args.run, table, args.sheet, storage)
        print(f"wrote {args.sheet}")
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        for name, g in table.groupby("query", sort=False):
            print(f"\n{name}")
            print(g.drop(columns=["query"]).to_string(index=False))
    return 0


def _sheet(run, table: pd.DataFrame, out_png: str, storage) -> None:
    """One contact sheet per query, stacked: the results' images read from the run's recorded sources."""
    from PIL import Image

    from screening.labels import file_names   # a tar member's own name, not its archive's
    from screening.report.contact_sheet import make_contact_sheet
    from screening.sources import read_image

    from screening.pipeline.outputs import RunOutputs

    recorded = (RunOutputs(str(run), storage=storage).manifest() or {}).get("config") or {}   # the kinds' options
    images = {}
    for i, src in zip(table.image_id, table.source):
        if isinstance(src, str) and i not in images and (data := read_image(src, storage, recorded)):
            images[i] = data
    parts = []
    for n, (name, g) in enumerate(table.groupby("query", sort=False)):
        png = f"{out_png}.{n}.png"
        short = name if not name.startswith("like:") else "like: " + os.path.basename(name[len("like:"):])
        make_contact_sheet(g.assign(score=g.similarity), None, images, title=f"{short} (score = similarity)",
                           out_png=png, labels=dict(zip(g.image_id, file_names(g.source.to_numpy()))))
        parts.append(Image.open(png).convert("RGB"))
    w = max(p.width for p in parts)
    sheet = Image.new("RGB", (w, sum(p.height for p in parts)), "white")
    y = 0
    for p in parts:
        sheet.paste(p, (0, y))
        y += p.height
    sheet.save(out_png)
    for n in range(len(parts)):
        os.remove(f"{out_png}.{n}.png")
    if sys.stderr.isatty():
        print(f"contact sheet: {out_png}", file=sys.stderr)
