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

from screening.hardware import PRECISIONS, check_precision
from screening.exceptions import InvalidParameterError
from screening.models.registry import (DEFAULT_MODEL_ID, IMAGENET_MEAN, IMAGENET_STD, PUBLISHED, SPATIAL, SUBJECTS,
                                       CheckpointInfo, EncoderWeights, head_key, validate_state_dict,
                                       weights_for_model)
from screening.models.core import CNN8Core
from screening.models.readout import FactorizedReadout

_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Peak activation memory per 224×224 image: block1/block2 outputs are C×222×222, ~3 live at once.
_ACTIVATION_BYTES_PER_IMAGE = 3 * 384 * 222 * 222
# Bytes per C×222×222 element live at the peak of one CPU forward: block1's fp32 output, two of block2's (measured at
# width 384: 0.21 GiB per image in fp32, 0.14 in bf16; benchmarks/README.md, "Forward chunk").
_CPU_ACTIVATION_BYTES = {"fp32": 12, "bf16": 8, "fp16": 8}

# Images per CPU forward. 1 to 16 run at the same speed within ~10% (Xeon with AMX, and the same Xeon with oneDNN
# capped to AVX2, fp32 and bf16) while activations grow linearly, so a CPU forward stays small.
CPU_BATCH_SIZE = 2


def activation_bytes_per_image(width: int, precision: str) -> int:
    """Peak activation bytes one image adds to a CPU forward (``_CPU_ACTIVATION_BYTES``)."""
    return _CPU_ACTIVATION_BYTES.get(precision, 12) * width * 222 * 222


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


ROI_ROWS_PER_STEP = 512   # ROI rows built at once (up to 512 x C·P floats: 0.5 GB at width 384): every ROI of a subject in one pass over the output, which a memory-mapped cache file needs (each pass re-faults its pages: 39 s -> 20 s)


