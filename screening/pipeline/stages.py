"""The decode and encoder stages of the plan (reading is ``screening.sources``, writing ``parts``).

Every row carries its identity (``unit``, ``row``: its index in the shard) through every stage.

``decode_batch``: a stateless CPU task over Arrow batches from ``read_units``: bytes -> uint8 (3,224,224) via
``screening.preprocess.preprocess_bytes``. A row that fails (unreadable or null bytes: stage ``read``; anything raised
while decoding: stage ``decode``) becomes an error row; the batch never fails because of one image.

``device_decode_batch`` (``decode="gpu"``): the same rows decoded inside the encoder actor instead, from the read
stage's raw bytes, by ``screening.device_decode`` (nvJPEG, exact CPU path per image as the fallback); the pixels
stay on the GPU. The same error rows and stages as ``decode_batch``.

``EncoderActor``: one per actor-pool slot. ``__init__`` loads the model from the store once, collapses every
(subject, ROI) mean into one matrix (``RoiEncoder.from_model``; on CPU memory-mapped from the node cache, which the
first actor of a machine builds, ``screening.models.collapsed``) and drops the full vertex heads. ``__call__`` encodes
the decoded rows and passes error rows through, so every input row leaves the plan exactly once.
"""

from __future__ import annotations

import gc
import sys
import threading
import time

import numpy as np

from screening.pipeline.decode_modes import decode_mode
from screening.pipeline.tables import STAGE_OK
from screening.sources.base import LABEL


def _read_stage(datas, read_error, image_column: str):
    """(stage, error) per row after reading: "read" for an unreadable row or null bytes, else STAGE_OK."""
    n = len(datas)
    stage = np.full(n, STAGE_OK, dtype=object)
    error = np.full(n, "", dtype=object)
    for i, data in enumerate(datas):
        if read_error[i]:
            stage[i], error[i] = "read", read_error[i]
        elif data is None:
            stage[i], error[i] = "read", f"the {image_column!r} bytes are null"
    return stage, error


def _identity(batch) -> dict:
    """A row's identity, and its label where the run reads one from the input (``LABEL``: column:NAME)."""
    out = {"unit": np.asarray(batch["unit"], dtype=object), "row": np.asarray(batch["row"]),
           "image_id": np.asarray(batch["image_id"], dtype=object),
           "source": np.asarray(batch["source"], dtype=object)}
    if LABEL in batch:
        out[LABEL] = np.asarray(batch[LABEL], dtype=object)
    return out


def _decode_rows(datas, read_error, image_column: str, fast: bool, pool=None):
    """(stage, error, uint8 pixels (N, 3, 224, 224)) for raw rows; ``pool``: an executor decoding rows in threads."""
    from screening.preprocess import preprocess_bytes

    stage, error = _read_stage(datas, read_error, image_column)
    pixels = np.zeros((len(datas), 3, 224, 224), dtype=np.uint8)

    def one(i):
        try:
            pixels[i] = preprocess_bytes(datas[i], fast=fast)
        except Exception as exc:  # noqa: BLE001 - any failure of one image is that image's error row
            return f"{type(exc).__name__}: {exc}"
        return None

    ok = np.flatnonzero(stage == STAGE_OK)
    for i, failed in zip(ok, (pool.map if pool is not None else map)(one, ok)):
        if failed:
            stage[i], error[i] = "decode", failed
    return stage, error, pixels


def decode_batch(table, *, image_column: str, fast: bool):
    """Rows from ``read_units`` -> the same rows with ``stage``/``error`` and uint8 ``pixels`` (3, 224, 224)."""
    stage, error, pixels = _decode_rows(table.column("data").to_pylist(), table.column("read_error").to_pylist(),
                                        image_column, fast)
    ids = {k: table.column(k).to_pylist() for k in ("unit", "image_id", "source", LABEL) if k in table.column_names}
    return {**_identity({**ids, "row": table.column("row").to_numpy()}), "stage": stage, "error": error,
            "pixels": pixels}


