"""``screening demo``: the whole road on one machine, with SYNTHETIC weights.

make (or reuse) a synthetic-weights store with the published architecture → write real photographs
that ship inside PyPI packages plus NSD-style artificial stimuli → ingest → screen on local Ray → rank
→ report. Prints where ``index.html`` is. Point it at the published weights with ``--store``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from screening.fs import StorageOptions, add_storage_arguments

BANNER = """\
================================================================================
 SYNTHETIC WEIGHTS. This demo runs the published CNN8 architecture with random,
 BatchNorm-calibrated weights: the numbers exercise the engine, they are NOT
 brain predictions. For the published MOSAIC weights run:
   screening demo --store s3://brain-encoding-response-generator --anonymous
 or a local BERG directory (--store /path/to/berg), or the checkpoint URL
   https://mosaicfmri.s3.amazonaws.com/brain_optimized_checkpoints/model-CNN8_framework-multihead_subjects-NSD_vertices-all.pth
================================================================================"""

# Shown when present (the visual variant has no PHA1-3: it lies in Glasser group 13).
DEFAULT_ROIS = ("FFC", "PHA1-3", "V1", "early_visual", "faces", "group_04")


def packaged_photos() -> dict[str, tuple[np.ndarray, str]]:
    """Real photographs bundled in PyPI packages: name → (RGB uint8, licence note)."""
    photos = {}
    try:
        from skimage import data

        for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page",
                     "immunohistochemistry", "hubble_deep_field", "motorcycle_left", "text", "retina", "cat"):
            fn = getattr(data, name, None)
            if fn is None:
                continue
            try:
                img = fn()
            except Exception:  # some data files are fetched on demand; skip those offline
                continue
            img = img[0] if isinstance(img, tuple) else img
            photos[f"skimage-{name}"] = (_rgb(img), "scikit-image data (BSD-3 / public domain / CC0, see skimage.data)")
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        s = load_sample_images()
        for fname, img in zip(s.filenames, s.images):
            photos[f"sklearn-{Path(fname).stem}"] = (_rgb(img), "scikit-learn sample images (CC-BY 2.0, Flickr)")
    except ImportError:
        pass
    try:
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            photos["matplotlib-grace_hopper"] = (_rgb(np.asarray(Image.open(f).convert("RGB"))),
                                                 "matplotlib sample data (public domain, US Navy)")
    except Exception:
        pass
    return photos


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (255 * (img - img.min()) / max(float(np.ptp(img)), 1e-9)).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3])


def artificial_stimuli(size: int = 425, seed: int = 0) -> dict[str, np.ndarray]:
    """NSD-style artificial stimuli: gratings, checkerboards, noise, simple shapes (RGB uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = {}
    for ori in (0, 45, 90, 135):
        for cyc in (4, 16):
            t = np.deg2rad(ori)
            g = 0.5 + 0.5 * np.sin(2 * np.pi * cyc * (xx * np.cos(t) + yy * np.sin(t)))
            out[f"grating-ori{ori}-cyc{cyc}"] = np.stack([g] * 3, -1)
    for n in (4, 12):
        c = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(float)
        out[f"checkerboard-{n}"] = np.stack([c] * 3, -1)
    out["noise-white"] = rng.random((size, size, 3))
    pink = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) /
                         np.maximum(np.hypot(*np.meshgrid(np.fft.rfftfreq(size), np.fft.fftfreq(size))), 1 / size))
    out["noise-pink"] = np.stack([(pink - pink.min()) / np.ptp(pink)] * 3, -1)
    r = np.hypot(xx - 0.5, yy - 0.5)
    for name, mask, colour in (("disc-red", r < 0.25, (1, 0, 0)),
                               ("square-blue", (abs(xx - .5) < .2) & (abs(yy - .5) < .2), (0, 0, 1)),
                               ("ring-green", (r > .2) & (r < .3), (0, 1, 0)),
                               ("triangle-yellow", (yy > .25) & (abs(xx - .5) < (yy - .25) * .6), (1, 1, 0))):
        img = np.full((size, size, 3), 0.5)
        img[mask] = colour
        out[name] = img
    return {k: (np.clip(v, 0, 1) * 255).round().astype(np.uint8) for k, v in out.items()}


