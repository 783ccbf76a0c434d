"""Peak resident memory of a command and every process it starts (the driver, Ray's GCS, raylet, workers ...).

    python benchmarks/tree_memory.py [--every-s 0.25] [--json OUT] -- screening demo ...

Samples the process tree every ``--every-s`` and reports the peak of the tree's summed RSS (what ``top`` shows per
process, added up: pages shared between processes, such as the memory-mapped ROI matrix or shared libraries, count
once per process) and of its summed PSS (each shared page split between the processes that map it: the tree's real
footprint). Needs psutil (the ``bench`` extra). Prints the command's output as it comes.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time

import psutil

GIB = 2**30


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _sample(procs) -> tuple[int, int, list[tuple[str, int, int]]]:
    rss = pss = 0
    rows = []
    for p in procs:
        try:
            m = p.memory_full_info()
            name = " ".join(p.cmdline()[:3])[:90] or p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += m.rss
        pss += getattr(m, "pss", m.rss)
        rows.append((name, m.rss, getattr(m, "pss", m.rss)))
    return rss, pss, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every-s", type=float, default=0.25)
    p.add_argument("--json", default=None)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the command after --")
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak = {"rss": 0, "pss": 0, "rss_at_s": 0.0, "pss_at_s": 0.0, "pss_rows": []}
    t0 = time.perf_counter()
    done = threading.Event()

    def watch():
        while not done.is_set():
            rss, pss, rows = _sample(_tree(root))
            now = round(time.perf_counter() - t0, 2)
            if rss > peak["rss"]:
                peak.update(rss=rss, rss_at_s=now)
            if pss > peak["pss"]:
                peak.update(pss=pss, pss_at_s=now, pss_rows=sorted(rows, key=lambda r: -r[2]))
            done.wait(args.every_s)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    rc = proc.wait()
    done.set()
    thread.join()
    result = {"command": cmd, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
              "cpu": _cpu(), "peak_tree_rss_gib": round(peak["rss"] / GIB, 3), "at_s": peak["rss_at_s"],
              "peak_tree_pss_gib": round(peak["pss"] / GIB, 3), "pss_at_s": peak["pss_at_s"],
              "processes_at_pss_peak": [{"process": n, "rss_gib": round(r / GIB, 3), "pss_gib": round(s / GIB, 3)}
                                      for n, r, s in peak["pss_rows"]]}
    print(json.dumps(result, indent=1), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return rc


def _cpu() -> str:
    from screening.hardware import cpu_model_name

    return f"{cpu_model_name()} ({platform.machine()}, {psutil.cpu_count()} CPUs)"


if __name__ == "__main__":
    sys.exit(main())
