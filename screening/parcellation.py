"""Parcellations of the user's own (NSD's fLoc ROIs: FFA-1, PPA, EBA, VWFA-1 ...) as ROI columns.

A parcellation is a file in the 91,282-grayordinate space (fsLR32k, HCP order: left cortex, right cortex,
subcortex), one of

- a CIFTI ``.dlabel.nii`` (read with nibabel; its label table names the labels), or
- a ``.npy`` of 91,282 integers (0 = no label) beside a ``.tsv`` of ``index<TAB>name`` rows (same stem).

A path with ``{subject}`` in it (``rois/sub-{subject}_floc-faces.dlabel.nii``) is one file per subject, ``{subject}``
being the two-digit subject number (01 .. 08): NSD's fLoc ROIs are defined per subject. Each label becomes an ROI
column ``PREFIX_LABEL`` (prefix: the file's stem without the subject part, unless given), averaged exactly over the
label's model vertices (MOSAIC's excluded grayordinates and the subcortex hold none); a label without a model
vertex, for any subject, is refused by name. The grayordinate order and the hemisphere convention are checked: a
file of another length, or whose cortex is not the fsLR32k left-then-right cortex, is refused with what was found.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from screening import atlas
from screening.exceptions import InvalidParameterError

SUBJECT_FIELD = "{subject}"
SUFFIXES = (".dlabel.nii", ".npy")
_CORTEX = (("CIFTI_STRUCTURE_CORTEX_LEFT", "grayl"), ("CIFTI_STRUCTURE_CORTEX_RIGHT", "grayr"))


@dataclass(frozen=True)
class Parcellation:
    """``labels``: column name -> subject -> 91k grayordinate indices (the same array for every subject when the
    file is not per subject); ``source``: the path or pattern."""

    source: str
    prefix: str
    labels: dict

    def columns(self) -> list[str]:
        return list(self.labels)

    def vertex_counts(self, variant: str) -> dict:
        """Column -> subject -> model vertices of ``variant`` in it."""
        mapping = atlas.variant_vertex_mapping(variant)
        return {c: {s: int(np.isin(g, mapping).sum()) for s, g in per.items()} for c, per in self.labels.items()}

    def roi_columns(self, variant: str, subjects) -> dict:
        """Column -> subject -> model columns of ``variant`` (what the collapse averages over); refuses a label that
        has no model vertex for a subject."""
        mapping = atlas.variant_vertex_mapping(variant)
        out = {}
        for c, per in self.labels.items():
            out[c] = {}
            for s in subjects:
                g = per.get(s)
                if g is None:
                    raise InvalidParameterError(
                        f"parcellation {self.source!r}: label {c!r} is missing from {s}'s file (it is in "
                        f"{', '.join(sorted(per))}); give every subject's file every label, or drop it")
                cols = np.searchsorted(mapping, g)
                keep = (cols < mapping.size) & (mapping[np.minimum(cols, mapping.size - 1)] == g)
                if not keep.any():
                    raise InvalidParameterError(
                        f"parcellation {self.source!r}: label {c!r} has no model vertex for {s} ({g.size} "
                        f"grayordinate(s), all outside the {variant!r} model's vertices: subcortex or MOSAIC's "
                        f"excluded grayordinates); drop it from the file or choose another label")
                out[c][s] = cols[keep]
        return out


def add_columns(rois: dict, labels: dict, what: str) -> dict:
    """``rois`` with a parcellation's ``labels`` added; a name in both is refused (``what`` says how to rename)."""
    clash = sorted(set(rois) & set(labels))
    if clash:
        raise InvalidParameterError(f"parcellation columns {clash} clash with other ROI names; give {what}")
    return {**rois, **labels}


def default_prefix(path: str) -> str:
    name = os.path.basename(path)
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    name = re.sub(r"[A-Za-z]*[-_]?\{subject\}[-_.]?", "", name)
    return name.strip("-_.") or "parcel"


def load_parcellation(path, subjects, *, prefix: str | None = None) -> Parcellation:
    """Read ``path`` (a file, or a ``{subject}`` pattern) for ``subjects`` (``sub-01`` ...)."""
    path = os.fspath(path)
    if not path.lower().endswith(SUFFIXES):
        raise InvalidParameterError(f"parcellation {path!r} is not a .dlabel.nii or a .npy (+ .tsv) file")
    prefix = default_prefix(path) if prefix is None else str(prefix)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", prefix):
        raise InvalidParameterError(f"parcellation prefix {prefix!r} must be letters, digits, '_', '-' or '.'")
    if SUBJECT_FIELD in path:
        files = {s: path.replace(SUBJECT_FIELD, s.split("-")[-1]) for s in subjects}
    else:
        files = {s: path for s in subjects}
    read: dict = {}
    labels: dict = {}
    for s, f in files.items():
        if f not in read:
            read[f] = _read(f)
        for name, g in read[f].items():
            labels.setdefault(f"{prefix}_{name}", {})[s] = g
    return Parcellation(path, prefix, labels)


