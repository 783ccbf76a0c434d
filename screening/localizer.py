"""In silico localizer ROIs from a contrast map, and how they compare with a real ROI (``screening contrast``).

- :func:`parse_threshold`: ``t=5`` / ``d=0.8`` / ``diff=0.1`` (that statistic above the value), ``q=0.05`` (BH q below
  the value, A > B only), ``top=0.05`` (the top 5 % of the search region's vertices by the ranking statistic);
- :func:`search_region`: ``--within`` names in the one ROI grammar (:func:`screening.rois.resolve_roi`: areas,
  bilateral names, ``group_NN``, composites such as ``faces``) -> model columns;
- :func:`keep_clusters`: connected clusters on the fsLR32k mesh (the triangles of the packaged S1200 flat surfaces;
  cuts of the flat surface are not crossed) of at least ``min_size`` vertices;
- :func:`average_precision` (as scikit-learn's ``average_precision_score``: ties share one threshold) and
  :func:`dice`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from screening import atlas
from screening.exceptions import InvalidParameterError

ABOVE = ("t", "d", "diff")
THRESHOLD_KINDS = ABOVE + ("q", "top")
THRESHOLD_HELP = "t=5 (t above 5; also d=, diff=), q=0.05 (BH q below 0.05, A > B), top=0.05 (top 5%% of vertices)"


@dataclass(frozen=True)
class Threshold:
    kind: str
    value: float
    text: str

    def describe(self, stat: str) -> str:
        if self.kind == "q":
            return f"q < {self.value:g} and A > B"
        if self.kind == "top":
            return f"top {self.value:.4g} of the search region by {stat}"
        return f"{self.kind} > {self.value:g}"


def parse_threshold(text) -> Threshold:
    m = re.fullmatch(r"\s*([a-z]+)\s*=\s*([-+0-9.eE]+)\s*", str(text))
    value = _float(m.group(2)) if m else None
    if not m or m.group(1) not in THRESHOLD_KINDS or value is None or not math.isfinite(value):
        raise InvalidParameterError(f"--threshold {text!r} is not valid; use {THRESHOLD_HELP.replace('%%', '%')}")
    kind = m.group(1)
    if kind in ("q", "top") and not 0 < value <= 1:
        raise InvalidParameterError(f"--threshold {text!r}: {kind} must be in (0, 1]")
    return Threshold(kind, value, str(text).strip())


def _float(s: str):
    try:
        return float(s)
    except ValueError:
        return None


def search_region(within, variant: str) -> np.ndarray | None:
    """Model columns of the ``--within`` names (comma-separated and/or repeated), ascending; None: every vertex."""
    from screening import rois

    within = [within] if isinstance(within, str) else (within or ())
    names = [n.strip() for item in within for n in str(item).split(",") if n.strip()]
    if not names:
        return None
    cols = [rois.resolve_roi(n, variant, rois.DEFAULT_COMPOSITES) for n in names]
    return np.unique(np.concatenate(cols))


def select_vertices(stats: dict, threshold: Threshold, rank_stat: str, region: np.ndarray | None) -> np.ndarray:
    """Model columns passing ``threshold``; ``stats``: name -> (V,) values of one subject."""
    n = next(iter(stats.values())).size
    region = np.arange(n) if region is None else region
    if threshold.kind == "top":
        score = np.nan_to_num(stats[rank_stat][region], nan=-np.inf)
        k = max(1, int(round(threshold.value * region.size)))
        order = np.lexsort((region, -score))   # descending score; ties in vertex order, so the cut is reproducible
        chosen = region[order[:k]]
        return np.sort(chosen[np.isfinite(score[order[:k]])])
    if threshold.kind == "q":
        keep = (stats["q"][region] < threshold.value) & (stats["diff"][region] > 0)
    else:
        keep = stats[threshold.kind][region] > threshold.value
    return region[keep]


@lru_cache(maxsize=1)
def mesh_adjacency():
    """Sparse (91282 x 91282) adjacency of the cortex grayordinates: mesh edges of the fsLR32k flat surfaces."""
    import nibabel as nib
    from scipy import sparse

    rows, cols = [], []
    with atlas.data_path("fslr32k_grayordinate_to_vertex.npz").open("rb") as f:
        d = np.load(f)
        gray = {"L": d["grayl"].astype(np.int64), "R": d["grayr"].astype(np.int64)}
    offset = 0
    for h in ("L", "R"):
        with atlas.data_path(f"S1200.{h}.flat.32k_fs_LR.surf.gii").open("rb") as f:
            tri = np.asarray(nib.GiftiImage.from_bytes(f.read()).darrays[1].data, dtype=np.int64)
        to_gray = np.full(int(tri.max()) + 1, -1, dtype=np.int64)   # mesh vertex -> grayordinate (-1: medial wall)
        to_gray[gray[h]] = offset + np.arange(gray[h].size)
        for a, b in ((0, 1), (1, 2), (0, 2)):
            ga, gb = to_gray[tri[:, a]], to_gray[tri[:, b]]
            ok = (ga >= 0) & (gb >= 0)
            rows += [ga[ok], gb[ok]]
            cols += [gb[ok], ga[ok]]
        offset += gray[h].size
    r, c = np.concatenate(rows), np.concatenate(cols)
    n = atlas.N_GRAYORDINATES
    return sparse.csr_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(n, n))


def keep_clusters(grayordinates, min_size: int) -> tuple[np.ndarray, int]:
    """``(grayordinates in clusters of >= min_size, number of such clusters)``: connected on the mesh."""
    from scipy.sparse.csgraph import connected_components

    g = np.unique(np.asarray(grayordinates, dtype=np.int64))
    if g.size == 0:
        return g, 0
    sub = mesh_adjacency()[g][:, g]
    _, comp = connected_components(sub, directed=False)
    sizes = np.bincount(comp)
    big = sizes >= min_size
    return g[big[comp]], int(big.sum())


def average_precision(scores, truth) -> float:
    """Average precision of ranking by ``scores`` (descending) against boolean ``truth``: the sum over thresholds of
    (R_k - R_{k-1}) P_k, one threshold per distinct score (tied vertices enter together), as scikit-learn's
    ``average_precision_score``. NaN scores rank last. NaN when ``truth`` has no positive."""
    y = np.asarray(truth, dtype=bool)
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]   # the last index of each run of equal scores
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def dice(a, b) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two index sets (NaN when both are empty)."""
    a, b = np.unique(np.asarray(a)), np.unique(np.asarray(b))
    total = a.size + b.size
    return float(2 * np.intersect1d(a, b).size / total) if total else float("nan")


