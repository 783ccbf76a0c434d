"""ROI names → model-vertex index sets, for one checkpoint variant.

Names understood (all resolve to columns of the variant's output, ascending):
- areas ``L_FFC`` / ``R_FFC`` (HCP-MMP1.0);
- bilateral areas without prefix, ``FFC`` = ``L_FFC`` ∪ ``R_FFC`` (the plain mean over the union is
  the vertex-weighted mean of the two hemispheres);
- Glasser groups ``group_01`` .. ``group_22``;
- composites from a mapping (``{"faces": ["FFC", "PIT", "V8"]}``), unions of the above;
- custom sets given as 91k grayordinate arrays.
Reliability filtering keeps, per subject, the vertices whose noise ceiling passes a threshold.
An unknown name is refused with "did you mean" suggestions (:func:`suggest_names`) drawn from every name the
context accepts (:func:`accepted_names`, its composites included) and from localiser names (FFA, PPA, EVC, MT+).
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import Iterable, Mapping

import numpy as np

from screening import atlas
from screening.exceptions import InvalidParameterError

_GROUP_RE = re.compile(r"^group_(\d{1,2})$")
# how users write a group: group4, Group-04, GlasserGroup_4 (MOSAIC's name), glasser_group 4
_LOOSE_GROUP_RE = re.compile(r"^(?:glasser)?[-_ ]?group[-_ ]?0*(\d{1,2})$", re.IGNORECASE)
PerSubject = Mapping[str, np.ndarray]

#: Functional-localiser names users type, with the MMP1.0 names that stand for them (model-spec.md:
#: faces ~ FFC, places ~ PHA1-3, early visual = V1..V4; Glasser et al. 2016's MT+ complex = MT, MST, V4t, FST).
#: Only targets accepted in the context are suggested.
LOCALIZER_ALIASES: dict[str, tuple[str, ...]] = {
    "FFA": ("FFC", "faces"),
    "PPA": ("PHA1-3", "places", "PHA1", "PHA2", "PHA3"),
    "EVC": ("early_visual", "V1", "V2", "V3", "V4"),
    "MT+": ("MT", "MST", "V4t", "FST"),
    "hMT": ("MT", "MST", "V4t", "FST"),
    "hMT+": ("MT", "MST", "V4t", "FST"),
    "V5": ("MT",),
    "hV4": ("V4",),
    "LOC": ("LO1", "LO2", "LO3"),
}


@lru_cache(maxsize=4)
def _area_columns(variant: str) -> dict[str, np.ndarray]:
    mapping = atlas.variant_vertex_mapping(variant)
    out = {}
    for name, g in atlas.roi_grayordinates().items():
        cols = np.searchsorted(mapping, g)
        cols = cols[(cols < mapping.size) & (mapping[np.minimum(cols, mapping.size - 1)] == g)]
        if cols.size:
            out[name] = cols
    return out


@lru_cache(maxsize=4)
def _group_columns(variant: str) -> dict[str, np.ndarray]:
    groups = atlas.glasser_group_id()[atlas.variant_vertex_mask(variant)]
    return {atlas.group_column(g): np.flatnonzero(groups == g) for g in np.unique(groups)}


def default_roi_names(variant: str) -> list[str]:
    """Every area with vertices in the variant (label order), then its Glasser groups."""
    areas = [n for n in atlas.area_names() if n in _area_columns(variant)]
    return areas + sorted(_group_columns(variant))


def valid_names_hint(variant: str) -> str:
    areas = _area_columns(variant)
    bilateral = sorted({n[2:] for n in areas})
    return (f"areas like {', '.join(list(areas)[:4])}, ... ({len(areas)} in variant {variant!r}), "
            f"bilateral names like {', '.join(bilateral[:3])}, ..., groups {', '.join(sorted(_group_columns(variant)))}")


def accepted_names(variant: str, composites: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """Every name :func:`resolve_roi` accepts in ``variant``: areas, bilateral names, groups, then composites."""
    areas = _area_columns(variant)
    bilateral = sorted({n[2:] for n in areas} - set(areas))
    plain = list(areas) + bilateral + sorted(_group_columns(variant))
    known = set(plain)

    def ok(c, seen=()):  # every member resolves in this variant; no resolve_roi call (it may be raising now)
        members = list((composites or {}).get(c) or ())
        return bool(members) and c not in seen and all(
            m in known or (m in composites and ok(m, seen + (c,))) for m in members)

    return plain + [c for c in (composites or {}) if c not in known and ok(c)]


def suggest_names(name: str, accepted: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` accepted names close to ``name``: same name in another case, localiser aliases
    (:data:`LOCALIZER_ALIASES`, ``L_``/``R_`` kept), loose group spellings, then difflib matches (case-insensitive)."""
    accepted = list(dict.fromkeys(accepted))
    by_lower: dict[str, str] = {}
    for a in accepted:
        by_lower.setdefault(a.lower(), a)
    key = str(name).strip()
    out: list[str] = []

    def add(cands):
        for c in cands:
            hit = by_lower.get(c.lower())
            if hit is not None and hit not in out:
                out.append(hit)

    add([key])
    hemi, base = (key[:2], key[2:]) if key[:2].upper() in ("L_", "R_") else ("", key)
    for alias, targets in LOCALIZER_ALIASES.items():
        if base.lower() == alias.lower():
            # a hemisphere-prefixed alias suggests the same hemisphere where that exists
            add([hemi.upper() + t for t in targets] if hemi else targets)
            if hemi:
                add(targets)
    m = _LOOSE_GROUP_RE.match(key)
    if m:
        add([atlas.group_column(int(m.group(1)))] if 1 <= int(m.group(1)) <= 22 else [])
    add(difflib.get_close_matches(key.lower(), list(by_lower), n=n, cutoff=0.6))
    return out[:n]


