"""``screening encode``: ROI means for a handful of image files, in memory (no Ray).

For datasets use ``screening run``; this is the quick look at a few images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from screening.fs import StorageOptions, add_storage_arguments



def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--store", required=True, help="BERG root (dir or s3://) or checkpoint https URL")
    p.add_argument("--model-id", default=None, help="default: the store's only model, else verticesAll")
    p.add_argument("--subject", default="all",
                   help="1..8 (or 01, sub-01, sub01, subj01, s1), a comma list of those, or 'all' (default)")
    p.add_argument("--roi", action="append", default=None,
                   help="ROI name (repeatable or comma list; `screening rois` lists them); default all areas + groups")
    p.add_argument("--parcellation", metavar="FILE", default=None,
                   help="a parcellation of your own (.dlabel.nii, or .npy + .tsv; {subject} for one file per "
                        "subject): each label is an ROI column")
    p.add_argument("--parcellation-prefix", default=None, help="its column prefix (default: the file stem)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="core precision (default auto: the fastest one on this machine, docs/precision.md)")
    p.add_argument("--out", default=None, help="write the table (.csv or .parquet); default print a summary")
    add_storage_arguments(p)


def _images(paths: list[str]) -> list:
    """The images named (files, folders, tar archives or lists, found as ``screening ingest`` finds them); a missing
    path or an image-less folder is an error."""
    from screening.exceptions import InvalidParameterError
    from screening.sources import open_images
    from screening.sources.listing import IMAGE_EXTENSIONS

    out = []
    for p in paths:
        stream = open_images(p, what="image path")
        if stream.total == 0:
            raise InvalidParameterError(f"{stream.kind} {p!r} holds no image files (looked for "
                                        f"{', '.join(IMAGE_EXTENSIONS)}, any case, in subfolders too)")
        out += list(stream.items())
    return out


def _check_out(out: str | None) -> None:
    from screening.exceptions import InvalidParameterError

    if out is None:
        return
    p = Path(out)
    if p.is_dir():
        raise InvalidParameterError(f"--out {out!r} is a folder; give a file name ending in .csv or .parquet")
    if not p.resolve().parent.is_dir():
        raise InvalidParameterError(f"--out {out!r}: folder {str(p.resolve().parent)!r} does not exist")


def run_from_args(args) -> int:
    import pandas as pd

    from screening.validation import parse_subjects
    from screening.api import BERG
    from screening.exceptions import ImageDecodeError
    from screening.models.registry import DEFAULT_MODEL_ID
    from screening.preprocess import preprocess_bytes

    # every check on the user's arguments before the (slow) model load
    subject = list(parse_subjects(args.subject, name="--subject"))
    rois = [r.strip() for arg in args.roi for r in arg.split(",") if r.strip()] if args.roi else None
    refs = _images(args.images)
    _check_out(args.out)
    options = StorageOptions.from_args(args)
    berg = BERG(args.store, storage_options=options)
    present = berg.store.model_ids()
    model_id = args.model_id or (present[0] if len(present) == 1 else DEFAULT_MODEL_ID)
    selection = {"roi": rois} if rois else {}
    if args.parcellation:
        selection["parcellation"] = {"file": args.parcellation, "prefix": args.parcellation_prefix}
    if args.parcellation and not rois:
        from screening import rois as roi_lib
        from screening.models.registry import get_weights

        selection["roi"] = roi_lib.default_roi_names(get_weights(model_id).variant)   # and the atlas's, as default
    selection = selection or None
    model = berg.get_encoding_model(model_id, subject=subject, selection=selection, device="auto",
                                    precision=args.precision)
    files, images = [], []
    for ref in refs:
        try:
            images.append(preprocess_bytes(ref.read()))
            files.append(ref.source)
        except (ImageDecodeError, OSError) as e:
            print(f"skipped {ref.source}: {e}", file=sys.stderr)
    if not images:
        print("no decodable images given", file=sys.stderr)
        return 1
    if model.precision_choice:
        print(f"precision {model.precision} ({model.precision_choice['why']})", file=sys.stderr)
    res = berg.encode(model, np.stack(images), reduce="roi_mean", show_progress=True)
    rows = []
    for subject_id, arr in res[model.weights.dataset].items():
        df = pd.DataFrame(arr, columns=model.roi_names)
        df.insert(0, "subject", subject_id)
        df.insert(0, "image", files)
        rows.append(df)
    table = pd.concat(rows, ignore_index=True)
    if model.fingerprint.get("synthetic"):
        print("NOTE: this store holds SYNTHETIC weights; the numbers are not brain predictions.", file=sys.stderr)
    if args.out:
        (table.to_parquet if args.out.endswith(".parquet") else table.to_csv)(args.out, index=False)
        print(f"wrote {len(table)} rows x {len(model.roi_names)} ROIs to {args.out}")
    else:
        print(table.groupby("image")[model.roi_names[: min(8, len(model.roi_names))]].mean().to_string())
    return 0
