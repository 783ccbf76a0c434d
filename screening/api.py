"""The BERG-compatible API for the MOSAIC CNN8 model: change one import and a BERG script runs.

    from screening import BERG          # was: from berg import BERG
    berg = BERG("path/or/s3://brain-encoding-response-generator")
    model = berg.get_encoding_model("fmri-mosaic-CNN8_multihead_subNSD_verticesAll", subject=1,
                                    selection={"roi": ["L_FFC", "R_FFC"]})
    responses = berg.encode(model, stimulus)              # {"NaturalScenesDataset": {"sub-01": (N, V)}}
    roi_means = berg.encode(model, stimulus, reduce="roi_mean")   # (N, R), columns model.roi_names

The rest of BERG's public surface is here too: ``get_model_catalog``, ``list_models``, ``describe`` and
``get_model_variants``. Unlike the reference: input is streamed in batches, only the selected vertices are
computed, nothing is cast silently, and ``show_progress`` shows progress (README: "Where we differ from BERG").
"""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from screening import atlas, rois as roi_lib
from screening.validation import (DEVICES, check_choice, check_device, check_positive_int,
                                   check_stimulus, parse_subjects, is_int)
from screening.exceptions import InvalidParameterError, UnknownModelIdError
from screening.hardware import AUTO, PRECISION_CHOICES, check_precision, resolve_precision
from screening.models.registry import PUBLISHED, CheckpointInfo, EncoderWeights, get_weights
from screening.models.encoder import Normalize, RoiEncoder, collapse_heads, core_features, default_batch_size
from screening.models.fast import fold_batchnorm

SELECTION_KEYS = ("roi", "glasser_group", "voxel_index", "parcellation")   # parcellation: an extension of BERG
REDUCTIONS = (None, "roi_mean")
_VERTEX_CHUNK = 4096


def _weights(model_id) -> EncoderWeights:
    if not isinstance(model_id, str) or model_id not in PUBLISHED:  # a list or None is unknown, not a TypeError
        raise UnknownModelIdError(f"model_id={model_id!r} is not a known model; valid model ids: "
                                  f"{', '.join(sorted(PUBLISHED))}")
    return get_weights(model_id)


# What BERG's model registry and YAML cards say of the CNN8 models (modality / training dataset as the
# registry files them); describe() builds the rest from EncoderWeights and the atlas.
_CATALOG = {"modality": "fMRI", "training_dataset": "MOSAIC (NSD)",
            "model_architecture": "CNN8 (8-layer convolutional network), one factorised linear readout per NSD subject",
            "creator": "MOSAIC Team (Lahner et al., 2025)"}
_REFERENCES = ("MOSAIC paper (Lahner et al., 2025): https://www.biorxiv.org/content/10.64898/2025.11.28.690060v1",
               "MOSAIC repository: https://github.com/murtylab/mosaic-dataset",
               "Natural Scenes Dataset (Allen et al., 2022): https://registry.opendata.aws/nsd/")


