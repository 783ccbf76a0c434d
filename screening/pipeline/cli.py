"""``screening run``: screen images (Parquet shards, folders, tars, lists) on Ray Data (a thin layer over :func:`screening.pipeline.screen`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from screening.pipeline.config import RunConfig

    RunConfig.configure_parser(parser)   # one argument per option, from its field
    parser.add_argument("--fast-decode", action="store_true", dest="legacy_fast_decode",
                        help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--address", default=None,
                        help="Ray address to connect to (default: RAY_ADDRESS, else a local Ray, stopped at the end)")
    parser.add_argument("--dashboard", action="store_true",
                        help="start Ray's dashboard with the local Ray (default: none: start time, memory, a port)")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own log lines and progress bars as they come (default: in OUT/logs/)")


def _committed_count(out, args) -> int:
    try:
        from screening.fs import StorageOptions
        from screening.pipeline.outputs import OutputLayout
        from screening.pipeline.sink import read_markers

        return len(read_markers(OutputLayout(out, storage=StorageOptions.from_args(args))))
    except Exception:  # noqa: BLE001 - only for the interrupt message
        return -1


class _Terminated(BaseException):
    """SIGTERM (scancel, kill, a cluster manager) as an exception, so the run lock and files are released."""


def _on_signal(signum, frame):
    """The first Ctrl-C or SIGTERM unwinds the run (lock released, message, Ray stopped); a second one meanwhile
    kills the local Ray and leaves at once, never a traceback from the middle of the cleanup."""
    code = 143 if signum == signal.SIGTERM else 130

    def now(signum, frame):
        from screening.pipeline.ray_session import kill_now

        kill_now()
        os._exit(code)

    signal.signal(signal.SIGINT, now)
    signal.signal(signal.SIGTERM, now)
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def run_from_args(args: argparse.Namespace) -> int:
    import threading

    from screening.pipeline.console import default_log_path, ray_log_path, run_console
    from screening.pipeline.config import RunConfig
    from screening.pipeline.ray_session import ensure_ray, exit_now, stop_ray
    from screening.pipeline.run import screen_config

    main = threading.current_thread() is threading.main_thread()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        # the terminal is restored before any message below; Ray's lines until then are in the log
        with run_console(args.verbose, default_log_path(args.out)):
            config = RunConfig.from_args(args)
            if main:   # ensure_ray keeps both past ray.init; an ignored SIGINT (a background job) stays ignored
                signal.signal(signal.SIGTERM, _on_signal)
                if before[signal.SIGINT] is signal.default_int_handler:
                    signal.signal(signal.SIGINT, _on_signal)
            if args.address or args.dashboard:
                ensure_ray(address=args.address, dashboard=args.dashboard)
            try:
                result = screen_config(config)
            except Exception:   # an error of ours or a bug: the stream has ended, Ray shuts down in order
                stop_ray()
                raise
            stop_ray()   # before the summary: the local Ray this run started is gone when the prompt returns
    except (KeyboardInterrupt, _Terminated) as exc:
        n = _committed_count(args.out, args)
        done = f"{n} unit(s) are committed in {args.out}" if n >= 0 else f"committed units stay in {args.out}"
        what = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        print(f"\nscreening run: {what}; {done}. Rerun the same command to resume: only the missing units "
              f"are screened.", file=sys.stderr)
        # The lock is released and the markers are written; the local Ray is killed and the process leaves at once
        # (ray_session.exit_now: a normal exit would run Ray's shutdown beside Ray Data's executor thread).
        exit_now(143 if isinstance(exc, _Terminated) else 130)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    summary = result.summary()
    if log := ray_log_path():
        summary += f"\n  Ray's log: {log}"
    print(summary, flush=True)
    return 0
