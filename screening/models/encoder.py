"""Encoders = CNN8 core + readouts (the neuralpredictors core/readout/encoder split).

- ``CNN8Multihead``: the published model, all subject heads at full vertex resolution.
- ``collapse_heads``: any fixed vertex-mean of a head is affine in the core output, so it collapses
  exactly into one (R, C·H·W) matrix — ROI means cost R×C×H×W MACs instead of V×C×H×W.
- ``RoiEncoder``: a core plus every (subject, ROI) mean as one matmul. Takes uint8 images.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from screening._validation import PRECISIONS, check_precision
from screening.exceptions import InvalidParameterError
from screening.models._weights import (DEFAULT_MODEL_ID, IMAGENET_MEAN, IMAGENET_STD, PUBLISHED, SPATIAL, SUBJECTS,
                                       CheckpointInfo, EncoderWeights, head_key, validate_state_dict,
                                       weights_for_model)
from screening.models.core import CNN8Core
from screening.models.readout import FactorizedReadout

_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Peak activation memory per 224×224 image: block1/block2 outputs are C×222×222, ~3 live at once.
_ACTIVATION_BYTES_PER_IMAGE = 3 * 384 * 222 * 222


# Images per forward on a CPU: past 16, no gain on AMX cores, and activations grow.
CPU_BATCH_SIZE = 16


def default_batch_size(device: str | torch.device, precision: str = "bf16") -> int:
    """Images per forward: CPU_BATCH_SIZE on CPU; on CUDA as many as fit in ~half the free memory, rounded down
    to a power of two in [32, 512]."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    per_image = _ACTIVATION_BYTES_PER_IMAGE * (2 if precision in _HALF else 4)
    n = max(32, min(512, int(free * 0.5 // per_image)))
    return 1 << (n.bit_length() - 1)


def core_features(core: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """Core output for normalised input; ``bf16``/``fp16`` = autocast + channels_last from block2 on.

    block1 stays fp32: in bf16 the normalised pixels themselves would be rounded (~0.6 grey levels),
    which cost more agreement (min per-ROI r 0.9993 → 0.9996 with it in fp32) than its 0.6% of the FLOPs.
    """
    if precision not in _HALF:
        return core(x)
    if precision == "fp16" and x.device.type != "cuda":
        check_precision(precision, x.device.type)
    x = core.block1(x.contiguous(memory_format=torch.channels_last))
    with torch.autocast(x.device.type, dtype=_HALF[precision]):
        return core(x, start=1).float()


class Normalize(nn.Module):
    """uint8 (or 0..255 float) RGB → normalised float32, inside the model so pipelines ship uint8.

    The encoders build it from their weights record (:meth:`from_weights`); the defaults are the published
    records' ImageNet mean/std, for standalone use.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_weights(cls, weights: EncoderWeights) -> "Normalize":
        return cls(weights.mean, weights.std)

    def forward(self, x):
        return x.float() * self.scale - self.shift


def _check_record(weights: EncoderWeights, n_vertices: int) -> EncoderWeights:
    if weights.n_vertices != n_vertices:
        raise InvalidParameterError(f"weights record {weights.model_id!r} says {weights.n_vertices} vertices; "
                                    f"the model has {n_vertices}")
    return weights


class CNN8Multihead(nn.Module):
    """The published MOSAIC CNN8 multihead model; state_dict keys match the checkpoint without ``module.``.

    ``weights`` is the :class:`EncoderWeights` record the model was published with (default: the record with
    ``n_vertices`` heads); it says how inputs must look (``input_size``, ``mean``/``std``).
    """

    def __init__(self, n_vertices: int, width: int = 384, subjects: Sequence[str] = SUBJECTS,
                 weights: EncoderWeights | None = None):
        super().__init__()
        self.weights = _check_record(weights or weights_for_model(n_vertices, width), n_vertices)
        self.core = CNN8Core(width)
        self.subject_readouts = nn.ModuleDict(
            {head_key(s): FactorizedReadout(n_vertices, width, SPATIAL) for s in subjects})

    @property
    def input_size(self) -> int:
        """Side of the square RGB input, from the weights record (224 for the published models)."""
        return self.weights.input_size

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], info: CheckpointInfo | None = None,
                        weights: EncoderWeights | None = None) -> "CNN8Multihead":
        info = info or validate_state_dict(sd)
        with torch.device("meta"):
            model = cls(info.n_vertices, info.width, weights=weights)
        model.load_state_dict(sd, strict=True, assign=True)
        return model.eval()

    def head(self, subject: str) -> FactorizedReadout:
        try:
            return self.subject_readouts[head_key(subject)]
        except KeyError:
            raise InvalidParameterError(
                f"subject={subject!r} is not a head of this model; valid subjects: {', '.join(SUBJECTS)}") from None

    def forward(self, x: torch.Tensor, subject: str) -> torch.Tensor:
        """Normalised float input (N, 3, H, W) → vertex responses (N, V) for one subject."""
        return self.head(subject)(self.core(x))


def collapse_vertices(features: torch.Tensor, spatial_hat: torch.Tensor, bias: torch.Tensor,
                      vertex_sets: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact vertex-mean weights from head tensors (V, C), (V, P) normalised, (V,).

    Returns W (R, C·P) and b (R,) with ``mean_{o∈set_r} y[:, o] == x.flatten(1) @ W[r] + b[r]``.

    Overlapping sets (areas, the groups made of them, bilateral unions) share work: vertices are split
    into atoms (same set membership), Σ_o F[o]⊗Ŝ[o] is computed once per atom (V·C·P MACs in all), and
    each set sums its atoms.
    """
    f = features.detach().float()
    s = spatial_hat.detach().float().flatten(1)
    n_v, n_r = f.shape[0], len(vertex_sets)
    member = np.zeros((n_v, n_r), dtype=bool)
    for r, idx in enumerate(vertex_sets):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            raise InvalidParameterError(f"ROI #{r} has no vertices in this model; cannot take its mean")
        member[idx, r] = True
    used = np.flatnonzero(member.any(1))
    atoms, inverse = np.unique(np.packbits(member[used], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(atoms) + 1))
    atom_sets = np.unpackbits(atoms, axis=1, count=n_r).astype(bool)  # (A, R)
    with torch.no_grad():
        perm = torch.as_tensor(used[order], device=f.device)
        f_sorted, s_sorted = f[perm], s[perm]  # one gather; each atom is then a contiguous slice
        atom_sums = torch.empty(len(atoms), f.shape[1], s.shape[1], dtype=torch.float32, device=f.device)
        for a in range(len(atoms)):
            lo, hi = int(bounds[a]), int(bounds[a + 1])
            torch.matmul(f_sorted[lo:hi].T, s_sorted[lo:hi], out=atom_sums[a])
        atom_sums = atom_sums.flatten(1)
        w = torch.empty(n_r, atom_sums.shape[1], dtype=torch.float32, device=f.device)
        b = torch.empty(n_r, dtype=torch.float32, device=f.device)
        bias = bias.detach().float()
        for r, idx in enumerate(vertex_sets):
            parts = torch.as_tensor(np.flatnonzero(atom_sets[:, r]), device=f.device)
            # a (1, k) @ (k, C·P) product: torch's column-sum kernel is ~50x slower here
            coef = torch.full((1, parts.numel()), 1.0 / len(idx), device=f.device)
            torch.mm(coef, atom_sums[parts], out=w[r:r + 1])
            b[r] = bias[torch.as_tensor(np.asarray(idx, dtype=np.int64), device=f.device)].mean()
    return w, b


class RoiEncoder(nn.Module):
    """Core + all (subject, ROI) means as one matmul; uint8 (N,3,224,224) → float32 (N, S, R).

    Parameters
    ----------
    core : CNN8Core
    roi_weights : torch.Tensor (S·R, C·H·W) and roi_bias (S·R,), from ``collapse_heads``.
    subjects, roi_names : labels of the output axes.
    precision : {"fp32", "bf16", "fp16"}
        ``bf16``/``fp16`` run the core under bf16/float16 autocast with channels_last; the ROI matmul stays fp32.
        ``fp16`` is CUDA only (refused on other devices).
    weights : EncoderWeights, optional
        The record of the weights (default: the default published model's); its ``mean``/``std`` normalise the
        input and its ``input_size`` is the image side the encoder takes.
    """

    def __init__(self, core: nn.Module, roi_weights: torch.Tensor, roi_bias: torch.Tensor,
                 subjects: Sequence[str], roi_names: Sequence[str], precision: str = "fp32",
                 weights: EncoderWeights | None = None):
        super().__init__()
        if precision not in PRECISIONS:
            raise InvalidParameterError(f"precision={precision!r} is not valid; valid precisions: {', '.join(PRECISIONS)}")
        self.weights = weights or PUBLISHED[DEFAULT_MODEL_ID]
        self.normalize = Normalize.from_weights(self.weights)
        self.core = core
        self.register_buffer("roi_weights_t", roi_weights.T.contiguous())
        self.register_buffer("roi_bias", roi_bias)
        self.subjects = tuple(subjects)
        self.roi_names = tuple(roi_names)
        self.precision = precision
        if precision in _HALF:
            self.core = self.core.to(memory_format=torch.channels_last)

    @classmethod
    def from_model(cls, model: CNN8Multihead, subjects: Sequence[str],
                   rois: Mapping[str, np.ndarray | Mapping[str, np.ndarray]], *, precision: str = "fp32",
                   fold_bn: bool = True, device: str | torch.device = "cpu", cache_key: str | None = None,
                   cache_dir=None) -> "RoiEncoder":
        """Collapse ``model``'s heads to ``rois`` for ``subjects``; the full heads are not kept.

        With ``cache_key`` (``collapsed.collapse_key``) on CPU, the collapsed matrix comes from the node-local
        cache (``screening.models.collapsed``), memory-mapped and shared with every process that maps it; it is
        built there once when absent. ``collapse_source`` says which: "hit", "built", "memory" or "collapsed".
        """
        from screening.models.fast import fold_batchnorm

        check_precision(precision, torch.device(device).type)
        source = "collapsed"
        if cache_key is not None and torch.device(device).type == "cpu":
            from screening.models.collapsed import load_or_build

            shape = (model.core.width * SPATIAL * SPATIAL, len(subjects) * len(rois))
            w_t, b, source = load_or_build(
                cache_key, shape, lambda out: collapse_heads(model, subjects, rois, out=out)[1], cache_dir=cache_dir)
            w = w_t.T
        else:
            w, b = collapse_heads(model, subjects, rois, device=device)
        core = fold_batchnorm(model.core) if fold_bn else model.core
        enc = cls(core, w, b, subjects, list(rois), precision, model.weights).to(device).eval()
        enc.collapse_source = source
        return enc

    @property
    def input_size(self) -> int:
        """Side of the square uint8 RGB images the encoder takes, from the weights record."""
        return self.weights.input_size

    @torch.inference_mode()
    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        if tuple(images_u8.shape[1:]) != self.weights.input_shape:
            raise InvalidParameterError(
                f"images must have shape (N, {', '.join(map(str, self.weights.input_shape))}) (input_size "
                f"{self.input_size} of {self.weights.model_id}); got {tuple(images_u8.shape)}")
        x = self.normalize(images_u8)
        feats = core_features(self.core, x, self.precision)
        out = torch.addmm(self.roi_bias, feats.float().flatten(1), self.roi_weights_t)
        return out.view(x.shape[0], len(self.subjects), len(self.roi_names))

    def encode_numpy(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 (N,3,224,224) host array → float32 (N, S, R) host array.

        On CUDA the batch goes through pinned host memory with a non-blocking copy.
        """
        x = torch.from_numpy(np.ascontiguousarray(images_u8))
        device = self.roi_bias.device
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        return self(x).cpu().numpy()

    def compile(self, **kwargs) -> "RoiEncoder":
        """``torch.compile`` the core in place (optional: compile time dominates small runs)."""
        self.core = torch.compile(self.core, **kwargs)
        return self


def collapse_heads(heads: CNN8Multihead | Mapping[str, FactorizedReadout], subjects: Sequence[str],
                   rois: Mapping[str, np.ndarray | Mapping[str, np.ndarray]],
                   device: str | torch.device = "cpu", out: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack every subject's collapsed ROI weights: rows ordered subject-major, then ROI.

    ``heads`` is a model or a mapping subject → head (e.g. heads cut to a selection, ``FactorizedReadout.select``).
    ``rois`` maps a name to vertex indices of those heads, shared by all subjects, or to a per-subject mapping
    (reliability-filtered ROIs differ between subjects).

    Returns W (S·R, C·P) as the transposed view of one (C·P, S·R) buffer (``out`` when given, e.g. a
    memory-mapped file), the layout ``RoiEncoder`` multiplies with, so it takes W without a copy. Subjects are
    collapsed one at a time into it: the peak is the result plus one subject's share, not 2-3x the result.
    """
    n_r = len(rois)
    bs = []
    for i, s in enumerate(subjects):
        sets = [v[s] if isinstance(v, Mapping) else v for v in rois.values()]
        h = heads.head(s) if isinstance(heads, CNN8Multihead) else heads[s]
        with torch.no_grad():  # on the encoder's device: a GPU collapses 8 heads in about a second
            w, b = collapse_vertices(h._features.to(device), h.normalized_spatial(device=device), h.bias.to(device),
                                     sets)
            if out is None:
                out = torch.empty(w.shape[1], len(subjects) * n_r, dtype=torch.float32, device=w.device)
            _check_out(out, w.shape[1], len(subjects) * n_r)
            out[:, i * n_r:(i + 1) * n_r].copy_(w.T)
        del w
        bs.append(b)
    return out.T, torch.cat(bs)


def _check_out(out: torch.Tensor, rows: int, cols: int) -> None:
    if tuple(out.shape) != (rows, cols) or out.dtype != torch.float32 or not out.is_contiguous():
        raise InvalidParameterError(f"out must be a contiguous float32 ({rows}, {cols}) tensor (C·P, S·R); got "
                                    f"{out.dtype} {tuple(out.shape)}")
