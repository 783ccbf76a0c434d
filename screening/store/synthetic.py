"""``screening make-store``: a complete BERG-layout model store with SYNTHETIC (random) weights.

The published MOSAIC weights cannot be reached from build machines, so tests, the demo and benchmarks
run on a store that is byte-for-byte the published *format* — the checkpoint via
:func:`screening.models.registry.save_checkpoint` (72 ``module.``-prefixed keys, fp32,
``num_batches_tracked`` int64 scalars) and eight ``np.save``-pickled metadata dicts with the real atlas —
but whose numbers are random. Every metadata dict says so (``synthetic: True`` and a ``note``).

How the random model is made "well behaved":

- convolutions: Kaiming-normal (fan-in, ReLU gain);
- BatchNorm: running statistics *calibrated* block by block on smooth-noise images (the per-channel mean
  and variance of each convolution's output), so post-BN activations are ≈ N(0, 1) before the ReLU;
  gamma ≈ 1, beta small. Block-8 activations are O(1);
- readouts: each Glasser area has a prototype feature vector and receptive-field centre shared by its
  vertices (and by the 8 subjects), plus per-vertex noise; ``spatial`` is a Gaussian bump per vertex plus
  noise; ``bias`` is small and centred so that a vertex's mean response over the calibration images is ≈ 0,
  which leaves the image-driven part visible (ROI means differ between images);
- noise ceilings: smooth per-area fields in [0, 80] (visual areas higher), NaN outside the 57,051 cortical
  model vertices — so reliability filtering has something to do.

Deterministic in ``seed`` (same seed, width, variant → the same checkpoint sha256 on the same machine).
The store is written into a temporary folder next to the model folder and renamed into place, so an
interrupted run never leaves a model folder that looks complete.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from screening import atlas
from screening.validation import check_positive_int
from screening.exceptions import InvalidParameterError
from screening.models.registry import SPATIAL, SUBJECTS, save_checkpoint, weights_for_variant

__all__ = ["make_store", "synthetic_state_dict", "synthetic_metadata", "is_complete", "NOTE",
           "configure_parser", "run_from_args"]

GENERATOR_VERSION = 1
NOTE = ("SYNTHETIC STORE: random weights in the published MOSAIC CNN8 checkpoint format, made by "
        "screening.store.synthetic. These are NOT the published weights and the responses are NOT brain "
        "predictions; noise ceilings, stimuli and subject info are placeholders. Only the atlas "
        "(vertex mapping, Glasser groups, ROI grayordinates) is real.")
BANNER = ("*" * 78 + "\n*  SYNTHETIC WEIGHTS: this store holds random weights in the published format.\n"
          "*  Responses computed from it are NOT brain predictions.\n" + "*" * 78)
MANIFEST = "synthetic.json"
_CHUNK = 8192


# ----------------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------------
def _gen(seed: int, *tag) -> torch.Generator:
    digest = hashlib.sha256(repr((int(seed),) + tag).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def calibration_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` smooth 1/f-like noise RGB images, uint8-valued float (n, 3, size, size)."""
    img = torch.zeros(n, 3, size, size)
    for k, base in enumerate((2, 4, 8, 16, 32, 64)):
        noise = torch.randn(n, 3, base, base, generator=gen)
        lum = torch.randn(n, 1, base, base, generator=gen)  # shared across channels: colour correlation
        img += F.interpolate(noise * 0.5 + lum, size=(size, size), mode="bilinear", align_corners=False) / (k + 1)
    img = (img - img.mean(dim=(1, 2, 3), keepdim=True)) / img.std(dim=(1, 2, 3), keepdim=True)
    return (118.0 + 58.0 * img).clamp(0, 255).round()


def _round_stat(t: torch.Tensor) -> torch.Tensor:
    # fp16-representable running statistics: the last-ulp differences of a convolution on another
    # CPU then rarely change the checkpoint bytes.
    return t.to(torch.float16).to(torch.float32)


