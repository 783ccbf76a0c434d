"""What a run prints: our progress bar and summary by default; Ray's own logs only when asked (``--verbose``).

Ray 2.60 prints about 20 INFO lines per run, and its core worker writes one error-level line to the driver's stderr for
every actor pool whose constructor arguments sit in the object store (any Ray Data actor pool, even a trivial one). That
line is written by C++ straight to file descriptor 2, so a Python logging filter cannot reach it: while a quiet run
is in flight, descriptor 2 goes through a pipe that drops exactly those known-benign lines and passes every other byte.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading

# Known-benign lines, dropped in quiet mode. Anything else (a real error) still reaches the terminal.
BENIGN_STDERR = (
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store"),
)
BENIGN_LOG_MESSAGES = ("Progress bars disabled", "Progress will be logged because")

_state = {"verbose": False}


def is_verbose() -> bool:
    return _state["verbose"]


def ray_logging_level() -> int:
    """The level for ``ray.init(logging_level=...)``: Ray's INFO lines only in verbose mode."""
    return logging.INFO if _state["verbose"] else logging.WARNING


class _DropBenign(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(m in msg for m in BENIGN_LOG_MESSAGES)


class _StderrFilter:
    """Descriptor 2 through a pipe: Ray's C++ log lines are held to their newline and dropped if benign. Everything
    else, including a progress bar's updates, is passed on at once."""

    def __init__(self):
        sys.stderr.flush()
        self.original = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        self.thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        held = b""
        while True:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                break
            out, held = filter_chunk(held + chunk)
            if out:
                os.write(self.original, out)
        if held:
            os.write(self.original, held)
        os.close(self.read_fd)

    def close(self) -> None:
        sys.stderr.flush()
        os.dup2(self.original, 2)  # the pipe's last writer is gone: the pump drains it and stops
        self.thread.join(timeout=5)
        os.close(self.original)


_PREFIX = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # Ray's C++ log lines: "[2026-12-02 00:26:52,859 E ..."
_PREFIX_SHAPE = b"[0000-00-00 00:00:00"


def _may_become_prefix(head: bytes) -> bool:
    return all((s == 0x30 and 0x30 <= h <= 0x39) or (s != 0x30 and h == s) for h, s in zip(head, _PREFIX_SHAPE))


def filter_chunk(data: bytes) -> tuple[bytes, bytes]:
    """Split ``data`` into (bytes to pass on now, bytes held back: a C++ log line, or what may become one, not yet
    ended). C++ lines can start mid-line, after a progress bar's ``\r`` update, so they are looked for anywhere."""
    out = bytearray()
    i = 0
    while True:
        j = data.find(b"[", i)
        if j < 0:
            return bytes(out + data[i:]), b""
        out += data[i:j]
        head = data[j:j + len(_PREFIX_SHAPE)]
        if len(head) < len(_PREFIX_SHAPE):
            return (bytes(out), data[j:]) if _may_become_prefix(head) else (bytes(out + data[j:]), b"")
        if not _PREFIX.match(head):
            out += b"["
            i = j + 1
            continue
        end = data.find(b"\n", j)
        if end < 0:
            return bytes(out), data[j:]
        line = data[j:end + 1]
        if not any(p.search(line) for p in BENIGN_STDERR):
            out += line
        i = end + 1


@contextlib.contextmanager
def run_console(verbose: bool = False):
    """Quiet Ray for the duration of a run unless ``verbose``; always restores the terminal, also on Ctrl-C."""
    _state["verbose"] = bool(verbose)
    if verbose:
        yield
        return
    import ray.data  # noqa: F401 - Ray Data sets up its loggers on import; quiet them after that

    loggers = [logging.getLogger(n) for n in ("ray", "ray.data")]
    levels = [lg.level for lg in loggers]
    flt = _DropBenign()
    handlers = [h for lg in loggers for h in lg.handlers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    for h in handlers:  # a logger's own filters do not see records its children pass up
        h.addFilter(flt)
    stderr_filter = _StderrFilter()
    try:
        yield
    finally:
        stderr_filter.close()
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for h in handlers:
            h.removeFilter(flt)
        _state["verbose"] = False
