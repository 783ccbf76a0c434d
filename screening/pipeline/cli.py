"""``screening run``: screen images (Parquet shards, folders, tars, lists) on Ray Data (a thin layer over :func:`screening.pipeline.screen`)."""

from __future__ import annotations

import argparse
import os
import sys


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from screening.hardware import PRECISION_CHOICES
    from screening.fs import add_storage_arguments
    from screening.pipeline.decode_modes import DECODES

    parser.add_argument("images", help="Parquet shards, a folder of images, .tar / WebDataset shards "
                                       "(shard-{000..009}.tar), a .csv/.txt list of paths or s3:// URIs, or a glob; "
                                       "local or s3://")
    parser.add_argument("--store", required=True, help="model store location (path or s3://)")
    parser.add_argument("--out", required=True, help="output root (path or s3://)")
    parser.add_argument("--model-id", default=None, help="default: the store's only model, else the published 'all'")
    parser.add_argument("--subjects", default="all", help="'all' or comma-separated sub-01..sub-08")
    parser.add_argument("--rois", default=None, help="comma-separated ROI names (default: all areas + groups)")
    parser.add_argument("--composites", default=None, help='JSON {"name": ["FFC", ...]} or a JSON file')
    parser.add_argument("--custom-rois", default=None, help='JSON {"name": [grayordinate, ...]} or a JSON file')
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--write-batch-size", type=int, default=None,
                        help="images per part file (default 8192 on GPU encoders, 1024 on CPU)")
    parser.add_argument("--redo-changed", action="store_true",
                        help="OUT holds results for shards that changed since: screen them again (default: refuse)")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                        help="core precision (default auto: bf16 where the encoders' hardware computes it natively "
                             "and a probe confirms it is faster, fp16 on pre-Ampere GPUs, else fp32; fp16 needs GPU "
                             "encoders)")
    parser.add_argument("--num-encoders", type=int, default=None)
    parser.add_argument("--num-gpus-per-encoder", type=float, default=None,
                        help="default: 1 when the cluster has GPUs, else 0")
    parser.add_argument("--num-cpus-per-encoder", type=float, default=None,
                        help="default: 1 with GPUs; on CPU-only clusters sized from the nodes (docs/pipeline.md)")
    parser.add_argument("--exact-decode", action="store_true",
                        help="decode JPEGs at full size before resizing (default: DCT-domain downscale of JPEGs "
                             ">= 896 px, min per-ROI r 0.99992 vs exact; smaller images are bit-identical)")
    parser.add_argument("--fast-decode", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--decode", default="cpu", choices=DECODES,
                        help="where images are decoded: cpu tasks (default); gpu: nvJPEG inside the GPU encoders "
                             "(needs torchvision; other formats fall back to the exact CPU path); actor: the encoder "
                             "actors' own CPU threads (--num-cpus-per-encoder, default 4 per GPU encoder; the same "
                             "pixels as cpu, with less driver work per image)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--id-column", default="image_id")
    add_storage_arguments(parser)
    parser.add_argument("--reliability-threshold", type=float, default=None,
                        help="keep, per subject, ROI vertices whose noise ceiling is >= this (store metadata units)")
    parser.add_argument("--noise-ceiling", default="test_n-avg",
                        help="which noise ceiling: {test,train,artificial}_{n-avg,n-1} (default test_n-avg)")
    parser.add_argument("--address", default=None,
                        help="Ray address to connect to (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="also show Ray's own log lines and progress bars")
    # Tests only: sleep this long per encoder batch, so a run stays in flight long enough to be killed.
    parser.add_argument("--test-throttle-s", type=float, default=0.0, help=argparse.SUPPRESS)


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
    except (NotADirectoryError, FileExistsError, PermissionError) as exc:
        print(f"screening run: error: {exc}", file=sys.stderr)
        return 2
    print(result.summary(), flush=True)
    return 0
