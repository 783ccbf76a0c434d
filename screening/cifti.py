"""CIFTI-2 files in the 91,282-grayordinate fsLR32k space, written with nibabel: ``.dscalar.nii`` maps and
``.dlabel.nii`` ROIs that :func:`screening.parcellation.load_parcellation` reads back.

The brain-model axis is HCP's: left cortex (29,696 of the 32,492 mesh vertices), right cortex (29,716), then the 19
subcortical structures in HCP order with HCP's voxel counts (taken from the packaged MMP1.0 91k labels). The package
ships no subcortical voxel table, so those voxels' coordinates are placeholders (distinct voxels of a 2 mm MNI-shaped
volume): every value written there is empty (NaN in a dscalar, label 0 in a dlabel), since MOSAIC predicts cortex only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from screening import atlas

MESH_VERTICES = 32_492
_MNI_2MM_SHAPE = (91, 109, 91)
_MNI_2MM_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
# the packaged label names of the subcortical structures -> CIFTI names (HCP's spelling, not nibabel's guess)
_SUBCORTEX = {"brainStem": "CIFTI_STRUCTURE_BRAIN_STEM",
              "diencephalon_left": "CIFTI_STRUCTURE_DIENCEPHALON_VENTRAL_LEFT",
              "diencephalon_right": "CIFTI_STRUCTURE_DIENCEPHALON_VENTRAL_RIGHT"}


def cortex_vertices() -> dict:
    """``{"L"/"R": mesh vertex of each of that hemisphere's cortex grayordinates}`` (HCP order)."""
    with atlas.data_path("fslr32k_grayordinate_to_vertex.npz").open("rb") as f:
        d = np.load(f)
        return {"L": d["grayl"].astype(np.int64), "R": d["grayr"].astype(np.int64)}


def _subcortex_blocks() -> list[tuple[str, int]]:
    """``[(CIFTI structure, grayordinates)]`` of the subcortex in grayordinate order."""
    with atlas.data_path("mmp1_91k.npz").open("rb") as f:
        d = np.load(f)
        ids, names = d["label_id"][atlas.N_CORTEX:].astype(np.int64), d["label_name"].astype(str)
    starts = np.r_[0, np.flatnonzero(np.diff(ids)) + 1]
    ends = np.r_[starts[1:], ids.size]
    out = []
    for s, e in zip(starts, ends):
        name = str(names[ids[s]])
        out.append((_SUBCORTEX.get(name) or "CIFTI_STRUCTURE_" + name.upper(), int(e - s)))
    return out


@lru_cache(maxsize=1)
def brain_model_axis():
    """The 91,282-grayordinate ``BrainModelAxis`` (see the module docstring for the subcortex)."""
    import nibabel as nib

    cortex = cortex_vertices()
    axis = (nib.cifti2.BrainModelAxis.from_surface(cortex["L"], MESH_VERTICES, "CortexLeft")
            + nib.cifti2.BrainModelAxis.from_surface(cortex["R"], MESH_VERTICES, "CortexRight"))
    first = 0
    for structure, count in _subcortex_blocks():
        mask = np.zeros(_MNI_2MM_SHAPE, dtype=bool)
        mask.reshape(-1)[first:first + count] = True   # placeholder voxels, disjoint between structures
        first += count
        axis = axis + nib.cifti2.BrainModelAxis.from_mask(mask, structure, affine=_MNI_2MM_AFFINE)
    assert axis.size == atlas.N_GRAYORDINATES, axis.size
    return axis


def write_dscalar(path: str, maps: dict) -> str:
    """``maps``: map name -> (91282,) values (NaN where empty); one named map each, float32."""
    import nibabel as nib

    names = list(maps)
    data = np.stack([np.asarray(maps[n], dtype=np.float32) for n in names])
    scalars = nib.cifti2.ScalarAxis(names)
    nib.cifti2.Cifti2Image(data, header=(scalars, brain_model_axis())).to_filename(str(path))
    return str(path)


def write_dlabel(path: str, grayordinates, name: str, colour=(1.0, 0.2, 0.1, 1.0)) -> str:
    """One label ``name`` (key 1) on ``grayordinates``; every other grayordinate is 0 (unlabelled)."""
    import nibabel as nib

    values = np.zeros((1, atlas.N_GRAYORDINATES), dtype=np.float32)
    values[0, np.asarray(grayordinates, dtype=np.int64)] = 1
    table = {0: ("???", (0.0, 0.0, 0.0, 0.0)), 1: (str(name), tuple(float(c) for c in colour))}
    labels = nib.cifti2.LabelAxis([str(name)], [table])
    nib.cifti2.Cifti2Image(values, header=(labels, brain_model_axis())).to_filename(str(path))
    return str(path)


def read_dscalar(path: str) -> dict:
    """Map name -> (91282,) float values of a dscalar written by :func:`write_dscalar`."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.get_fdata(), dtype=np.float64)
    return {str(n): row for n, row in zip(img.header.get_axis(0).name, data)}