@dataclass
class EncodingModel:
    """A loaded model restricted to a vertex selection; what ``get_encoding_model`` returns."""

    model_id: str
    weights: EncoderWeights
    info: CheckpointInfo
    subjects: list
    columns: np.ndarray  # selected model columns, ascending
    roi_sets: dict  # name -> columns, for reduce="roi_mean"
    device: str
    precision: str
    batch_size: int
    core: torch.nn.Module
    heads: dict  # subject -> FactorizedReadout of the selected vertices only (column order), on device
    fingerprint: dict = field(default_factory=dict)
    precision_choice: dict | None = None  # precision="auto": what it resolved to on this device, and why
    _roi_encoder: RoiEncoder | None = None

    @property
    def vertex_mapping(self) -> np.ndarray:
        """Grayordinates (91k space) of the output columns."""
        return atlas.variant_vertex_mapping(self.weights.variant)[self.columns]

    @property
    def roi_names(self) -> list[str]:
        return list(self.roi_sets)

    def roi_encoder(self) -> RoiEncoder:
        if self._roi_encoder is None:
            pos = {c: i for i, c in enumerate(self.columns.tolist())}
            def at(cols):
                return np.array([pos[c] for c in cols.tolist()])

            sets = {name: ({s: at(c) for s, c in cols.items()} if isinstance(cols, Mapping) else at(cols))
                    for name, cols in self.roi_sets.items()}
            w, b = collapse_heads(self.heads, self.subjects, sets, device=self.device)
            self._roi_encoder = RoiEncoder(self.core, w, b, self.subjects, self.roi_names, self.precision,
                                           self.weights).to(self.device).eval()
        return self._roi_encoder

    @torch.inference_mode()
    def features(self, images_u8: np.ndarray) -> torch.Tensor:
        """Core output (N, C, H, W), float32, for preprocessed uint8 images."""
        x = Normalize.from_weights(self.weights).to(self.device)(
            torch.from_numpy(np.ascontiguousarray(images_u8)).to(self.device))
        return core_features(self.core, x, self.precision).float()

    @torch.inference_mode()
    def vertices(self, feats: torch.Tensor, subject: str) -> torch.Tensor:
        """Selected-vertex responses (N, Vs) through the subject's readout, in vertex chunks so memory stays bounded."""
        head = self.heads[subject]
        out = torch.empty(feats.shape[0], head.n_vertices, device=feats.device)
        for lo in range(0, head.n_vertices, _VERTEX_CHUNK):
            rows = slice(lo, lo + _VERTEX_CHUNK)
            out[:, rows] = head(feats, rows=rows)
        return out


