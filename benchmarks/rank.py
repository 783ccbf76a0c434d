"""Benchmark ``screening rank`` on a generated responses table of >= 5 million (image, subject) rows.

    python benchmarks/rank.py --images 555556 --dir /tmp/rank-bench            # 5,000,004 rows, 382 ROI columns
    python benchmarks/rank.py --dir /tmp/rank-bench --reuse --roi FFC --roi PHA1-3 ...

The table has the ``all`` variant's columns (360 areas + 22 groups, float32), 8 subjects + ``mean``, and
is written chunk by chunk as many Parquet files, so generating it never holds more than one chunk.
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


def generate(out: Path, n_images: int, chunk_images: int, seed: int) -> tuple[int, int]:
    from screening import atlas

    cols = list(atlas.area_names()) + [atlas.group_column(g) for g in range(1, 23)]
    empty = {n for n, g in atlas.roi_grayordinates().items() if g.size == 0}
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = 0
    for c, lo in enumerate(range(0, n_images, chunk_images)):
        hi = min(n_images, lo + chunk_images)
        ids = np.array([f"img{i:08d}" for i in range(lo, hi)], dtype=object)
        n = hi - lo
        shared = rng.standard_normal((n, len(cols)), dtype=np.float32)  # image effect shared by subjects
        per = []
        for s in SUBJECTS[:-1]:
            per.append(shared + 0.7 * rng.standard_normal((n, len(cols)), dtype=np.float32))
        per.append(np.mean(per, axis=0, dtype=np.float32))
        x = np.concatenate(per)
        x[:, [i for i, c_ in enumerate(cols) if c_ in empty]] = np.nan
        table = pa.table({"image_id": np.tile(ids, len(SUBJECTS)), "subject": np.repeat(SUBJECTS, n),
                          **{c_: x[:, i] for i, c_ in enumerate(cols)}})
        pq.write_table(table, out / f"part-{c:05d}.parquet")
        rows += table.num_rows
        del x, per, table
    return rows, len(cols)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=555_556, help="images; rows = 9 x images (default 5,000,004)")
    ap.add_argument("--chunk-images", type=int, default=20_000)
    ap.add_argument("--dir", default="/tmp/rank-bench")
    ap.add_argument("--reuse", action="store_true", help="reuse an existing generated table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rank-arg", action="append", default=[], help="extra argument for `screening rank`")
    args = ap.parse_args()
    root = Path(args.dir)
    resp = root / "responses"
    t0 = time.perf_counter()
    if not args.reuse:
        if resp.exists():
            for p in resp.glob("*.parquet"):
                p.unlink()
        rows, ncols = generate(resp, args.images, args.chunk_images, args.seed)
        print(f"generated {rows:,} rows x {ncols} float32 ROI columns in {time.perf_counter() - t0:.0f}s")
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
    print(json.dumps(result, indent=1))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
