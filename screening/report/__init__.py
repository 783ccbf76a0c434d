"""``screening report RUN_DIR``: one HTML page (contact sheets, flatmaps, histograms, manifest, errors).

The page is ``RUN_DIR/report/index.html``; every figure is a PNG beside it, linked by relative path,
so the folder can be copied or served as is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from screening.exceptions import InvalidParameterError
from screening.report import html as H
from screening.report.contact_sheet import fetch_images, make_contact_sheet
from screening.report.flatmap import draw_flatmap, roi_grayordinate_mask

__all__ = ["write_report", "draw_flatmap", "make_contact_sheet", "fetch_images", "DEFAULT_ROIS",
           "configure_parser", "run_from_args"]

#: ROIs shown when none are asked for (those present in the rankings, in this order).
DEFAULT_ROIS = ("FFC", "PHA1-3", "faces", "V1", "early_visual", "group_01")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _read_manifest(run: Path) -> dict:
    p = run / "manifest.json"
    if not p.exists():
        return {}
    return json.loads(p.read_text())


def _read_errors(run: Path, n: int):
    d = run / "errors"
    if not d.exists():
        return None, 0
    try:
        dataset = ds.dataset(d, format="parquet")
        return dataset.head(n).to_pandas(), dataset.count_rows()
    except Exception:  # noqa: BLE001 - an empty/odd errors folder must not stop the report
        return None, 0


def _roi_values(responses: ds.Dataset, roi: str, subject: str, manifest: dict) -> np.ndarray:
    """All finite values of one ROI for one subject (streamed; only the member columns are read)."""
    from screening.rank._engine import KEY_COLUMNS, _batch_matrix, _Evaluator
    from screening.rank._rois import RoiResolver

    cols = [f.name for f in responses.schema if f.name not in KEY_COLUMNS]
    res = RoiResolver(cols, [subject], manifest_rois=manifest.get("rois"))
    target = res.resolve(roi)
    ev = _Evaluator([target], list(target.members))
    parts = []
    for b in responses.to_batches(columns=list(target.members), filter=ds.field("subject") == subject):
        v = ev(_batch_matrix(b, list(target.members)), subject)[:, 0]
        parts.append(v[np.isfinite(v)])
    return np.concatenate(parts) if parts else np.empty(0)


def _histogram(values, threshold, *, title, out_png, bottom_threshold=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=100)
    if values.size:
        ax.hist(values, bins=min(80, max(10, int(np.sqrt(values.size)))), color="#5b7fa6")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="#c0392b", lw=1.5, label=f"top-k threshold {threshold:.3g}")
    if bottom_threshold is not None and np.isfinite(bottom_threshold):
        ax.axvline(bottom_threshold, color="#7f8c8d", lw=1.2, ls="--", label=f"bottom-k {bottom_threshold:.3g}")
    ax.set_xlabel("ROI response")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


class _BergPredictor:
    """Vertex responses of one image through :class:`screening.api.BERG`, model loaded once."""

    def __init__(self, manifest: dict):
        cfg = manifest.get("config") or {}
        model = manifest.get("model") or {}
        self.store = cfg.get("store")
        self.model_id = model.get("model_id")
        if not self.store or not self.model_id:
            raise InvalidParameterError("the manifest records no config.store or model.model_id")
        subjects = cfg.get("subjects")
        self.subjects = [int(str(s)[-2:]) for s in subjects] if isinstance(subjects, list) and subjects else "all"
        from screening.api import BERG

        self.berg = BERG(self.store, endpoint_url=cfg.get("endpoint_url"), anonymous=cfg.get("anonymous"))
        self.model = self.berg.get_encoding_model(self.model_id, subject=self.subjects, device="cpu")

    def __call__(self, image_bytes: bytes, subject: str) -> np.ndarray:
        from screening import atlas
        from screening.preprocess import preprocess_bytes

        x = preprocess_bytes(image_bytes)[None]
        out = self.berg.encode(self.model, x)
        per_subject = next(iter(out.values()))
        if subject == "mean":
            v = np.mean([a[0] for a in per_subject.values()], axis=0)
        elif subject in per_subject:
            v = per_subject[subject][0]
        else:
            raise InvalidParameterError(f"subject={subject!r} is not among the model's {sorted(per_subject)}")
        return atlas.expand_to_91k(v[None], self.model.vertex_mapping)[0]


_PREDICTORS: dict = {}


def _predict_91k(run_dir, image_id: str, subject: str, *, manifest=None, image_bytes=None) -> np.ndarray:
    """Predicted 91k-grayordinate responses of ``image_id`` for ``subject`` (``mean`` = subject average).

    Uses the store in ``manifest["config"]["store"]`` and ``manifest["model"]["model_id"]``; the model
    is cached per run directory.
    """
    run = Path(run_dir)
    manifest = _read_manifest(run) if manifest is None else manifest
    if image_bytes is None:
        images = (manifest.get("config") or {}).get("images")
        image_bytes = fetch_images(images, [image_id]).get(image_id)
        if image_bytes is None:
            raise InvalidParameterError(f"image_id={image_id!r} is not in the image shards {images!r}")
    key = str(run.resolve())
    if key not in _PREDICTORS:
        _PREDICTORS[key] = _BergPredictor(manifest)
    return _PREDICTORS[key](image_bytes, subject)


def write_report(run_dir, *, rois=None, subject=None, top_k=None, bottom_k=None, predict_91k=None, flatmaps=True,
                 max_error_rows=50, progress=None) -> str:
    """Write ``RUN_DIR/report/index.html`` and its PNGs.

    Parameters
    ----------
    run_dir : str or os.PathLike
        A local run folder: ``responses/``, ``errors/``, ``manifest.json`` and ``rankings/`` (ranked
        now, with :func:`screening.rank.rank` defaults, if missing).
    rois : list of str, optional
        ROIs to show; default those of :data:`DEFAULT_ROIS` present in the rankings.
    subject : str, optional
        Subject whose lists are shown (default ``mean`` if ranked, else the first subject).
    top_k, bottom_k : int, optional
        Thumbnails per sheet; default all ranked rows.
    predict_91k : callable, optional
        ``predict_91k(image_bytes, subject) -> (91282,)`` values for the flatmaps. Default: the run's
        model through :class:`screening.api.BERG` (``manifest["config"]["store"]``). If it fails the page
        says "flatmap unavailable: <reason>".
    flatmaps : bool, default=True
    max_error_rows : int, default=50
    progress : callable, optional

    Returns
    -------
    str
        Path of ``index.html``.
    """
    say = progress or (lambda msg: None)
    run = Path(run_dir)
    if not run.is_dir():
        raise InvalidParameterError(f"run_dir={str(run_dir)!r} is not a directory")
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(run)
    model = manifest.get("model") or {}
    synthetic = bool(model.get("synthetic", False))
    from screening.rank import SETS_FILE, rank, read_rankings

    notes = []
    if not manifest:
        notes.append("no manifest.json in the run folder")
    responses_dir = run / "responses"
    if not (run / "rankings").exists():
        if not responses_dir.exists():
            raise InvalidParameterError(f"{run} has neither rankings/ nor responses/ to rank")
        say("ranking (rankings/ missing)")
        rank(str(responses_dir), str(run / "rankings"), manifest=manifest)
    rankings = read_rankings(str(run / "rankings"))
    sets_path = run / "rankings" / SETS_FILE
    sets = pd.read_parquet(sets_path) if sets_path.exists() else None
    subjects = list(dict.fromkeys(rankings.subject))
    if subject is None:
        subject = "mean" if "mean" in subjects else next((s for s in subjects if s != "consensus"), None)
    elif subject not in subjects:
        raise InvalidParameterError(f"subject={subject!r} is not in the rankings; valid: {subjects}")
    ranked_rois = list(dict.fromkeys(rankings[rankings.kind == "topk"].roi))
    if rois is None:
        rois = [r for r in DEFAULT_ROIS if r in ranked_rois] or ranked_rois[:4]
    else:
        rois = [rois] if isinstance(rois, str) else list(rois)
        unknown = [r for r in rois if r not in ranked_rois]
        if unknown:
            raise InvalidParameterError(
                f"ROI(s) {unknown} are not in the rankings; valid: {ranked_rois[:20]}{' ...' if len(ranked_rois) > 20 else ''}")

    def lst(kind, roi, subj, k):
        r = rankings[(rankings.kind == kind) & (rankings.roi == roi) & (rankings.subject == subj)].sort_values("rank")
        return r.head(k) if k is not None else r

    # images for every sheet, one filtered read
    images_dir = (manifest.get("config") or {}).get("images")
    wanted = set()
    for roi in rois:
        wanted |= set(lst("topk", roi, subject, top_k).image_id) | set(lst("bottomk", roi, subject, bottom_k).image_id)
    images = {}
    if images_dir and Path(str(images_dir)).exists():
        images = fetch_images(str(images_dir), wanted)
    else:
        notes.append(f"image shards not found ({images_dir!r}); thumbnails are placeholders")
    responses = ds.dataset(responses_dir, format="parquet") if responses_dir.exists() else None

    predictor_error = None
    if predict_91k is None:
        def predict_91k(image_bytes, subj):
            return _predict_91k(run, "", subj, manifest=manifest, image_bytes=image_bytes)

    sections = [_summary_section(manifest, rankings, subject, notes)]
    for roi in rois:
        say(f"ROI {roi}")
        slug = _slug(roi)
        top, bottom = lst("topk", roi, subject, top_k), lst("bottomk", roi, subject, bottom_k)
        sheet = f"sheet_{slug}.png"
        make_contact_sheet(top, bottom, images, title=f"{roi} - subject {subject}: top-{len(top)} / bottom-{len(bottom)}"
                           " (score = ROI response)", out_png=out / sheet)
        parts = [f"<h2 id='roi-{H.esc(slug)}'>{H.esc(roi)}</h2>",
                 f"<p><img src='{H.esc(sheet)}' alt='contact sheet {H.esc(roi)}'></p><div class='row'>"]
        if responses is not None:
            hist = f"hist_{slug}.png"
            try:
                vals = _roi_values(responses, roi, subject, manifest)
                thr = float(top.response.iloc[-1]) if len(top) else None
                bthr = float(bottom.response.iloc[-1]) if len(bottom) else None
                _histogram(vals, thr, bottom_threshold=bthr, out_png=out / hist,
                           title=f"{roi}, subject {subject}: {vals.size} images")
                parts.append(f"<div><img src='{H.esc(hist)}' alt='histogram {H.esc(roi)}'></div>")
            except Exception as exc:  # noqa: BLE001
                parts.append(f"<div class='note'>histogram unavailable: {H.esc(exc)}</div>")
        if flatmaps and len(top):
            best = str(top.image_id.iloc[0])
            fm = f"flatmap_{slug}.png"
            try:
                if predictor_error is not None:
                    raise RuntimeError(predictor_error)
                if best not in images:
                    raise InvalidParameterError(f"image {best!r} not found in the image shards")
                values = predict_91k(images[best], subject)
                try:
                    roi_grayordinate_mask(roi)
                    outline = [roi]
                except InvalidParameterError:
                    outline = []
                draw_flatmap(values, outline_rois=outline, out_png=out / fm,
                             title=f"predicted response to {best} (top-1 for {roi}, subject {subject})"
                                   + (" — SYNTHETIC WEIGHTS" if synthetic else ""))
                parts.append(f"<div><img src='{H.esc(fm)}' alt='flatmap {H.esc(roi)}'></div>")
            except Exception as exc:  # noqa: BLE001 - optional figure; the reason goes on the page
                predictor_error = predictor_error or f"{type(exc).__name__}: {exc}"
                parts.append(f"<div class='note'>flatmap unavailable: {H.esc(predictor_error)}</div>")
        parts.append("</div>")
        cols = ["rank", "image_id", "response", "z", "margin", "p_null"]
        parts.append(f"<h3>top-{len(top)}</h3>" + H.table(top, cols))
        cons = lst("consensus", roi, "consensus", top_k)
        if len(cons):
            parts.append("<h3>consensus over subjects (mean z; n_subjects_topk)</h3>"
                         + H.table(cons, ["rank", "image_id", "score", "n_subjects_topk", "margin", "p_null"], 10))
        sel = lst("selectivity", roi, subject, top_k)
        if len(sel):
            parts.append("<h3>most selective (z minus mean z of the comparison set)</h3>"
                         + H.table(sel, ["rank", "image_id", "score", "response", "z", "p_null"], 10))
        if sets is not None:
            srow = sets[(sets.roi == roi) & (sets.subject == subject)]
            if len(srow):
                parts.append("<h3>set-level null (mean of k random images)</h3>"
                             + H.table(srow, ["kind", "k", "set_score", "null_mean", "null_q", "set_margin",
                                              "set_p_null", "null_draws"]))
        sections.append("".join(parts))
    con = rankings[(rankings.kind == "contrast") & (rankings.subject == subject)]
    if len(con):
        sections.append("<h2>contrasts</h2>" + "".join(
            f"<h3>{H.esc(name)}</h3>" + H.table(g.sort_values("rank"), ["rank", "image_id", "score", "response", "z",
                                                                         "margin", "p_null"], 10)
            for name, g in con.groupby("roi", sort=False)))
    errors, n_errors = _read_errors(run, max_error_rows)
    sections.append(f"<h2>errors ({n_errors})</h2>" + H.table(errors, max_rows=max_error_rows))
    page = H.page(f"screening report — {run.name}", sections, synthetic=synthetic)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return str(index)


def _summary_section(manifest, rankings, subject, notes):
    model = manifest.get("model") or {}
    counts = manifest.get("counts") or {}
    items = [
        ("model_id", model.get("model_id")), ("variant", model.get("variant")),
        ("checkpoint_sha256", model.get("checkpoint_sha256")),
        ("weights", "SYNTHETIC" if model.get("synthetic") else "published" if model else "unknown"),
        ("width", model.get("width")), ("engine_version", manifest.get("engine_version")),
        ("created", manifest.get("created")),
        ("images", counts.get("images")), ("responses_rows", counts.get("responses_rows")),
        ("errors", counts.get("errors")), ("subject shown", subject),
        ("ranked lists", rankings.groupby(["kind", "roi", "subject"]).ngroups),
    ]
    notes_html = "".join(f"<div class='note'>{H.esc(n)}</div>" for n in notes)
    return "<h2>run</h2>" + H.kv_table(items) + notes_html


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``screening report`` arguments."""
    parser.add_argument("run_dir", help="run folder (responses/, errors/, manifest.json, rankings/)")
    parser.add_argument("--roi", action="append", dest="rois", metavar="NAME",
                        help=f"ROI to show (repeatable); default those of {', '.join(DEFAULT_ROIS)} that were ranked")
    parser.add_argument("--subject", help="subject shown (default mean)")
    parser.add_argument("--top-k", type=int, help="thumbnails in the top row (default all ranked)")
    parser.add_argument("--bottom-k", type=int, help="thumbnails in the bottom row (default all ranked)")
    parser.add_argument("--no-flatmaps", action="store_true", help="skip the model call for flatmaps")


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``screening report``; returns the exit status."""
    t0 = time.perf_counter()
    for flag, k in (("--top-k", args.top_k), ("--bottom-k", args.bottom_k)):
        if k is not None and k < 0:  # head(-1) would silently drop the last image instead
            raise InvalidParameterError(f"{flag} must be 0 or more; got {k}")
    try:
        path = write_report(args.run_dir, rois=args.rois, subject=args.subject, top_k=args.top_k,
                            bottom_k=args.bottom_k, flatmaps=not args.no_flatmaps,
                            progress=lambda m: print(f"[{time.perf_counter() - t0:6.1f}s] {m}", file=sys.stderr))
    except InvalidParameterError as exc:
        print(f"screening report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.relpath(path)}")
    return 0
