"""Benchmark ``screening rank`` on a generated responses table of >= 5 million (image, subject) rows.

    python benchmarks/rank.py --images 555556 --dir /tmp/rank-bench --generate-only   # 5,000,004 rows, 382 ROI columns
    python benchmarks/rank.py --dir /tmp/rank-bench --rank-arg=--roi=FFC ... --cleanup  # reuses the table

Side by side with another checkout's ranker (e.g. the DuckDB one that was evaluated, ``git worktree add /tmp/rank-duckdb
2fd3722`` plus ``pip install duckdb``), interleaved, medians reported::

    python benchmarks/rank.py --dir /tmp/rank-bench --baseline /tmp/rank-duckdb --repeat 2 \
        --rank-arg=--no-selectivity --rank-arg=--no-consensus --baseline-arg=--threads=2 --baseline-arg=--memory-limit-mb=1024

The table has the ``all`` variant's columns (360 areas + 22 groups, float32), 8 subjects + ``mean``, and
is written the way the pipeline's sink writes ``responses/``: same schema and row order, one file per
``--chunk-images`` images, row groups of 65,538 rows (see :func:`pipeline_row_group_rows`); generating it
never holds more than one row group. An existing complete table under ``--dir`` is reused.
Ranking runs in a child process; its wall time and peak RSS (``ru_maxrss`` of that child from ``wait4``: the
whole process, DuckDB's threads included) are reported next to the table's size on disk and in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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


def rank_once(resp: Path, out: Path, extra: list[str], checkout: str | None) -> dict:
    """One ``screening rank`` in a child process (``checkout`` first on its ``PYTHONPATH``): wall time and the
    child's own peak RSS."""
    cmd = [sys.executable, "-m", "screening.cli", "rank", str(resp.resolve()), str(out.resolve())] + extra
    env = dict(os.environ)
    if checkout:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(checkout).resolve())] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True, env=env, cwd=checkout)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0), err_f.seek(0)
        print(err_f.read()[-1500:], out_f.read()[-500:], sep="\n")
    peak_kb = usage.ru_maxrss  # KiB on Linux
    return {"args": extra, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_gb": round(peak_kb * 1024 / 1e9, 2), "returncode": proc.returncode}


def compare(resp: Path, root: Path, args) -> int:
    """Rank ``args.repeat`` times with each ranker, interleaved; print every run and the medians."""
    meta = [pq.ParquetFile(p).metadata for p in sorted(resp.glob("*.parquet"))]
    rows = sum(m.num_rows for m in meta)
    ncols = meta[0].num_columns - 2
    disk = sum(p.stat().st_size for p in resp.glob("*.parquet"))
    in_mem = rows * ncols * 4
    runs = [("current", None, args.rank_arg)]
    if args.baseline:
        runs.append(("baseline", args.baseline, args.rank_arg + args.baseline_arg))
    results = {name: [] for name, _, _ in runs}
    for rep in range(args.repeat):  # interleaved: each repetition runs every ranker once
        for name, checkout, extra in runs:
            r = rank_once(resp, root / f"rankings-{name}", extra, checkout)
            print(json.dumps({"ranker": name, "repetition": rep + 1, **r}))
            results[name].append(r)
    summary = {"rows": rows, "roi_columns": ncols, "table_disk_gb": round(disk / 1e9, 2),
               "table_float32_gb": round(in_mem / 1e9, 2), "row_group_rows": meta[0].row_group(0).num_rows,
               "cpus": os.cpu_count(), "repeat": args.repeat}
    for name, rs in results.items():
        summary[name] = {"args": rs[0]["args"], "checkout": dict((n, c) for n, c, _ in runs)[name] or "this one",
                         "median_wall_s": round(statistics.median(r["wall_s"] for r in rs), 1),
                         "median_cpu_s": round(statistics.median(r["cpu_s"] for r in rs), 1),
                         "median_peak_rss_gb": round(statistics.median(r["peak_rss_gb"] for r in rs), 2),
                         "returncodes": [r["returncode"] for r in rs]}
    print(json.dumps(summary, indent=1))
    return max(r["returncode"] for rs in results.values() for r in rs)


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
    ap.add_argument("--baseline-arg", action="append", default=[],
                    help="extra argument for the baseline checkout's `screening rank` only (e.g. --threads=2)")
    ap.add_argument("--baseline", metavar="CHECKOUT",
                    help="also run the ranker of this source tree (a git worktree of an older commit)")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repetitions (default 1)")
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
    returncode = compare(resp, root, args)
    if args.cleanup:
        import shutil

        shutil.rmtree(root)
        print(f"deleted {root}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
