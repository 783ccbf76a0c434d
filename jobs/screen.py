"""Cluster entry point: ``ray job submit --working-dir . -- python jobs/screen.py IMAGES --store S --out OUT ...``.

Connects to the cluster the job runs on (``ray.init()`` picks up the job's address) and runs the same
:func:`screening.pipeline.screen` as ``screening run``; the arguments are those of ``screening run``.
"""

from __future__ import annotations

import argparse
import os
import sys

# The job's working directory is the uploaded repository; make the package importable from it even when it is not
# pip-installed on the cluster image.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def main(argv=None) -> int:
    from screening.cli import run_command
    from screening.pipeline import cli

    parser = argparse.ArgumentParser(prog="jobs/screen.py", description=__doc__.splitlines()[0])
    cli.configure_parser(parser)
    args = parser.parse_args(argv)
    # Inside a job RAY_ADDRESS is set; elsewhere "auto" joins the cluster running on this node (never a new one).
    # `screening run` connects (inside its quiet console: Ray's lines go to the log) and leaves the cluster running.
    args.address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    return run_command("run", cli, args)


if __name__ == "__main__":
    sys.exit(main())