def did_you_mean(name: str, accepted: Iterable[str]) -> str:
    """``"; did you mean 'FFC' or 'faces'?"`` for an error message, or ``""`` when nothing is close."""
    hits = suggest_names(name, accepted)
    if not hits:
        return ""
    quoted = [repr(h) for h in hits]
    return "; did you mean " + (quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]) + "?"


def resolve_roi(name: str, variant: str, composites: Mapping[str, Iterable[str]] | None = None,
                _seen: tuple = ()) -> np.ndarray:
    """Model-column indices (ascending, unique) of one named ROI in ``variant``."""
    if not isinstance(name, str):
        raise InvalidParameterError(f"ROI names must be strings; got {name!r} ({type(name).__name__})")
    areas, groups = _area_columns(variant), _group_columns(variant)
    if name in areas:
        return areas[name]
    if name in groups:
        return groups[name]
    m = _GROUP_RE.match(name)
    if m:
        raise InvalidParameterError(
            f"ROI {name!r} has no vertices in variant {variant!r}; groups present: {', '.join(sorted(groups))}")
    if composites and name in composites:
        if name in _seen:
            raise InvalidParameterError(f"composite ROI {name!r} refers to itself via {' -> '.join(_seen)}")
        parts = list(composites[name])
        if not parts:
            raise InvalidParameterError(f"composite ROI {name!r} lists no members")
        return np.unique(np.concatenate([resolve_roi(p, variant, composites, _seen + (name,)) for p in parts]))
    hemis = [areas[h + name] for h in ("L_", "R_") if h + name in areas]
    if hemis:
        return np.unique(np.concatenate(hemis))
    # the suggestions cover every name that works here, this context's composites included
    hint = did_you_mean(name, accepted_names(variant, composites))
    if name in atlas.roi_grayordinates() or ("L_" + name) in atlas.roi_grayordinates():
        why = ("the visual variant keeps Glasser groups 1-5" if variant == "visual"
               else "MOSAIC excludes all its grayordinates")
        raise InvalidParameterError(f"ROI {name!r} exists in the atlas but has no vertices in variant {variant!r} "
                                    f"({why}){hint}")
    where = f" (a member of composite {_seen[-1]!r})" if _seen else ""
    raise InvalidParameterError(f"Unknown ROI {name!r}{where}; valid ROIs: {valid_names_hint(variant)}"
                                + (f", composites {', '.join(composites)}" if composites else "")
                                + f" (`screening rois` lists them all){hint}")