@torch.no_grad()
def _init_and_calibrate_core(core, seed: int, width: int) -> torch.Tensor:
    """Kaiming conv init + BN calibration in place; returns the per-channel mean of the core output."""
    from screening.models.core import STAGE_ORDER
    from screening.models.encoder import Normalize

    g = _gen(seed, "core")
    for b in range(1, 9):
        block = getattr(core, f"block{b}")
        conv, bn = block[0], block[1]
        fan_in = conv.weight[0].numel()
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
        bn.weight.copy_(1.0 + 0.1 * (torch.rand(width, generator=g) - 0.5) * 2)
        bn.bias.copy_(0.1 * torch.randn(width, generator=g))
        bn.num_batches_tracked.fill_(0)
    # Full resolution is cheap for narrow test models; the published width calibrates at 160 px.
    size, n = (224, 4) if width <= 64 else (160, 2)
    x = Normalize()(calibration_images(n, size, _gen(seed, "calibration")))
    core.eval()
    for name in STAGE_ORDER:
        mod = getattr(core, name)
        if name.startswith("block"):
            conv, bn, relu = mod
            y = conv(x)
            bn.running_mean.copy_(_round_stat(y.mean(dim=(0, 2, 3))))
            bn.running_var.copy_(_round_stat(y.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-4)))
            bn.num_batches_tracked.fill_(1)
            x = relu(bn(y))
        else:
            x = mod(x)
    return _round_stat(x.mean(dim=(0, 2, 3)))


@torch.no_grad()
def _fill_head(head, seed: int, subject_index: int, area: np.ndarray, channel_mean: torch.Tensor) -> None:
    width = head._features.shape[1]
    n_areas = 361
    ga = _gen(seed, "areas")  # shared by subjects: areas keep their selectivity across heads
    proto = torch.randn(n_areas, width, generator=ga) / math.sqrt(width)
    centre = 3.0 + 20.0 * torch.rand(n_areas, 2, generator=ga)
    sigma = 2.0 + 3.0 * torch.rand(n_areas, generator=ga)
    g = _gen(seed, "head", subject_index)
    area_t = torch.as_tensor(area, dtype=torch.long)
    grid = torch.arange(SPATIAL, dtype=torch.float32)
    scale = 1.0 / math.sqrt(width)
    for lo in range(0, area_t.numel(), _CHUNK):
        a = area_t[lo:lo + _CHUNK]
        v = a.numel()
        f = head._features[lo:lo + v]
        f.copy_(0.3 * (0.8 * proto[a] + 0.6 * scale * torch.randn(v, width, generator=g)))
        c = centre[a] + 1.5 * torch.randn(v, 2, generator=g)
        s = (sigma[a] * (0.8 + 0.4 * torch.rand(v, generator=g)))[:, None]
        gy = torch.exp(-((grid[None, :] - c[:, :1]) ** 2) / (2 * s ** 2))
        gx = torch.exp(-((grid[None, :] - c[:, 1:]) ** 2) / (2 * s ** 2))
        sp = head.spatial[lo:lo + v]
        torch.mul(gy[:, :, None], gx[:, None, :], out=sp)
        sp.add_(0.02 * torch.randn(v, SPATIAL, SPATIAL, generator=g))
        flat = sp.flatten(1)
        s_hat_sum = flat.sum(1) / (flat.norm(dim=1) + 1e-6)
        # response to the mean core output ≈ (f · m) Σ Ŝ; centre it so images, not vertices, dominate.
        head.bias[lo:lo + v] = 0.05 * torch.randn(v, generator=g) - (f @ channel_mean) * s_hat_sum


def synthetic_state_dict(variant: str = "all", *, seed: int = 0, width: int = 384) -> dict[str, torch.Tensor]:
    """The random, calibrated weights as an (unprefixed) state_dict of a ``CNN8Multihead``."""
    from screening.models.encoder import CNN8Multihead

    w = weights_for_variant(variant)
    mapping = atlas.variant_vertex_mapping(variant)
    area = atlas.area_id_of_grayordinate(mapping)
    model = CNN8Multihead(w.n_vertices, width=width)
    for p in model.parameters():
        p.requires_grad_(False)
    channel_mean = _init_and_calibrate_core(model.core, seed, width)
    for i, s in enumerate(SUBJECTS):
        _fill_head(model.head(s), seed, i, area, channel_mean)
    return model.state_dict()