def collapse_vertices(features: torch.Tensor, spatial_hat: torch.Tensor, bias: torch.Tensor,
                      vertex_sets: Sequence[np.ndarray], out: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact vertex-mean weights from head tensors (V, C), (V, P) normalised, (V,).

    Returns W (R, C·P) and b (R,) with ``mean_{o∈set_r} y[:, o] == x.flatten(1) @ W[r] + b[r]``. W is the
    transposed view of a (C·P, R) buffer: ``out`` when given (e.g. a column block of a memory-mapped matrix), written
    a few ROI rows at a time, so no second (R, C·P) copy is ever held.

    Overlapping sets (areas, the groups made of them, bilateral unions) share work: vertices are split
    into atoms (same set membership), Σ_o F[o]⊗Ŝ[o] is computed once per atom (V·C·P MACs in all), and
    each set sums its atoms.
    """
    f = features.detach().float()
    s = spatial_hat.detach().float().flatten(1)   # a view for a float32 head: no copy
    n_v, n_r = f.shape[0], len(vertex_sets)
    member = np.zeros((n_v, n_r), dtype=bool)
    for r, idx in enumerate(vertex_sets):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            raise InvalidParameterError(f"ROI #{r} has no vertices in this model; cannot take its mean")
        member[idx, r] = True
    used = np.flatnonzero(member.any(1))
    packed = np.ascontiguousarray(np.packbits(member[used], axis=1))
    # rows as one opaque value each: np.unique(axis=0) sorts them lexicographically, ~30x slower
    atoms, inverse = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(), return_inverse=True)
    atoms = atoms.view(np.uint8).reshape(-1, packed.shape[1])
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(atoms) + 1))
    atom_sets = np.unpackbits(atoms, axis=1, count=n_r).astype(bool)  # (A, R)
    with torch.no_grad():
        perm = torch.as_tensor(used[order], device=f.device)
        atom_sums = torch.empty(len(atoms), f.shape[1], s.shape[1], dtype=torch.float32, device=f.device)
        for a in range(len(atoms)):   # one atom's rows gathered at a time: no sorted copy of the whole head
            rows = perm[int(bounds[a]):int(bounds[a + 1])]
            # index_select, not f[rows]: advanced indexing is ~100x slower here (4.7 s vs 0.05 s a subject)
            torch.matmul(torch.index_select(f, 0, rows).T, torch.index_select(s, 0, rows), out=atom_sums[a])
        del f, s
        atom_sums = atom_sums.flatten(1)
        if out is None:
            out = torch.empty(atom_sums.shape[1], n_r, dtype=torch.float32, device=atom_sums.device)
        _check_out(out, atom_sums.shape[1], n_r, contiguous=False)
        b = torch.empty(n_r, dtype=torch.float32, device=atom_sums.device)
        bias = bias.detach().float()
        for lo in range(0, n_r, ROI_ROWS_PER_STEP):
            hi = min(n_r, lo + ROI_ROWS_PER_STEP)
            rows = torch.empty(hi - lo, atom_sums.shape[1], dtype=torch.float32, device=atom_sums.device)
            for r in range(lo, hi):
                idx = vertex_sets[r]
                parts = torch.as_tensor(np.flatnonzero(atom_sets[:, r]), device=atom_sums.device)
                # a (1, k) @ (k, C·P) product: torch's column-sum kernel is ~50x slower here
                coef = torch.full((1, parts.numel()), 1.0 / len(idx), device=atom_sums.device)
                torch.mm(coef, torch.index_select(atom_sums, 0, parts), out=rows[r - lo:r - lo + 1])
                b[r] = bias[torch.as_tensor(np.asarray(idx, dtype=np.int64), device=atom_sums.device)].mean()
            out[:, lo:hi].copy_(rows.T)
    return out.T, b


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
                   cache_dir=None, release_heads: bool = False) -> "RoiEncoder":
        """Collapse ``model``'s heads to ``rois`` for ``subjects``; the full heads are not kept (with
        ``release_heads`` they are dropped from ``model`` too, one by one as they are collapsed: a lower peak).

        With ``cache_key`` (``collapsed.collapse_key``) on CPU, the collapsed matrix comes from the node-local
        cache (``screening.models.collapsed``), memory-mapped and shared with every process that maps it; it is
        built there once when absent. ``collapse_source`` says which: "hit", "built", "memory" or "collapsed".
        """
        from screening.models.fast import fold_batchnorm

        check_precision(precision, torch.device(device).type)
        source = "collapsed"
        if cache_key is not None and torch.device(device).type == "cpu":
            from screening.models.collapsed import load_or_build

            shape = collapsed_shape(model, subjects, rois)
            w_t, b, source = load_or_build(
                cache_key, shape,
                lambda out: collapse_heads(model, subjects, rois, out=out, release_heads=release_heads)[1],
                cache_dir=cache_dir)
            w = w_t.T
        else:
            w, b = collapse_heads(model, subjects, rois, device=device, release_heads=release_heads)
        core = fold_batchnorm(model.core) if fold_bn else model.core
        enc = cls(core, w, b, subjects, list(rois), precision, model.weights).to(device).eval()
        enc.collapse_source = source
        return enc

    @property
    def input_size(self) -> int:
        """Side of the square uint8 RGB images the encoder takes, from the weights record."""
        return self.weights.input_size

    @torch.inference_mode()
    def forward(self, images_u8: torch.Tensor, *, with_features: bool = False):
        """(N, S, R) ROI means; with ``with_features`` also (N, C): the core output's spatial mean (fp32), the
        image embedding the pipeline keeps."""
        if tuple(images_u8.shape[1:]) != self.weights.input_shape:
            raise InvalidParameterError(
                f"images must have shape (N, {', '.join(map(str, self.weights.input_shape))}) (input_size "
                f"{self.input_size} of {self.weights.model_id}); got {tuple(images_u8.shape)}")
        x = self.normalize(images_u8)
        feats = core_features(self.core, x, self.precision).float()
        out = torch.addmm(self.roi_bias, feats.flatten(1), self.roi_weights_t)
        out = out.view(x.shape[0], len(self.subjects), len(self.roi_names))
        return (out, feats.mean(dim=(2, 3))) if with_features else out

    @torch.inference_mode()
    def encode_with_core(self, images_u8: np.ndarray):
        """``(ROI means (N, S, R), core output (N, C, H, W) float32)`` of uint8 host images: the full readout of
        the vertices (``vertex_stats``) starts from the core output the ROI means were computed from."""
        x = torch.from_numpy(np.ascontiguousarray(images_u8)).to(self.roi_bias.device)
        feats = core_features(self.core, self.normalize(x), self.precision).float()
        out = torch.addmm(self.roi_bias, feats.flatten(1), self.roi_weights_t)
        return out.view(x.shape[0], len(self.subjects), len(self.roi_names)), feats

    def encode_numpy(self, images_u8: np.ndarray, *, with_features: bool = False):
        """uint8 (N,3,224,224) host array → float32 (N, S, R) host array (and (N, C) features, as ``forward``).

        On CUDA the batch goes through pinned host memory with a non-blocking copy.
        """
        x = torch.from_numpy(np.ascontiguousarray(images_u8))
        device = self.roi_bias.device
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        if with_features:
            out, feats = self(x, with_features=True)
            return out.cpu().numpy(), feats.cpu().numpy()
        return self(x).cpu().numpy()

    def compile(self, **kwargs) -> "RoiEncoder":
        """``torch.compile`` the core in place (optional: compile time dominates small runs)."""
        self.core = torch.compile(self.core, **kwargs)
        return self


def collapsed_shape(model: CNN8Multihead, subjects: Sequence[str], rois: Mapping) -> tuple[int, int]:
    """(C·P, S·R): the collapsed matrix as ``RoiEncoder`` holds it (``roi_weights_t``) and the node cache stores it."""
    return model.core.width * SPATIAL * SPATIAL, len(subjects) * len(rois)


def collapse_heads(heads: CNN8Multihead | Mapping[str, FactorizedReadout], subjects: Sequence[str],
                   rois: Mapping[str, np.ndarray | Mapping[str, np.ndarray]],
                   device: str | torch.device = "cpu", out: torch.Tensor | None = None, *,
                   release_heads: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack every subject's collapsed ROI weights: rows ordered subject-major, then ROI.

    ``heads`` is a model or a mapping subject → head (e.g. heads cut to a selection, ``FactorizedReadout.select``).
    ``rois`` maps a name to vertex indices of those heads, shared by all subjects, or to a per-subject mapping
    (reliability-filtered ROIs differ between subjects).

    Returns W (S·R, C·P) as the transposed view of one (C·P, S·R) buffer (``out`` when given, e.g. a
    memory-mapped file), the layout ``RoiEncoder`` multiplies with, so it takes W without a copy. Subjects are
    collapsed one at a time straight into it: the peak is the result plus one subject's working set. With
    ``release_heads`` (a model only) each subject's head is dropped from the model once collapsed, so the full heads
    (1.9 GB for the published model) and the result (2.9 GiB) are never all held at once.
    """
    n_r = len(rois)
    bs = []
    for i, s in enumerate(subjects):
        sets = [v[s] if isinstance(v, Mapping) else v for v in rois.values()]
        h = heads.head(s) if isinstance(heads, CNN8Multihead) else heads[s]
        with torch.no_grad():  # on the encoder's device: a GPU collapses 8 heads in about a second
            features, spatial = h._features.to(device), h.normalized_spatial(device=device)
            if out is None:
                out = torch.empty(features.shape[1] * spatial[0].numel(), len(subjects) * n_r, dtype=torch.float32,
                                  device=features.device)
            _check_out(out, features.shape[1] * spatial[0].numel(), len(subjects) * n_r)
            _, b = collapse_vertices(features, spatial, h.bias.to(device), sets, out=out[:, i * n_r:(i + 1) * n_r])
        if release_heads and isinstance(heads, CNN8Multihead):
            from screening.models.pages import release_file_pages

            del heads.subject_readouts[head_key(s)]
            release_file_pages([h._features, h.spatial, h.bias])
        del h, features, spatial
        bs.append(b)
    return out.T, torch.cat(bs)


def _check_out(out: torch.Tensor, rows: int, cols: int, contiguous: bool = True) -> None:
    if (tuple(out.shape) != (rows, cols) or out.dtype != torch.float32
            or (contiguous and not out.is_contiguous())):
        raise InvalidParameterError(f"out must be a {'contiguous ' if contiguous else ''}float32 ({rows}, {cols}) "
                                    f"tensor (C·P, S·R); got {out.dtype} {tuple(out.shape)}")
