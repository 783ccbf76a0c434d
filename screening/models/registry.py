"""Published MOSAIC CNN8 weights: the registry of model ids and the strict checkpoint contract.

The published file is a plain ``state_dict`` saved from ``nn.DataParallel``: 72 keys, all prefixed
``module.``. ``load_checkpoint`` reads it with ``weights_only=True`` and refuses anything that is not
key-for-key and shape-for-shape that contract.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, BinaryIO, Mapping

if TYPE_CHECKING:  # torch is imported where used: the registry is read by torch-free processes (ingest)
    import torch

from screening.exceptions import CheckpointError, ModelNotFoundError

SUBJECTS = tuple(f"sub-{i:02d}" for i in range(1, 9))
HEAD_SUFFIX = "_NSD"
PREFIX = "module."
N_BLOCKS = 8
SPATIAL = 26
PUBLISHED_WIDTH = 384
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BERG_MODEL_ROOT = "encoding_models/modality-fmri/train_dataset-mosaic"


@dataclass(frozen=True)
class EncoderWeights:
    """Everything the published weights dictate: where they live and how inputs must look."""

    model_id: str
    variant: str
    n_vertices: int
    folder: str
    filename: str
    url: str
    width: int = PUBLISHED_WIDTH
    input_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    interpolation: str = "bilinear"
    crop: str = "center-square"
    subjects: tuple = SUBJECTS
    dataset: str = "NaturalScenesDataset"
    license: str = "see the MOSAIC dataset terms"
    paper: str = "Lahner et al., 2025, bioRxiv 10.64898/2025.11.28.690060"
    extra: Mapping = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(3, input_size, input_size)``: one preprocessed image, what the encoders take (uint8, RGB)."""
        return (3, self.input_size, self.input_size)

    @property
    def store_dir(self) -> str:
        """Model folder relative to a BERG root."""
        return f"{BERG_MODEL_ROOT}/{self.folder}"

    @property
    def checkpoint_relpath(self) -> str:
        return f"{self.store_dir}/encoding_models_weights/{self.filename}"

    def metadata_relpath(self, subject: str) -> str:
        return f"{self.store_dir}/metadata/NSD/{subject}.npy"


_URL = "https://mosaicfmri.s3.amazonaws.com/brain_optimized_checkpoints/"
_ALL_FILE = "model-CNN8_framework-multihead_subjects-NSD_vertices-all.pth"
_VIS_FILE = "model-CNN8_framework-multihead_subjects-NSD_vertices-visual.pth"

PUBLISHED: dict[str, EncoderWeights] = {
    w.model_id: w
    for w in (
        EncoderWeights("fmri-mosaic-CNN8_multihead_subNSD_verticesAll", "all", 57_051,
                       "model-CNN8_multihead_subNSD_verticesAll", _ALL_FILE, _URL + _ALL_FILE),
        EncoderWeights("fmri-mosaic-CNN8_multihead_subNSD_verticesVisual", "visual", 7_831,
                       "model-CNN8_multihead_subNSD_verticesVisual", _VIS_FILE, _URL + _VIS_FILE),
    )
}
DEFAULT_MODEL_ID = "fmri-mosaic-CNN8_multihead_subNSD_verticesAll"


def get_weights(model_id: str) -> EncoderWeights:
    try:
        return PUBLISHED[model_id]
    except (KeyError, TypeError):
        raise ModelNotFoundError(
            f"Unknown model_id {model_id!r}; valid model ids: {', '.join(sorted(PUBLISHED))}") from None


def weights_for_variant(variant: str) -> EncoderWeights:
    for w in PUBLISHED.values():
        if w.variant == variant:
            return w
    raise ModelNotFoundError(f"Unknown variant {variant!r}; valid variants: all, visual")


def weights_for_model(n_vertices: int, width: int = PUBLISHED_WIDTH) -> EncoderWeights:
    """The published record with ``n_vertices`` heads; else (test models) the default record's input contract
    under the id ``"unregistered"``, so every model carries the record that says how its inputs look."""
    for w in PUBLISHED.values():
        if w.n_vertices == n_vertices:
            return w
    return replace(PUBLISHED[DEFAULT_MODEL_ID], model_id="unregistered", variant="unregistered",
                   n_vertices=n_vertices, width=width, url="")


def head_key(subject: str) -> str:
    return subject + HEAD_SUFFIX


