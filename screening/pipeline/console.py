"""What a run prints: our own lines (progress, notices, the summary, errors) on the terminal; Ray's own lines in a log
file that the summary names, or, with ``--verbose``, on the terminal as they come.

Ray writes from four places, and each is sent to the log while a quiet run is in flight:
- its C++ core (the raylet connection, "Actor ... has constructor arguments in the object store") writes straight to
  file descriptor 2, so descriptor 2 goes through a pipe into the log, and ``sys.stderr`` becomes a new stream on the
  terminal for our own lines;
- its Python loggers (``ray``, ``ray.data``: token authentication, "Started a local Ray instance", Ray Data's
  "Operator ... has no outputs for 60 seconds") write to whatever ``sys.stderr`` is when they emit: their stream
  handlers are swapped for one on the log;
- warnings (``RayDeprecationWarning``, a library's ``FutureWarning``) go to the log; a warning our own code raises
  (a synthetic store's reliability note) stays on the terminal;
- lines its workers print are forwarded to the driver: ours ("screening: ...") reach the terminal, the rest the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import warnings

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # .../screening
_state: dict = {"verbose": False, "log": None}


def is_verbose() -> bool:
    return _state["verbose"]


def ray_logging_level() -> int:
    """The level for ``ray.init(logging_level=...)``: INFO, to the terminal only in verbose mode, else to the log."""
    return logging.INFO


def ray_log_path() -> str | None:
    """The log file of the quiet run in flight (or just ended) once Ray wrote to it; None if it wrote nothing."""
    log = _state["log"]
    return log.path if log is not None and log.written else None


def default_log_path(out: str | os.PathLike | None) -> str:
    """``OUT/logs/ray-<UTC time>-<pid>.log`` for a local output; the system temp folder for remote or no output."""
    name = f"ray-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    out = os.fspath(out) if out is not None else None
    if out and "://" not in out:
        return os.path.join(os.path.abspath(out), "logs", name)
    return os.path.join(tempfile.gettempdir(), f"screening-{name}")


class _LogFile:
    """Bytes for the log, the file opened on the first one: a run that makes Ray say nothing leaves no file (and an
    argument error creates no folder)."""

    def __init__(self, path: str):
        self.path, self.written, self.closed, self._f = path, False, False, None
        self._lock = threading.Lock()

    def write_bytes(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            if self.closed:   # a worker's line forwarded after the run: the run's log is complete
                return
            if self._f is None:
                try:
                    os.makedirs(os.path.dirname(self.path), exist_ok=True)
                    self._f = open(self.path, "ab")
                except OSError:   # an unusable output folder: the system temp folder instead
                    self.path = os.path.join(tempfile.gettempdir(), "screening-" + os.path.basename(self.path))
                    self._f = open(self.path, "ab")
            self._f.write(data)
            self._f.flush()
            self.written = True

    def close(self) -> None:
        with self._lock:
            self.closed = True
            if self._f is not None:
                self._f.close()


class _LogText:
    """A text stream onto the log (Ray's logging handlers, warnings and worker lines write here)."""

    def __init__(self, log: _LogFile):
        self.log = log

    def write(self, text: str) -> int:
        self.log.write_bytes(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class _Descriptor2ToLog:
    """Descriptor 2 through a pipe into the log; ``sys.stderr`` a new stream on the terminal meanwhile."""

    def __init__(self, log: _LogFile):
        sys.stderr.flush()
        self.log = log
        self.original = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        self.thread = threading.Thread(target=self._pump, name="ray-log-pump", daemon=True)
        self.thread.start()
        self.saved_stderr = sys.stderr
        self.terminal = open(os.dup(self.original), "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None)
                             or "utf-8", errors="backslashreplace")
        sys.stderr = self.terminal

    def _pump(self) -> None:
        while True:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                break
            self.log.write_bytes(chunk)
        os.close(self.read_fd)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.terminal.flush()
        sys.stderr = self.saved_stderr
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(self.original, 2)   # the pipe's last writer is gone: the pump drains it and stops
        self.thread.join(timeout=5)
        os.close(self.original)
        with contextlib.suppress(Exception):
            self.terminal.close()


def _ray_stream_handlers():
    """``(logger, handler)`` for every stream handler (not a file handler) of Ray's loggers."""
    names = ["ray"] + [n for n in list(logging.root.manager.loggerDict) if n.startswith("ray.")]
    for name in names:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                yield lg, h


def _is_ours(category, filename: str) -> bool:
    module = getattr(category, "__module__", "")
    return os.path.abspath(filename).startswith(_PACKAGE + os.sep) and (module == "builtins" or
                                                                         module.startswith("screening"))


def quiet_worker_lines() -> None:
    """In a quiet run, Ray's workers' forwarded lines go to the log; ours (``screening...``) still reach the terminal.
    Called once Ray is up (Ray installs its printer at ``ray.init``). A Ray without this hook only prints more."""
    log = _state["log"]
    if log is None:
        return
    try:
        from ray._private import worker as w

        def route(data, ignore_prefix=False):
            lines = list(data.get("lines") or [])
            ours = [ln for ln in lines if ln.startswith("screening")]
            rest = [ln for ln in lines if not ln.startswith("screening")]
            if ours:
                w.print_to_stdstream({**data, "lines": ours}, ignore_prefix)
            if rest and _state["log"] is not None:
                w.print_worker_logs({**data, "lines": rest}, _LogText(_state["log"]), ignore_prefix)

        w.global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
        w.global_worker_stdstream_dispatcher.add_handler("ray_print_logs", route)
    except Exception:  # noqa: BLE001 - a Ray without this (private) printer hook
        pass


@contextlib.contextmanager
def run_console(verbose: bool = False, log_path: str | None = None):
    """Ray's lines into the log at ``log_path`` (default :func:`default_log_path`) unless ``verbose``; always restores
    the terminal, also on Ctrl-C, before any message of the caller's."""
    _state["verbose"] = bool(verbose)
    if verbose:
        try:
            yield
        finally:
            _state["verbose"] = False
        return
    import ray.data  # noqa: F401 - Ray Data sets up its loggers on import; redirect them after that

    log = _LogFile(log_path or default_log_path(None))
    _state["log"] = log
    text = _LogText(log)
    swapped = []
    for lg, h in _ray_stream_handlers():
        repl = logging.StreamHandler(text)
        repl.setFormatter(h.formatter)
        repl.setLevel(h.level)
        lg.removeHandler(h)
        lg.addHandler(repl)
        swapped.append((lg, h, repl))
    old_show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if _is_ours(category, filename):
            return old_show(message, category, filename, lineno, file, line)
        text.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = showwarning
    fd2 = _Descriptor2ToLog(log)
    try:
        yield
    finally:
        fd2.close()
        warnings.showwarning = old_show
        for lg, h, repl in swapped:
            lg.removeHandler(repl)
            lg.addHandler(h)
        log.close()
        _state["verbose"] = False
        # _state["log"] stays: the caller names the file in its summary (ray_log_path); the next run replaces it
