"""Benchmark ``screening rank`` on a generated responses table of >= 5 million (image, subject) rows.

    python benchmarks/rank.py --images 555556 --dir /tmp/rank-bench --generate-only   # 5,000,004 rows, 382 ROI columns
    python benchmarks/rank.py --dir /tmp/rank-bench --rank-arg=--roi=FFC ... --cleanup  # reuses the table

The table has the ``all`` variant's columns (360 areas + 22 groups, float32), 8 subjects + ``mean``, and
is written the way the pipeline's sink writes ``responses/``: same schema and row order, one file per
``--chunk-images`` images, row groups of 65,538 rows (see :func:`pipeline_row_group_rows`); generating it
never holds more than one row group. An existing complete table under ``--dir`` is reused.
Ranking runs in a child process; its wall time and peak RSS (``ru_maxrss`` of the child) are reported
next to the table's size on disk and in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SUBJECTS = [f"sub-{i:02d}" for i in range(1, 9)] + ["mean"]


def pipeline_row_group_rows(n_subjects: int = len(SUBJECTS)) -> int:
    """Rows per response row group as the pipeline writes them on GPU encoders.

    ``write_parts`` (screening/pipeline/parts.py) writes one part file of one row group per (write batch, unit); a
    write batch is ``DEFAULT_WRITE_BATCH_SIZE["gpu"]`` images (8192), i.e. 8192 x 9 = 73,728 rows with 8 subjects.
    """
    from screening.pipeline.plan import DEFAULT_WRITE_BATCH_SIZE

    return DEFAULT_WRITE_BATCH_SIZE["gpu"] * n_subjects


def generate(out: Path, n_images: int, chunk_images: int, seed: int) -> tuple[int, int]:
    """Write the table the way the pipeline's sink does.

    Same schema (``responses_schema``: ``image_id`` string, ``subject`` string, one float32 column per ROI, in that
    order), same row order (image by image; per image ``sub-01`` .. ``sub-08``, ``mean``), one ``ParquetWriter``
    per file and row groups of :func:`pipeline_row_group_rows` rows (the pipeline writes one such group per part).
    """
    from screening import atlas
    from screening.pipeline.tables import responses_schema

    cols = list(atlas.area_names()) + [atlas.group_column(g) for g in range(1, 23)]
    schema = responses_schema(cols)
    empty = [i for i, (n, g) in enumerate(atlas.roi_grayordinates().items()) if g.size == 0]
    assert list(atlas.roi_grayordinates()) == cols[:360]
    S = len(SUBJECTS)
    rg_images = pipeline_row_group_rows(S) // S
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = 0
    for c, lo in enumerate(range(0, n_images, chunk_images)):
        hi = min(n_images, lo + chunk_images)
        with pq.ParquetWriter(out / f"part-{c:05d}.parquet", schema) as writer:
            for glo in range(lo, hi, rg_images):
                ghi = min(hi, glo + rg_images)
                n = ghi - glo
                ids = [f"img{i:08d}" for i in range(glo, ghi)]
                shared = rng.standard_normal((n, len(cols)), dtype=np.float32)  # image effect shared by subjects
                x = np.empty((n, S, len(cols)), np.float32)
                for k in range(S - 1):
                    x[:, k] = shared + 0.7 * rng.standard_normal((n, len(cols)), dtype=np.float32)
                x[:, S - 1] = x[:, : S - 1].mean(axis=1)
                x[:, :, empty] = np.nan
                x = x.reshape(n * S, len(cols))
                table = pa.table({"image_id": pa.array(np.repeat(np.array(ids, dtype=object), S), pa.string()),
                                  "subject": pa.array(SUBJECTS * n, pa.string()),
                                  **{c_: pa.array(x[:, i], pa.float32()) for i, c_ in enumerate(cols)}},
                                 schema=schema)
                writer.write_table(table)  # one row group, as the sink's _flush
                rows += table.num_rows
                del x, shared, table
    return rows, len(cols)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=555_556, help="images; rows = 9 x images (default 5,000,004)")
    ap.add_argument("--chunk-images", type=int, default=20_000)
    ap.add_argument("--dir", default="/tmp/rank-bench")
    ap.add_argument("--regenerate", action="store_true",
                    help="write a new table even if DIR/responses already holds one (default: reuse it)")
    ap.add_argument("--generate-only", action="store_true", help="write the table, do not rank")
    ap.add_argument("--cleanup", action="store_true", help="delete DIR (table and rankings) at the end")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank-arg", action="append", default=[], help="extra argument for `screening rank`")
    args = ap.parse_args()
    root = Path(args.dir)
    resp = root / "responses"
    t0 = time.perf_counter()
    done = root / "_generated.json"  # written after the last file: a partial table is never reused
    if args.regenerate or not done.exists():
        done.unlink(missing_ok=True)
        if resp.exists():
            for p in resp.glob("*.parquet"):
                p.unlink()
        rows, ncols = generate(resp, args.images, args.chunk_images, args.seed)
        gen_s = time.perf_counter() - t0
        done.write_text(json.dumps({"rows": rows, "images": args.images, "seed": args.seed, "seconds": round(gen_s)}))
        print(f"generated {rows:,} rows x {ncols} float32 ROI columns in {gen_s:.0f}s")
    else:
        print(f"reusing {resp} ({done.read_text()})")
    if args.generate_only:
        return 0
    meta = [pq.ParquetFile(p).metadata for p in sorted(resp.glob("*.parquet"))]
    rows = sum(m.num_rows for m in meta)
    ncols = meta[0].num_columns - 2
    disk = sum(p.stat().st_size for p in resp.glob("*.parquet"))
    in_mem = rows * ncols * 4
    cmd = [sys.executable, "-m", "screening.cli", "rank", str(resp), str(root / "rankings")] + args.rank_arg
    print("command:", " ".join(cmd[2:]))
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t1
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(proc.stderr[-3000:])
    print(proc.stdout[-2000:])
    result = {"rows": rows, "roi_columns": ncols, "table_disk_gb": round(disk / 1e9, 2),
              "table_float32_gb": round(in_mem / 1e9, 2), "rank_wall_s": round(wall, 1),
              "rank_peak_rss_gb": round(peak_kb / 1e6, 2), "rank_args": args.rank_arg,
              "returncode": proc.returncode, "cpus": os.cpu_count()}
    meta0 = pq.ParquetFile(sorted(resp.glob("*.parquet"))[0]).metadata
    result["row_group_rows"] = meta0.row_group(0).num_rows
    print(json.dumps(result, indent=1))
    if args.cleanup:
        import shutil

        shutil.rmtree(root)
        print(f"deleted {root}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
