"""The GPU-only paths: ``--decode gpu`` (``screening.device_decode``) and ``precision="fp16"``.

On a CPU the batching / fallback / error-row logic of the device decoder runs with Pillow standing in for nvJPEG
(``pil_decode_jpeg``, the same contract), on real JPEG / PNG / corrupt bytes, and every GPU-only option is refused
clearly. The tests marked ``gpu`` run the CUDA paths themselves; without CUDA they are deselected (tests/conftest.py).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from screening.device_decode import DeviceDecoded, decode_on_device, pil_decode_jpeg
from screening.exceptions import InvalidParameterError
from screening.preprocess import preprocess_bytes
from tests.image_corpus import bad_image_corpus, encode, photo_like

VIS = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"
# Device-decoded pixels against the exact path: PIL rounds to uint8 between its two resize passes, torch does not.
MAX_LEVEL_DIFF, MEAN_LEVEL_DIFF = 1, 0.25


def _oriented_jpegs() -> dict[str, bytes]:
    base = photo_like(60, 40, seed=5)
    out = {}
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        out[f"orientation_{o}"] = encode(base, "JPEG", quality=95, exif=exif.tobytes())
    return out


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    imgs = {k: v for k, (v, _) in bad_image_corpus().items()}
    imgs.update(_oriented_jpegs())
    imgs["jpeg_224"] = encode(photo_like(224, 224, seed=8), "JPEG", quality=90)
    return imgs


def _exact(data: bytes):
    try:
        return preprocess_bytes(data), None
    except Exception as exc:  # noqa: BLE001 - the error string the exact path gives
        return None, f"{type(exc).__name__}: {exc}"


def _check_against_exact(names, datas, got: DeviceDecoded):
    for i, name in enumerate(names):
        want, err = _exact(datas[i])
        assert got.errors[i] == err, name
        if err is None:
            diff = np.abs(got.pixels[i].cpu().numpy().astype(int) - want)
            if got.how[i] == "cpu":
                assert diff.max() == 0, f"{name}: the fallback must be the exact path"
            else:
                assert diff.max() <= MAX_LEVEL_DIFF and diff.mean() <= MEAN_LEVEL_DIFF, (name, diff.max(), diff.mean())
        else:
            assert not got.pixels[i].any(), f"{name}: an error row has no pixels"


def test_device_decoder_batches_jpegs_and_falls_back_per_image(images):
    """Plain JPEGs (any EXIF orientation, grayscale, 224 px, a 4000x10 strip) go to the device decoder; PNG, WebP,
    GIF, CMYK JPEG, truncated or corrupt data and the decompression bomb take the exact CPU path, which gives the
    same pixels or the same error as ``preprocess_bytes``."""
    names = sorted(images)
    datas = [images[n] for n in names]
    calls = []

    def decoder(tensors, device):
        calls.append(len(tensors))
        return pil_decode_jpeg(tensors, device)

    got = decode_on_device(datas, device="cpu", gpu_decode=decoder)
    on_device = {n for n, h in zip(names, got.how) if h == "device"}
    assert on_device == {"rgb_jpeg", "grayscale_jpeg", "exif_rotated_jpeg", "wide_4000x10", "jpeg_224",
                         *_oriented_jpegs()}
    assert calls == [len(on_device)], "one decoder call for the whole batch"
    assert got.pixels.shape == (len(names), 3, 224, 224) and got.pixels.dtype == torch.uint8
    _check_against_exact(names, datas, got)
    assert sum(e is not None for e in got.errors) == 8   # the corpus' eight must-reject cases


def test_a_refused_image_fails_the_batch_then_only_itself(images, monkeypatch):
    """nvJPEG fails a whole batch for one image it cannot take: the batch is retried image by image and only that
    image takes the CPU path. Sub-batches stay within BATCH_PIXELS declared pixels."""
    import screening.device_decode as dd

    refused = images["orientation_6"]
    names = ["rgb_jpeg", "orientation_6", "grayscale_jpeg", "orientation_3", "rgb_png"]
    datas = [images[n] for n in names]
    calls = []

    def decoder(tensors, device):
        calls.append(len(tensors))
        if any(t.numpy().tobytes() == refused for t in tensors):
            raise RuntimeError("nvjpeg: unsupported stream")
        return pil_decode_jpeg(tensors, device)

    monkeypatch.setattr(dd, "BATCH_PIXELS", 640 * 480 + 60 * 40)   # rgb_jpeg + one 60x40 image per call
    got = decode_on_device(datas, device="cpu", gpu_decode=decoder)
    assert got.how == ["device", "cpu", "device", "device", "cpu"]
    assert calls == [2, 1, 1, 2], calls   # [rgb, o6] fails -> each alone; then [gray 64x48, o3 60x40]
    _check_against_exact(names, datas, got)


def _read_rows(datas, read_error=None):
    n = len(datas)
    return pa.table({"unit": ["u"] * n, "row": np.arange(n), "image_id": [f"i{k}" for k in range(n)],
                     "source": [f"s{k}" for k in range(n)], "data": pa.array(datas, pa.binary()),
                     "read_error": read_error or [""] * n})


def test_device_decode_batch_gives_decode_batch_rows(images):
    """The encoder actor's GPU-decode input step: the same identity, stages and errors as the CPU decode task."""
    from screening.pipeline.stages import decode_batch, device_decode_batch

    datas = [images["rgb_jpeg"], None, images["truncated_jpeg"], images["rgb_png"], images["text_file"],
             images["exif_rotated_jpeg"]]
    table = _read_rows(datas, ["", "", "", "", "", "row group 0 unreadable"])
    cpu = decode_batch(table, image_column="image", fast=False)
    batch = {k: np.asarray(v.to_numpy(zero_copy_only=False)) for k, v in zip(table.column_names, table.columns)}
    dev = device_decode_batch(batch, image_column="image", device="cpu", gpu_decode=pil_decode_jpeg)
    assert set(dev) == set(cpu)
    for k in ("unit", "row", "image_id", "source", "stage", "error"):
        assert list(dev[k]) == list(cpu[k]), k
    assert list(dev["stage"]) == ["", "read", "decode", "", "decode", "read"]
    diff = np.abs(dev["pixels"].numpy().astype(int) - cpu["pixels"])
    assert diff.max() <= MAX_LEVEL_DIFF


