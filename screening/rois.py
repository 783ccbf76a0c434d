"""ROI names → model-vertex index sets, for one checkpoint variant; and the one ROI grammar.

:func:`expand_roi` is the only parser of ROI names in the package: ``screening run`` / the API
(:func:`resolve_roi`), ``screening rank`` (``rank._rois.RoiResolver``) and the report's flatmap outlines all call
it, each with its own :class:`Vocabulary` (the areas and groups that exist there). Names understood:
- areas ``L_FFC`` / ``R_FFC`` (HCP-MMP1.0);
- bilateral areas without prefix, ``FFC`` = ``L_FFC`` ∪ ``R_FFC`` (the plain mean over the union is
  the vertex-weighted mean of the two hemispheres);
- Glasser groups ``group_01`` .. ``group_22``;
- composites from a mapping (``{"faces": ["FFC", "PIT", "V8"]}``, default :data:`DEFAULT_COMPOSITES`), unions of
  the above, and their hemisphere versions ``L_faces`` / ``R_faces`` (that side's areas);
- custom sets given as 91k grayordinate arrays.
Reliability filtering keeps, per subject, the vertices whose noise ceiling passes a threshold.
An unknown name is refused with "did you mean" suggestions (:func:`suggest_names`) drawn from every name the
context accepts (:func:`accepted_names`, its composites included) and from localiser names (FFA, PPA, EVC, MT+).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Mapping, NoReturn

import numpy as np

from screening import atlas
from screening.exceptions import InvalidParameterError

_GROUP_RE = re.compile(r"^group_(\d{1,2})$")
# how users write a group: group4, Group-04, GlasserGroup_4 (MOSAIC's name), glasser_group 4
_LOOSE_GROUP_RE = re.compile(r"^(?:glasser)?[-_ ]?group[-_ ]?0*(\d{1,2})$", re.IGNORECASE)
PerSubject = Mapping[str, np.ndarray]
HEMISPHERES = ("L_", "R_")

#: Composites shipped with the engine (MMP1.0 area names, bilateral unless ``L_``/``R_``-prefixed): the defaults
#: of ``screening rank`` / ``screening report`` and the outlines of the flatmaps.
DEFAULT_COMPOSITES: dict[str, tuple[str, ...]] = {
    "faces": ("FFC", "PIT", "V8"),
    "places": ("PHA1", "PHA2", "PHA3"),
    "PHA1-3": ("PHA1", "PHA2", "PHA3"),
    "early_visual": ("V1", "V2", "V3", "V4"),
}

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
def area_columns(variant: str) -> dict[str, np.ndarray]:
    mapping = atlas.variant_vertex_mapping(variant)
    out = {}
    for name, g in atlas.roi_grayordinates().items():
        cols = np.searchsorted(mapping, g)
        cols = cols[(cols < mapping.size) & (mapping[np.minimum(cols, mapping.size - 1)] == g)]
        if cols.size:
            out[name] = cols
    return out


@lru_cache(maxsize=4)
def group_columns(variant: str) -> dict[str, np.ndarray]:
    groups = atlas.glasser_group_id()[atlas.variant_vertex_mask(variant)]
    return {atlas.group_column(g): np.flatnonzero(groups == g) for g in np.unique(groups)}


@dataclass(frozen=True)
class Vocabulary:
    """The area and group names that exist in one context (a variant, the atlas, a responses table).

    ``absent`` ends the message for a well-formed group name the context lacks ("has no vertices in ...").
    """

    areas: tuple
    groups: tuple
    absent: str
    area_set: frozenset = field(init=False, repr=False, compare=False)
    group_set: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "area_set", frozenset(self.areas))
        object.__setattr__(self, "group_set", frozenset(self.groups))


@lru_cache(maxsize=4)
def variant_vocabulary(variant: str) -> Vocabulary:
    """Areas and groups with model vertices in ``variant`` (label order; groups ascending)."""
    return Vocabulary(tuple(area_columns(variant)), tuple(sorted(group_columns(variant))),
                      f"has no vertices in variant {variant!r}")


@lru_cache(maxsize=1)
def atlas_vocabulary() -> Vocabulary:
    """All 360 HCP-MMP1.0 areas and the 22 Glasser groups, vertices or not (for drawing outlines)."""
    return Vocabulary(tuple(str(a) for a in atlas.area_names()),
                      tuple(atlas.group_column(g) for g in range(1, 23)), "is not a Glasser group")


def default_roi_names(variant: str) -> list[str]:
    """Every area with vertices in the variant (label order), then its Glasser groups."""
    areas = [n for n in atlas.area_names() if n in area_columns(variant)]
    return areas + sorted(group_columns(variant))


def valid_names_hint(variant: str) -> str:
    areas = area_columns(variant)
    bilateral = sorted({n[2:] for n in areas})
    return (f"areas like {', '.join(list(areas)[:4])}, ... ({len(areas)} in variant {variant!r}), "
            f"bilateral names like {', '.join(bilateral[:3])}, ..., groups {', '.join(sorted(group_columns(variant)))}")


def accepted_in(vocab: Vocabulary, composites: Mapping[str, Iterable[str]] | None = None,
                present=None) -> list[str]:
    """Every name the grammar accepts in ``vocab``: areas, bilateral names, groups, then composites and their
    ``L_``/``R_`` versions. ``present(atoms)`` may refuse a name whose atoms the context lacks."""
    bilateral = sorted({n[2:] for n in vocab.areas} - set(vocab.areas))
    plain = list(vocab.areas) + bilateral + list(vocab.groups)
    present = present or (lambda atoms: True)
    out = [n for n in plain if present(expand_roi(n, vocab))]
    for c in composites or {}:
        for name in (c, "L_" + c, "R_" + c):
            if name in out:
                continue
            try:
                ok = present(expand_roi(name, vocab, composites, unknown=_quiet))
            except InvalidParameterError:  # a member unknown here, or no member on that side
                ok = False
            if ok:
                out.append(name)
    return out


def accepted_names(variant: str, composites: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """Every name :func:`resolve_roi` accepts in ``variant``: areas, bilateral names, groups, then composites
    (and their ``L_``/``R_`` versions)."""
    return accepted_in(variant_vocabulary(variant), composites)


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


def _quiet(name: str, within: tuple) -> NoReturn:
    raise InvalidParameterError(f"unknown ROI {name!r}")


def _split_hemisphere(name: str) -> tuple[str, str]:
    return (name[:2], name[2:]) if name[:2] in HEMISPHERES else ("", name)


def expand_roi(name: str, vocab: Vocabulary, composites: Mapping[str, Iterable[str]] | None = None, *,
               unknown: Callable[[str, tuple], NoReturn] = _quiet, _seen: tuple = ()) -> tuple[str, ...]:
    """The one ROI grammar: a name → its atoms (area names ``L_X``/``R_X``, group names ``group_NN``), first-seen order.

    In order: an area or group of ``vocab`` is its own atom; a composite is the union of its members (areas,
    bilateral names, groups, other composites); ``L_<composite>`` / ``R_<composite>`` keeps that side's areas;
    a bilateral name ``X`` is the sides ``L_X``, ``R_X`` that ``vocab`` has. Anything else goes to
    ``unknown(name, composites_it_sits_in)``, which raises the caller's message.
    """
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"ROI names must be non-empty strings; got {name!r} ({type(name).__name__})")
    if name in vocab.area_set or name in vocab.group_set:
        return (name,)
    m = _GROUP_RE.match(name)
    if m and name == atlas.group_column(int(m.group(1))):  # canonical spelling; group4 etc. get suggestions
        raise InvalidParameterError(f"ROI {name!r} {vocab.absent}; groups present: {', '.join(vocab.groups)}")
    composites = composites or {}
    if name in composites:
        return _expand_composite(name, vocab, composites, unknown, _seen)
    hemi, base = _split_hemisphere(name)
    if hemi and base in composites:
        atoms = _expand_composite(base, vocab, composites, unknown, _seen)
        groups = [a for a in atoms if a in vocab.group_set]
        if groups:
            raise InvalidParameterError(f"ROI {name!r}: composite {base!r} has group member(s) {groups}, which span "
                                        f"both hemispheres; a {hemi} version takes areas only")
        side = tuple(a for a in atoms if a.startswith(hemi))
        if not side:
            raise InvalidParameterError(f"composite {name!r} has no member in hemisphere {hemi[0]}")
        return side
    sides = tuple(h + name for h in HEMISPHERES if h + name in vocab.area_set)
    if sides:
        return sides
    unknown(name, _seen)
    raise AssertionError("unknown() must raise")  # pragma: no cover


def _expand_composite(name, vocab, composites, unknown, seen) -> tuple[str, ...]:
    if name in seen:
        raise InvalidParameterError(f"composite ROI {name!r} refers to itself via {' -> '.join(seen + (name,))}")
    members = list(composites[name] or ())
    if not members:
        raise InvalidParameterError(f"composite ROI {name!r} lists no members")
    atoms: dict[str, None] = {}
    for member in members:
        atoms.update(dict.fromkeys(expand_roi(member, vocab, composites, unknown=unknown, _seen=seen + (name,))))
    return tuple(atoms)


def resolve_roi(name: str, variant: str, composites: Mapping[str, Iterable[str]] | None = None) -> np.ndarray:
    """Model-column indices (ascending, unique) of one named ROI in ``variant`` (grammar: :func:`expand_roi`)."""
    vocab = variant_vocabulary(variant)

    def unknown(bad: str, within: tuple) -> NoReturn:
        # the suggestions cover every name that works here, this context's composites included
        hint = did_you_mean(bad, accepted_names(variant, composites))
        if bad in atlas.roi_grayordinates() or ("L_" + bad) in atlas.roi_grayordinates():
            why = ("the visual variant keeps Glasser groups 1-5" if variant == "visual"
                   else "MOSAIC excludes all its grayordinates")
            raise InvalidParameterError(f"ROI {bad!r} exists in the atlas but has no vertices in variant "
                                        f"{variant!r} ({why}){hint}")
        where = f" (a member of composite {within[-1]!r})" if within else ""
        raise InvalidParameterError(f"Unknown ROI {bad!r}{where}; valid ROIs: {valid_names_hint(variant)}"
                                    + (f", composites {', '.join(composites)}" if composites else "")
                                    + f" (`screening rois` lists them all){hint}")

    atoms = expand_roi(name, vocab, composites, unknown=unknown)
    areas, groups = area_columns(variant), group_columns(variant)
    cols = [areas[a] if a in areas else groups[a] for a in atoms]
    return cols[0].copy() if len(cols) == 1 else np.unique(np.concatenate(cols))


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
                  custom: Mapping[str, np.ndarray] | None = None, allow_empty: bool = False) -> dict[str, np.ndarray]:
    """Ordered name → columns. ``names=None`` means the default set (all areas + groups); ``allow_empty``: the
    caller adds ROIs of its own (a parcellation)."""
    names = default_roi_names(variant) if names is None else list(names)
    out = {n: resolve_roi(n, variant, composites) for n in names}
    for n, g in (custom or {}).items():
        if n in out:
            raise InvalidParameterError(f"custom ROI name {n!r} clashes with a named ROI; choose another name")
        out[n] = grayordinates_to_columns(g, variant, n)
    if not out and not allow_empty:
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
            cols = cols[subject] if isinstance(cols, Mapping) else cols   # a per-subject parcellation label
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
