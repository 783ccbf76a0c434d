"""The decode and encoder stages of the plan (reading is ``screening.io.image_source``, writing ``parts``).

Every row carries its identity (``unit``, ``row``: its index in the shard) through every stage.

``decode_batch``: a stateless CPU task over Arrow batches from ``read_shards``: bytes -> uint8 (3,224,224) via
``screening.preprocess.preprocess_bytes``. A row that fails (unreadable or null bytes: stage ``read``; anything raised
while decoding: stage ``decode``) becomes an error row; the batch never fails because of one image.

``EncoderActor``: one per actor-pool slot. ``__init__`` loads the model from the store once, collapses every
(subject, ROI) mean into one matrix (``RoiEncoder.from_model``) and drops the full vertex heads. ``__call__`` encodes
the decoded rows and passes error rows through, so every input row leaves the plan exactly once.
"""

from __future__ import annotations

import gc
import time

import numpy as np

STAGE_OK = ""


def decode_batch(table, *, image_column: str, fast: bool):
    """Rows from ``read_shards`` -> the same rows with ``stage``/``error`` and uint8 ``pixels`` (3, 224, 224)."""
    from screening.preprocess import preprocess_bytes

    datas = table.column("data").to_pylist()
    read_error = table.column("read_error").to_pylist()
    n = len(datas)
    pixels = np.zeros((n, 3, 224, 224), dtype=np.uint8)
    stage = np.full(n, STAGE_OK, dtype=object)
    error = np.full(n, "", dtype=object)
    for i, data in enumerate(datas):
        if read_error[i]:
            stage[i], error[i] = "read", read_error[i]
        elif data is None:
            stage[i], error[i] = "read", f"the {image_column!r} bytes are null"
        else:
            try:
                pixels[i] = preprocess_bytes(data, fast=fast)
            except Exception as exc:  # noqa: BLE001 - any failure of one image is that image's error row
                stage[i], error[i] = "decode", f"{type(exc).__name__}: {exc}"
    return {
        "unit": np.asarray(table.column("unit").to_pylist(), dtype=object),
        "row": table.column("row").to_numpy(),
        "image_id": np.asarray(table.column("image_id").to_pylist(), dtype=object),
        "source": np.asarray(table.column("source").to_pylist(), dtype=object),
        "stage": stage,
        "error": error,
        "pixels": pixels,
    }


class EncoderActor:
    """Callable class for ``map_batches(compute=ActorPoolStrategy(...))``."""

    def __init__(self, *, store, model_id: str, subjects, rois, precision: str, device: str = "cpu",
                 num_threads: int | None = None, throttle_s: float = 0.0):
        import torch

        from screening.models.encoder import RoiEncoder

        if device == "cuda" and not torch.cuda.is_available():
            from screening.exceptions import InvalidParameterError

            raise InvalidParameterError("the encoder actor was given a GPU but torch sees no CUDA device")
        if num_threads:
            torch.set_num_threads(int(num_threads))
        model, _info = store.load_model(model_id)
        # Arrays arrive read-only (zero-copy from the object store); per-subject (reliability-filtered) mappings too.
        rois = {k: (np.array(v) if isinstance(v, np.ndarray) else {s: np.array(c) for s, c in v.items()})
                for k, v in rois.items()}
        self.encoder = RoiEncoder.from_model(model, list(subjects), rois, precision=precision, device=device)
        del model
        gc.collect()
        self.n_subjects = len(self.encoder.subjects)
        self.n_rois = len(self.encoder.roi_names)
        self.throttle_s = throttle_s

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        out = self.encoder.encode_numpy(pixels)                    # (k, S, R) float32
        mean = out.mean(axis=1, dtype=np.float64).astype(np.float32)[:, None, :]
        return np.concatenate([out, mean], axis=1)                  # (k, S+1, R)

    def __call__(self, batch: dict) -> dict:
        if self.throttle_s:
            time.sleep(self.throttle_s)  # tests only: keeps a run in flight long enough to kill things
        stage = np.asarray(batch["stage"], dtype=object).copy()
        error = np.asarray(batch["error"], dtype=object).copy()
        n = stage.shape[0]
        roi = np.full((n, self.n_subjects + 1, self.n_rois), np.nan, dtype=np.float32)
        ok = np.flatnonzero(stage == STAGE_OK)
        if ok.size:
            pixels = np.asarray(batch["pixels"])
            try:
                roi[ok] = self._encode(pixels[ok])
            except Exception:  # noqa: BLE001 - retry row by row so one bad row cannot sink the batch
                for i in ok:
                    try:
                        roi[i] = self._encode(pixels[i:i + 1])[0]
                    except Exception as exc:  # noqa: BLE001
                        stage[i], error[i] = "encode", f"{type(exc).__name__}: {exc}"
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out.update(stage=stage, error=error, roi=roi)
        return out


class NullEncoderActor:
    """Test/benchmark-only encoder stage that costs nothing: random ROI means in the encoder's output contract.

    ``benchmarks/pipeline_scale.py`` runs the real plan with it, so what is measured is everything but the model.
    """

    def __init__(self, *, subjects, rois, seed: int = 0, **_ignored):
        self.shape = (len(subjects) + 1, len(rois))
        self.rng = np.random.default_rng(seed)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["stage"])
        roi = self.rng.standard_normal((n,) + self.shape, dtype=np.float32)
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["roi"] = roi
        return out
