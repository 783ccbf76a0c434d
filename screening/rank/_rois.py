"""Resolve ranking ROI names to vertex-weighted combinations of response-table columns.

A *target* is one ranked quantity: either a column of the responses table (``L_FFC``, ``group_04``,
a user ROI written by the pipeline) or a vertex-weighted mean of area columns:

* a bilateral area ``FFC`` = ``L_FFC`` ∪ ``R_FFC``;
* a named composite from the ROI config (``faces: [FFC, PIT, V8]``), bilateral, and its hemisphere
  versions ``L_faces`` / ``R_faces``.

The weight of a column is its model vertex count ``n``: the composite's mean is
``sum(n_c * x_c) / sum(n_c)``, which equals the plain mean over the union of the vertices.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from screening import atlas
from screening.exceptions import InvalidParameterError

#: Composites shipped with the engine (MMP1.0 area names, bilateral unless ``L_``/``R_``-prefixed).
DEFAULT_COMPOSITES: dict[str, tuple[str, ...]] = {
    "faces": ("FFC", "PIT", "V8"),
    "places": ("PHA1", "PHA2", "PHA3"),
    "PHA1-3": ("PHA1", "PHA2", "PHA3"),
    "early_visual": ("V1", "V2", "V3", "V4"),
}

#: Separator of the two sides of a contrast; it cannot occur in an area or composite name.
CONTRAST_SEP = ":"
#: How a contrast is named in the rankings table (``FFC>PHA1-3``).
CONTRAST_JOIN = ">"
_FORBIDDEN = (CONTRAST_SEP, CONTRAST_JOIN, ",", " ")


@dataclass(frozen=True)
class Target:
    """One ranked (or helper) quantity: a weighted mean of table columns.

    ``members`` are column names; ``weights`` maps subject -> per-member vertex counts.
    ``areas`` are the atlas area columns the target covers (excluded from its selectivity comparison set).
    """

    name: str
    members: tuple[str, ...]
    areas: frozenset = field(default_factory=frozenset)
    weights: dict = field(default_factory=dict, compare=False, hash=False)


def load_roi_config(path) -> dict[str, tuple[str, ...]]:
    """Read named composite ROIs from a YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON file.

    Parameters
    ----------
    path : str or os.PathLike
        File holding a mapping ``name -> list of area names``, e.g. ``faces: [FFC, PIT, V8]``.
        In TOML the mapping may sit at top level or under a ``[composites]`` table.

    Returns
    -------
    dict of str to tuple of str

    Raises
    ------
    InvalidParameterError
        If the file is not a mapping of names to non-empty lists of strings, or a name contains
        one of ``: > ,`` or a space.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    with open(path, "rb") as f:
        raw = f.read()
    if ext in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(raw.decode())
    elif ext == ".toml":
        import tomllib

        data = tomllib.loads(raw.decode())
    elif ext == ".json":
        data = json.loads(raw.decode())
    else:
        raise InvalidParameterError(f"roi_config={path!r} has extension {ext!r}; valid: .yaml, .yml, .toml, .json")
    if isinstance(data, dict) and isinstance(data.get("composites"), dict):
        data = data["composites"]
    return validate_composites(data, source=path)


def validate_composites(data, *, source="composites") -> dict[str, tuple[str, ...]]:
    """Check a ``name -> [area, ...]`` mapping and return it with tuple values."""
    if not isinstance(data, dict):
        raise InvalidParameterError(f"{source}: expected a mapping name -> list of area names; got {type(data).__name__}")
    out = {}
    for name, members in data.items():
        if not isinstance(name, str) or not name or any(s in name for s in _FORBIDDEN):
            raise InvalidParameterError(
                f"{source}: composite name {name!r} is not valid; names are non-empty and contain none of {_FORBIDDEN}")
        if isinstance(members, str) or not members or not all(isinstance(m, str) for m in members):
            raise InvalidParameterError(
                f"{source}: composite {name!r} must list area names, e.g. [FFC, PIT, V8]; got {members!r}")
        out[name] = tuple(members)
    return out


@lru_cache(maxsize=1)
def _atlas_vertex_counts() -> dict[str, int]:
    return {name: int(g.size) for name, g in atlas.roi_grayordinates().items()}


def area_vertex_counts() -> dict[str, int]:
    """Area column (``L_FFC``) -> number of model vertices (grayordinates kept by MOSAIC)."""
    return dict(_atlas_vertex_counts())


def area_group(name: str) -> int:
    """Glasser group (1..22) of an area column (:func:`screening.atlas.area_group`)."""
    return atlas.area_group(name)