# --------------------------------------------------------------------------- on a ContrastResult

def derive_rois(result, results: dict, spec, threshold: Threshold, region, min_cluster, roi: str) -> None:
    """Each subject's ROI of ``spec`` into ``result.roi_grayordinates`` and a vertex-count table ``result.rois``."""
    import pandas as pd

    mapping = atlas.variant_vertex_mapping(result.variant)
    rows = []
    for si, s in enumerate(result.subjects):
        per = {k: results[spec.name][k][si] for k in ABOVE + ("q",)}
        g = mapping[select_vertices(per, threshold, result.stat, region)]
        passed, clusters = g.size, None
        if min_cluster is not None:
            g, clusters = keep_clusters(g, min_cluster)
        result.roi_grayordinates[s] = g
        rows.append({"roi": roi, "contrast": spec.name, "subject": s, "vertices": int(g.size),
                     "passed_threshold": int(passed), "clusters": clusters})
        if not g.size:
            result.notes.append(f"{s}: no vertex passes {threshold.describe(result.stat)}"
                                + (f" in a cluster of >= {min_cluster}" if min_cluster and passed else "")
                                + " in the search region: no ROI file for this subject")
    result.rois = pd.DataFrame(rows)
    result.rois.attrs.update(threshold=threshold.describe(result.stat), searched=_region_size(region, mapping))


def _region_size(region, mapping) -> int:
    return int(mapping.size if region is None else region.size)


def compare_rois(result, results: dict, pattern: str, region) -> None:
    """AP of each contrast's ``stat`` map and Dice of the derived ROI against the real ROIs of ``pattern``, per
    subject, within ``region``; into ``result.comparison``. The ROI's threshold is the user's: nothing is tuned on
    the real ROI."""
    import pandas as pd

    from screening.parcellation import load_parcellation

    mapping = atlas.variant_vertex_mapping(result.variant)
    region = np.arange(mapping.size) if region is None else region
    real = load_parcellation(pattern, result.subjects).roi_columns(result.variant, result.subjects)
    roi_contrast = None if result.rois is None else result.rois.contrast.iloc[0]
    rows = []
    for spec in result.contrasts:
        for label, per in real.items():
            for si, s in enumerate(result.subjects):
                truth = np.isin(region, per[s])
                row = {"contrast": spec.name, "real_roi": label, "subject": s, "real_vertices": int(truth.sum()),
                       "searched": int(region.size),
                       "ap": average_precision(results[spec.name][result.stat][si][region], truth),
                       "chance": float(truth.mean())}
                if spec.name == roi_contrast:
                    row["dice"] = dice(result.roi_grayordinates[s], mapping[region[truth]])
                rows.append(row)
    result.comparison = pd.DataFrame(rows)
