"""``screening report RUN_DIR``: one HTML page (image lists, flatmaps, histograms, manifest, errors).

The page is ``RUN_DIR/report/index.html``, rendered from ``templates/report.html`` (Jinja2, autoescaped);
every figure, thumbnail and full-size image is a file beside it, linked by relative path, so the folder
can be copied or served as is. The package is in rooms: ``data`` (what the run holds), ``figures`` (what is
drawn), ``page`` (how the page is assembled); it reads the run's outputs and runs no model, except with
``--vertex-maps`` (``vertex_maps``: the run's model on the few images the flatmaps show).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from screening.exceptions import InvalidParameterError
from screening.report.contact_sheet import fetch_image_records, fetch_images, make_contact_sheet
from screening.report.data import DEFAULT_ROIS
from screening.report.describe import describe_roi
from screening.report.figures import histogram_thresholds
from screening.report.flatmap import draw_flatmap
from screening.report.page import write_report


__all__ = ["write_report", "draw_flatmap", "make_contact_sheet", "fetch_images", "fetch_image_records",
           "histogram_thresholds", "describe_roi", "DEFAULT_ROIS", "configure_parser", "run_from_args"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``screening report`` arguments."""
    parser.add_argument("run_dir", help="run folder (responses/, errors/, manifest.json, rankings/)")
    parser.add_argument("--roi", action="append", dest="rois", metavar="NAME",
                        help=f"ROI to show (repeatable); default those of {', '.join(DEFAULT_ROIS)} that were ranked")
    parser.add_argument("--subject", help="subject shown (default mean)")
    parser.add_argument("--top-k", type=int, help="thumbnails in the top row (default all ranked)")
    parser.add_argument("--bottom-k", type=int, help="thumbnails in the bottom row (default all ranked)")
    parser.add_argument("--no-flatmaps", action="store_true", help="draw no flatmaps")
    parser.add_argument("--vertex-maps", action="store_true",
                        help="paint the flatmaps' images vertex by vertex: run the run's recorded model (store, "
                             "precision) on those few images (default: the run's ROI means, no model)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``screening report``; returns the exit status."""
    t0 = time.perf_counter()
    for flag, k in (("--top-k", args.top_k), ("--bottom-k", args.bottom_k)):
        if k is not None and k < 0:  # head(-1) would silently drop the last image instead
            raise InvalidParameterError(f"{flag} must be 0 or more; got {k}")
    path = write_report(args.run_dir, rois=args.rois, subject=args.subject, top_k=args.top_k,
                        bottom_k=args.bottom_k, flatmaps=not args.no_flatmaps, vertex_maps=args.vertex_maps,
                        progress=lambda m: print(f"[{time.perf_counter() - t0:6.1f}s] {m}", file=sys.stderr))
    print(f"wrote {os.path.relpath(path)}")
    return 0