def test_the_null_stage_of_the_gpu_decode_plan_decodes_nothing_and_keeps_the_read_errors(images, visual_store,
                                                                                         tmp_path):
    """Benchmarks only (``pipeline_scale.py --no-decode``): the decode='gpu' plan on CPU with the null encoder stage.
    Its rows leave with the read stage's errors and the encoder's output shape, no pixels or raw bytes; the plan
    still refuses decode='gpu' on CPU encoders for the real stage."""
    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan, check_resources
    from screening.pipeline.stages import NullEncoderActor

    table = _read_rows([images["rgb_jpeg"], None, images["text_file"]], ["", "", "row group 0 unreadable"])
    batch = {k: np.asarray(v.to_numpy(zero_copy_only=False)) for k, v in zip(table.column_names, table.columns)}
    out = NullEncoderActor(subjects=["sub-01", "sub-02"], rois={"a": 0, "b": 1, "c": 2}, decode="gpu")(batch)
    assert set(out) == {"unit", "row", "image_id", "source", "stage", "error", "roi"}
    assert list(out["stage"]) == ["", "read", "read"] and list(out["row"]) == [0, 1, 2]
    assert out["error"][2] == "row group 0 unreadable" and "null" in out["error"][1]
    assert out["roi"].shape == (3, 3, 3)
    shard = _shard(tmp_path / "in" / "a.parquet")
    kw = dict(model_id=VIS, rois=["V1"], progress=False, decode="gpu")
    null = build_plan(RunConfig.of(str(shard), str(visual_store), str(tmp_path / "o"), encoder_stage="null", **kw))
    assert check_resources(null, {"CPU": 2.0}).device == "cpu"
    real = build_plan(RunConfig.of(str(shard), str(visual_store), str(tmp_path / "o"), **kw))
    with pytest.raises(InvalidParameterError, match=r"decode='gpu' \(--decode gpu\) needs GPU encoders"):
        check_resources(real, {"CPU": 2.0})


# --------------------------------------------------------------------------- refusals where CUDA is absent