def write_demo_images(folder: Path) -> tuple[int, list[str]]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    notes = set()
    photos = packaged_photos()
    for name, (img, note) in photos.items():
        Image.fromarray(img).save(folder / f"photo-{name}.jpg", quality=92)
        notes.add(note)
    for name, img in artificial_stimuli().items():
        Image.fromarray(img).save(folder / f"artificial-{name}.png")
    return len(photos), sorted(notes)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-output", help="output folder (default ./demo-output)")
    p.add_argument("--store", default=None, help="BERG root / s3:// / checkpoint URL; default a synthetic store")
    p.add_argument("--model-id", default=None)
    add_storage_arguments(p)
    p.add_argument("--variant", default="all", choices=("all", "visual"), help="synthetic store variant")
    p.add_argument("--width", type=int, default=384, help="synthetic store width (384 = published)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="core precision (default auto: the fastest one on this machine, docs/precision.md)")
    p.add_argument("--verbose", action="store_true", help="also show Ray's own log lines and progress bars")


def run_from_args(args) -> int:
    from screening.pipeline.console import default_log_path, ray_log_path, run_console
    from screening.pipeline.ray_session import exit_now, stop_ray

    try:
        with run_console(args.verbose, default_log_path(args.out)):   # Ray's lines in the log, as in `screening run`
            try:
                code = _demo(args)
            except Exception:
                stop_ray()
                raise
            stop_ray()   # the demo's own local Ray, all of it
    except KeyboardInterrupt:
        print(f"\nscreening demo: interrupted; what was committed stays in {args.out} (rerun to resume)",
              file=sys.stderr)
        # as `screening run`: the local Ray killed, then leave at once (not Ray's atexit shutdown)
        exit_now(130)
    if log := ray_log_path():
        print(f"Ray's log: {log}")
    return code


def _demo(args) -> int:
    import screening
    from screening.ingest import ingest
    from screening.models.registry import weights_for_variant
    from screening.rank import rank

    t0 = time.perf_counter()
    options = StorageOptions.from_args(args)
    out = Path(args.out).resolve()
    synthetic = args.store is None
    if synthetic:
        print(BANNER, flush=True)
        store = out / "synthetic-store"
        print(f"[1/5] synthetic store ({args.variant}, width {args.width}) at {store} ...", flush=True)
        screening.make_store(store, variant=args.variant, seed=0, width=args.width, reuse=True)
        store = str(store)
        model_id = weights_for_variant(args.variant).model_id
    else:
        store, model_id = args.store, args.model_id
        print(f"[1/5] using the model store {store}", flush=True)
    n_photos, notes = write_demo_images(out / "images")
    print(f"[2/5] {n_photos} packaged photographs + artificial stimuli in {out / 'images'}; ingesting ...", flush=True)
    ingest(str(out / "images"), str(out / "shards"), shard_rows=16, overwrite=True)
    print("[3/5] screening on local Ray ...", flush=True)
    if not os.environ.get("RAY_ADDRESS"):
        from screening.pipeline.ray_session import ensure_ray

        ensure_ray()   # the demo's own local Ray (no dashboard processes: ~0.3 GB)
    result = screening.screen(str(out / "shards"), store, str(out / "run"), model_id=model_id,
                              precision=args.precision, storage_options=options)
    print("[4/5] ranking ...", flush=True)
    rank(str(out / "run" / "responses"), str(out / "run" / "rankings"), top_k=5)
    print("[5/5] report ...", flush=True)
    from screening.rank import read_rankings
    from screening.report import write_report

    ranked = set(read_rankings(str(out / "run" / "rankings"))["roi"])
    index = write_report(str(out / "run"), rois=[r for r in DEFAULT_ROIS if r in ranked] or None)
    if synthetic:
        print(BANNER)
    print(f"photo licences: {'; '.join(notes)}")
    print(result.summary())
    print(f"demo done in {time.perf_counter() - t0:.0f}s")
    print(f"open {index}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    configure_parser(p)
    sys.exit(run_from_args(p.parse_args()))
