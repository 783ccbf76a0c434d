"""The BERG-compatible API for the MOSAIC CNN8 model: change one import and a BERG script runs.

    from screening import BERG          # was: from berg import BERG
    berg = BERG("path/or/s3://brain-encoding-response-generator")
    model = berg.get_encoding_model("fmri-mosaic-CNN8_multihead_subNSD_verticesAll", subject=1,
                                    selection={"roi": ["L_FFC", "R_FFC"]})
    responses = berg.encode(model, stimulus)              # {"NaturalScenesDataset": {"sub-01": (N, V)}}
    roi_means = berg.encode(model, stimulus, reduce="roi_mean")   # (N, R), columns model.roi_names

Unlike the reference: input is streamed in batches, only the selected vertices are computed, nothing is
cast silently, and ``show_progress`` shows progress.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from screening import atlas, rois as roi_lib
from screening._validation import (check_choice, check_device, check_positive_int, check_stimulus,
                                   check_subjects, _is_int)
from screening.exceptions import InvalidParameterError
from screening.models._weights import CheckpointInfo, EncoderWeights, get_weights
from screening.models.encoder import (PRECISIONS, Normalize, RoiEncoder, collapse_vertices, core_features,
                                      default_batch_size)
from screening.models.fast import fold_batchnorm

SELECTION_KEYS = ("roi", "glasser_group", "voxel_index")
REDUCTIONS = (None, "roi_mean")
_VERTEX_CHUNK = 4096


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
    heads: dict  # subject -> (features (Vs, C), spatial_hat (Vs, P), bias (Vs,)) on device
    fingerprint: dict = field(default_factory=dict)
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
            sets = [np.array([pos[c] for c in cols.tolist()]) for cols in self.roi_sets.values()]
            ws, bs = [], []
            for s in self.subjects:
                w, b = collapse_vertices(*self.heads[s], sets)
                ws.append(w)
                bs.append(b)
            self._roi_encoder = RoiEncoder(self.core, torch.cat(ws), torch.cat(bs), self.subjects,
                                           self.roi_names, self.precision).to(self.device).eval()
        return self._roi_encoder

    @torch.inference_mode()
    def features(self, images_u8: np.ndarray) -> torch.Tensor:
        x = Normalize().to(self.device)(torch.from_numpy(np.ascontiguousarray(images_u8)).to(self.device))
        return core_features(self.core, x, self.precision).float().flatten(2)  # (N, C, P)

    @torch.inference_mode()
    def vertices(self, feats: torch.Tensor, subject: str) -> torch.Tensor:
        """Selected-vertex responses (N, Vs), computed in vertex chunks so memory stays bounded."""
        f, s, b = self.heads[subject]
        out = torch.empty(feats.shape[0], f.shape[0], device=feats.device)
        for lo in range(0, f.shape[0], _VERTEX_CHUNK):
            hi = lo + _VERTEX_CHUNK
            pooled = torch.matmul(feats, s[lo:hi].T)  # (N, C, v)
            out[:, lo:hi] = torch.einsum("ncv,vc->nv", pooled, f[lo:hi]) + b[lo:hi]
        return out


class BERG:
    """Entry point, as in the BERG toolbox, for the MOSAIC CNN8 models.

    Parameters
    ----------
    berg_dir : str
        A BERG root: local directory, ``s3://bucket[/prefix]`` (e.g. ``s3://brain-encoding-response-generator``),
        or a direct https URL of a published checkpoint.
    endpoint_url, anonymous, cache_dir
        Passed to :func:`screening.store.open_store`.
    """

    def __init__(self, berg_dir: str, *, endpoint_url: str | None = None, anonymous: bool | None = None,
                 cache_dir: str | None = None):
        from screening.store import open_store

        self.berg_dir = berg_dir
        self.store = open_store(str(berg_dir), endpoint_url=endpoint_url, anonymous=anonymous, cache_dir=cache_dir)

    # -- metadata ---------------------------------------------------------------------------------
    def get_model_metadata(self, model_id: str, subject=1):
        """Metadata dict of one subject, or ``{"sub-0N": dict}`` for several."""
        get_weights(model_id)
        subjects = check_subjects(subject)
        metas = {s: self.store.metadata(model_id, s) for s in subjects}
        return metas[subjects[0]] if _single_subject(subject) else metas

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
            unioned, columns ascending in grayordinate order.
        device : {"cpu", "cuda", "auto"}
        precision : {"fp32", "bf16"}, default="fp32"
            fp32 reproduces the published maths; bf16 runs the core under autocast (see README for agreement).
        batch_size : int, optional
            Images per forward; default ``screening.models.encoder.default_batch_size`` (16 on CPU; on CUDA
            what fits in half the free memory, 32..512).
        fold_bn : bool, default=True
            Fold BatchNorm into the convolutions (same fp32 numbers within rounding, fewer kernels).
        """
        weights = get_weights(model_id)
        subjects = check_subjects(subject)
        dev = check_device(device)
        check_choice("precision", precision, PRECISIONS)
        batch_size = check_positive_int("batch_size", batch_size) or default_batch_size(dev, precision)
        model, info = self.store.load_model(model_id)
        columns, roi_sets = resolve_selection(selection, weights.variant, info.n_vertices)
        heads = {}
        idx = torch.as_tensor(columns)
        for s in subjects:
            h = model.head(s)
            with torch.no_grad():
                heads[s] = (h._features[idx].float().contiguous().to(dev),
                            h.normalized_spatial(idx).flatten(1).float().contiguous().to(dev),
                            h.bias[idx].float().to(dev))
        core = fold_batchnorm(model.core) if fold_bn else model.core
        core = core.to(dev).eval()
        if precision == "bf16":
            core = core.to(memory_format=torch.channels_last)
        del model
        return EncodingModel(model_id, weights, info, subjects, columns, roi_sets, dev, precision, batch_size,
                             core, heads, fingerprint=self.store.fingerprint(model_id))

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


def _single_subject(subject) -> bool:
    return _is_int(subject) or (isinstance(subject, str) and subject != "all")


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", file=sys.stderr)


def resolve_selection(selection: Mapping | None, variant: str, n_vertices: int) -> tuple[np.ndarray, dict]:
    """BERG selection → (selected columns ascending, ROI name → columns for ``reduce="roi_mean"``)."""
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
        glist = [groups] if (_is_int(groups) or isinstance(groups, bool)) else list(groups)
        present = roi_lib._group_columns(variant)
        for g in glist:
            if not _is_int(g) or atlas.group_column(g) not in present:
                valid = ", ".join(str(int(k[-2:])) for k in sorted(present))
                raise InvalidParameterError(f"glasser_group {g!r} is not valid for variant {variant!r}; "
                                            f"valid groups: {valid}")
            parts[atlas.group_column(g)] = present[atlas.group_column(g)]
    vi = selection.get("voxel_index")
    if vi is not None:
        parts["voxel_index"] = _check_voxel_index(vi, n_vertices)
    if not parts:
        raise InvalidParameterError("selection selects nothing: give at least one of roi, glasser_group, voxel_index")
    columns = np.unique(np.concatenate(list(parts.values())))
    return columns, parts


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