def grayordinates_to_columns(grayordinates, variant: str, name: str = "custom") -> np.ndarray:
    """91k grayordinate indices → model columns; every index must be a model vertex of the variant."""
    g = np.unique(np.asarray(grayordinates, dtype=np.int64))
    mapping = atlas.variant_vertex_mapping(variant)
    cols = np.searchsorted(mapping, g)
    ok = (cols < mapping.size) & (mapping[np.minimum(cols, mapping.size - 1)] == g)
    if not ok.all() or g.size == 0:
        bad = g[~ok][:8].tolist()
        raise InvalidParameterError(
            f"custom ROI {name!r}: grayordinates {bad}{' ...' if (~ok).sum() > 8 else ''} are not vertices of "
            f"variant {variant!r} (valid: the {mapping.size} indices in vertex_mapping, 0..{atlas.N_CORTEX - 1} "
            f"cortex minus MOSAIC's exclusions)" if g.size else f"custom ROI {name!r} is empty")
    return cols


def build_roi_set(variant: str, names: Iterable[str] | None = None, *,
                  composites: Mapping[str, Iterable[str]] | None = None,
                  custom: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Ordered name → columns. ``names=None`` means the default set (all areas + groups)."""
    names = default_roi_names(variant) if names is None else list(names)
    out = {n: resolve_roi(n, variant, composites) for n in names}
    for n, g in (custom or {}).items():
        if n in out:
            raise InvalidParameterError(f"custom ROI name {n!r} clashes with a named ROI; choose another name")
        out[n] = grayordinates_to_columns(g, variant, n)
    if not out:
        raise InvalidParameterError("no ROIs selected; give at least one ROI name or custom vertex set")
    return out


def reliability_filter(rois: Mapping[str, np.ndarray], noise_ceilings: Mapping[str, np.ndarray],
                       threshold: float, variant: str) -> dict[str, dict[str, np.ndarray]]:
    """Per subject, keep only ROI vertices whose noise ceiling (91k space) is ≥ ``threshold``.

    Returns name → {subject → columns}. An ROI left with no vertex for a subject raises, naming both.
    """
    mapping = atlas.variant_vertex_mapping(variant)
    out: dict[str, dict[str, np.ndarray]] = {n: {} for n in rois}
    for subject, nc in noise_ceilings.items():
        nc = np.asarray(nc, dtype=np.float64)
        if nc.shape != (atlas.N_GRAYORDINATES,):
            raise InvalidParameterError(f"noise ceiling of {subject} must have shape ({atlas.N_GRAYORDINATES},); "
                                        f"got {nc.shape}")
        keep = np.nan_to_num(nc[mapping], nan=-np.inf) >= threshold
        for n, cols in rois.items():
            kept = cols[keep[cols]]
            if kept.size == 0:
                raise InvalidParameterError(
                    f"ROI {n!r} keeps no vertex for {subject} at noise-ceiling threshold {threshold}; "
                    f"max noise ceiling there is {np.nanmax(nc[mapping][cols]):.3g}")
            out[n][subject] = kept
    return out


def n_vertices(rois: Mapping[str, np.ndarray | PerSubject], subjects: Iterable[str]) -> dict[str, dict[str, int]]:
    """ROI → subject → vertex count (what the manifest records)."""
    return {n: {s: int((v[s] if isinstance(v, Mapping) else v).size) for s in subjects} for n, v in rois.items()}
