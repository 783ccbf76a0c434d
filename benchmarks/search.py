"""``screening search`` over a responses table of ROWS images x COLS ROI columns: time and peak memory, one query
and 16 queries in one pass.

    python benchmarks/search.py [--rows 1000000] [--cols 379] [--repeats 3] [--dir /tmp/search-bench]

Writes the table once (float32 columns, ``subject="mean"``, row groups of 65,536; random profiles), then runs each
measurement in a fresh process (its peak RSS is its own), alternating the two settings, and prints the median wall
time and the peak RSS of each, with the CPU it ran on. Queries: ``like`` = images of the table (self-retrieval is
checked: each finds itself first with r = 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def write_table(path: str, rows: int, cols: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(path, "responses"), exist_ok=True)
    names = [f"ROI{j:03d}" for j in range(cols)]
    schema = pa.schema([("image_id", pa.string()), ("subject", pa.string())] + [(n, pa.float32()) for n in names])
    rng = np.random.default_rng(0)
    scale = np.linspace(0.2, 2.0, cols, dtype=np.float32)
    with pq.ParquetWriter(os.path.join(path, "responses", "part-0.parquet"), schema, compression="none") as w:
        for start in range(0, rows, 65_536):
            n = min(65_536, rows - start)
            x = rng.standard_normal((n, cols), dtype=np.float32) * scale + scale
            arrays = [pa.array([f"{i:016x}" for i in range(start, start + n)]), pa.array(["mean"] * n)]
            w.write_table(pa.Table.from_arrays(arrays + [pa.array(x[:, j]) for j in range(cols)], schema=schema))


def measure(path: str, n_queries: int, rows: int) -> dict:
    from screening.search import search

    likes = [f"{(i * 7919) % rows:016x}" for i in range(n_queries)]
    t = time.perf_counter()
    got = search(path, like=likes, k=20)
    wall = time.perf_counter() - t
    first = got[got["rank"] == 1]
    ok = sorted(first.image_id) == sorted(likes) and bool((first.similarity > 0.999999).all())
    return {"queries": n_queries, "wall_s": round(wall, 2), "self_retrieval": ok,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "?"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--cols", type=int, default=379)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default="/tmp/search-bench")
    p.add_argument("--measure", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.measure is not None:
        print(json.dumps(measure(a.dir, a.measure, a.rows)))
        return
    marker = os.path.join(a.dir, f"{a.rows}x{a.cols}")
    if not os.path.exists(marker):
        t = time.perf_counter()
        write_table(a.dir, a.rows, a.cols)
        open(marker, "w").close()
        print(f"wrote {a.rows:,} x {a.cols} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    runs: dict = {1: [], 16: []}
    for _ in range(a.repeats):
        for q in (1, 16):
            out = subprocess.run([sys.executable, __file__, "--dir", a.dir, "--rows", str(a.rows), "--measure", str(q)],
                                 check=True,
                                 capture_output=True, text=True).stdout
            runs[q].append(json.loads(out.strip().splitlines()[-1]))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {a.rows:,} rows x {a.cols} columns")
    for q, rs in runs.items():
        print(json.dumps({"queries": q, "median_wall_s": statistics.median(r["wall_s"] for r in rs),
                          "walls": [r["wall_s"] for r in rs], "peak_rss_gib": max(r["peak_rss_gib"] for r in rs),
                          "self_retrieval": all(r["self_retrieval"] for r in rs)}))


if __name__ == "__main__":
    main()
