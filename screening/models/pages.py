"""Give back the resident pages of memory-mapped checkpoint tensors that are done with (Linux).

``torch.load(mmap=True)`` maps the checkpoint file privately; every page read stays in the process's resident set
until the whole mapping goes, i.e. until the last tensor of the checkpoint dies. Collapsing the heads reads all
1.9 GB of them, so without this the encoder holds them and the collapsed matrix (2.9 GiB) at once.
``madvise(MADV_DONTNEED)`` on a clean private file mapping drops the pages from the process; a later read would fault
them in again from the file, unchanged. Anonymous memory is never touched (there it would zero the data).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys

MADV_DONTNEED = 4


def _file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's private file-backed mappings, from /proc/self/maps."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 6 or parts[4] == "0" or not parts[1].endswith("p") or not parts[5].strip().startswith("/"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi))
    return out


def release_file_pages(tensors) -> int:
    """Drop the resident pages wholly inside each tensor that lies in a private file mapping; returns bytes advised.
    A no-op (0) off Linux, for tensors in anonymous memory, or if the call fails."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        maps = _file_mappings()
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return 0
    page = mmap.PAGESIZE
    done = 0
    for t in tensors:
        start = t.data_ptr()
        end = start + t.untyped_storage().nbytes()
        if not any(lo <= start and end <= hi for lo, hi in maps):
            continue
        lo = -(-start // page) * page   # whole pages only: a page shared with a live neighbour stays
        hi = end // page * page
        if hi > lo and libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED) == 0:
            done += hi - lo
    return done