class BERG:
    """Entry point, as in the BERG toolbox, for the MOSAIC CNN8 models.

    Parameters
    ----------
    berg_dir : str
        A BERG root: local directory, ``s3://bucket[/prefix]`` (e.g. ``s3://brain-encoding-response-generator``),
        or a direct https URL of a published checkpoint.
    storage_options, cache_dir
        Passed to :func:`screening.store.open_store` (``storage_options``: a :class:`screening.fs.StorageOptions`
        or a dict of its fields); ``endpoint_url=`` / ``anonymous=`` may be given instead of ``storage_options``.
    """

    def __init__(self, berg_dir: str, *, storage_options=None, endpoint_url: str | None = None,
                 anonymous: bool | None = None, cache_dir: str | None = None):
        from screening.store import open_store

        self.berg_dir = berg_dir
        self.store = open_store(str(berg_dir), storage_options=storage_options, endpoint_url=endpoint_url,
                                anonymous=anonymous, cache_dir=cache_dir)

    # -- metadata ---------------------------------------------------------------------------------
    def get_model_metadata(self, model_id: str, subject=1):
        """Metadata dict of one subject, or ``{"sub-0N": dict}`` for several (as BERG: ``[1]`` is one subject)."""
        _weights(model_id)
        subjects = parse_subjects(subject)
        metas = {s: self.store.metadata(model_id, s) for s in subjects}
        return metas[subjects[0]] if len(subjects) == 1 else metas

    # -- catalog (what BERG's registry answers; no store access) ---------------------------------
    def list_models(self, expand_brainscore_vision: bool = False, expand_brainscore_language: bool = False) -> list[str]:
        """Sorted ids of the models this class serves: the two CNN8 models, whether or not the store holds them
        (``self.store.model_ids()`` says which it does). The BrainScore flags of BERG are accepted and do nothing."""
        return sorted(PUBLISHED)

    def get_model_catalog(self, print_format: bool = False) -> dict[str, list[str]]:
        """``{modality: [training datasets]}`` as BERG returns it: ``{"fMRI": ["MOSAIC (NSD)"]}``.

        ``print_format=True`` also prints the tree modality → training dataset → model ids.
        """
        tree: dict[str, dict[str, list[str]]] = {}
        for model_id in self.list_models():
            tree.setdefault(_CATALOG["modality"], {}).setdefault(_CATALOG["training_dataset"], []).append(model_id)
        if print_format:
            print("Available Modalities and Datasets:")
            print("=================================")
            for modality, datasets in sorted(tree.items()):
                print(f"• {modality.upper()}")
                for dataset, ids in sorted(datasets.items()):
                    print(f"  └─ {dataset}")
                    for i, model_id in enumerate(ids):
                        print(f"       {'└─' if i == len(ids) - 1 else '├─'} {model_id}")
                print()
        return {modality: sorted(datasets) for modality, datasets in tree.items()}

    def get_model_variants(self, model_id: str) -> list[str]:
        """Pretrained variants of ``model_id`` (BERG: HuggingFace repo ids); the CNN8 models have none: ``[]``."""
        _weights(model_id)
        return []

    def describe(self, model_id: str) -> dict[str, Any]:
        """Print and return the model's description, with the keys BERG's ``describe`` returns:
        ``model_id``, ``model_info``, ``description``, ``input``, ``output``, ``parameters``,
        ``parameters_by_function``, ``performance``, ``example_usage``."""
        w = _weights(model_id)
        info = _describe(w)
        _print_description(info, list(_REFERENCES) + [f"Published weights: {w.url}"])
        return info

    # -- model ------------------------------------------------------------------------------------
    def get_encoding_model(self, model_id: str, subject=1, selection: Mapping | None = None, device: str = "auto",
                           *, precision: str = "fp32", batch_size: int | None = None,
                           fold_bn: bool = True) -> EncodingModel:
        """Load the model for ``subject`` restricted to ``selection``.

        Parameters
        ----------
        model_id : str
        subject : int, list of int, or "all"
        selection : dict, optional
            ``roi`` (names), ``glasser_group`` (1..22), ``voxel_index`` (0/1 vector over the model's vertices);
            unioned, columns ascending in grayordinate order. An extension of BERG's keys: ``parcellation``, the
            path of a parcellation of your own (or ``{"file": path, "prefix": str}``; :mod:`screening.parcellation`):
            each label is an ROI of ``reduce="roi_mean"``, per subject where the path has ``{subject}``.
        device : {"cpu", "cuda", "auto"}
        precision : {"fp32", "bf16", "fp16", "auto"}, default="fp32"
            fp32 reproduces the published maths; bf16 and fp16 run the core under autocast (see README for
            agreement). fp16 needs CUDA: on a CPU it is refused. ``auto``: the fastest on this device
            (``screening.hardware``; docs/precision.md); the choice and why are in ``model.precision_choice``.
        batch_size : int, optional
            Images per forward; default ``screening.models.encoder.default_batch_size`` (2 on CPU; on CUDA
            what fits in half the free memory, 32..512).
        fold_bn : bool, default=True
            Fold BatchNorm into the convolutions (same fp32 numbers within rounding, fewer kernels).
        """
        weights = _weights(model_id)
        subjects = list(parse_subjects(subject))
        dev = check_device(device)
        check_precision(precision, dev, allow_auto=True)
        choice = None
        if precision == AUTO:
            choice = resolve_precision(dev).record()
            precision = choice["precision"]
        batch_size = check_positive_int("batch_size", batch_size) or default_batch_size(dev, precision)
        # the selection is checked before the load: a typo should not wait for a 2 GB download
        columns, roi_sets = resolve_selection(selection, weights.variant, weights.n_vertices, subjects)
        model, info = self.store.load_model(model_id)
        heads = {s: model.head(s).select(columns).to(dev) for s in subjects}  # only the selected vertices
        core = fold_batchnorm(model.core) if fold_bn else model.core
        core = core.to(dev).eval()
        if precision != "fp32":
            core = core.to(memory_format=torch.channels_last)
        del model
        return EncodingModel(model_id, weights, info, subjects, columns, roi_sets, dev, precision, batch_size,
                             core, heads, fingerprint=self.store.fingerprint(model_id), precision_choice=choice)

    # -- encode -----------------------------------------------------------------------------------
    def encode(self, model: EncodingModel, stimulus: np.ndarray, return_metadata: bool = False,
               show_progress: bool = False, *, reduce: str | None = None):
        """In silico responses ``{"NaturalScenesDataset": {"sub-01": float32 (N, V)}}``.

        ``reduce="roi_mean"`` returns (N, R) ROI means instead (columns ``model.roi_names``), computed
        through the exact readout collapse: R×C×676 MACs per image instead of V×C×676.
        """
        if not isinstance(model, EncodingModel):
            raise InvalidParameterError(f"model must come from BERG.get_encoding_model; got {type(model).__name__}")
        check_choice("reduce", reduce, REDUCTIONS)
        stimulus = check_stimulus(stimulus, stacklevel=3)
        from screening.preprocess import preprocess_batch_array

        n = stimulus.shape[0]
        width = len(model.roi_sets) if reduce else model.columns.size
        out = {s: np.empty((n, width), dtype=np.float32) for s in model.subjects}
        bar = _progress(n, show_progress, "encode")
        for lo in range(0, n, model.batch_size):
            # values were range-checked above, so this per-batch conversion of wider ints is lossless
            batch = preprocess_batch_array(stimulus[lo:lo + model.batch_size].astype(np.uint8, copy=False))
            if reduce:
                res = model.roi_encoder()(torch.from_numpy(batch).to(model.device)).cpu().numpy()
                for i, s in enumerate(model.subjects):
                    out[s][lo:lo + len(batch)] = res[:, i]
            else:
                feats = model.features(batch)
                for s in model.subjects:
                    out[s][lo:lo + len(batch)] = model.vertices(feats, s).cpu().numpy()
            bar.update(len(batch))
        bar.close()
        responses = {model.weights.dataset: out}
        if return_metadata:
            metas = {s: self.store.metadata(model.model_id, s) for s in model.subjects}
            return responses, (metas[model.subjects[0]] if len(metas) == 1 else metas)
        return responses


