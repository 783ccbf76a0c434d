"""Words for the report: what each ROI is made of, what each column means, short image names."""

from __future__ import annotations

import re
from functools import lru_cache

from screening import atlas
from screening.labels import file_name

_GROUP_RE = re.compile(r"^group_(\d{2})$")


@lru_cache(maxsize=1)
def _areas() -> frozenset:
    return frozenset(atlas.area_names())


@lru_cache(maxsize=22)
def group_areas(group: int) -> tuple[str, ...]:
    """Bilateral names of the MMP areas in a Glasser group, in label order."""
    return tuple(n[2:] for n in atlas.area_names()[:180] if atlas.area_group(n) == group)


def _fold_hemispheres(columns) -> list[str]:
    """``[L_FFC, R_FFC, L_PIT]`` -> ``[FFC, L_PIT]``: a name without prefix stands for both hemispheres."""
    cols = list(columns)
    out, seen = [], set()
    for c in cols:
        if c in seen:
            continue
        if c[:2] in ("L_", "R_"):
            other = ("R_" if c[0] == "L" else "L_") + c[2:]
            if other in cols:
                out.append(c[2:])
                seen |= {c, other}
                continue
        out.append(c)
        seen.add(c)
    return out


def describe_column(col: str, config: dict | None = None) -> str:
    """One responses-table column in words (an area, a Glasser group, a pipeline composite/custom ROI)."""
    config = config or {}
    m = _GROUP_RE.match(col)
    if m and 1 <= int(m.group(1)) <= 22:
        g = int(m.group(1))
        return (f"Glasser group {g}, {atlas.GROUP_NAMES[g]}: areas {', '.join(group_areas(g))} "
                f"(both hemispheres)")
    if col in _areas():
        g = atlas.area_group(col)
        side = "left" if col[0] == "L" else "right"
        return f"HCP-MMP1.0 area {col[2:]}, {side} hemisphere (Glasser group {g}, {atlas.GROUP_NAMES[g]})"
    composites = config.get("composites") or {}
    if col in composites:
        return f"composite screened by the pipeline: union of {', '.join(map(str, composites[col]))}"
    if col in (config.get("custom_rois") or []):
        return "custom ROI screened by the pipeline (a grayordinate set given with --custom-rois)"
    if f"L_{col}" in _areas() and f"R_{col}" in _areas():
        return f"HCP-MMP1.0 area {col}, both hemispheres (L_{col} ∪ R_{col}), screened as one ROI"
    return "a column of the responses table"


def describe_roi(name: str, members, config: dict | None = None, n_vertices: dict | None = None) -> str:
    """What a ranked ROI averages.

    Parameters
    ----------
    name : str
        The ranked name (``FFC``, ``faces``, ``L_places``, ``group_04``, ``L_V1``).
    members : sequence of str or None
        The responses columns it is the vertex-weighted mean of (rankings metadata ``members``).
    config : dict, optional
        The run manifest's ``config`` (pipeline composites and custom ROIs).
    n_vertices : dict, optional
        Column -> model vertex count, shown when known.
    """
    members = list(members or [])
    if not members:
        return "(composition not recorded with these rankings)"
    if members == [name]:
        return describe_column(name, config)

    def with_n(c):
        n = (n_vertices or {}).get(c)
        return f"{c} ({n:g} vertices)" if n else c

    folded = _fold_hemispheres(members)
    union = " ∪ ".join(with_n(c) for c in members)
    if len(folded) == 1 and folded[0] == name and name in {c[2:] for c in members}:
        g = atlas.area_group(members[0]) if members[0] in _areas() else None
        where = f" (Glasser group {g}, {atlas.GROUP_NAMES[g]})" if g else ""
        return f"bilateral area {name}{where} = {union}; the response is the mean over all these vertices."
    parts = [describe_column(c, config) for c in members if _GROUP_RE.match(c)]
    tail = f" {'; '.join(parts)}." if parts else ""
    both = " (a name without L_/R_ = both hemispheres)" if any(f[:2] not in ("L_", "R_") for f in folded) else ""
    return (f"composite of {', '.join(folded)}{both} = {union}; the response is the mean over all these vertices "
            f"(each column weighted by its vertex count).{tail}")


def short_name(source) -> str | None:
    """The file name of a ``source`` (``photos/cat.jpg`` -> ``cat.jpg``; ``tar://a/b.png::x.tar`` -> ``b.png``),
    as :func:`screening.labels.file_name` reads every recorded source; None for no source."""
    if not source:
        return None
    return file_name(str(source)) or str(source)


def legend(meta: dict) -> list[tuple[str, str]]:
    """Definitions of the columns shown (docs/rank-report.md), with this ranking's parameters filled in."""
    q = float(meta.get("null_quantile", 0.95))
    qt, qb = f"{100 * q:g}th", f"{100 * (1 - q):g}th"
    n_null = meta.get("n_null", 10_000)
    n_img = meta.get("n_images")
    n_eff = min(int(n_null), int(n_img)) if n_img is not None else n_null
    return [
        ("response", "the predicted response of the ROI: the mean over its model vertices of the CNN8 prediction, "
                     "in model output units (a bilateral area or composite is the vertex-weighted mean of its "
                     "columns); subject mean = the average over the screened subjects."),
        ("z", "(response − mean) / std over the screened set, per subject and ROI (population std). "
              "Contrast: z_A − z_B; consensus: the mean z over subjects."),
        ("score", "the value a list is ranked by: the response (top-k descending, bottom-k ascending), "
                  "z_roi − mean z of the comparison areas (selectivity), the mean z over subjects (consensus), "
                  "z_A − z_B or response_A − response_B (contrast)."),
        ("margin", f"score − the {qt} percentile of the single-image null (bottom-k: the {qb} percentile − score). "
                   f"> 0: beyond what {100 * q:g}% of randomly drawn screened images reach."),
        ("p_null", f"(1 + #{{null ≥ score}}) / (1 + n_null) (bottom-k: ≤). The null is the score of n_null = "
                   f"{n_eff:,} images drawn from the screened set (all of them if fewer), so p_null ≥ "
                   f"1/(n_null+1) = {1 / (n_eff + 1):.2g}."),
        ("n_subjects_topk", "consensus: how many subjects have the image in their own top-k."),
        ("set-level null", "the mean score of the k listed images (set_score) against the mean of k random "
                           "images, drawn null_draws times: null_mean, null_q (its "
                           f"{qt} percentile; {qb} for bottom-k), set_margin = set_score − null_q, set_p_null. "
                           "Selecting the top-k makes even pure noise beat random sets, so compare ROIs by "
                           "set_margin, not by p < 0.05."),
        ("thumbnail", "the image centre-cropped to a square, as the model sees it; click for the original file."),
    ]
