"""What the ranked images are: label enrichment of each top-k / bottom-k list, and each ROI's response per label.

Enrichment (``enrichment.parquet``), per (ROI, subject, side, label): of the ``k`` listed images, ``hits`` carry the
label; of the ``n_images`` screened images with a finite score for that ROI and subject (those the list is drawn
from), ``n_label`` do. ``fold`` = (hits / k) / (n_label / n_images); ``odds_ratio`` is the sample odds ratio of the
2x2 table as ``scipy.stats.fisher_exact`` gives it (NaN where the table has an empty row or column: a label on every
image, or a list of every image; ``inf`` where only the off-diagonal product is 0); ``p`` the
one-sided Fisher exact p-value of at least ``hits`` (the hypergeometric tail, ``hypergeom.sf(hits - 1, N, K, k)``);
``q`` the Benjamini-Hochberg adjustment over every (list, label) test of the run. Only labels present in a list get
a row: a label absent from it has p = 1 and is counted in the number of tests, not written.

Tuning (``label_means.parquet``), per (ROI, subject, label): ``n``, ``mean`` and ``sd`` of the ROI's response over
the images carrying the label (an image with several labels counts for each), streamed over the responses table in
one scan with per-label running sums, centred on the first batch's means so that the variance does not cancel.
Memory is labels x ROIs x subjects x 3 float64, split into ROI chunks under ``memory_budget_mb``, plus one Parquet row
group of the table (as ``rank`` reads it) and two float64 copies of SLICE_ROWS of its rows.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa

from screening.rank.kinds import TOPK, names

ENRICHMENT_FILE = "enrichment.parquet"
LABEL_MEANS_FILE = "label_means.parquet"
SIDES = tuple(names(labelled=True))   # the lists whose labels are counted
SLICE_ROWS = 8192


def bh_q(p: np.ndarray, m: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p`` among ``m`` tests (``m`` > len(p): the others have p = 1)."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size if m is None else int(m)
    if p.size == 0:
        return p
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, p.size + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1.0)
    return out


def enrichment(rankings: pd.DataFrame, labels, sets: pd.DataFrame | None = None,
               means: pd.DataFrame | None = None) -> pd.DataFrame:
    """See the module docstring; ``labels``: a :class:`screening.labels.Labels`. With ``sets`` (rank's set table)
    and ``means`` (:func:`label_means`), the population of each list is the images with a finite score for its ROI
    and subject (``sets.n_images``) and ``n_label`` counts the label among them (``means.n``); without them, every
    image of ``labels``."""
    from screening.labels import id_strings

    pairs = labels.pairs
    lists = rankings[rankings.kind.isin(SIDES)][["roi", "subject", "kind", "image_id"]]
    lists = lists.assign(image_id=id_strings(lists.image_id.to_numpy()))
    hits = lists.merge(pairs, on="image_id").groupby(["roi", "subject", "kind", "label"]).image_id.nunique()
    k = lists.groupby(["roi", "subject", "kind"]).image_id.nunique()
    n_label_all = pairs.groupby("label").image_id.nunique()
    out = hits.rename("hits").reset_index()
    out = out.merge(k.rename("k").reset_index(), on=["roi", "subject", "kind"])
    if sets is not None and means is not None:
        out = out.merge(sets[["roi", "subject", "kind", "n_images"]], on=["roi", "subject", "kind"], how="left")
        out = out.merge(means[["roi", "subject", "label", "n"]].rename(columns={"n": "n_label"}),
                        on=["roi", "subject", "label"], how="left")
        missing = out[out.n_images.isna() | out.n_label.isna()]
        if len(missing):   # the lists and the scans disagree: never guess a population
            raise RuntimeError(f"enrichment: no finite-score count for {missing.iloc[0][['roi', 'subject']].tolist()}")
    else:
        out["n_label"] = out.label.map(n_label_all)
        out["n_images"] = labels.n_images
    out["n_label"] = out.n_label.astype(np.int64)
    out["n_images"] = out.n_images.astype(np.int64)
    a = out.hits.to_numpy(np.float64)
    kk, big_k = out.k.to_numpy(np.float64), out.n_label.to_numpy(np.float64)
    n_images = out.n_images.to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["share"] = a / kk
        out["base_rate"] = big_k / n_images
        out["fold"] = out.share / out.base_rate
        out["odds_ratio"] = odds_ratio(a, kk - a, big_k - a, n_images - big_k - (kk - a))
    out["p"] = hypergeom_sf(a, n_images, big_k, kk)
    n_tests = int(k.size) * int(n_label_all.size)
    out["q"] = bh_q(out.p.to_numpy(), max(n_tests, len(out)))
    cols = ["roi", "subject", "kind", "label", "k", "hits", "share", "n_label", "n_images", "base_rate", "fold",
            "odds_ratio", "p", "q"]
    return out[cols].sort_values(["roi", "subject", "kind", "p", "label"]).reset_index(drop=True)


def hypergeom_sf(hits, n, n_label, k, max_cells: int = 4_000_000) -> np.ndarray:
    """``P(X >= hits)`` for ``X ~ Hypergeometric(n, n_label, k)``: ``scipy.stats.hypergeom.sf(hits - 1, n, n_label,
    k)``, computed here because the sum has at most ``k`` terms and importing ``scipy.stats`` alone costs more than
    a whole ``rank --labels`` of 100,000 images spends on the rest of its labels. Log-space: each log binomial is a
    sum of at most ``k`` log ratios, the terms follow by their exact ratios, and the tail is a log-sum-exp, so the
    relative error is a few ``k`` ulps and nothing underflows before the sum."""
    h, big_n, big_k, kk = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (hits, n, n_label, k)))
    out = np.where(h > np.minimum(kk, big_k), 0.0, 1.0)
    todo = np.flatnonzero((h > np.maximum(0.0, kk - (big_n - big_k))) & (h <= np.minimum(kk, big_k)))
    if not todo.size:
        return out
    width = int(kk[todo].max()) + 1
    step = max(1, max_cells // width)
    j = np.arange(width, dtype=np.float64)
    for start in range(0, todo.size, step):
        r = todo[start:start + step]
        hr, nr, kr, kkr = h[r][:, None], big_n[r][:, None], big_k[r][:, None], kk[r][:, None]

        def ln_comb(a, b):   # log C(a, b) = sum_{j < b} log((a - j) / (b - j)), b <= width
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(j < b, np.log(a - j) - np.log(b - j), 0.0).sum(axis=1, keepdims=True)

        first = ln_comb(kr, hr) + ln_comb(nr - kr, kkr - hr) - ln_comb(nr, kkr)   # log pmf(hits)
        i = hr + j                                           # terms hits, hits + 1, ... while i <= min(k, K)
        valid = i <= np.minimum(kkr, kr)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log(kr - i) + np.log(kkr - i) - np.log(i + 1) - np.log(nr - kr - kkr + i + 1)
        ratio = np.where(valid, ratio, 0.0)
        log_terms = first + np.concatenate([np.zeros((r.size, 1)), np.cumsum(ratio[:, :-1], axis=1)], axis=1)
        log_terms = np.where(valid, log_terms, -np.inf)
        top = log_terms.max(axis=1, keepdims=True)
        out[r] = np.minimum(1.0, np.exp(top[:, 0]) * np.exp(log_terms - top).sum(axis=1))
    return out


def odds_ratio(a, b, c, d) -> np.ndarray:
    """The sample odds ratio ``ad / bc`` of 2x2 tables ``[[a, b], [c, d]]`` as ``scipy.stats.fisher_exact`` gives it:
    NaN where a row or column of the table is empty (a label on every image, a list of every image), ``inf``
    where only ``bc`` is 0."""
    a, b, c, d = (np.asarray(v, dtype=np.float64) for v in (a, b, c, d))
    empty = (a + b == 0) | (c + d == 0) | (a + c == 0) | (b + d == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(b * c > 0, a * d / np.where(b * c > 0, b * c, 1.0), np.inf)
    return np.where(empty, np.nan, ratio)


def best_labels(table: pd.DataFrame, subject: str = "mean", kind: str = TOPK.name) -> pd.DataFrame:
    """Per ROI, its most enriched label (lowest p, then highest fold) in the ``subject``'s ``kind`` list."""
    t = table[(table.subject == subject) & (table.kind == kind)]
    if not len(t):
        return t
    return t.sort_values(["p", "fold"], ascending=[True, False]).groupby("roi", sort=False).head(1)


def label_means(ranker, labels, memory_budget_mb: float = 512.0) -> pd.DataFrame:
    """Each ranked ROI's ``n``, ``mean`` and ``sd`` per label and subject (``mean`` included), in one streamed scan
    per ROI chunk; ``ranker``: a :class:`screening.rank._engine.Ranker` that has resolved its targets."""
    from screening.rank._engine import _Evaluator

    names = labels.names
    subjects = list(ranker.subjects)
    ranked = [ranker.targets[t] for t in ranker.ranked]
    per_target = max(1, len(names)) * len(subjects) * 3 * 8
    size = int(max(1, min(len(ranked), memory_budget_mb * 2**20 // per_target)))
    frames = []
    for start in range(0, len(ranked), size):
        targets = ranked[start:start + size]
        columns = [c for c in ranker.columns if any(c in t.members for t in targets)]
        ev = _Evaluator(targets, columns)
        shape = (len(subjects), len(names), len(targets))
        s1, s2, n = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        shift = np.full((len(subjects), len(targets)), np.nan)
        for batch in _slices(ranker._scan(columns)):
            _accumulate(batch, labels, ev, columns, subjects, (s1, s2, n), shift)
        pa.default_memory_pool().release_unused()   # each ROI chunk is a scan: its row groups' pages go back
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_d = s1 / n
            var = (s2 - n * mean_d ** 2) / (n - 1)
        mean = mean_d + np.nan_to_num(shift)[:, None, :]
        roi_names = np.array([t.name for t in targets], dtype=object)
        for si, s in enumerate(subjects):   # one frame per chunk and subject, labels x ROIs rows
            frames.append(pd.DataFrame({
                "roi": np.tile(roi_names, len(names)), "subject": s,
                "label": np.repeat(np.array(names, dtype=object), len(targets)),
                "n": n[si].reshape(-1).astype(np.int64),
                "mean": np.where(n[si] > 0, mean[si], np.nan).reshape(-1),
                "sd": np.sqrt(np.clip(var[si], 0, None)).reshape(-1)}))
    if not frames:
        return pd.DataFrame(columns=["roi", "subject", "label", "n", "mean", "sd"])
    return pd.concat(frames, ignore_index=True)


def _accumulate(batch, labels, ev, columns, subjects, sums, shift) -> None:
    """Add one slice's labelled rows to the per-(subject, label, ROI) running sums ``(s1, s2, n)`` in place."""
    import pyarrow.compute as pc

    from screening.rank._engine import _batch_matrix

    s1, s2, n = sums
    # ids repeat once per subject: probe the labels' hash index once per distinct id of the slice
    ids = pc.dictionary_encode(batch.column("image_id"))
    at = labels.positions(ids.dictionary)[ids.indices.to_numpy(zero_copy_only=False)]
    if not (at >= 0).any():
        return
    subj = pc.dictionary_encode(batch.column("subject"))
    codes = subj.indices.to_numpy(zero_copy_only=False)
    for code, s in enumerate(subj.dictionary.to_pylist()):
        rows = np.flatnonzero((codes == code) & (at >= 0))
        if not rows.size:
            continue
        si = subjects.index(s)
        member = labels.membership_at(at[rows])
        v = ev(_batch_matrix(batch, columns, rows), s)   # labelled rows only
        ok = np.isfinite(v)
        if np.isnan(shift[si]).all():
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)   # a column with no finite value yet
                shift[si] = np.nan_to_num(np.nanmean(v, axis=0))
        v -= shift[si]   # in place: one (rows, ROIs) float64 array at a time
        if ok.all():
            n[si] += np.asarray(member.sum(axis=0)).reshape(-1, 1)
        else:
            v[~ok] = 0.0
            n[si] += member.T @ ok.astype(np.float32)
        s1[si] += member.T @ v
        np.square(v, out=v)
        s2[si] += member.T @ v


def _slices(batches):
    """Record batches of at most SLICE_ROWS rows: the float64 working copies are then SLICE_ROWS x ROIs, whatever the
    row groups the table was written with."""
    for b in batches:
        for off in range(0, b.num_rows, SLICE_ROWS):
            yield b.slice(off, SLICE_ROWS)