def _describe(w: EncoderWeights) -> dict[str, Any]:
    """BERG's describe() dictionary for one CNN8 model, from what the engine knows of it."""
    # long: one literal in the shape BERG's describe() returns; splitting it would scatter that shape
    areas = [n for n in roi_lib.default_roi_names(w.variant) if not n.startswith("group_")]
    groups = sorted(int(g[-2:]) for g in roi_lib.group_columns(w.variant))
    cortex = "visual cortex (Glasser groups 1-5)" if w.variant == "visual" else "cortex (Glasser groups 1-22)"
    description = (
        f"A brain-optimised 8-layer CNN (MOSAIC CNN8, width {w.width}) with one factorised linear readout per "
        f"Natural Scenes Dataset subject, predicting fMRI responses of {w.n_vertices:,} fsLR32k vertices of {cortex} "
        f"for 8 NSD subjects. Input: centre crop to square, resize to {w.input_size}x{w.input_size} "
        f"({w.interpolation}), ImageNet normalisation. Vertices are a subset of the 91,282 HCP grayordinates: "
        "expand with metadata['encoding_models']['vertex_mapping_all'] (screening.atlas.expand_to_91k).")
    g = "get_encoding_model"
    parameters = {
        "subject": {"type": "int, list[int], or str", "required": True, "function": g, "example": 1,
                    "valid_values": list(range(1, 9)) + ["all"],
                    "description": "NSD subject(s): 1..8 (also '01', 'sub-01', 'sub01', 'subj01', 's1'), a list or "
                                   "comma-separated string of those, or 'all'."},
        "selection": {"type": "dict", "required": False, "function": g,
                      "description": "Outputs to include; roi, glasser_group and voxel_index are unioned, columns in "
                                     "ascending grayordinate order. Default: every vertex.",
                      "properties": {
                          "roi": {"type": "list[str]", "valid_values": areas, "example": ["L_FFC", "R_FFC"],
                                  "description": "MMP1.0 areas (L_/R_ prefixed), bilateral names (FFC) or group_NN."},
                          "glasser_group": {"type": "int, list[int]", "valid_values": groups, "example": groups[0],
                                            "description": "Glasser group(s)."},
                          "voxel_index": {"type": "numpy.ndarray", "example": "[0, 0, ..., 1, 1, 0]",
                                          "description": f"0/1 vector of length {w.n_vertices:,} over the model's "
                                                         "vertices (not the 91k grayordinates)."}}},
        "device": {"type": "str", "required": False, "function": g, "default": "auto", "valid_values": list(DEVICES),
                   "description": "'auto' uses CUDA when torch sees it, else the CPU."},
        "precision": {"type": "str", "required": False, "function": g, "default": "fp32",
                      "valid_values": list(PRECISION_CHOICES),
                      "description": "fp32 reproduces the published maths; bf16 and fp16 (CUDA only) "
                                     "run the core under autocast; auto picks the fastest on the device."},
        "batch_size": {"type": "int", "required": False, "function": g, "default": None,
                       "description": "Images per forward; default 2 on CPU, from free memory on CUDA."},
        "fold_bn": {"type": "bool", "required": False, "function": g, "default": True,
                    "description": "Fold BatchNorm into the convolutions (same fp32 numbers within rounding)."},
        "stimulus": {"type": "numpy.ndarray", "required": True, "function": "encode",
                     "example": "An array of shape [100, 3, 224, 224] of integers in 0..255",
                     "description": "RGB images (N, 3, H, W), H == W, integer values 0..255; nothing is cast."},
        "return_metadata": {"type": "bool", "required": False, "function": "encode", "default": False,
                            "description": "Also return the subjects' metadata."},
        "show_progress": {"type": "bool", "required": False, "function": "encode", "default": False,
                          "description": "tqdm progress bar on stderr."},
        "reduce": {"type": "str", "required": False, "function": "encode", "default": None,
                   "valid_values": [r for r in REDUCTIONS if r],
                   "description": "'roi_mean': (N, R) means of the selection's ROIs (exact readout collapse)."},
    }
    by_function: dict[str, dict] = {}
    for name, p in parameters.items():
        by_function.setdefault(p["function"], {})[name] = p
    example = textwrap.dedent(f"""\
        from screening import BERG

        berg = BERG("path/or/s3://brain-encoding-response-generator")
        model = berg.get_encoding_model("{w.model_id}", subject=1, selection={{"roi": ["L_FFC", "R_FFC"]}})
        responses = berg.encode(model, stimulus)  # {{"{w.dataset}": {{"sub-01": (N, V)}}}}""")
    return {
        "model_id": w.model_id,
        "model_info": dict(_CATALOG),
        "description": description,
        "input": {"type": "numpy.ndarray", "shape": ["batch_size", 3, "height", "width"],
                  "description": "A batch of RGB images.",
                  "constraints": ["Integer values in 0..255 (floats are refused, not cast).",
                                  "Square images (height == width).",
                                  f"{w.input_size}x{w.input_size} or larger (smaller ones warn and are upsampled)."]},
        "output": {"type": "dict", "shape": f"{{'{w.dataset}': {{'sub-01': [batch_size, n_vertices], ...}}}}",
                   "description": f"{{'{w.dataset}': {{'sub-0N': float32 array}}}} for each subject asked for.",
                   "dimensions": [{"name": "batch_size", "description": "Number of stimuli."},
                                  {"name": "n_vertices", "description": f"Selected vertices (up to {w.n_vertices:,})."}]},
        "parameters": parameters,
        "parameters_by_function": by_function,
        "performance": {"accuracy_plots": [f"brain-encoding-response-generator/{w.store_dir}/encoding_models_accuracy"]},
        "example_usage": example,
    }