def column_names(path, *, prefix: str | None = None) -> list[str]:
    """The ROI columns a parcellation gives (for a ``{subject}`` pattern: those of its first subject's file)."""
    path = os.fspath(path)
    if SUBJECT_FIELD in path:
        found = [f"sub-{k:02d}" for k in range(1, 9) if os.path.isfile(path.replace(SUBJECT_FIELD, f"{k:02d}"))]
        if not found:
            raise InvalidParameterError(f"parcellation {path!r} matches no file for subjects 01..08")
        return load_parcellation(path, found[:1], prefix=prefix).columns()
    return load_parcellation(path, ("sub-01",), prefix=prefix).columns()


def _read(path: str) -> dict:
    """Label name -> grayordinates of one file."""
    if not os.path.isfile(path):
        raise InvalidParameterError(f"parcellation file {path!r} does not exist")
    if path.lower().endswith(".npy"):
        values, names = _read_npy(path)
    else:
        values, names = _read_dlabel(path)
    out, named = {}, {}
    for key, name in names.items():
        g = np.flatnonzero(values == key)
        if g.size:
            column = _column_safe(name)
            if column in out:
                raise InvalidParameterError(
                    f"parcellation file {path!r}: labels {named[column]!r} and {name!r} both become the column "
                    f"name {column!r} (names keep letters, digits, '_', '-', '.'); rename one of them")
            out[column], named[column] = g, name
    if not out:
        raise InvalidParameterError(f"parcellation file {path!r} labels no grayordinate (every value is 0 or "
                                    f"unnamed)")
    return out


def _column_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "label"


def _check_length(path: str, n: int) -> None:
    if n != atlas.N_GRAYORDINATES:
        raise InvalidParameterError(
            f"parcellation file {path!r} has {n} values; expected {atlas.N_GRAYORDINATES} (the 91,282 fsLR32k "
            f"grayordinates: 29,696 left cortex, 29,716 right cortex, 31,870 subcortex). A volume, a single "
            f"hemisphere or a 32k-vertex surface file must be resampled to the grayordinate space first")


def _read_npy(path: str):
    values = np.load(path, allow_pickle=False)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise InvalidParameterError(f"parcellation file {path!r} holds a {values.dtype} array of shape "
                                    f"{values.shape}; expected ({atlas.N_GRAYORDINATES},) integers")
    _check_length(path, values.size)
    tsv = path[: -len(".npy")] + ".tsv"
    if not os.path.isfile(tsv):
        raise InvalidParameterError(f"parcellation file {path!r} needs its label names beside it: {tsv!r} "
                                    f"(index<TAB>name per line)")
    names = {}
    with open(tsv, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2 or not parts[0].strip().lstrip("-").isdigit():
                if i == 1:   # a header line
                    continue
                raise InvalidParameterError(f"{tsv!r} line {i}: expected index<TAB>name; got {line.strip()!r}")
            if int(parts[0]) != 0:
                names[int(parts[0])] = parts[1].strip()
    return values, names


def _read_dlabel(path: str):
    import nibabel as nib

    try:
        img = nib.load(path)
        label_axis, models = img.header.get_axis(0), img.header.get_axis(1)
        values = np.asarray(img.get_fdata(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - a damaged or non-CIFTI file: say which and why
        raise InvalidParameterError(f"parcellation file {path!r} is not a readable CIFTI .dlabel.nii: "
                                    f"{type(exc).__name__}: {exc}") from None
    if not isinstance(label_axis, nib.cifti2.LabelAxis) or not isinstance(models, nib.cifti2.BrainModelAxis):
        raise InvalidParameterError(f"parcellation file {path!r} is a CIFTI file of axes "
                                    f"({type(label_axis).__name__}, {type(models).__name__}); expected a dlabel "
                                    f"(LabelAxis, BrainModelAxis)")
    _check_length(path, models.size)
    _check_cortex(path, models)
    if values.shape[0] != 1:
        raise InvalidParameterError(f"parcellation file {path!r} holds {values.shape[0]} label maps; give one "
                                    f"map per file")
    table = label_axis.label[0]
    names = {int(k): v[0] for k, v in table.items() if int(k) != 0}
    return np.rint(values[0]).astype(np.int64), names


def _check_cortex(path: str, models) -> None:
    """The file's first grayordinates must be the fsLR32k left cortex, then the right cortex, vertex for vertex."""
    with atlas.data_path("fslr32k_grayordinate_to_vertex.npz").open("rb") as f:
        d = np.load(f)
        expected = {k: d[k].astype(np.int64) for k in ("grayl", "grayr")}
    structures = list(models.iter_structures())
    for i, (structure, key) in enumerate(_CORTEX):
        found = structures[i][0] if i < len(structures) else None
        if found != structure:
            raise InvalidParameterError(f"parcellation file {path!r}: brain structure {i + 1} is {found}; expected "
                                        f"{structure} (the grayordinate order is left cortex, right cortex, "
                                        f"subcortex)")
        vertices = np.asarray(structures[i][2].vertex, dtype=np.int64)
        if vertices.size != expected[key].size or not np.array_equal(vertices, expected[key]):
            raise InvalidParameterError(
                f"parcellation file {path!r}: {structure} has {vertices.size} vertices in another order or set "
                f"than the fsLR32k grayordinates ({expected[key].size}); the file is in another space")
