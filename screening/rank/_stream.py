"""Streaming building blocks: running mean/variance (Chan et al.) and a running top-k buffer.

Both take one record batch at a time and keep O(targets * k) state, so a ranking never holds the
whole responses table.
"""

from __future__ import annotations

import numpy as np


class RunningStats:
    """NaN-skipping running count, mean and sum of squared deviations per column (float64).

    Batches are merged with the pairwise update of Chan, Golub & LeVeque (1979), which stays
    accurate where the one-pass ``sum(x**2)`` formula cancels catastrophically.
    """

    def __init__(self, n_columns: int):
        self.n = np.zeros(n_columns, dtype=np.float64)
        self.mean = np.zeros(n_columns, dtype=np.float64)
        self.m2 = np.zeros(n_columns, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        """Add a ``(rows, columns)`` batch; NaN entries are skipped column by column."""
        finite = np.isfinite(values)
        nb = finite.sum(axis=0).astype(np.float64)
        if not nb.any():
            return
        x = np.where(finite, values, 0.0).astype(np.float64, copy=False)
        with np.errstate(invalid="ignore", divide="ignore"):
            mb = x.sum(axis=0) / nb
            dev = np.where(finite, x - mb, 0.0)
        m2b = np.einsum("ij,ij->j", dev, dev)
        mb = np.where(nb > 0, mb, 0.0)
        n = self.n + nb
        delta = mb - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n > 0, nb / n, 0.0)
        self.mean = self.mean + delta * frac
        self.m2 = self.m2 + m2b + delta**2 * self.n * frac
        self.n = n

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0); NaN where fewer than 2 values were seen."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n >= 2, np.sqrt(self.m2 / np.maximum(self.n, 1)), np.nan)

    @property
    def mean_or_nan(self) -> np.ndarray:
        return np.where(self.n > 0, self.mean, np.nan)


class TopK:
    """Running top-k per column with a deterministic tie-break.

    Order: value descending (``largest=True``) or ascending, then ``image_id`` ascending.
    Non-finite values never enter. Each batch contributes only the rows that can beat the
    current k-th entry (``>=`` its value, so ties are re-decided by image_id), then
    ``np.argpartition`` trims large candidate sets before the exact sort.
    """

    def __init__(self, n_columns: int, k: int, largest: bool = True):
        self.k = int(k)
        self.sign = 1.0 if largest else -1.0
        self.vals = [np.empty(0) for _ in range(n_columns)]  # stored as sign*value, sorted descending
        self.ids = [np.empty(0, dtype=object) for _ in range(n_columns)]
        self.extra = [None] * n_columns  # optional per-entry payload rows, kept aligned with ids
        self.thr = np.full(n_columns, -np.inf)

    def update(self, values: np.ndarray, ids: np.ndarray, payload: np.ndarray | None = None) -> None:
        """Offer a ``(rows, columns)`` batch with the rows' ``image_id`` s.

        Parameters
        ----------
        values : ndarray, shape (rows, columns)
        ids : ndarray of str, shape (rows,)
        payload : ndarray, shape (rows, columns, p), optional
            Carried along with each kept entry (e.g. the raw response next to a z score).
        """
        if self.k <= 0 or values.shape[0] == 0:
            return
        v = values * self.sign
        with np.errstate(invalid="ignore"):
            cand = (v >= self.thr) & np.isfinite(v)
        cols = np.flatnonzero(cand.any(axis=0))
        for j in cols:
            rows = np.flatnonzero(cand[:, j])
            vj = v[rows, j]
            if rows.size > self.k:
                kth = np.partition(vj, rows.size - self.k)[rows.size - self.k]
                keep = vj >= kth
                rows, vj = rows[keep], vj[keep]
            allv = np.concatenate([self.vals[j], vj])
            alli = np.concatenate([self.ids[j], ids[rows]])
            order = np.lexsort((alli.astype(str), -allv))[: self.k]
            self.vals[j], self.ids[j] = allv[order], alli[order]
            if payload is not None:
                prev = self.extra[j] if self.extra[j] is not None else np.empty((0, payload.shape[2]))
                self.extra[j] = np.concatenate([prev, payload[rows, j]])[order]
            if self.vals[j].size == self.k:
                self.thr[j] = self.vals[j][-1]

    def result(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(values, image_ids, payload)`` of column ``j``, best first."""
        return self.vals[j] * self.sign, self.ids[j], self.extra[j]
