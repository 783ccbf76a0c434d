"""The streaming ranker: three scans of the responses table, O(targets x k) state.

Scan 0 reads ``image_id`` and ``subject`` only (row count, subjects, the null sample).
Scan 1 reads the ROI columns: per (subject, ROI) running mean/std, top-k and bottom-k, and the
responses of the null-sample images. Scan 2 (only for contrasts, selectivity and consensus)
turns responses into z scores with scan 1's statistics; consensus accumulates per image over
subjects, in chunks of ROIs sized by ``memory_budget_mb`` (one extra column-projected scan per chunk).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from screening.exceptions import InvalidParameterError
from screening.rank._rois import CONTRAST_JOIN, RoiResolver, Target, parse_contrast
from screening.rank.config import RankConfig
from screening.rank.kinds import BOTTOMK, CONSENSUS, CONTRAST, SELECTIVITY, TOPK
from screening.rank._stream import RunningStats, TopK

KEY_COLUMNS = ("image_id", "subject")
MEAN_SUBJECT = "mean"
#: columns decoded per read of a Parquet row group (see ``Ranker._scan_row_groups``)
SCAN_COLUMN_GROUP = 64
SCAN_THREADS = True

RANKINGS_SCHEMA = pa.schema([
    ("roi", pa.string()),
    ("subject", pa.string()),
    ("rank", pa.int32()),
    ("image_id", pa.string()),
    ("response", pa.float64()),
    ("z", pa.float64()),
    ("margin", pa.float64()),
    ("p_null", pa.float64()),
    ("kind", pa.string()),
    ("score", pa.float64()),
    ("n_subjects_topk", pa.int16()),
    ("duplicate_of", pa.string()),   # rank --diverse: the listed image a skipped one is a near-copy of
])

SETS_SCHEMA = pa.schema([
    ("roi", pa.string()),
    ("subject", pa.string()),
    ("kind", pa.string()),
    ("k", pa.int32()),
    ("n_images", pa.int64()),
    ("mean", pa.float64()),
    ("std", pa.float64()),
    ("set_score", pa.float64()),
    ("null_mean", pa.float64()),
    ("null_q", pa.float64()),
    ("set_margin", pa.float64()),
    ("set_p_null", pa.float64()),
    ("n_null", pa.int64()),
    ("null_draws", pa.int32()),
])


class RankingNote(UserWarning):
    """A ranking ran but left something out (e.g. selectivity without a comparison set); see ``notes``."""


def scan_row_groups(dataset, cols, batch_size: int):
    """Record batches of ``cols`` from a Parquet dataset, one row group in memory at a time, decoded
    ``SCAN_COLUMN_GROUP`` columns per read.

    A dataset scan keeps decoding the next row groups while a batch is processed (observed: four 65k-row
    groups, ~390 MB of Arrow memory, with ``batch_readahead=0``); and decoding all columns of a group at once
    holds every column's decompression buffers together (~2.4x the decoded size). Reading column groups of
    a row group keeps Arrow memory near the decoded row group (~100 MB for 65,536 rows x 382 float32).
    Memory still grows with the writer's row-group size; the pipeline writes ~65,536-row groups.
    """
    opts = ds.ParquetFragmentScanOptions(pre_buffer=False)
    schema = dataset.schema
    for frag in dataset.get_fragments():
        for rg in frag.split_by_row_group():
            parts = [rg.to_table(schema=schema, columns=cols[i:i + SCAN_COLUMN_GROUP],
                                 fragment_scan_options=opts, use_threads=SCAN_THREADS)
                     for i in range(0, len(cols), SCAN_COLUMN_GROUP)]
            arrays, names = [], []
            for t in parts:
                arrays.extend(t.columns)
                names.extend(t.column_names)
            table = pa.Table.from_arrays(arrays, names=names)
            del parts, arrays
            yield from table.combine_chunks().to_batches(max_chunksize=batch_size)
            del table


class _Evaluator:
    """Computes target values ``(rows, targets)`` from the member columns, per subject weights."""

    def __init__(self, targets: list[Target], columns: list[str]):
        self.columns = columns
        pos = {c: i for i, c in enumerate(columns)}
        self.n = len(targets)
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(targets):
            groups.setdefault(len(t.members), []).append(i)
        self.groups = []
        for m, idx in groups.items():
            cols = np.array([[pos[c] for c in targets[i].members] for i in idx], dtype=np.int64)
            self.groups.append((np.array(idx), cols, [targets[i] for i in idx], m))
        self._w: dict[str, list] = {}

    def _weights(self, subject):
        if subject not in self._w:
            ws = []
            for idx, cols, tgts, m in self.groups:
                if m == 1:
                    ws.append(None)
                    continue
                w = np.stack([t.weights[subject] for t in tgts]).astype(np.float64)
                tot = w.sum(axis=1, keepdims=True)
                with np.errstate(invalid="ignore", divide="ignore"):
                    ws.append(np.where(tot > 0, w / tot, np.nan))
            self._w[subject] = ws
        return self._w[subject]

    def __call__(self, x: np.ndarray, subject: str) -> np.ndarray:
        out = np.empty((x.shape[0], self.n), dtype=np.float64)
        for (idx, cols, _, m), w in zip(self.groups, self._weights(subject)):
            if m == 1:
                out[:, idx] = x[:, cols[:, 0]]
            else:
                xs = x[:, cols]  # (rows, targets, m)
                out[:, idx] = np.where(w > 0, xs * w, 0.0).sum(axis=2) + np.where(np.isnan(w).all(1), np.nan, 0.0)
        return out


def _batch_matrix(batch: pa.RecordBatch, columns: list[str], rows: np.ndarray | None = None) -> np.ndarray:
    """``(rows, columns)`` float64 of ``batch`` (all rows, or those at ``rows``), filled column by column
    so no per-column float64 copies are held at once; nulls become NaN."""
    n = batch.num_rows if rows is None else len(rows)
    out = np.empty((n, len(columns)), dtype=np.float64)
    for j, c in enumerate(columns):
        a = batch.column(c).to_numpy(zero_copy_only=False)  # a view for float32 without nulls
        out[:, j] = a if rows is None else a[rows]
    return out


def _subject_blocks(batch: pa.RecordBatch, columns: list[str], subj: np.ndarray):
    """Yield ``(subject, rows, matrix)`` per subject of a batch; the float64 matrix holds that subject's rows only,
    so a batch never exists as one ``(batch_size, columns)`` float64 array."""
    for s, rows in _by_subject(subj):
        if rows.size == batch.num_rows:
            yield s, rows, _batch_matrix(batch, columns)
        elif rows.size and rows[-1] - rows[0] + 1 == rows.size:  # contiguous: slice, no gather
            yield s, rows, _batch_matrix(batch.slice(int(rows[0]), int(rows.size)), columns)
        else:
            yield s, rows, _batch_matrix(batch, columns, rows)


def _ids_subjects(batch):
    ids = batch.column("image_id").to_numpy(zero_copy_only=False).astype(object)
    subj = batch.column("subject").to_numpy(zero_copy_only=False).astype(object)
    return ids, subj


def _by_subject(subj: np.ndarray):
    names, inv = np.unique(subj.astype(str), return_inverse=True)
    for i, s in enumerate(names):
        yield str(s), np.flatnonzero(inv == i)


def _set_null_stats(means, set_score, largest: bool, q: float, m: int):
    """Per column: the set null's quantile, mean, the set's margin over it and its p (NaN without a set null)."""
    if means is None:
        nan = np.full(m, np.nan)
        return nan, nan, nan, nan
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mq = _col_quantile(means, q if largest else 1.0 - q)
        mmean = np.nanmean(means, axis=0)
        ok = np.isfinite(means).all(axis=0) & np.isfinite(set_score)
        if largest:
            smargin = set_score - mq
            sp = (1.0 + (means >= set_score).sum(axis=0)) / (1.0 + means.shape[0])
        else:
            smargin = mq - set_score
            sp = (1.0 + (means <= set_score).sum(axis=0)) / (1.0 + means.shape[0])
    return tuple(np.where(ok, a, np.nan) for a in (mq, mmean, smargin, sp))


def _col_quantile(a: np.ndarray, q: float) -> np.ndarray:
    """Per-column quantile of the finite values (NaN for an empty column); fast path without NaN."""
    out = np.full(a.shape[1], np.nan)
    if a.shape[0] == 0:
        return out
    fin = np.isfinite(a)
    full = fin.all(axis=0)
    if full.any():
        out[full] = np.quantile(a[:, full], q, axis=0)
    for j in np.flatnonzero(~full & fin.any(axis=0)):
        out[j] = np.quantile(a[fin[:, j], j], q)
    return out


def _concat(columns: dict) -> pd.DataFrame:
    data = {}
    for f in RANKINGS_SCHEMA:
        if f.name == "duplicate_of":
            continue
        parts = columns[f.name]
        data[f.name] = np.concatenate(parts) if parts else np.empty(0, f.type.to_pandas_dtype())
    nt = data.pop("n_subjects_topk")
    out = pd.DataFrame(data)
    out["n_subjects_topk"] = pd.array(np.where(nt < 0, 0, nt), dtype="Int16")
    out.loc[nt < 0, "n_subjects_topk"] = pd.NA
    for c in ("roi", "subject", "image_id", "kind"):
        out[c] = out[c].astype(str).astype(object)
    out["duplicate_of"] = pd.Series([None] * len(out), dtype=object)
    return out[RANKINGS_SCHEMA.names]


@dataclass(frozen=True)
class _Pass1:
    """What scan 1 found, per subject: running stats of every target, the top / bottom buffers of the ranked ones,
    the null sample's responses (``null_t``, rows = ``null_img``), and each target's mean and s.d."""

    stats: dict
    top: dict
    bottom: dict
    null_t: dict
    null_img: dict
    mu: dict
    sd: dict

    def z(self, s, t, idx=slice(None)):
        with np.errstate(invalid="ignore", divide="ignore"):
            return (t - self.mu[s][idx]) / self.sd[s][idx]

    def null_z(self, s, idx):
        """z of the null-sample images for target columns ``idx`` (only those are converted to float64)."""
        return self.z(s, self.null_t[s][:, idx].astype(np.float64), idx)


class _Output:
    """The rankings rows (column -> list of arrays) and the per-list set rows, as they are emitted."""

    def __init__(self):
        self.rows = {c: [] for c in RANKINGS_SCHEMA.names}
        self.sets: list[dict] = []

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return _concat(self.rows), pd.DataFrame(self.sets, columns=SETS_SCHEMA.names)


class Ranker:
    """One ranking over a pyarrow dataset. Use :func:`screening.rank.rank`.

    Construction does the setup (checks, the key scan, ROI resolution, the null sample), so every attribute exists
    once ``Ranker(...)`` returns; :meth:`run` then makes the two value scans and keeps their state in local objects
    (:class:`_Pass1`, :class:`_Output`), not on ``self``.
    """

    def __init__(self, dataset, cfg: RankConfig, *, composites=None, manifest=None, progress=None):
        self.ds = dataset
        self.cfg = cfg
        self.manifest = manifest or {}
        self.composites = composites
        self.progress = progress or (lambda msg: None)
        self._draw_cache = {}
        self.notes: list[str] = []  # caveats (skipped lists); written to the rankings metadata
        names = dataset.schema.names
        missing = [k for k in KEY_COLUMNS if k not in names]
        if missing:
            raise InvalidParameterError(f"responses table lacks column(s) {missing}; it has {names[:6]} ...")
        self.roi_columns = [f.name for f in dataset.schema if f.name not in KEY_COLUMNS
                            and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
        if not self.roi_columns:
            raise InvalidParameterError("responses table has no numeric ROI column")
        self.image_ids, self.subjects, self.n_rows = self._scan_keys()
        self.progress(f"scan 0: {self.n_rows} rows, {len(self.image_ids)} images, subjects {self.subjects}")
        self._resolve()
        rng = np.random.default_rng(self.cfg.seed)
        n_img = len(self.image_ids)
        n_null = self.cfg.n_null
        pick = np.arange(n_img) if n_img <= n_null else np.sort(rng.choice(n_img, n_null, replace=False))
        self.null_ids = pc.take(self.image_ids, pa.array(pick, pa.int64()))

    # -- scans -----------------------------------------------------------------------------------
    def _scan(self, columns):
        """Record batches of at most ``batch_size`` rows holding only ``image_id``, ``subject`` and ``columns``.

        Only the projected columns are decoded. Parquet files are read one row group at a time
        (:meth:`_scan_row_groups`); other datasets (in-memory tables) through a scan without read-ahead.
        """
        cols = list(KEY_COLUMNS) + [c for c in columns if c not in KEY_COLUMNS]
        if isinstance(self.ds, ds.FileSystemDataset) and isinstance(self.ds.format, ds.ParquetFileFormat):
            return self._scan_row_groups(cols)
        return self.ds.to_batches(columns=cols, batch_size=self.cfg.batch_size, batch_readahead=0,
                                  fragment_readahead=1)

    def _scan_row_groups(self, cols):
        return scan_row_groups(self.ds, cols, self.cfg.batch_size)

    def _scan_keys(self):
        ids_chunks, subjects, n_rows = [], set(), 0
        for b in self._scan([]):
            n_rows += b.num_rows
            ids_chunks.append(pc.unique(b.column("image_id")).cast(pa.string()))
            subjects.update(pc.unique(b.column("subject")).to_pylist())
        ids = pc.unique(pa.chunked_array(ids_chunks, type=pa.string())) if ids_chunks else pa.array([], pa.string())
        ids = pc.take(ids, pc.sort_indices(ids))
        ids = pc.drop_null(ids)
        subjects.discard(None)
        return ids, sorted(subjects, key=lambda s: (s == MEAN_SUBJECT, s)), n_rows

    # -- setup -----------------------------------------------------------------------------------
    def _resolve(self):
        """ROI names -> targets, contrasts, the selectivity comparison set (``__init__`` only)."""
        cfg = self.cfg
        res = RoiResolver(self.roi_columns, self.subjects, composites=self.composites,
                          manifest_rois=self.manifest.get("rois"))
        names = list(dict.fromkeys(cfg.rois)) if cfg.rois else res.default_names()
        ranked = [res.resolve(n) for n in names]
        targets = {t.name: t for t in ranked}
        self.contrast_pairs = []  # (name, a, b)
        for spec in cfg.contrasts:
            a, b = parse_contrast(spec)
            pairs = [(a, b)]
            if a[:2] not in ("L_", "R_") and b[:2] not in ("L_", "R_"):
                for h in ("L_", "R_"):
                    try:
                        res.resolve(h + a), res.resolve(h + b)
                        pairs.append((h + a, h + b))
                    except InvalidParameterError:
                        pass
            for pa_, pb in pairs:
                for n in (pa_, pb):
                    if n not in targets:
                        targets[n] = res.resolve(n)
                self.contrast_pairs.append((f"{pa_}{CONTRAST_JOIN}{pb}", pa_, pb))
        self.comparison_names = []
        self.selectivity = bool(cfg.selectivity)
        if self.selectivity:
            comp = cfg.comparison if cfg.comparison else res.area_columns
            for n in comp:
                if n not in targets:
                    targets[n] = res.resolve(n)
                self.comparison_names.append(n)
            if not self.comparison_names:
                # e.g. a run screened with --rois FFC: its only column is the ROI itself. The other lists are
                # still meaningful, so skip selectivity and say so rather than failing the whole ranking.
                self._note(f"selectivity skipped: nothing to compare against (the table's ROI columns "
                           f"{self.roi_columns[:6]}{' ...' if len(self.roi_columns) > 6 else ''} include no "
                           f"HCP-MMP area column such as L_V1, and comparison= was not given)")
                self.selectivity = False
        self.targets = list(targets.values())
        self.tindex = {t.name: i for i, t in enumerate(self.targets)}
        self.ranked = np.array([self.tindex[t.name] for t in ranked], dtype=np.int64)
        self.ranked_names = [t.name for t in ranked]
        self.columns = [c for c in self.roi_columns if any(c in t.members for t in self.targets)]
        # selectivity exclusions: comparison entries whose areas overlap the target's areas
        self.comp_idx = np.array([self.tindex[n] for n in self.comparison_names], dtype=np.int64)
        self.sel_excl = []
        for t in ranked:
            ex = [i for i, n in enumerate(self.comparison_names)
                  if n == t.name or (t.areas & self.targets[self.tindex[n]].areas)]
            self.sel_excl.append(np.array(ex, dtype=np.int64))
            if self.selectivity and len(ex) == len(self.comparison_names):
                self._note(f"selectivity of {t.name} skipped: every comparison ROI overlaps it")

    def _note(self, msg: str) -> None:
        """Record a caveat of this ranking (rankings metadata ``notes``) and warn."""
        self.notes.append(msg)
        warnings.warn(msg, RankingNote, stacklevel=4)

    # -- main ------------------------------------------------------------------------------------
    def run(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(rankings, sets)``: scan 1 (stats, top / bottom k, null sample), then scan 2 when a contrast,
        selectivity or consensus list needs z-scores."""
        p1 = self._scan1()
        self.progress("scan 1 done")
        out = _Output()
        self._emit_topk(p1, out)
        if self.contrast_pairs or self.selectivity or (self.cfg.consensus and self.real_subjects):
            self._scan2(p1, out)
        return out.frames()

    @property
    def real_subjects(self):
        return [s for s in self.subjects if s != MEAN_SUBJECT]

    def _scan1(self) -> _Pass1:
        cfg = self.cfg
        ev = _Evaluator(self.targets, self.columns)
        nt, nr = len(self.targets), len(self.ranked)
        stats = {s: RunningStats(nt) for s in self.subjects}
        top = {s: TopK(nr, cfg.top_k, True) for s in self.subjects}
        bottom = {s: TopK(nr, cfg.bottom_k, False) for s in self.subjects}
        # null-sample responses, preallocated: row i is null image i (sorted ids), so the null is independent of
        # file and batch order and is never concatenated from pieces (n_null x targets x subjects float32)
        n_null = len(self.null_ids)
        null_t = {s: np.full((n_null, nt), np.nan, np.float32) for s in self.subjects}
        seen = {s: np.zeros(n_null, bool) for s in self.subjects}
        for b in self._scan(self.columns):
            ids, subj = _ids_subjects(b)
            pos = pc.index_in(b.column("image_id").cast(pa.string()), value_set=self.null_ids)
            pos = pos.fill_null(-1).to_numpy(zero_copy_only=False)
            for s, rows, xs in _subject_blocks(b, self.columns, subj):
                t = ev(xs, s)
                del xs
                stats[s].update(t)
                tr = t[:, self.ranked]
                top[s].update(tr, ids[rows])
                bottom[s].update(tr, ids[rows])
                p = pos[rows]
                m = p >= 0
                if m.any():
                    null_t[s][p[m]] = t[m]
                    seen[s][p[m]] = True
            b = t = None  # drop the batch before the next row group is read
        all_null = self.null_ids.to_numpy(zero_copy_only=False).astype(object)
        kept_t, kept_img = {}, {}
        for s in self.subjects:
            if seen[s].all():
                kept_t[s], kept_img[s] = null_t[s], all_null
            else:
                kept_t[s], kept_img[s] = null_t[s][seen[s]], all_null[seen[s]]
            del null_t[s]
        mu = {s: st.mean_or_nan for s, st in stats.items()}
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = {s: np.where(st.std > 0, st.std, np.nan) for s, st in stats.items()}
        return _Pass1(stats=stats, top=top, bottom=bottom, null_t=kept_t, null_img=kept_img, mu=mu, sd=sd)

    # -- the set-level null (RNC): mean of k random images, null_draws times ----------------------
    def _draws(self, n: int, k: int) -> np.ndarray:
        key = (n, k)
        if key not in self._draw_cache:
            rng = np.random.default_rng([self.cfg.seed, n, k])
            self._draw_cache[key] = rng.integers(0, n, size=(self.cfg.null_draws, k), dtype=np.int64)
        return self._draw_cache[key]

    def _null_means(self, null: np.ndarray, ks) -> np.ndarray | None:
        """Set-null means ``(null_draws, columns)``: for each column of ``null`` (rows = null-sample
        images), the mean of ``ks[j]`` images drawn at random, ``null_draws`` times. NaN columns
        where nothing can be drawn; ``None`` when the set null is disabled.

        Columns without NaN that share ``k`` are gathered together (one index matrix per (n, k)).
        """
        m = null.shape[1]
        if self.cfg.null_draws == 0:
            return None
        out = np.full((self.cfg.null_draws, m), np.nan)
        if null.shape[0] == 0:
            return out
        null = null.astype(np.float32)
        allfin = np.isfinite(null).all(axis=0)
        for k in sorted(set(int(x) for x in ks if x > 0)):
            cols = np.array([j for j in range(m) if ks[j] == k and allfin[j]], dtype=np.int64)
            if cols.size:
                idx = self._draws(null.shape[0], k)
                sub = np.ascontiguousarray(null[:, cols])
                acc = np.zeros((idx.shape[0], cols.size), np.float32)
                for i in range(k):
                    acc += np.take(sub, idx[:, i], axis=0)
                out[:, cols] = acc / k
            for j in range(m):
                if ks[j] == k and not allfin[j]:
                    col = null[:, j][np.isfinite(null[:, j])]
                    if col.size:
                        out[:, j] = col[self._draws(col.size, k)].mean(axis=1, dtype=np.float64)
        return out

    def _emit_list(self, out: _Output, kind, names, subject, tops, null_matrix, stats, payload_fn, n_topk_fn=None):
        """Emit one kind for one subject: ``tops`` is a TopK over the columns of ``null_matrix``.

        ``stats`` = (n_images, mean, std) per column of the ranked score over the screened set.
        """
        cfg = self.cfg
        largest = tops.sign > 0
        m = len(names)
        results = [tops.result(j) for j in range(m)]
        ks = np.array([len(r[1]) for r in results])
        null_matrix = np.asarray(null_matrix, dtype=np.float64)
        # single-image null, per column: sorted finite sample and its quantile
        srt = np.sort(null_matrix, axis=0)  # NaN last
        nfin = np.isfinite(null_matrix).sum(axis=0)
        q = cfg.null_quantile
        qv = _col_quantile(null_matrix, q if largest else 1.0 - q)
        # set-level null, vectorised over columns
        means = self._null_means(null_matrix, ks)
        set_score = np.array([np.mean(r[0]) if len(r[0]) else np.nan for r in results])
        mq, mmean, smargin, sp = _set_null_stats(means, set_score, largest, q, m)
        R = out.rows
        for j, name in enumerate(names):
            v, ids, pl = results[j]
            k = len(ids)
            resp, z = payload_fn(j, v, pl)
            col = srt[: nfin[j], j]
            if nfin[j] == 0:
                margin = p = np.full(k, np.nan)
            elif largest:
                margin = v - qv[j]
                p = (1.0 + nfin[j] - np.searchsorted(col, v, side="left")) / (1.0 + nfin[j])
            else:
                margin = qv[j] - v
                p = (1.0 + np.searchsorted(col, v, side="right")) / (1.0 + nfin[j])
            R["roi"].append(np.full(k, name, dtype=object))
            R["subject"].append(np.full(k, subject, dtype=object))
            R["rank"].append(np.arange(1, k + 1, dtype=np.int32))
            R["image_id"].append(np.asarray(ids, dtype=object))
            R["response"].append(np.asarray(resp, np.float64))
            R["z"].append(np.asarray(z, np.float64))
            R["margin"].append(np.asarray(margin, np.float64))
            R["p_null"].append(np.asarray(p, np.float64))
            R["kind"].append(np.full(k, kind, dtype=object))
            R["score"].append(np.asarray(v, np.float64))
            nt = np.full(k, -1, np.int16) if n_topk_fn is None else np.asarray(n_topk_fn(j, ids), np.int16)
            R["n_subjects_topk"].append(nt)
            out.sets.append({
                "roi": name, "subject": subject, "kind": kind, "k": k, "n_images": int(stats[0][j]),
                "mean": float(stats[1][j]), "std": float(stats[2][j]), "set_score": float(set_score[j]),
                "null_mean": float(mmean[j]), "null_q": float(mq[j]), "set_margin": float(smargin[j]),
                "set_p_null": float(sp[j]), "n_null": int(nfin[j]),
                "null_draws": cfg.null_draws if means is not None else 0,
            })

    def _emit_topk(self, p1: _Pass1, out: _Output):
        for s in self.subjects:
            st = p1.stats[s]
            null = p1.null_t[s][:, self.ranked]
            names = [self.targets[ti].name for ti in self.ranked]
            stats = (st.n[self.ranked], p1.mu[s][self.ranked], p1.sd[s][self.ranked])
            for buf in (p1.top[s], p1.bottom[s]):
                if buf.k == 0:
                    continue
                kind = (TOPK if buf.sign > 0 else BOTTOMK).name
                self._emit_list(out, kind, names, s, buf, null, stats,
                                lambda j, v, pl, s=s: (v, p1.z(s, v, self.ranked[j])))

    # -- scan 2 ----------------------------------------------------------------------------------
    def _chunks(self):
        cfg = self.cfg
        nr = len(self.ranked)
        if not (cfg.consensus and self.real_subjects):
            return [np.arange(0)]
        per_target = max(1, len(self.image_ids)) * 9  # float32 sum z + float32 sum response + uint8 count
        size = int(max(1, min(nr, cfg.memory_budget_mb * 2**20 // per_target)))
        return [np.arange(i, min(nr, i + size)) for i in range(0, nr, size)] or [np.arange(0)]

    def _scan2(self, p1: _Pass1, out: _Output):
        cfg = self.cfg
        chunks = self._chunks()
        image_index = pd.Index(self.image_ids.to_numpy(zero_copy_only=False).astype(object))
        do_cons = cfg.consensus and bool(self.real_subjects)
        for ci, chunk in enumerate(chunks):
            first = ci == 0
            sel = first and self.selectivity
            con_pairs = self.contrast_pairs if first else []
            need = self._needed_targets(chunk if do_cons else None, sel, con_pairs)
            if not need:
                continue
            tsub = np.array(sorted(need), dtype=np.int64)
            loc = {g: i for i, g in enumerate(tsub)}
            sub_targets = [self.targets[i] for i in tsub]
            cols = [c for c in self.columns if any(c in t.members for t in sub_targets)]
            ev = _Evaluator(sub_targets, cols)
            ncon = len(con_pairs)
            con_top = {s: TopK(ncon, cfg.top_k, True) for s in self.subjects} if ncon else {}
            sel_top = {s: TopK(len(self.ranked), cfg.top_k, True) for s in self.subjects} if sel else {}
            sel_stats = {s: RunningStats(len(self.ranked)) for s in self.subjects} if sel else {}
            con_stats = {s: RunningStats(ncon) for s in self.subjects} if ncon else {}
            if do_cons and chunk.size:
                n_img = len(image_index)
                acc_z = np.zeros((n_img, chunk.size), np.float32)
                acc_r = np.zeros((n_img, chunk.size), np.float32)
                acc_n = np.zeros((n_img, chunk.size), np.uint8)
                cl = np.array([loc[g] for g in self.ranked[chunk]], dtype=np.int64)
            for b in self._scan(cols):
                ids, subj = _ids_subjects(b)
                for s, rows, xs in _subject_blocks(b, cols, subj):
                    t = ev(xs, s)
                    del xs
                    z = p1.z(s, t, tsub)
                    if ncon:
                        sc, pl = self._contrast_scores(t, z, loc, con_pairs)
                        con_stats[s].update(sc)
                        con_top[s].update(sc, ids[rows], pl)
                    if sel:
                        sc, pl = self._selectivity_scores(t, z, loc)
                        sel_stats[s].update(sc)
                        sel_top[s].update(sc, ids[rows], pl)
                    if do_cons and chunk.size and s != MEAN_SUBJECT:
                        where = image_index.get_indexer(ids[rows])
                        zc, tc = z[:, cl], t[:, cl]
                        fin = np.isfinite(zc)
                        acc_z[where] += np.where(fin, zc, 0.0).astype(np.float32)
                        acc_r[where] += np.where(fin, tc, 0.0).astype(np.float32)
                        acc_n[where] += fin.astype(np.uint8)
                b = t = z = None  # drop the batch before the next row group is read
            if ncon:
                self._emit_contrasts(p1, out, con_pairs, con_top, con_stats)
            if sel:
                self._emit_selectivity(p1, out, sel_top, sel_stats)
            if do_cons and chunk.size:
                self._emit_consensus(p1, out, chunk, acc_z, acc_r, acc_n, image_index)
                del acc_z, acc_r, acc_n
            self.progress(f"scan 2 chunk {ci + 1}/{len(chunks)} done")

    def _needed_targets(self, consensus_chunk, selectivity: bool, con_pairs) -> set:
        """Target indices scan 2 evaluates for this chunk: its consensus ROIs, selectivity's, the contrasts'."""
        need = set(self.ranked[consensus_chunk].tolist()) if consensus_chunk is not None else set()
        if selectivity:
            need |= set(self.ranked.tolist()) | set(self.comp_idx.tolist())
        for _, a, b in con_pairs:
            need |= {self.tindex[a], self.tindex[b]}
        return need

    def _contrast_scores(self, t, z, loc, pairs):
        ia = np.array([loc[self.tindex[a]] for _, a, _ in pairs])
        ib = np.array([loc[self.tindex[b]] for _, _, b in pairs])
        dr, dz = t[:, ia] - t[:, ib], z[:, ia] - z[:, ib]
        score = dz if self.cfg.contrast_by == "z" else dr
        return score, np.stack([dr, dz], axis=2)

    def _selectivity_scores(self, t, z, loc):
        zf = z[:, [loc[i] for i in self.comp_idx]]  # a copy; zeroed in place where undefined
        fin = np.isfinite(zf)
        zf[~fin] = 0.0
        tot, cnt = zf.sum(axis=1), fin.sum(axis=1)
        rl = np.array([loc[i] for i in self.ranked])
        score = np.empty((t.shape[0], len(self.ranked)))
        for j, ex in enumerate(self.sel_excl):
            s_ = tot - zf[:, ex].sum(axis=1) if ex.size else tot
            c_ = cnt - fin[:, ex].sum(axis=1) if ex.size else cnt
            with np.errstate(invalid="ignore", divide="ignore"):
                score[:, j] = z[:, rl[j]] - np.where(c_ > 0, s_ / c_, np.nan)
        return score, np.stack([t[:, rl], z[:, rl]], axis=2)

    def _emit_contrasts(self, p1: _Pass1, out: _Output, pairs, tops, stats):
        def payload(j, v, pl):
            pl = pl if pl is not None else np.empty((0, 2))
            return pl[:, 0], pl[:, 1]

        ia = np.array([self.tindex[a] for _, a, _ in pairs], dtype=np.int64)
        ib = np.array([self.tindex[b] for _, _, b in pairs], dtype=np.int64)
        for s in self.subjects:
            if self.cfg.contrast_by == "z":
                null = p1.null_z(s, ia) - p1.null_z(s, ib)
            else:
                null = p1.null_t[s][:, ia].astype(np.float64) - p1.null_t[s][:, ib].astype(np.float64)
            st = stats[s]
            self._emit_list(out, CONTRAST.name, [p[0] for p in pairs], s, tops[s], null, (st.n, st.mean_or_nan, st.std),
                            payload)

    def _emit_selectivity(self, p1: _Pass1, out: _Output, tops, stats):
        def payload(j, v, pl):
            pl = pl if pl is not None else np.empty((0, 2))
            return pl[:, 0], pl[:, 1]

        for s in self.subjects:
            zr = p1.null_z(s, self.ranked)
            zf = p1.null_z(s, self.comp_idx)  # (n_null, comparison), zeroed in place where undefined
            fin = np.isfinite(zf)
            zf[~fin] = 0.0
            tot, cnt = zf.sum(1), fin.sum(1)
            null = np.empty((zf.shape[0], len(self.ranked)))
            for j in range(len(self.ranked)):
                ex = self.sel_excl[j]
                s_ = tot - (zf[:, ex].sum(1) if ex.size else 0)
                c_ = cnt - (fin[:, ex].sum(1) if ex.size else 0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    null[:, j] = zr[:, j] - np.where(c_ > 0, s_ / c_, np.nan)
            del zf, fin
            st = stats[s]
            self._emit_list(out, SELECTIVITY.name, self.ranked_names, s, tops[s], null, (st.n, st.mean_or_nan, st.std),
                            payload)

    def _emit_consensus(self, p1: _Pass1, out: _Output, chunk, acc_z, acc_r, acc_n, image_index):
        k = self.cfg.top_k
        ids_all = np.asarray(image_index, dtype=object)
        subs = self.real_subjects
        # null: the sampled images' mean z over subjects
        nidx = pd.Index(self.null_ids.to_numpy(zero_copy_only=False).astype(object))
        tis = self.ranked[chunk]
        nz = np.zeros((len(nidx), len(tis)))
        nn = np.zeros((len(nidx), len(tis)))
        for s in subs:
            if not len(p1.null_img[s]):
                continue
            w = nidx.get_indexer(p1.null_img[s])
            z = p1.null_z(s, tis)
            fin = np.isfinite(z)
            np.add.at(nz, w, np.where(fin, z, 0.0))
            np.add.at(nn, w, fin)
        with np.errstate(invalid="ignore", divide="ignore"):
            null_cons = np.where(nn > 0, nz / nn, np.nan)
            score = np.where(acc_n > 0, acc_z.astype(np.float64) / acc_n, np.nan)
            resp = np.where(acc_n > 0, acc_r.astype(np.float64) / acc_n, np.nan)
        buf = TopK(len(chunk), k, True)
        buf.update(score, ids_all, resp[:, :, None])
        fin = np.isfinite(score)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats = (fin.sum(0), np.nanmean(np.where(fin, score, np.nan), 0) if fin.any() else np.full(len(chunk), np.nan),
                     np.nanstd(np.where(fin, score, np.nan), 0) if fin.any() else np.full(len(chunk), np.nan))

        def n_topk(j, ids):
            counts = Counter()
            for s in subs:
                counts.update(p1.top[s].result(chunk[j])[1].tolist())
            return [counts.get(i, 0) for i in ids]

        def payload(j, v, pl):
            pl = pl if pl is not None else np.empty((0, 1))
            return pl[:, 0], v

        names = [self.targets[ti].name for ti in tis]
        self._emit_list(out, CONSENSUS.name, names, CONSENSUS.subject, buf, null_cons, stats, payload, n_topk)