# ----------------------------------------------------------------------------------------------------
# metadata
# ----------------------------------------------------------------------------------------------------
def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    k = np.ones(width) / width
    return np.convolve(x, k, mode="same")


def _noise_ceilings(seed: int, subject_index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([int(seed), 7919, subject_index])
    mapping = atlas.vertex_mapping_all()
    area = atlas.area_id_of_grayordinate(mapping)
    group = atlas.glasser_group_id()
    area_rng = np.random.default_rng([int(seed), 104729])
    visual_level = area_rng.uniform(25, 60, 361)
    other_level = area_rng.uniform(2, 30, 361)
    level = np.where(np.isin(group, atlas.VISUAL_GROUPS), visual_level[area], other_level[area])
    base = level * rng.uniform(0.85, 1.15) + 60.0 * _smooth(rng.standard_normal(mapping.size), 25)
    out = {}
    for part, factor in (("test", 1.0), ("train", 0.95), ("artificial", 0.7)):
        v = np.clip(base * factor + 6.0 * _smooth(rng.standard_normal(mapping.size), 9), 0.0, 80.0)
        for kind, scale in (("n-avg", 1.0), ("n-1", 0.4)):  # single trials are less reliable
            arr = np.full(atlas.N_GRAYORDINATES, np.nan, dtype=np.float32)
            arr[mapping] = v * scale
            out[f"{part}_{kind}_noiseceiling"] = arr
    return out


def synthetic_metadata(variant: str, subject: str, *, seed: int = 0, width: int = 384,
                       n_stimuli: int = 100) -> dict:
    """One subject's metadata dict, in the BERG schema, with the real atlas and synthetic placeholders."""
    from screening.store import normalize_subject

    subject = normalize_subject(subject)
    names = np.array([f"synthetic_stimulus_{i:05d}.png" for i in range(n_stimuli)], dtype=object)
    n_test = max(1, n_stimuli // 50)
    train_idx = np.arange(n_stimuli - n_test, dtype=np.int64)
    test_idx = np.arange(n_stimuli - n_test, n_stimuli, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 31337, SUBJECTS.index(subject)])
    return {
        **atlas.metadata_arrays(variant),
        "subject_info": {"participant_id": subject, "age": -1, "sex": "n/a (synthetic placeholder)"},
        "stimuli": {
            "filenames": names,
            "alias": np.array([f"synthetic-{i:05d}" for i in range(n_stimuli)], dtype=object),
            "source": np.array(["synthetic"] * n_stimuli, dtype=object),
            "train_idx": train_idx,
            "test_idx": test_idx,
            "train_filenames": names[train_idx],
            "test_filenames": names[test_idx],
            "reps": rng.integers(1, 4, n_stimuli).astype(np.int64),
        },
        "noise_ceiling": _noise_ceilings(seed, SUBJECTS.index(subject)),
        "synthetic": True,
        "note": NOTE,
        "synthetic_params": {"variant": variant, "seed": int(seed), "width": int(width),
                             "generator": f"screening.store.synthetic v{GENERATOR_VERSION}"},
    }


# ----------------------------------------------------------------------------------------------------
# store
# ----------------------------------------------------------------------------------------------------
def _params(variant: str, seed: int, width: int) -> dict:
    return {"variant": variant, "seed": int(seed), "width": int(width), "generator_version": GENERATOR_VERSION}


def is_complete(root: str | os.PathLike, variant: str, *, seed: int | None = None, width: int | None = None) -> bool:
    """True when ``root`` holds a finished synthetic store of ``variant`` (and the given seed/width)."""
    w = weights_for_variant(variant)
    d = Path(root) / w.store_dir
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    want = _params(variant, manifest.get("seed") if seed is None else seed,
                   manifest.get("width") if width is None else width)
    if any(manifest.get(k) != v for k, v in want.items()):
        return False
    files = [d / "encoding_models_weights" / w.filename] + [d / "metadata" / "NSD" / f"{s}.npy" for s in SUBJECTS]
    return all(f.is_file() for f in files)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(parent: Path, folder: str) -> None:
    for p in parent.glob(f".{folder}.tmp-*"):
        with contextlib.suppress(ValueError, IndexError):
            pid = int(p.name.split(".tmp-")[1].split("-")[0])
            if not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)