def _print_description(info: dict, references: list[str]) -> None:
    print("=" * 80)
    print(f"Model: {info['model_id']}")
    print("=" * 80)
    for key, value in info["model_info"].items():
        print(f"{key.replace('_', ' ').capitalize()}: {value}")
    print("\nDescription:")
    print(textwrap.fill(info["description"], width=80))
    for title, part in (("Input", info["input"]), ("Output", info["output"])):
        print(f"\n{title}:\n  Type: {part['type']}\n  Shape: {part['shape']}\n  Description: {part['description']}")
        for c in part.get("constraints", []):
            print(f"    • {c}")
        for d in part.get("dimensions", []):
            print(f"    • {d['name']}: {d['description']}")
    for func, params in info["parameters_by_function"].items():
        print(f"\nParameters for {func}():")
        for name, p in params.items():
            req = "required" if p.get("required") else f"optional, default={p.get('default')!r}"
            print(f"\n• {name} ({p['type']}, {req})")
            print(textwrap.fill(f"  ↳ {p['description']}", width=80, subsequent_indent="    "))
            valid = p.get("valid_values")
            if valid:
                shown = ", ".join(map(str, valid[:12])) + (f", ... ({len(valid)} in all)" if len(valid) > 12 else "")
                print(f"  ↳ Valid values: {shown}")
            for sub, sp in p.get("properties", {}).items():
                print(textwrap.fill(f"    • {sub} ({sp['type']}): {sp['description']}", width=80,
                                    subsequent_indent="        "))
    print(f"\nPerformance plots at: {info['performance']['accuracy_plots'][0]}")
    print("\nReferences:")
    for ref in references:
        print(f"    • {ref}")
    print("\nExample usage:\n")
    print(info["example_usage"])
    print("=" * 80)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", file=sys.stderr)