def expected_shapes(width: int, n_vertices: int) -> dict[str, tuple]:
    """Key (without ``module.``) -> shape, for the published layout at a given width and vertex count."""
    shapes: dict[str, tuple] = {}
    for b in range(1, N_BLOCKS + 1):
        k = 5 if b <= 2 else 3
        cin = 3 if b == 1 else width
        shapes[f"core.block{b}.0.weight"] = (width, cin, k, k)
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"core.block{b}.1.{p}"] = (width,)
        shapes[f"core.block{b}.1.num_batches_tracked"] = ()
    for s in SUBJECTS:
        h = f"subject_readouts.{head_key(s)}"
        shapes[f"{h}._features"] = (n_vertices, width)
        shapes[f"{h}.spatial"] = (n_vertices, SPATIAL, SPATIAL)
        shapes[f"{h}.bias"] = (n_vertices,)
    return shapes


@dataclass(frozen=True)
class CheckpointInfo:
    width: int
    n_vertices: int

    @property
    def variant(self) -> str | None:
        return {w.n_vertices: w.variant for w in PUBLISHED.values()}.get(self.n_vertices)


def checkpoint_filter_fn(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """Strip the DataParallel ``module.`` prefix. Mixed prefixed/unprefixed keys are refused."""
    keys = list(state_dict)
    prefixed = [k for k in keys if isinstance(k, str) and k.startswith(PREFIX)]
    if prefixed and len(prefixed) != len(keys):
        bad = sorted(str(k) for k in keys if k not in set(prefixed))[:5]
        raise CheckpointError(f"checkpoint mixes '{PREFIX}'-prefixed and unprefixed keys, e.g. {bad}")
    return {(k[len(PREFIX):] if prefixed else k): v for k, v in state_dict.items()}


def validate_state_dict(sd: Mapping[str, torch.Tensor], expect_n_vertices: int | None = None,
                        expect_width: int | None = None) -> CheckpointInfo:
    """Check a (prefix-stripped) state_dict against the published layout; raise naming every problem."""
    try:
        width = int(sd["core.block2.0.weight"].shape[0])
        n_vertices = int(sd[f"subject_readouts.{head_key(SUBJECTS[0])}.bias"].shape[0])
    except (KeyError, AttributeError, IndexError):
        width = expect_width or PUBLISHED_WIDTH
        n_vertices = expect_n_vertices or 0
    if expect_n_vertices is not None:
        n_vertices = expect_n_vertices
    if expect_width is not None:
        width = expect_width
    want = expected_shapes(width, n_vertices)
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    import torch

    misshaped = []
    for k in sorted(set(want) & set(sd)):
        v = sd[k]
        if not isinstance(v, torch.Tensor):
            misshaped.append(f"{k}: not a tensor ({type(v).__name__})")
        elif tuple(v.shape) != want[k]:
            misshaped.append(f"{k}: expected {want[k]}, got {tuple(v.shape)}")
        elif v.dtype.is_floating_point != (not k.endswith("num_batches_tracked")):
            misshaped.append(f"{k}: unexpected dtype {v.dtype}")
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_clip(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_clip(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped ({len(misshaped)}): {_clip(misshaped)}")
    if problems:
        raise CheckpointError(
            f"checkpoint does not match the published CNN8 multihead layout (width {width}, "
            f"{n_vertices} vertices, {len(want)} keys with '{PREFIX}' prefix): " + "; ".join(problems))
    return CheckpointInfo(width=width, n_vertices=n_vertices)


def _clip(items: list[str], n: int = 8) -> str:
    more = f" ... and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_checkpoint(src: str | os.PathLike | bytes | BinaryIO, *, expect_n_vertices: int | None = None,
                    expect_width: int | None = None) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Load a published-format checkpoint safely (``weights_only=True``) and validate it strictly.

    Returns the prefix-stripped state_dict and what its shapes say (width, vertex count).
    """
    import torch

    f = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src
    try:
        sd = torch.load(f, map_location="cpu", weights_only=True, mmap=_can_mmap(f))
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint refused by the safe loader (weights_only=True): {e}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {src if isinstance(src, (str, os.PathLike)) else '<bytes>'} "
                              f"could not be read: {e}") from None
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"checkpoint must hold a state_dict (a mapping), got {type(sd).__name__}")
    sd = checkpoint_filter_fn(sd)
    info = validate_state_dict(sd, expect_n_vertices, expect_width)
    return sd, info


def _can_mmap(f) -> bool:
    return isinstance(f, (str, os.PathLike))


def save_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike | BinaryIO) -> None:
    """Write a state_dict in the published format (``module.``-prefixed plain dict)."""
    import torch

    torch.save({PREFIX + k: v.detach().contiguous() for k, v in state_dict.items()}, path)