def test_fp16_is_refused_on_cpu_everywhere(visual_store):
    from screening import BERG
    from screening.models.encoder import RoiEncoder, core_features
    from screening.store import open_store

    berg = BERG(str(visual_store))
    msg = r"precision='fp16' needs a CUDA device .* valid precisions on a CPU: 'fp32', 'bf16'"
    with pytest.raises(InvalidParameterError, match=msg):
        berg.get_encoding_model(VIS, subject=1, device="cpu", precision="fp16")
    with pytest.raises(InvalidParameterError, match=r"precision='fp8' is not valid; valid values: 'fp32', 'bf16', 'fp16'"):
        berg.get_encoding_model(VIS, subject=1, device="cpu", precision="fp8")
    model, _ = open_store(str(visual_store)).load_model(VIS)
    with pytest.raises(InvalidParameterError, match=msg):
        RoiEncoder.from_model(model, ["sub-01"], {"a": np.arange(4)}, precision="fp16", device="cpu")
    with pytest.raises(InvalidParameterError, match=msg):
        core_features(model.core, torch.zeros(1, 3, 224, 224), "fp16")


def _shard(path, n=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    datas = [encode(photo_like(48, 40, seed=i), "JPEG", quality=90) for i in range(n)]
    pq.write_table(pa.table({"image_id": [f"g{i}" for i in range(n)], "image": pa.array(datas, pa.binary())}), path)
    return path


def test_gpu_only_options_are_refused_by_the_plan_without_gpus(visual_store, tmp_path):
    """Before any task: decode='gpu' and precision='fp16' need GPU encoders; decode='gpu' needs torchvision too."""
    import importlib.util

    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan, check_resources

    shard = _shard(tmp_path / "in" / "a.parquet")
    kw = dict(model_id=VIS, rois=["V1"], progress=False)
    gpu_plan = build_plan(RunConfig.of(str(shard), str(visual_store), str(tmp_path / "o1"), decode="gpu", **kw))
    assert gpu_plan.config["decode"] == "gpu" and gpu_plan.options.fast_decode is False
    with pytest.raises(InvalidParameterError, match=r"decode='gpu' \(--decode gpu\) needs GPU encoders.*use "
                                                    r"decode='cpu' \(--decode cpu, the default\)"):
        check_resources(gpu_plan, {"CPU": 2.0})
    fp16 = build_plan(RunConfig.of(str(shard), str(visual_store), str(tmp_path / "o2"), precision="fp16", **kw))
    with pytest.raises(InvalidParameterError, match=r"precision='fp16' \(--precision fp16\) needs GPU encoders"):
        check_resources(fp16, {"CPU": 2.0})
    assert check_resources(fp16, {"CPU": 4.0, "GPU": 1.0}).device == "cuda"
    if importlib.util.find_spec("torchvision") is None:   # this CPU machine and CI: the message names the fix
        with pytest.raises(InvalidParameterError, match=r"decode='gpu' \(--decode gpu\) needs torchvision"):
            check_resources(gpu_plan, {"CPU": 4.0, "GPU": 1.0})
    else:
        assert check_resources(gpu_plan, {"CPU": 4.0, "GPU": 1.0}).device == "cuda"
    with pytest.raises(InvalidParameterError, match=r"decode='nvjpeg' is not valid; valid values: 'cpu', 'gpu'"):
        build_plan(RunConfig.of(str(shard), str(visual_store), str(tmp_path / "o3"), decode="nvjpeg", **kw))
    cpu_plan = build_plan(RunConfig.of(str(shard), str(visual_store), str(tmp_path / "o1"), **kw))
    # precision="auto" (the default) has no key until it is resolved on the cluster: compare at one precision
    assert cpu_plan.config_key is None and gpu_plan.config_key is None
    assert cpu_plan.with_precision("bf16", {}).config_key != gpu_plan.with_precision("bf16", {}).config_key


def test_resume_with_another_decoder_is_refused(ray_local, visual_store, tmp_path):
    """A committed output of CPU decode is not resumed with GPU decode (different pixels): refused before any work."""
    from screening.pipeline import screen

    inputs = tmp_path / "in"
    inputs.mkdir()
    pq.write_table(pa.table({"image_id": pa.array([], pa.string()), "image": pa.array([], pa.binary())}),
                   inputs / "empty.parquet")
    out = tmp_path / "out"
    done = screen(str(inputs), str(visual_store), str(out), model_id=VIS, rois=["V1"], progress=False)
    assert done.units_run == 1
    with pytest.raises(InvalidParameterError, match=r"already holds results of a different configuration"):
        screen(str(inputs), str(visual_store), str(out), model_id=VIS, rois=["V1"], progress=False, decode="gpu")


@pytest.mark.parametrize("flag, says", [(["--decode", "gpu"], "decode='gpu' (--decode gpu) needs GPU encoders"),
                                        (["--precision", "fp16"], "precision='fp16' (--precision fp16) needs GPU")])
def test_cli_refuses_gpu_options_without_gpus(ray_local, visual_store, tmp_path, capsys, flag, says):
    from screening.cli import main

    shard = _shard(tmp_path / "in" / "a.parquet")
    rc = main(["run", str(shard), "--store", str(visual_store), "--out", str(tmp_path / "out"), "--model-id", VIS,
               "--rois", "V1", "--no-progress", *flag])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2, err


# --------------------------------------------------------------------------- CUDA itself (deselected without it)

@pytest.fixture(scope="module")
def photo_jpegs():
    """Real photographs as JPEG q92, as ``screening demo`` writes them (from the packages that ship them, or on the
    GPU machines the bundle's copy, ``GPU_CHECK_PHOTOS``), and synthetic ones at camera-like sizes."""
    from screening.demo import packaged_photos

    out = [encode(Image.fromarray(img), "JPEG", quality=92) for img, _ in packaged_photos().values()]
    path = os.environ.get("GPU_CHECK_PHOTOS", "")
    if not out and os.path.exists(path):
        with np.load(path) as z:
            out = [z[name].tobytes() for name in z.files]
    sizes = [(1600, 1200), (640, 480), (300, 500), (1024, 1024)]
    return out + [encode(photo_like(w, h, seed=i), "JPEG", quality=90) for i, (w, h) in enumerate(sizes)]


def _encoder(visual_store, precision, device="cuda"):
    from screening import rois
    from screening.models.registry import SUBJECTS
    from screening.models.encoder import RoiEncoder
    from screening.store import open_store

    model, _ = open_store(str(visual_store)).load_model(VIS)
    return RoiEncoder.from_model(model, SUBJECTS, rois.build_roi_set("visual"), precision=precision, device=device)


def _min_r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    ac, bc = a - a.mean(0), b - b.mean(0)
    return float(((ac * bc).sum(0) / np.sqrt((ac ** 2).sum(0) * (bc ** 2).sum(0))).min())


@pytest.mark.gpu
def test_encode_numpy_pinned_copy_matches_forward_on_cuda(visual_store):
    enc = _encoder(visual_store, "fp32")
    x = np.random.default_rng(0).integers(0, 256, (8, 3, 224, 224), dtype=np.uint8)
    got = enc.encode_numpy(x)
    want = enc(torch.from_numpy(x).cuda()).cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())   # the same maths, pinned copy
    cpu = _encoder(visual_store, "fp32", device="cpu").encode_numpy(x)
    np.testing.assert_allclose(got, cpu, rtol=2e-3, atol=2e-3 * np.abs(cpu).max())


