"""Resolve ranking ROI names to vertex-weighted combinations of response-table columns.

A *target* is one ranked quantity: either a column of the responses table (``L_FFC``, ``group_04``,
a user ROI written by the pipeline) or a vertex-weighted mean of area (and group) columns, the names parsed by
the package's one ROI grammar (:func:`screening.rois.expand_roi`):

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

from screening import atlas, rois
from screening.exceptions import InvalidParameterError
from screening.rois import DEFAULT_COMPOSITES  # noqa: F401  (re-exported: rank's default composites)

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


@lru_cache(maxsize=1)
def _group_vertex_counts() -> dict[str, int]:
    ids, n = np.unique(atlas.glasser_group_id(), return_counts=True)
    return {atlas.group_column(g): int(c) for g, c in zip(ids, n)}


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
        self._vocab = self._vocabulary()

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
        if column in self._vocab.group_set:  # a group column, as a composite member
            return float(_group_vertex_counts()[column])
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
                if name not in self._colset and name not in names and self._resolves(name):
                    names.append(name)
        return names

    def _vocabulary(self) -> rois.Vocabulary:
        # areas with model vertices, plus any atlas-area column of the table; groups are the table's
        areas = dict.fromkeys(rois.variant_vocabulary("all").areas)
        areas.update(dict.fromkeys(self.area_columns))
        groups = tuple(c for c in self.columns if c in rois.atlas_vocabulary().group_set)
        return rois.Vocabulary(tuple(areas), groups, "has no column in the responses table")

    def _resolves(self, name: str) -> bool:
        try:
            atoms = rois.expand_roi(name, self._vocab, self.composites)
        except InvalidParameterError:
            return False
        return all(a in self._colset for a in atoms)

    def _unknown(self, name: str, within: tuple):
        accepted = list(self.columns) + rois.accepted_in(self._vocab, self.composites,
                                                         present=lambda atoms: set(atoms) <= self._colset)
        hint = rois.did_you_mean(name, accepted)
        valid = sorted(set(self.bilateral_names()) | set(self.composites))
        where = f" (a member of composite {within[-1]!r})" if within else ""
        raise InvalidParameterError(
            f"unknown ROI {name!r}{where}; valid: a responses column ({self.columns[:3]} ... {len(self.columns)} in "
            f"all), a bilateral area ({valid[:5]} ...), a composite {sorted(self.composites)} or its L_/R_ version"
            + hint)

    def _covered_areas(self, atoms) -> frozenset:
        """Area columns a target covers (left out of its selectivity comparison); a group covers its areas."""
        out = set()
        for a in atoms:
            if a in self._atlas_counts:
                out.add(a)
            elif a in self._vocab.group_set:
                g = int(a[len("group_"):])
                out.update(c for c in self.area_columns if area_group(c) == g)
        return frozenset(out)

    def resolve(self, name: str) -> Target:
        """Resolve one ROI name.

        Raises
        ------
        InvalidParameterError
            If the name is neither a column nor a name of the ROI grammar (:func:`screening.rois.expand_roi`)
            whose areas are all columns; an unknown name gets "did you mean" suggestions.
        """
        if not isinstance(name, str) or not name:
            raise InvalidParameterError(f"ROI name must be a non-empty string; got {name!r}")
        if name in self._colset:
            return Target(name, (name,), self._covered_areas([name]), {s: np.ones(1) for s in self.subjects})
        atoms = rois.expand_roi(name, self._vocab, self.composites, unknown=self._unknown)
        missing = [a for a in atoms if a not in self._colset]
        overlap = [(g, a) for g in atoms if g in self._vocab.group_set for a in atoms
                   if a in self._atlas_counts and area_group(a) == int(g[len("group_"):])]
        if overlap:  # the weighted mean of columns is the union's mean only for disjoint members
            raise InvalidParameterError(f"ROI {name!r} would count vertices twice: {overlap[0][0]} contains "
                                        f"{overlap[0][1]}; list either the group or its areas")
        if missing:
            raise InvalidParameterError(
                f"ROI {name!r} needs column(s) {missing} which the responses table lacks; "
                f"area columns present: {len(self.area_columns)} (e.g. {self.area_columns[:4]})")
        weights = {s: np.array([self.vertex_count(c, s) for c in atoms]) for s in self.subjects}
        return Target(name, atoms, self._covered_areas(atoms), weights)


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
