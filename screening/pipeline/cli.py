"""``screening run``: screen images (Parquet shards, folders, tars, lists) on Ray Data (a thin layer over :func:`screening.pipeline.screen`)."""

from __future__ import annotations

import argparse
import os
import sys


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from screening.pipeline.config import RunConfig

    RunConfig.configure_parser(parser)   # one argument per option, from its field
    parser.add_argument("--fast-decode", action="store_true", dest="legacy_fast_decode",
                        help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--address", default=None,
                        help="Ray address to connect to (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--verbose", action="store_true", help="also show Ray's own log lines and progress bars")


def _committed_count(out, args) -> int:
    try:
        from screening.pipeline.outputs import OutputLayout

        from screening.fs import StorageOptions

        return len(OutputLayout(out, storage=StorageOptions.from_args(args)).markers())
    except Exception:  # noqa: BLE001 - only for the interrupt message
        return -1


class _Terminated(BaseException):
    """SIGTERM (scancel, kill, a cluster manager) as an exception, so the run lock and files are released."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def run_from_args(args: argparse.Namespace) -> int:
    import signal
    import threading

    from screening.pipeline.console import ray_logging_level, run_console
    from screening.pipeline.config import RunConfig
    from screening.pipeline.run import screen_config

    try:
        with run_console(args.verbose):  # the terminal is restored before any message below
            config = RunConfig.from_args(args)
            if args.address:
                import ray

                if not ray.is_initialized():
                    ray.init(address=args.address, logging_level=ray_logging_level())
            if threading.current_thread() is threading.main_thread():
                # after any ray.init: Ray's core worker installs its own SIGTERM handler, which aborts the process
                signal.signal(signal.SIGTERM, _on_sigterm)
            result = screen_config(config)
    except (KeyboardInterrupt, _Terminated) as exc:
        n = _committed_count(args.out, args)
        done = f"{n} unit(s) are committed in {args.out}" if n >= 0 else f"committed units stay in {args.out}"
        what = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        print(f"\nscreening run: {what}; {done}. Rerun the same command to resume: only the missing units "
              f"are screened.", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # The lock is released and the markers are written; leave now. A normal exit runs Ray's atexit shutdown
        # while Ray Data's executor thread may still submit tasks, which aborts the process (SIGABRT, seen in
        # CoreWorker::SubmitActorTask). A local cluster's processes are reaped by Ray's own reaper.
        os._exit(143 if isinstance(exc, _Terminated) else 130)
    print(result.summary(), flush=True)
    return 0