@pytest.mark.gpu
def test_default_batch_size_and_normalized_spatial_on_cuda(visual_store):
    from screening.models.encoder import default_batch_size
    from screening.store import open_store

    for p in ("fp32", "bf16", "fp16"):
        n = default_batch_size("cuda", p)
        assert 32 <= n <= 512 and n & (n - 1) == 0, (p, n)
    assert default_batch_size("cuda", "fp16") >= default_batch_size("cuda", "fp32")
    head = open_store(str(visual_store)).load_model(VIS)[0].head("sub-01")
    on_gpu = head.normalized_spatial(device="cuda")
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), head.normalized_spatial(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_decode_agrees_with_exact_cpu_decode(visual_store, photo_jpegs):
    """nvJPEG + GPU crop/resize against the exact CPU path: pixels within a few levels, per-ROI r >= 0.999."""
    from screening.device_decode import torchvision_decoder

    got = decode_on_device(photo_jpegs, device="cuda", gpu_decode=torchvision_decoder())
    assert set(got.how) == {"device"} and not any(got.errors)
    exact = np.stack([preprocess_bytes(d) for d in photo_jpegs])
    diff = np.abs(got.pixels.cpu().numpy().astype(int) - exact)
    assert diff.mean() < 1.0, diff.mean()
    enc = _encoder(visual_store, "fp32")
    assert _min_r(enc(got.pixels).cpu().numpy(), enc.encode_numpy(exact)) >= 0.999


@pytest.mark.gpu
def test_fp16_agrees_with_fp32_on_cuda(visual_store, photo_jpegs):
    exact = np.stack([preprocess_bytes(d) for d in photo_jpegs])
    ref = _encoder(visual_store, "fp32").encode_numpy(exact)
    out = _encoder(visual_store, "fp16").encode_numpy(exact)
    assert np.isfinite(out).all()
    assert _min_r(out, ref) >= 0.999
