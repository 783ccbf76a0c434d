"""Load + collapse of every head to ROI means (``RoiEncoder.from_model``, in memory, bf16), in this process.

    python benchmarks/collapse_time.py STORE LABEL
    PYTHONPATH=/path/to/worktree-of-REV python benchmarks/collapse_time.py STORE "before (REV)"   # the same, older code

Run the two alternately, each in a fresh process (the peak RSS is the process's). STORE: a published-size synthetic
store (``screening make-store DIR --variant all``). Prints wall and CPU seconds and the peak RSS.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

os.environ["SCREENING_CACHE_DIR"] = tempfile.mkdtemp()   # no node cache: every run collapses


def main(store_dir: str, label: str) -> None:
    from screening.rois import build_roi_set
    from screening.store import open_store

    try:
        from screening.models.registry import SUBJECTS
    except ImportError:   # trees before the registry was public
        from screening.models._weights import SUBJECTS
    from screening.models.encoder import RoiEncoder

    store = open_store(store_dir)
    t, c = time.perf_counter(), time.process_time()
    model, _ = store.load_model(store.model_ids()[0])
    RoiEncoder.from_model(model, list(SUBJECTS), build_roi_set("all"), precision="bf16")
    print(f"{label}: load+collapse {time.perf_counter() - t:.1f} s wall, {time.process_time() - c:.1f} CPU-s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