def resolve_selection(selection: Mapping | None, variant: str, n_vertices: int,
                      subjects=("sub-01",)) -> tuple[np.ndarray, dict]:
    """BERG selection → (selected columns ascending, ROI name → columns for ``reduce="roi_mean"``; a parcellation's
    labels: name → subject → columns)."""
    if selection is None:
        return np.arange(n_vertices), roi_lib.build_roi_set(variant)
    if not isinstance(selection, Mapping):
        raise InvalidParameterError(f"selection must be a dict with keys {', '.join(SELECTION_KEYS)}; "
                                    f"got {type(selection).__name__}")
    unknown = sorted(set(selection) - set(SELECTION_KEYS))
    if unknown:
        raise InvalidParameterError(f"selection has unknown keys {unknown}; valid keys: {', '.join(SELECTION_KEYS)}")
    parts: dict[str, np.ndarray] = {}
    roi = selection.get("roi")
    if roi is not None:
        names = [roi] if isinstance(roi, str) else list(roi)
        if not names:
            raise InvalidParameterError("selection['roi'] is an empty list; give ROI names like 'L_V1'")
        for name in names:
            parts[name] = roi_lib.resolve_roi(name, variant)
    groups = selection.get("glasser_group")
    if groups is not None:
        glist = [groups] if (is_int(groups) or isinstance(groups, bool)) else list(groups)
        present = roi_lib.group_columns(variant)
        for g in glist:
            if not is_int(g) or atlas.group_column(g) not in present:
                valid = ", ".join(str(int(k[-2:])) for k in sorted(present))
                raise InvalidParameterError(f"glasser_group {g!r} is not valid for variant {variant!r}; "
                                            f"valid groups: {valid}")
            parts[atlas.group_column(g)] = present[atlas.group_column(g)]
    vi = selection.get("voxel_index")
    if vi is not None:
        parts["voxel_index"] = _check_voxel_index(vi, n_vertices)
    if selection.get("parcellation") is not None:
        parts = _parcellation(selection["parcellation"], variant, subjects, parts)
    if not parts:
        raise InvalidParameterError("selection selects nothing: give at least one of roi, glasser_group, voxel_index, "
                                    "parcellation")
    columns = np.unique(np.concatenate([c for v in parts.values() for c in (v.values() if isinstance(v, Mapping)
                                                                             else [v])]))
    return columns, parts


def _parcellation(spec, variant: str, subjects, parts: Mapping) -> dict:
    """``selection["parcellation"]``: a path (or ``{"file": path, "prefix": str}``) of a parcellation of the user's
    own (:mod:`screening.parcellation`); each label is a per-subject ROI."""
    from screening.parcellation import add_columns, load_parcellation

    if isinstance(spec, Mapping) and set(spec) <= {"file", "prefix"} and "file" in spec:
        path, prefix = spec["file"], spec.get("prefix")
    elif isinstance(spec, (str, os.PathLike)):
        path, prefix = spec, None
    else:
        raise InvalidParameterError(f"selection['parcellation'] must be a path or {{'file': path, 'prefix': str}}; "
                                    f"got {spec!r}")
    labels = load_parcellation(path, subjects, prefix=prefix).roi_columns(variant, subjects)
    return add_columns(dict(parts), labels, "selection['parcellation'] a prefix ({'file': ..., 'prefix': ...})")


def _check_voxel_index(vi, n_vertices: int) -> np.ndarray:
    arr = np.asarray(vi)
    if arr.ndim != 1 or arr.shape[0] != n_vertices:
        raise InvalidParameterError(f"selection['voxel_index'] must be a 0/1 vector of length {n_vertices} "
                                    f"(the model's vertices); got shape {arr.shape}")
    if arr.dtype.kind not in "biu" or not np.isin(arr, (0, 1)).all():
        bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5] if arr.dtype.kind in "biuf" else arr.dtype
        raise InvalidParameterError(f"selection['voxel_index'] must hold only 0 and 1; found {bad}")
    cols = np.flatnonzero(arr)
    if cols.size == 0:
        raise InvalidParameterError("selection['voxel_index'] selects no vertex (all zeros)")
    return cols
