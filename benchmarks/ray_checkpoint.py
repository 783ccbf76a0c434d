"""Ray Data's own checkpointing (``DataContext.checkpoint_config``, beta in 2.60) against our commit protocol.

    python benchmarks/ray_checkpoint.py --rows 20000          # a few minutes on 2 cores

Same inputs, same decode and zero-cost encoder stages (``pipeline_scale.py``'s), one run each, side by side:

- ``ours``: ``screening.pipeline.screen`` (workers write parts, the driver commits units from receipts);
- ``ray-ckpt``: ``read_parquet -> decode -> null encoder -> write_parquet`` with
  ``CheckpointConfig(id_column="image_id")``, the plan shape Ray's checkpointing needs (a Read to a Write);
- ``ray-plain``: the same plan without checkpointing (what the checkpoint itself costs).

Then the behaviours that decide the choice, each measured, not assumed:
- resume after success: what a rerun reads and redoes;
- a shard rewritten with other images under the same ids: does the rerun notice?
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # pipeline_scale sets Ray's test environment

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline_scale import MODEL_ID, StandInStore, tiny_jpegs, write_inputs  # noqa: E402  (first: env + path)

S1, R = 9, 379


def _adapt(table):
    """read_parquet rows -> the columns our decode stage takes."""
    n = table.num_rows
    return pa.table({"unit": pa.array(["u"] * n), "row": pa.array(np.arange(n)), "image_id": table["image_id"],
                     "source": table["image_id"], "data": table["image"], "read_error": pa.array([""] * n)})


def _null_encode(batch):
    n = len(batch["image_id"])
    return {"image_id": batch["image_id"], "roi": np.random.default_rng(n).standard_normal((n, S1 * R),
                                                                                           dtype=np.float32)}


def ray_plan(in_dir, out, checkpoint_dir):
    import ray
    from ray.data import DataContext
    from ray.data.checkpoint import CheckpointConfig

    from screening.pipeline.stages import decode_batch

    ctx = DataContext.get_current()
    ctx.checkpoint_config = (CheckpointConfig(id_column="image_id", checkpoint_path=checkpoint_dir,
                                              delete_checkpoint_on_success=False) if checkpoint_dir else None)
    ds = ray.data.read_parquet(in_dir, columns=["image_id", "image"])
    ds = ds.map_batches(_adapt, batch_format="pyarrow")
    ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=32,
                        fn_kwargs={"image_column": "image", "fast": False})
    ds = ds.map_batches(_null_encode, batch_format="numpy")
    t0 = time.perf_counter()
    ds.write_parquet(out)
    wall = time.perf_counter() - t0
    ctx.checkpoint_config = None
    return wall


def count_rows(path):
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".parquet")]
    return sum(pq.read_metadata(f).num_rows for f in files), len(files)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--shard-rows", type=int, default=2_000)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import ray

    from screening.exceptions import InputChangedError
    from screening.pipeline import screen

    work = tempfile.mkdtemp(prefix="ckptbench")
    in_dir = os.path.join(work, "in")
    write_inputs(in_dir, args.rows, args.shard_rows, 16)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    fig = {}
    kw = dict(model_id=MODEL_ID, precision="fp32", num_encoders=1, num_cpus_per_encoder=0, progress=False,
              encoder_stage="null", write_batch_size=8192)
    for name in ("ours", "ray-plain", "ray-ckpt"):   # interleaved would be fairer; one of each fits this budget
        out = os.path.join(work, name)
        t0 = time.perf_counter()
        if name == "ours":
            screen(in_dir, StandInStore(), out, **kw)
            wall = time.perf_counter() - t0
        else:
            wall = ray_plan(in_dir, out, os.path.join(work, "ckpt") if name == "ray-ckpt" else None)
        fig[name] = {"wall_s": round(wall, 1), "images_per_s": round(args.rows / wall, 1)}
        print(name, fig[name], flush=True)

    # resume after success
    t0 = time.perf_counter()
    again = screen(in_dir, StandInStore(), os.path.join(work, "ours"), **kw)
    fig["ours"]["rerun_after_success_s"] = round(time.perf_counter() - t0, 2)
    fig["ours"]["rerun_units_run"] = again.units_run
    before_rows, before_files = count_rows(os.path.join(work, "ray-ckpt"))
    t0 = time.perf_counter()
    ray_plan(in_dir, os.path.join(work, "ray-ckpt"), os.path.join(work, "ckpt"))
    fig["ray-ckpt"]["rerun_after_success_s"] = round(time.perf_counter() - t0, 2)
    after_rows, after_files = count_rows(os.path.join(work, "ray-ckpt"))
    fig["ray-ckpt"]["rerun_rows_written"] = after_rows - before_rows

    # one shard rewritten with other images under the same ids
    shard = os.path.join(in_dir, "part-00000.parquet")
    t = pq.read_table(shard)
    imgs = tiny_jpegs(t.num_rows, 16, seed=99)
    pq.write_table(t.set_column(t.schema.get_field_index("image"), "image", pa.array(imgs, pa.binary())), shard)
    try:
        screen(in_dir, StandInStore(), os.path.join(work, "ours"), **kw)
        fig["ours"]["changed_shard"] = "rerun accepted the changed shard (BUG)"
    except InputChangedError as exc:
        fig["ours"]["changed_shard"] = f"refused: {str(exc)[:160]}..."
    r0, _ = count_rows(os.path.join(work, "ray-ckpt"))
    ray_plan(in_dir, os.path.join(work, "ray-ckpt"), os.path.join(work, "ckpt"))
    r1, _ = count_rows(os.path.join(work, "ray-ckpt"))
    fig["ray-ckpt"]["changed_shard"] = (f"rerun wrote {r1 - r0} rows for the {t.num_rows} changed images: the old "
                                        f"results stand for the new images" if r1 == r0 else
                                        f"rerun wrote {r1 - r0} rows")
    print(json.dumps(fig, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=1)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
