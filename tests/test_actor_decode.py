"""decode="actor": an encoder actor runs two calls at once, one decoding while the other holds the model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa

from screening.pipeline.decode_modes import ACTOR_CALLS
from screening.pipeline.stages import EncoderActor
from tests.image_corpus import encode, photo_like

VIS = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"


def _raw_batch(n: int, seed: int) -> dict:
    datas = [encode(photo_like(64, 48, seed=seed + i), "JPEG", quality=90) for i in range(n)]
    table = pa.table({"unit": ["u"] * n, "row": np.arange(n), "image_id": [f"i{seed + k}" for k in range(n)],
                      "source": [f"s{k}" for k in range(n)], "data": pa.array(datas, pa.binary()),
                      "read_error": [""] * n})
    return {k: np.asarray(v.to_numpy(zero_copy_only=False)) for k, v in zip(table.column_names, table.columns)}


def _actor(visual_store):
    from screening.store import open_store

    return EncoderActor(store=open_store(str(visual_store)), model_id=VIS, subjects=["sub-01", "sub-02"],
                        rois={"a": np.arange(0, 40), "b": np.arange(40, 90)}, precision="fp32", decode="actor",
                        decode_threads=2)


def test_the_next_batch_decodes_while_the_model_runs_and_the_model_runs_one_batch_at_a_time(visual_store):
    actor = _actor(visual_store)
    batches = [_raw_batch(3, 10 * k) for k in range(3)]
    alone = [actor(b) for b in batches]             # one call at a time: the reference rows

    spans, lock = {"decode": [], "forward": []}, threading.Lock()
    decode, forward = actor.actor_decode, actor._forward

    def timed(kind, fn):
        def run(*a):
            t0 = time.monotonic()
            out = fn(*a)
            if kind == "forward":
                time.sleep(0.4)                      # a slow model: room for the other call's decode
            with lock:
                spans[kind].append((t0, time.monotonic()))
            return out
        return run

    actor.actor_decode, actor._forward = timed("decode", decode), timed("forward", forward)
    results = [None] * len(batches)

    def call(i):
        results[i] = actor(batches[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for t in threads[:ACTOR_CALLS]:
        t.start()
    time.sleep(0.2)                                  # the first forward has begun
    threads[ACTOR_CALLS].start()
    for t in threads:
        t.join(30)
    fw = sorted(spans["forward"])
    assert len(fw) == 3 and all(a[1] <= b[0] for a, b in zip(fw, fw[1:])), f"forwards overlapped: {fw}"
    assert any(f0 < d0 and d1 < f1 for d0, d1 in spans["decode"] for f0, f1 in fw), \
        f"no decode ran during a forward: decode {spans['decode']}, forward {fw}"
    for got, want in zip(results, alone):
        assert list(got["image_id"]) == list(want["image_id"]) and list(got["stage"]) == [""] * 3
        np.testing.assert_array_equal(got["roi"], want["roi"])


def test_only_the_actor_decode_plan_on_gpu_encoders_runs_concurrent_calls():
    from screening.pipeline.plan import Resources
    from screening.pipeline.run import encoder_pool

    res = Resources(num_gpus=1, num_cpus=4, min_size=1, max_size=2, batch_size=256, device="cuda",
                    write_batch_size=8192)
    actor = encoder_pool("actor", res)
    assert actor.max_concurrent_calls_per_actor == ACTOR_CALLS == 2 and actor.enable_true_multi_threading
    for decode in ("cpu", "gpu"):
        pool = encoder_pool(decode, res)
        assert not pool.enable_true_multi_threading and (pool.min_size, pool.max_size) == (1, 2)
    cpu = Resources(num_gpus=0, num_cpus=2, min_size=1, max_size=1, batch_size=64, device="cpu", write_batch_size=1024)
    assert not encoder_pool("actor", cpu).enable_true_multi_threading         # CPU encoders: one call
    assert encoder_pool("actor", cpu, "null").max_concurrent_calls_per_actor == 2   # the benchmarks' GPU stand-in


def test_a_gpu_pool_that_could_outrun_the_driver_on_decode_tasks_is_told_to_decode_in_the_actors(visual_store,
                                                                                                 tmp_path):
    import pyarrow.parquet as pq

    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan, check_resources, driver_notice

    shard = tmp_path / "in" / "a.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({"image_id": ["g0"], "image": pa.array([encode(photo_like(48, 40, seed=1), "JPEG")],
                                                                   pa.binary())}), shard)

    def notice(gpus, **kw):
        plan = build_plan(RunConfig.of(str(shard), str(visual_store), str(tmp_path / "o"), model_id=VIS, rois=["V1"],
                                       progress=False, **kw))
        return driver_notice(plan, check_resources(plan, {"GPU": float(gpus), "CPU": 8.0 * gpus}))

    assert notice(8) is None and notice(16) is None            # <= 24,000 images/s: one driver on decode tasks
    msg = notice(32)
    assert msg and "32 GPU encoders can take ~48,000 images/s" in msg and "--decode actor" in msg
    assert notice(32, decode="actor") is None
    assert notice(32, num_gpus_per_encoder=0.5, num_encoders=(1, 16)) is None   # 16 encoders x half a GPU
    assert notice(64, num_gpus_per_encoder=0) is None          # CPU encoders: far below any driver limit