def make_store(root: str | os.PathLike, *, variant: str = "all", seed: int = 0, width: int = 384,
               reuse: bool = False, verbose: bool = False) -> Path:
    """Write a synthetic-weights BERG store under ``root`` and return ``root``.

    Parameters
    ----------
    root : path
        BERG root directory (created if needed). The model folder goes to
        ``<root>/encoding_models/modality-fmri/train_dataset-mosaic/<model folder>/``.
    variant : {"all", "visual"}, default="all"
        57,051-vertex whole-cortex model (~2 GB checkpoint at width 384) or the 7,831-vertex visual one.
    seed : int, default=0
    width : int, default=384
        Channels of the core. 384 is the published width; smaller widths make small test models
        (``open_store`` accepts them only because the metadata says ``synthetic``).
    reuse : bool, default=False
        Return at once if ``root`` already holds a complete store with the same variant, seed and width.

    Returns
    -------
    pathlib.Path
        ``root``; open it with :func:`screening.store.open_store`.
    """
    if variant not in ("all", "visual"):
        raise InvalidParameterError(f"variant={variant!r} is not valid; valid variants: 'all', 'visual'")
    w = weights_for_variant(variant)
    width = check_positive_int("width", width, allow_none=False)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidParameterError(f"seed={seed!r} is not valid; expected an int")
    root = Path(root).expanduser().resolve()
    if reuse and is_complete(root, variant, seed=seed, width=width):
        return root
    final = root / w.store_dir
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final.parent, w.folder)
    tmp = final.parent / f".{w.folder}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        (tmp / "encoding_models_weights").mkdir(parents=True)
        (tmp / "metadata" / "NSD").mkdir(parents=True)
        (tmp / "encoding_models_accuracy").mkdir()
        (tmp / "encoding_models_accuracy" / "README.txt").write_text(
            "Synthetic store: there are no accuracy plots for random weights.\n")
        for s in SUBJECTS:
            np.save(tmp / "metadata" / "NSD" / f"{s}.npy",
                    synthetic_metadata(variant, s, seed=seed, width=width), allow_pickle=True)
        sd = synthetic_state_dict(variant, seed=seed, width=width)
        ckpt = tmp / "encoding_models_weights" / w.filename
        save_checkpoint(sd, ckpt)
        del sd
        with open(ckpt, "rb") as f:
            os.fsync(f.fileno())
        from screening.store._cache import file_sha256, remember_sha256

        manifest = {**_params(variant, seed, width), "model_id": w.model_id, "synthetic": True, "note": NOTE,
                    "checkpoint": f"encoding_models_weights/{w.filename}",
                    "checkpoint_sha256": file_sha256(ckpt)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = None
        if final.exists():
            old = final.parent / f".{w.folder}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        remember_sha256(final / "encoding_models_weights" / w.filename, manifest["checkpoint_sha256"])
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"wrote {final} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return root


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="BERG root directory to write")
    parser.add_argument("--variant", choices=("all", "visual"), default="all",
                        help="all: 57,051 vertices (~2 GB at width 384); visual: 7,831 vertices (~310 MB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=384, help="core channels (384 = published; less for tests)")
    parser.add_argument("--reuse", action="store_true", help="keep an existing complete store with these settings")


def run_from_args(args: argparse.Namespace) -> int:
    print(BANNER, file=sys.stderr, flush=True)
    root = make_store(args.dir, variant=args.variant, seed=args.seed, width=args.width, reuse=args.reuse,
                      verbose=True)
    manifest = json.loads((root / weights_for_variant(args.variant).store_dir / MANIFEST).read_text())
    print(f"synthetic store: {root}")
    print(f"model_id: {manifest['model_id']}  width: {manifest['width']}  seed: {manifest['seed']}")
    print(f"checkpoint sha256: {manifest['checkpoint_sha256']}")
    print("NOTE: SYNTHETIC weights, not the published MOSAIC weights.", file=sys.stderr)
    return 0
