"""``screening`` command line: each subcommand lives in the module that owns its work.

A command module exposes ``configure_parser(parser)`` and ``run_from_args(args) -> int``.
Imports are lazy so ``screening --help`` does not import torch or Ray.

A user's mistake ends in one line on stderr and exit status 2, for every command: any ``ScreeningError``
(bad value, unknown ROI, missing store ...) and any ``OSError`` about a path the user gave (missing
file, a file where a folder is needed, no permission). Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

COMMANDS = {
    "encode": ("screening._encode_cli", "encode a folder of images and print/write ROI means"),
    "make-store": ("screening.store.synthetic", "write a synthetic-weights BERG-layout model store"),
    "ingest": ("screening.ingest", "turn images (folder, .tar, list of paths/URIs) into Parquet shards"),
    "run": ("screening.pipeline.cli", "screen images (Parquet shards, folders, .tar / WebDataset, HDF5, lists of "
                                    "paths or URIs) on Ray into ROI response tables"),
    "rank": ("screening.rank", "rank stimuli per ROI from a responses table"),
    "search": ("screening.search", "find the screened images whose brain profile is most like an image or a target"),
    "contrast": ("screening.contrast", "in silico localizer contrasts, ROIs and their AP against real ROIs, from "
                                       "a run's vertex statistics"),
    "report": ("screening.report", "write an HTML report (contact sheets, flatmaps) for a run"),
    "demo": ("screening.demo", "end-to-end demo on bundled photos with a synthetic-weights model"),
    "rois": ("screening._rois_cli", "list every accepted ROI name (areas, bilateral, groups, composites) with vertex counts"),
}

# OSErrors that say "this path is wrong", whatever code raised them
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
_PATH_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.ENAMETOOLONG, errno.ELOOP}


def _user_path_error(exc: OSError) -> str | None:
    """One-line message for an OSError about a user's path, or None (then it is treated as a bug)."""
    if isinstance(exc, _PATH_ERRORS) or exc.errno in _PATH_ERRNOS:
        where = exc.filename if exc.filename is not None else ""
        what = exc.strerror or (str(exc.args[0]) if exc.args else type(exc).__name__)
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        hint = {errno.ENOTDIR: " (part of this path is a file, not a folder)",
                errno.EEXIST: " (a file is in the way: a folder was to be made here?)"}.get(exc.errno, "")
        return (f"{what}: {os.fsdecode(where)!r}" if where != "" else what) + hint
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="screening", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, helptext) in COMMANDS.items():
        sub.add_parser(name, help=helptext, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; valid commands: {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd = argparse.ArgumentParser(prog=f"screening {name}", description=COMMANDS[name][1])
    module.configure_parser(cmd)
    args = cmd.parse_args(argv[1:])
    return run_command(name, module, args)


def run_command(name: str, module, args) -> int:
    """``module.run_from_args(args)``, with every error of ours printed once, as one or two lines, and its exit code
    (``ScreeningError.exit_code``: 2 for a user's mistake, 1 for work that did not complete); ``jobs/screen.py``
    runs ``screening run`` through here too."""
    from screening.exceptions import ScreeningError

    try:
        return int(module.run_from_args(args) or 0)
    except ScreeningError as exc:
        if exc.exit_code == 2:
            return _user_error(name, str(exc))
        print(f"screening {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        msg = _user_path_error(exc)
        if msg is None:
            raise
        return _user_error(name, msg)


def _user_error(command: str, message: str) -> int:
    print(f"screening {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
