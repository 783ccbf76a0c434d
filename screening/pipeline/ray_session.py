"""Connecting to Ray: the one place the driver starts or joins a cluster (``plan`` counts tar members with it,
``run`` runs the plan on it, the demo starts its own local one), and the one place it stops what it started.

A local Ray started here is stopped completely on every way out (:func:`stop_ray`): Ray's own shutdown leaves nothing
only when it runs to the end, and ``os._exit`` after Ctrl-C skips it, which left the raylet's agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, ~240 MB) running, re-parented to init. So the driver remembers
the processes it started (its descendants, read from ``/proc``) and kills whatever of them is still alive. A cluster
it only joined (``--address``, RAY_ADDRESS, a Ray job) holds no process of ours and is left as it was.
"""

from __future__ import annotations

import os
import signal
import sys
import time

# (pid, start time) of the Ray processes this driver started; empty when it joined a cluster
_started: set[tuple[int, int]] = set()
_state = {"log_to": None}


def ensure_ray(*, address: str | None = None, dashboard: bool = False):
    """Connect to Ray (``address``, else RAY_ADDRESS, else a new local instance) unless connected. A local instance
    started here has no dashboard unless ``dashboard`` (it costs start time and memory, and its port can clash on a
    shared node)."""
    import threading

    import ray

    if not ray.is_initialized():
        main = threading.current_thread() is threading.main_thread()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        from screening.pipeline.console import quiet_worker_lines, ray_logging_level

        ray.init(address=address, log_to_driver=True, logging_level=ray_logging_level(),
                 include_dashboard=dashboard)
        for sig, handler in handlers.items():   # Ray's core worker replaces a handler set before init (the CLI's)
            if callable(handler):
                signal.signal(sig, handler)
        if owns_local_instance(ray):
            _remember()
        quiet_worker_lines()
    return ray


def owns_local_instance(ray) -> bool:
    node = getattr(getattr(ray, "_private", None) and ray._private.worker, "_global_node", None)
    return bool(getattr(node, "all_processes", None))   # a driver that only connected started no process


# --------------------------------------------------------------------------- the processes a local Ray started

def _proc_table() -> dict[int, tuple[int, int, int, str]]:
    """``{pid: (ppid, pgid, start time, command line)}`` from /proc (empty where there is none)."""
    table = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()   # after "pid (comm)": state ppid pgrp ... starttime is 22nd
        table[int(name)] = (int(fields[1]), int(fields[2]), int(fields[19]), cmd)
    return table


def _descendants(table, root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _remember() -> set[tuple[int, int]]:
    """Add this driver's descendants to the started set, and the Ray processes of its process group that lost their
    parent (an agent whose raylet died first is re-parented to init, out of the tree)."""
    table, me = _proc_table(), os.getpid()
    pids = set(_descendants(table, me))
    pgid = os.getpgid(0)
    pids |= {p for p, (ppid, pg, _, cmd) in table.items() if ppid == 1 and pg == pgid and cmd.startswith("ray::")}
    _started.update((p, table[p][2]) for p in pids if p != me)
    return set(_started)


def _alive(procs) -> list[tuple[int, int]]:
    table = _proc_table()
    return [(p, t) for p, t in procs if p in table and table[p][2] == t]   # same pid and start time: not a reuse


def _kill(procs, sig=signal.SIGKILL) -> None:
    for pid, _ in procs:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(procs, timeout_s: float) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout_s
    left = _alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _alive(left)
    return left


def stop_ray(*, graceful: bool = True, grace_s: float = 10.0) -> None:
    """Stop the local Ray this driver started, completely; only disconnect from a cluster it joined.

    ``graceful``: Ray's own shutdown first (the run's stream has ended), then SIGKILL to whatever it left. Otherwise
    (Ctrl-C, SIGTERM: Ray Data's executor thread may still be submitting work, and Ray's shutdown beside it has
    aborted the process) SIGKILL at once; the caller then leaves with ``os._exit``. A second Ctrl-C or SIGTERM
    meanwhile skips to the SIGKILL."""
    import ray

    if not _started and not ray.is_initialized():
        return
    procs = _remember() if _started else set()
    main = _in_main_thread()
    if main:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def again(signum, frame):   # the second signal: kill now, never a traceback out of the cleanup
            _kill(procs)

        for s in previous:
            signal.signal(s, again)
    try:
        if graceful and ray.is_initialized():
            ray.shutdown(wait_for_processes=bool(procs))
        if procs:
            _kill(_alive(procs))
            if graceful:   # else the caller exits at once: SIGKILL needs no wait, and the core worker may abort the
                _wait_gone(procs, grace_s)   # driver (wrong exit code) once it sees its raylet gone
    finally:
        _started.clear()
        if main:
            for s, h in previous.items():
                signal.signal(s, h)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def kill_now() -> None:
    """SIGKILL to every process the local Ray started, no waiting (a second Ctrl-C: leave now)."""
    if _started:
        _kill(_alive(_remember()))


def exit_now(code: int) -> None:
    """Leave at once (after Ctrl-C / SIGTERM): the local Ray killed first, output flushed. ``os._exit`` because a
    normal exit runs Ray's atexit shutdown beside Ray Data's executor thread, which aborts the process (SIGABRT)."""
    try:
        stop_ray(graceful=False)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