def actor_decode_batch(batch: dict, *, image_column: str, fast: bool, pool) -> dict:
    """``decode="actor"``: numpy rows from ``read_units`` -> ``decode_batch``'s rows, decoded by the encoder actor's
    own CPU threads (``pool``); the same pixels, stages and errors as the decode tasks."""
    stage, error, pixels = _decode_rows(list(batch["data"]), list(batch["read_error"]), image_column, fast, pool)
    return {**_identity(batch), "stage": stage, "error": error, "pixels": pixels}




class ActorDecode:
    """``decode="actor"``: the encoder actor's own decode threads (PIL releases the GIL while decoding and resizing)."""

    def __init__(self, *, image_column: str, fast: bool, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.image_column, self.fast = image_column, fast
        self.pool = ThreadPoolExecutor(max(1, int(threads)), thread_name_prefix="decode")

    def __call__(self, batch: dict) -> dict:
        return actor_decode_batch(batch, image_column=self.image_column, fast=self.fast, pool=self.pool)


def device_decode_batch(batch: dict, *, image_column: str, device, gpu_decode) -> dict:
    """Numpy rows from ``read_units`` -> ``decode_batch``'s rows, ``pixels`` a uint8 torch tensor on ``device``.

    ``gpu_decode``: ``torchvision.io.decode_jpeg``'s contract (``screening.device_decode``).
    """
    import torch

    from screening.device_decode import decode_on_device

    datas = list(batch["data"])
    stage, error = _read_stage(datas, list(batch["read_error"]), image_column)
    ok = np.flatnonzero(stage == STAGE_OK)
    decoded = decode_on_device([bytes(datas[i]) for i in ok], device=device, gpu_decode=gpu_decode)
    pixels = decoded.pixels.new_zeros((len(datas),) + tuple(decoded.pixels.shape[1:]))
    pixels[torch.as_tensor(ok, device=pixels.device)] = decoded.pixels
    for j, i in enumerate(ok):
        if decoded.errors[j]:
            stage[i], error[i] = "decode", decoded.errors[j]
    return {**_identity(batch), "stage": stage, "error": error, "pixels": pixels}


def other_node_notice(device: str, precision: str, run_rule: str | None, caps=None) -> str | None:
    """``auto`` was resolved on another node: say so where this node's own rule differs (it still uses the run's
    precision, as one output holds one precision); None where it agrees or the precision was asked for."""
    if run_rule is None:
        return None
    from screening.hardware import Capabilities, precision_rule

    caps = caps or Capabilities.from_this_machine(device)
    mine, why = precision_rule(caps)
    if mine == run_rule:
        return None
    return (f"screening: this encoder's node ({caps.describe()}) would choose precision {mine!r} ({why}), but the "
            f"run resolved {run_rule!r} on another node; it uses the run's {precision!r}: one output holds one "
            f"precision. For speed on mixed nodes, give --precision explicitly or screen each node kind separately.")


class EncoderActor:
    """Callable class for ``map_batches(compute=ActorPoolStrategy(...))``."""

    def __init__(self, *, store, model_id: str, subjects, rois, precision: str, device: str = "cpu",
                 num_threads: int | None = None, throttle_s: float = 0.0, decode: str = "cpu",
                 image_column: str = "image", forward_chunk: int | None = None,
                 checkpoint_sha256: str | None = None, fast_decode: bool = True, decode_threads: int = 1,
                 precision_rule: str | None = None, features: bool = False, setup_log: str | None = None,
                 vertex_stats: dict | None = None):
        import torch

        started = time.time()

        from screening.models.collapsed import collapse_key
        from screening.models.encoder import RoiEncoder

        if device == "cuda" and not torch.cuda.is_available():
            from screening.exceptions import InvalidParameterError

            raise InvalidParameterError("the encoder actor was given a GPU but torch sees no CUDA device")
        self.mode, self.image_column, self.device = decode_mode(decode), image_column, device
        if self.mode.on_device:
            from screening.device_decode import torchvision_decoder
            from screening.exceptions import InvalidParameterError

            if device != "cuda":
                raise InvalidParameterError(f"decode='gpu' (--decode gpu) needs a CUDA encoder; this one is on "
                                            f"{device!r}")
            self.gpu_decode = torchvision_decoder()
        if self.mode.in_actor:
            self.actor_decode = ActorDecode(image_column=image_column, fast=fast_decode, threads=decode_threads)
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.precision_notice = other_node_notice(device, precision, precision_rule)
        if self.precision_notice:
            print(self.precision_notice, file=sys.stderr, flush=True)
        model, _info = store.load_model(model_id)
        loaded = time.time()
        # Arrays arrive read-only (zero-copy from the object store); per-subject (reliability-filtered) mappings too.
        rois = {k: (np.array(v) if isinstance(v, np.ndarray) else {s: np.array(c) for s, c in v.items()})
                for k, v in rois.items()}
        # CPU: the collapsed matrix comes from the node cache, built once per machine and mapped by every actor
        key = collapse_key(checkpoint_sha256, list(subjects), rois) if checkpoint_sha256 else None
        self.encoder = RoiEncoder.from_model(model, list(subjects), rois, precision=precision, device=device,
                                             cache_key=key, cache_dir=getattr(store, "cache_dir", None),
                                             release_heads=not vertex_stats)
        # --vertex-stats: the full heads stay (file-backed pages of the checkpoint) for the per-label vertex sums
        self.vertex = VertexStage(model, list(subjects), precision, **vertex_stats) if vertex_stats else None
        self.setup = {"started_at": started, "checkpoint_load_s": round(loaded - started, 2),
                      "collapse_s": round(time.time() - loaded, 2), "collapse_source": self.encoder.collapse_source,
                      "ready_at": time.time()}
        self.setup_log = setup_log
        self.forward_chunk = forward_chunk
        self.features = features
        self.n_features = model.core.width
        del model
        gc.collect()
        self.n_subjects = len(self.encoder.subjects)
        self.n_rois = len(self.encoder.roi_names)
        self.throttle_s = throttle_s
        # decode="actor" runs ACTOR_CALLS calls at once (run.encoder_pool); one at a time holds the model
        self._model_lock = threading.Lock()

    def _encode(self, pixels) -> np.ndarray:
        """(k, S+1, R) ROI means: every subject and their mean."""
        return self._encode_all(pixels)[0]

    def _encode_all(self, pixels):
        """``(roi (k, S+1, R), features (k, C) or None)``."""
        step = self.forward_chunk or len(pixels)   # CPU: activations of one chunk, not of the whole batch
        parts = [self._forward(pixels[i:i + step]) for i in range(0, len(pixels), step)]
        out = np.concatenate([p[0] for p in parts])
        mean = out.mean(axis=1, dtype=np.float64).astype(np.float32)[:, None, :]
        feats = np.concatenate([p[1] for p in parts]) if self.features else None
        return np.concatenate([out, mean], axis=1), feats          # (k, S+1, R)

    def _forward(self, pixels):
        if isinstance(pixels, np.ndarray):
            got = self.encoder.encode_numpy(pixels, with_features=self.features)   # (k, S, R) float32
        else:   # decoded on the device already
            got = self.encoder(pixels, with_features=self.features)
            got = tuple(t.cpu().numpy() for t in got) if self.features else got.cpu().numpy()
        return got if self.features else (got, None)

    def __call__(self, batch: dict) -> dict:
        if self.mode.in_actor:   # outside the model lock: overlaps the other call's forward
            batch = self.actor_decode(batch)
        with self._model_lock:
            out = self._encode_batch(batch)
            if self.setup_log is not None:   # the first batch ends this encoder's setup
                from screening.pipeline.timeline import write_encoder_setup

                write_encoder_setup(self.setup_log, {**self.setup, "first_batch_done_at": time.time(),
                                                     "first_batch_images": len(out["stage"])})
                self.setup_log = None
            return out

    def _encode_batch(self, batch: dict) -> dict:
        if self.throttle_s:
            time.sleep(self.throttle_s)  # tests only: keeps a run in flight long enough to kill things
        if self.mode.on_device:
            batch = device_decode_batch(batch, image_column=self.image_column, device=self.device,
                                        gpu_decode=self.gpu_decode)
        stage = np.asarray(batch["stage"], dtype=object).copy()
        error = np.asarray(batch["error"], dtype=object).copy()
        n = stage.shape[0]
        roi = np.full((n, self.n_subjects + 1, self.n_rois), np.nan, dtype=np.float32)
        feats = np.full((n, self.n_features), np.nan, dtype=np.float16) if self.features else None
        ok = np.flatnonzero(stage == STAGE_OK)
        vstats = np.full(n, "", dtype=object)
        if ok.size and self.vertex is not None:   # one forward: ROI means, embedding and the vertex statistics
            try:
                roi[ok], f, vstats[ok] = self.vertex.encode(self.encoder, np.asarray(batch["pixels"])[ok], batch, ok,
                                                            self.forward_chunk)
                if feats is not None:
                    feats[ok] = f
                ok = ok[:0]
            except Exception as exc:  # noqa: BLE001 - the batch's rows are errors, named; the run goes on
                stage[ok], error[ok] = "encode", f"vertex statistics: {type(exc).__name__}: {exc}"
                ok = ok[:0]
        if ok.size:
            pixels = batch["pixels"] if self.mode.on_device else np.asarray(batch["pixels"])
            try:
                roi[ok], f = self._encode_all(pixels[ok])
                if feats is not None:
                    feats[ok] = f
            except Exception:  # noqa: BLE001 - retry row by row so one bad row cannot sink the batch
                for i in ok:
                    try:
                        r, f = self._encode_all(pixels[i:i + 1])
                        roi[i] = r[0]
                        if feats is not None:
                            feats[i] = f[0]
                    except Exception as exc:  # noqa: BLE001
                        stage[i], error[i] = "encode", f"{type(exc).__name__}: {exc}"
        out = {k: v for k, v in batch.items() if k not in ("pixels", LABEL)}   # the label was the vertex stage's
        out.update(stage=stage, error=error, roi=roi)
        if feats is not None:
            out["features"] = feats
        if self.vertex is not None:
            out["vstats"] = vstats
        return out


class VertexStage:
    """An encoder's ``--vertex-stats`` work: per batch and unit, the full readout of the labelled images and their
    per-label n / sum / centred sum of squares (``screening.vertex_stats``), written as one partial file whose path
    every row of the unit in the batch carries; the driver commits it with the unit and merges it (UnitSink)."""

    def __init__(self, model, subjects, precision, *, labels: str, layout, storage=None, model_id: str = "",
                 variant: str = "all"):
        from screening.labels import Labeler

        self.heads = {s: model.head(s) for s in subjects}
        self.subjects, self.precision = subjects, precision
        self.labeler = Labeler(labels, storage)
        self.layout, self.meta = layout, {"model_id": model_id, "variant": variant}

    def encode(self, encoder, pixels, batch, ok, step: int | None = None):
        """``(ROI means (k, S+1, R), embeddings (k, C), partial path per row)`` of the rows ``ok``; the core runs
        ``step`` images at a time (the encoder's forward chunk: its activations, not the whole batch's)."""
        import uuid

        from screening.vertex_stats import save_partial

        ids = np.asarray(batch["image_id"], dtype=object)[ok]
        units = np.asarray(batch["unit"], dtype=object)[ok]
        values = np.asarray(batch[LABEL], dtype=object)[ok] if LABEL in batch else None   # column:NAME
        pairs = self.labeler.pairs(ids, np.asarray(batch["source"], dtype=object)[ok], values)
        labels = sorted(set(pairs.label))
        member = np.zeros((len(ok), len(labels)))
        at = {i: r for r, i in enumerate(ids.tolist())}
        for i, lab in zip(pairs.image_id, pairs.label):
            member[at[i], labels.index(lab)] = 1.0
        roi, embedding, stats = self._forward(encoder, pixels, units, member, labels, step or len(ok))
        paths = np.full(len(ok), "", dtype=object)
        for unit in dict.fromkeys(units.tolist()):
            rows = np.flatnonzero(units == unit)
            first = int(np.asarray(batch["row"])[ok][rows].min())   # named by first row: merged in row order
            rel = self.layout.rel_part("vstats", unit, f"part-{first:09d}-{uuid.uuid4().hex[:12]}.npz")
            save_partial(self.layout.fs, self.layout.join(rel), stats[unit])
            paths[rows] = rel
        mean = roi.mean(axis=1, dtype=np.float64).astype(np.float32)[:, None, :]
        return np.concatenate([roi, mean], axis=1), embedding, paths

    def _forward(self, encoder, pixels, units, member, labels, step):
        """ROI means, embeddings and each unit's statistics (only the labels its rows carry), ``step`` images at a
        time; a unit's chunks are combined by Chan's merge."""
        from screening.vertex_stats import batch_stats

        import torch

        roi, emb, cores = [], [], []
        for lo in range(0, len(units), step):   # the core per chunk (its activations); its output is 1 MB an image
            r, core = encoder.encode_with_core(pixels[lo:lo + step])
            roi.append(r.cpu().numpy())
            emb.append(core.mean(dim=(2, 3)).cpu().numpy())
            cores.append(core)
        core = torch.cat(cores)
        stats = {}
        for unit in dict.fromkeys(units.tolist()):   # the heads read once a batch (their pages are dropped after)
            rows = np.flatnonzero(units == unit)
            have = np.flatnonzero(member[rows].sum(axis=0))
            stats[unit] = batch_stats(self.heads, self.subjects, core[rows], member[rows][:, have],
                                      [labels[j] for j in have], self.precision, **self.meta)
        return np.concatenate(roi), np.concatenate(emb), stats


class NullEncoderActor:
    """Test/benchmark-only encoder stage that costs nothing: random ROI means in the encoder's output contract.

    ``benchmarks/pipeline_scale.py`` runs the real plan with it, so what is measured is everything but the model.
    """

    def __init__(self, *, subjects, rois, seed: int = 0, decode: str = "cpu", image_column: str = "image",
                 fast_decode: bool = True, decode_threads: int = 1, features: bool = False, **_ignored):
        self.shape = (len(subjects) + 1, len(rois))
        self.features = features
        self.rng = np.random.default_rng(seed)
        self.mode, self.image_column = decode_mode(decode), image_column
        if self.mode.in_actor:   # decoding is the actor's work in that plan, as in EncoderActor
            self.actor_decode = ActorDecode(image_column=image_column, fast=fast_decode, threads=decode_threads)
        self._lock = threading.Lock()

    def __call__(self, batch: dict) -> dict:
        if self.mode.in_actor:
            batch = self.actor_decode(batch)
        with self._lock:   # a numpy Generator is not thread-safe (decode="actor" runs calls concurrently)
            return self._fake(batch)

    def _fake(self, batch: dict) -> dict:
        if self.mode.on_device:   # the read stage's raw rows (the decode="gpu" plan): nothing is decoded
            stage, error = _read_stage(list(batch["data"]), list(batch["read_error"]), self.image_column)
            batch = {**_identity(batch), "stage": stage, "error": error}
        n = len(batch["stage"])
        roi = self.rng.standard_normal((n,) + self.shape, dtype=np.float32)
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["roi"] = roi
        if self.features:
            out["features"] = self.rng.standard_normal((n, 384), dtype=np.float32).astype(np.float16)
        return out
