"""``screening`` command line: each subcommand lives in the module that owns its work.

A command module exposes ``configure_parser(parser)`` and ``run_from_args(args) -> int``.
Imports are lazy so ``screening --help`` does not import torch or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "encode": ("screening._encode_cli", "encode a folder of images and print/write ROI means"),
    "make-store": ("screening.store.synthetic", "write a synthetic-weights BERG-layout model store"),
    "ingest": ("screening.ingest", "turn images (folder, .tar, list of paths/URIs) into Parquet shards"),
    "run": ("screening.pipeline.cli", "screen Parquet image shards on Ray into ROI response tables"),
    "rank": ("screening.rank", "rank stimuli per ROI from a responses table"),
    "report": ("screening.report", "write an HTML report (contact sheets, flatmaps) for a run"),
    "demo": ("screening.demo", "end-to-end demo on bundled photos with a synthetic-weights model"),
}


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
    return int(module.run_from_args(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