class RoiResolver:
    """Turn ROI names into :class:`Target` objects against one responses table.

    Parameters
    ----------
    columns : sequence of str
        ROI columns of the responses table (everything but ``image_id`` and ``subject``).
    subjects : sequence of str
        Subjects present in the table (``sub-01`` .. and ``mean``).
    composites : dict, optional
        Named composites; default :data:`DEFAULT_COMPOSITES`.
    manifest_rois : dict, optional
        The manifest's ``rois`` entry (``{name: {"n_vertices": {subject: n}}}``); vertex counts found
        there take precedence over the atlas counts.
    """

    def __init__(self, columns, subjects, composites=None, manifest_rois=None):
        self.columns = list(columns)
        self._colset = set(self.columns)
        self.subjects = list(subjects)
        self.composites = dict(DEFAULT_COMPOSITES if composites is None else composites)
        self.manifest_rois = manifest_rois or {}
        self._atlas_counts = area_vertex_counts()
        self.area_columns = [c for c in self.columns if c in self._atlas_counts]

    # -- vertex counts ---------------------------------------------------------------------------
    def vertex_count(self, column: str, subject: str) -> float:
        """Vertex weight of ``column`` for ``subject`` (manifest first, then atlas)."""
        per_subject = (self.manifest_rois.get(column) or {}).get("n_vertices") or {}
        if subject in per_subject:
            return float(per_subject[subject])
        if per_subject and subject == "mean":
            vals = [float(v) for k, v in per_subject.items() if k != "mean"]
            if vals:
                return float(np.mean(vals))
        if column in self._atlas_counts:
            return float(self._atlas_counts[column])
        raise InvalidParameterError(
            f"no vertex count for column {column!r}: it is not an atlas area and the manifest's rois has no n_vertices for it")

    # -- names -----------------------------------------------------------------------------------
    def bilateral_names(self) -> list[str]:
        """Bilateral area names whose ``L_`` and ``R_`` columns are both in the table."""
        out = []
        for c in self.area_columns:
            if c.startswith("L_") and "R_" + c[2:] in self._colset:
                out.append(c[2:])
        return out

    def default_names(self) -> list[str]:
        """Every table column, then bilateral areas, then composites (with hemisphere versions) that resolve."""
        names = list(self.columns)
        names += [b for b in self.bilateral_names() if b not in self._colset]
        for comp in self.composites:
            for name in (comp, "L_" + comp, "R_" + comp):
                if name in self._colset or name in names:
                    continue
                try:
                    self.resolve(name)
                except InvalidParameterError:
                    continue
                names.append(name)
        return names

    def _expand_area(self, name: str, hemis: tuple[str, ...]) -> list[str]:
        if name[:2] in ("L_", "R_"):
            if name[:2][0] not in hemis:
                return []
            cols = [name]
        else:
            cols = [f"{h}_{name}" for h in hemis]
        missing = [c for c in cols if c not in self._colset]
        if missing or not cols:
            raise InvalidParameterError(
                f"area {name!r} needs column(s) {missing} which the responses table lacks; "
                f"area columns present: {len(self.area_columns)} (e.g. {self.area_columns[:4]})")
        return cols

    def resolve(self, name: str) -> Target:
        """Resolve one ROI name.

        Raises
        ------
        InvalidParameterError
            If the name is neither a column, a bilateral area, nor a (hemisphere-prefixed) composite.
        """
        if not isinstance(name, str) or not name:
            raise InvalidParameterError(f"ROI name must be a non-empty string; got {name!r}")
        if name in self._colset:
            areas = frozenset([name]) if name in self._atlas_counts else frozenset()
            if name.startswith("group_"):
                try:
                    g = int(name[6:])
                    areas = frozenset(c for c in self.area_columns if area_group(c) == g)
                except ValueError:
                    pass
            return Target(name, (name,), areas, {s: np.ones(1) for s in self.subjects})
        hemis, base = ("L", "R"), name
        if name[:2] in ("L_", "R_") and name[2:] in self.composites:
            hemis, base = (name[0],), name[2:]
        if base in self.composites:
            cols: list[str] = []
            for member in self.composites[base]:
                for c in self._expand_area(member, hemis):
                    if c not in cols:
                        cols.append(c)
            if not cols:
                raise InvalidParameterError(f"composite {name!r} has no member in hemisphere {hemis[0]}")
        elif f"L_{name}" in self._colset and f"R_{name}" in self._colset:
            cols = [f"L_{name}", f"R_{name}"]
        else:
            valid = sorted(set(self.bilateral_names()) | set(self.composites))
            raise InvalidParameterError(
                f"unknown ROI {name!r}; valid: a responses column ({self.columns[:3]} ... {len(self.columns)} in all), "
                f"a bilateral area ({valid[:5]} ...), a composite {sorted(self.composites)} or its L_/R_ version")
        weights = {s: np.array([self.vertex_count(c, s) for c in cols]) for s in self.subjects}
        return Target(name, tuple(cols), frozenset(c for c in cols if c in self._atlas_counts), weights)

    def hemisphere_versions(self, name: str) -> list[str]:
        """``[name, L_name, R_name]`` where the hemisphere versions resolve; else ``[name]``."""
        if name in self._colset and name[:2] in ("L_", "R_"):
            return [name]
        if name[:2] in ("L_", "R_"):
            return [name]
        out = [name]
        for h in ("L_", "R_"):
            cand = h + name
            if cand in self._colset or (name in self.composites):
                try:
                    self.resolve(cand)
                    out.append(cand)
                except InvalidParameterError:
                    pass
        return out


def parse_contrast(spec) -> tuple[str, str]:
    """Parse ``"FFC:PHA1-3"`` (or a ``(a, b)`` pair) into its two ROI names.

    Raises
    ------
    InvalidParameterError
        If the spec is not exactly two non-empty names separated by one ``:``.
    """
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        a, b = spec
    elif isinstance(spec, str) and spec.count(CONTRAST_SEP) == 1:
        a, b = spec.split(CONTRAST_SEP)
    else:
        raise InvalidParameterError(
            f"contrast {spec!r} is not valid; write 'A:B' (e.g. 'FFC:PHA1-3'; ':' because ROI names contain '-')")
    a, b = str(a).strip(), str(b).strip()
    if not a or not b or a == b:
        raise InvalidParameterError(f"contrast {spec!r} needs two different ROI names, e.g. 'FFC:PHA1-3'")
    return a, b
