"""``screening report RUN_DIR``: one HTML page (image lists, flatmaps, histograms, manifest, errors).

The page is ``RUN_DIR/report/index.html``, rendered from ``templates/report.html`` (Jinja2, autoescaped);
every figure, thumbnail and full-size image is a file beside it, linked by relative path, so the folder
can be copied or served as is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from screening.exceptions import InvalidParameterError
from screening.report import html as H
from screening.report.contact_sheet import (
    fetch_image_records,
    fetch_images,
    image_extension,
    make_contact_sheet,
    write_thumbnail,
)
from screening.report.describe import describe_roi, legend, short_name
from screening.report.flatmap import draw_flatmap, roi_grayordinate_mask

__all__ = ["write_report", "draw_flatmap", "make_contact_sheet", "fetch_images", "fetch_image_records",
           "histogram_thresholds", "describe_roi", "DEFAULT_ROIS", "configure_parser", "run_from_args"]

#: ROIs shown when none are asked for (those present in the rankings, in this order).
DEFAULT_ROIS = ("FFC", "PHA1-3", "faces", "V1", "early_visual", "group_01")
#: Below this many null images the page says p_null is coarse (its floor 1/(n+1) is then above 0.001).
SMALL_NULL = 1000


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


def _roi_values(responses: ds.Dataset, roi: str, subject: str, manifest: dict, members=None) -> np.ndarray:
    """All finite values of one ROI for one subject (streamed; only the member columns are read).

    ``members`` are the columns rank averaged for this ROI (rankings metadata); without them the name is
    resolved again against the table.
    """
    from screening.rank._engine import KEY_COLUMNS, _batch_matrix, _Evaluator
    from screening.rank._rois import RoiResolver, Target

    cols = [f.name for f in responses.schema if f.name not in KEY_COLUMNS]
    res = RoiResolver(cols, [subject], manifest_rois=manifest.get("rois"))
    if members and all(c in cols for c in members):
        members = tuple(members)
        w = np.ones(1) if len(members) == 1 else np.array([res.vertex_count(c, subject) for c in members])
        target = Target(roi, members, frozenset(), {subject: w})
    else:
        target = res.resolve(roi)
    ev = _Evaluator([target], list(target.members))
    parts = []
    for b in responses.to_batches(columns=list(target.members), filter=ds.field("subject") == subject):
        v = ev(_batch_matrix(b, list(target.members)), subject)[:, 0]
        parts.append(v[np.isfinite(v)])
    return np.concatenate(parts) if parts else np.empty(0)


def histogram_thresholds(values, k_top: int, k_bottom: int) -> tuple[float | None, float | None]:
    """Where the top-k and bottom-k lists start: the k-th largest and the k-th smallest finite value.

    ``None`` for a list that is off (k = 0) or longer than the values.
    """
    v = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    top = float(v[-k_top]) if 0 < k_top <= v.size else None
    bottom = float(v[k_bottom - 1]) if 0 < k_bottom <= v.size else None
    return top, bottom


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _histogram(values, *, k_top, k_bottom, title, out_png, xlabel="ROI response (model output units)"):
    """Response histogram with the top-k and bottom-k thresholds; returns the two threshold values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top, bottom = histogram_thresholds(values, k_top, k_bottom)
    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=100)
    if values.size:
        ax.hist(values, bins=min(80, max(10, int(np.sqrt(values.size)))), color="#5b7fa6")
    if top is not None:
        ax.axvline(top, color="#c0392b", lw=1.6,
                   label=f"top-{k_top} from here up ({_ordinal(k_top)} largest = {top:.3g})")
    if bottom is not None:
        ax.axvline(bottom, color="#444444", lw=1.4, ls="--",
                   label=f"bottom-{k_bottom} from here down ({_ordinal(k_bottom)} smallest = {bottom:.3g})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.35)  # room for the legend above the bars
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return top, bottom


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
    """Write ``RUN_DIR/report/index.html``, its PNGs and the shown images.

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
        Images shown per list; default all ranked rows. Both are capped at ``floor(N/2)`` when
        ``top_k + bottom_k`` exceeds the ``N`` images with a response, so the lists never share images
        (the page says so).
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
        Path of ``index.html``. Beside it: ``sheet_<roi>.png`` (contact sheet), ``hist_<roi>.png``,
        ``flatmap_<roi>.png``, ``thumbs/<id>.jpg`` and ``images/<id>.<ext>`` (the original bytes of every
        image shown).
    """
    say = progress or (lambda msg: None)
    run = Path(run_dir)
    if not run.is_dir():
        raise InvalidParameterError(f"run_dir={str(run_dir)!r} is not a directory")
    for name, k in (("top_k", top_k), ("bottom_k", bottom_k)):
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0):
            raise InvalidParameterError(f"{name} must be an integer >= 0 or None; got {k!r}")
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(run)
    cfg = manifest.get("config") or {}
    model = manifest.get("model") or {}
    synthetic = bool(model.get("synthetic", False))
    from screening.rank import SETS_FILE, rank, read_rankings, read_rankings_metadata

    notes = []
    if not manifest:
        notes.append("no manifest.json in the run folder")
    responses_dir = run / "responses"
    if not (run / "rankings").exists():
        if not responses_dir.exists():
            raise InvalidParameterError(f"{run} has neither rankings/ nor responses/ to rank")
        say("ranking (rankings/ missing)")
        with warnings.catch_warnings():  # the notes land in the rankings metadata, shown below
            warnings.simplefilter("ignore", category=_ranking_note())
            rank(str(responses_dir), str(run / "rankings"), manifest=manifest)
    rankings = read_rankings(str(run / "rankings"))
    try:
        meta = read_rankings_metadata(str(run / "rankings"))
    except InvalidParameterError:
        meta = {}
    notes += [f"ranking: {n}" for n in meta.get("notes") or []]
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
    members = meta.get("members") or {}

    def lst(kind, roi, subj, k=None):
        r = rankings[(rankings.kind == kind) & (rankings.roi == roi) & (rankings.subject == subj)].sort_values("rank")
        return r.head(k) if k is not None else r

    responses = ds.dataset(responses_dir, format="parquet") if responses_dir.exists() else None
    n_images = meta.get("n_images") or (manifest.get("counts") or {}).get("images")

    # Per ROI: the values (histogram, N), then the shown lists, capped so top and bottom never share images.
    plans = []
    for roi in rois:
        say(f"ROI {roi}: values")
        p = {"roi": roi, "slug": _slug(roi), "notes": [], "values": None, "hist_error": None}
        if responses is not None:
            try:
                p["values"] = _roi_values(responses, roi, subject, manifest, members.get(roi))
            except Exception as exc:  # noqa: BLE001 - optional figure; the reason goes on the page
                p["hist_error"] = f"{type(exc).__name__}: {exc}"
        n = _n_finite(p["values"], sets, roi, subject, n_images)
        ranked_top, ranked_bottom = lst("topk", roi, subject), lst("bottomk", roi, subject)
        kt = len(ranked_top) if top_k is None else min(top_k, len(ranked_top))
        kb = len(ranked_bottom) if bottom_k is None else min(bottom_k, len(ranked_bottom))
        if n is not None and kt and kb and kt + kb > n:
            cap = n // 2
            p["notes"].append(
                f"Only {n} images have a response for {roi} (subject {subject}), fewer than top-{kt} + bottom-{kb}: "
                f"both lists are cut to k = floor({n}/2) = {cap} so that no image is in both.")
            kt, kb = min(kt, cap), min(kb, cap)
        top = ranked_top.head(kt)
        bottom = ranked_bottom.head(kb)
        shared = bottom.image_id.isin(set(top.image_id))
        if shared.any():  # ties can still put one image in both; show it once, in the top list
            p["notes"].append(f"{int(shared.sum())} image(s) tie between the top and bottom lists; shown in the "
                              f"top list only.")
            bottom = bottom[~shared]
        p.update(top=top, bottom=bottom, n=n)
        plans.append(p)

    # image bytes for the thumbnails; only id + source for the images named in tables
    thumb_ids = set()
    for p in plans:
        thumb_ids |= set(p["top"].image_id) | set(p["bottom"].image_id)
    table_k = max([len(p["top"]) for p in plans] + [1])
    con = rankings[(rankings.kind == "contrast") & (rankings.subject == subject)]
    table_ids = set(con[con["rank"] <= table_k].image_id)
    for roi in rois:
        for kind, subj in (("consensus", "consensus"), ("selectivity", subject)):
            table_ids |= set(lst(kind, roi, subj, table_k).image_id)
    records, shards_note = _image_records(manifest, thumb_ids, table_ids - thumb_ids)
    if shards_note:
        notes.append(shards_note)
    files = _write_image_files(out, records, thumb_ids)

    def name_of(i):
        return short_name((records.get(str(i)) or {}).get("source"))

    def source_of(i):
        return (records.get(str(i)) or {}).get("source")

    def file_link(row):
        i = str(row["image_id"])
        return (files.get(i, {}).get("full"), source_of(i))

    def with_names(frame):
        frame = frame.copy()
        frame["file"] = [name_of(i) or "" for i in frame.image_id]
        return frame

    def cells(frame):
        return [{"rank": int(r.rank), "image_id": str(r.image_id), "score": _signed(r.response), "z": _signed(r.z),
                 "p": f"{r.p_null:.2g}" if np.isfinite(r.p_null) else "", "name": name_of(r.image_id),
                 "source": source_of(r.image_id), "thumb": files[str(r.image_id)]["thumb"],
                 "full": files[str(r.image_id)].get("full")}
                for r in frame.itertuples(index=False)]

    predictor_error = None
    if predict_91k is None:
        def predict_91k(image_bytes, subj):
            return _predict_91k(run, "", subj, manifest=manifest, image_bytes=image_bytes)

    definitions = dict(legend(meta))
    link = {"file": file_link}
    roi_ctx = []
    for p in plans:
        roi, slug, top, bottom = p["roi"], p["slug"], p["top"], p["bottom"]
        say(f"ROI {roi}: figures")
        r = {"name": roi, "slug": slug, "notes": p["notes"], "hist": None, "hist_error": p["hist_error"],
             "hist_top": "", "hist_bottom": "", "flatmap": None, "flatmap_error": None,
             "what": describe_roi(roi, members.get(roi), cfg, _vertex_counts(manifest, members.get(roi), subject)),
             "top": cells(top), "bottom": cells(bottom), "sheet": f"sheet_{slug}.png"}
        make_contact_sheet(top.assign(score=top.response), bottom.assign(score=bottom.response),
                           {i: rec["bytes"] for i, rec in records.items() if rec.get("bytes") is not None},
                           title=f"{roi} - subject {subject}: top-{len(top)} / bottom-{len(bottom)} (score = ROI "
                                 "response)", out_png=out / r["sheet"],
                           labels={i: name_of(i) for i in thumb_ids if name_of(i)})
        if p["values"] is not None:
            r["hist"] = f"hist_{slug}.png"
            thr = _histogram(p["values"], k_top=len(top), k_bottom=len(bottom), out_png=out / r["hist"],
                             title=f"{roi}, subject {subject}: {p['values'].size} images")
            r["hist_top"], r["hist_bottom"] = (repr(t) if t is not None else "" for t in thr)
        if flatmaps and len(top):
            best = str(top.image_id.iloc[0])
            fm = f"flatmap_{slug}.png"
            try:
                if predictor_error is not None:
                    raise RuntimeError(predictor_error)
                data = (records.get(best) or {}).get("bytes")
                if data is None:
                    raise InvalidParameterError(f"image {best!r} not found in the image shards")
                values = predict_91k(data, subject)
                try:
                    roi_grayordinate_mask(roi)
                    outline = [roi]
                except InvalidParameterError:
                    outline = []
                label = name_of(best) or best
                draw_flatmap(values, outline_rois=outline, out_png=out / fm,
                             colorbar_label="predicted response (model output units)",
                             title=f"predicted response to {label} (top-1 for {roi}, subject {subject})"
                                   + (" — SYNTHETIC WEIGHTS" if synthetic else ""))
                r["flatmap"] = fm
            except Exception as exc:  # noqa: BLE001 - optional figure; the reason goes on the page
                predictor_error = predictor_error or f"{type(exc).__name__}: {exc}"
                r["flatmap_error"] = predictor_error
        cols = ["rank", "file", "image_id", "response", "z", "margin", "p_null"]
        lists = [{"title": f"top-{len(top)}", "note": None, "table": H.table(with_names(top), cols, links=link)}]
        if len(bottom):
            lists.append({"title": f"bottom-{len(bottom)} (rank 1 = lowest)", "note": None,
                          "table": H.table(with_names(bottom), cols, links=link)})
        extra = []
        cons = lst("consensus", roi, "consensus", len(top) or None)
        if len(cons):
            extra.append({"title": "consensus over subjects", "note": "score = the image's mean z over the "
                          "subjects; n_subjects_topk = subjects with it in their own top-k",
                          "table": H.table(with_names(cons), ["rank", "file", "image_id", "score", "n_subjects_topk",
                                                               "margin", "p_null"], links=link)})
        sel = lst("selectivity", roi, subject, len(top) or None)
        if len(sel):
            extra.append({"title": "most selective", "note": "score = z of this ROI minus the mean z of the "
                          "comparison areas (every area column not overlapping it, unless --comparison was given)",
                          "table": H.table(with_names(sel), ["rank", "file", "image_id", "score", "response", "z",
                                                              "margin", "p_null"], links=link)})
        elif meta and not meta.get("selectivity", True):
            r["notes"].append("No selectivity list: " + next(
                (n for n in meta.get("notes") or [] if n.startswith("selectivity")), "ranked without selectivity"))
        tables = [lists] + ([extra] if extra else [])
        if sets is not None:
            srow = sets[(sets.roi == roi) & (sets.subject == subject)]
            if len(srow):
                note = "a top-k of pure noise beats random sets too: compare ROIs by set_margin"
                ks = sorted(set(int(k) for k in srow.k))
                if p["n"] is not None and any(2 * k > p["n"] for k in ks):
                    note = (f"rank's lists hold k = {', '.join(map(str, ks))} of the {p['n']} images, not the "
                            f"{len(top)} shown: with k that close to N the set score is nearly the set mean and "
                            f"this test says little. " + note)
                tables.append([{"title": "set-level null (the ranked lists against random sets of k)", "note": note,
                                "table": H.table(srow, ["kind", "k", "n_images", "set_score", "null_mean", "null_q",
                                                        "set_margin", "set_p_null", "null_draws"])}])
        r["tables"] = tables
        roi_ctx.append(r)

    contrasts = []
    for cname, g in con.groupby("roi", sort=False):
        a, _, b = cname.partition(">")
        by = meta.get("contrast_by", "z")
        what = [f"score = {by}({a}) − {by}({b}); response = response({a}) − response({b})"] + [
            f"{side}: {describe_roi(side, members.get(side), cfg)}" for side in (a, b)]
        contrasts.append({"name": cname, "what": what,
                          "table": H.table(with_names(g.sort_values("rank").head(table_k)),
                                           ["rank", "file", "image_id", "score", "response", "z", "margin", "p_null"],
                                           links=link)})
    small = _small_n_note(meta, n_images)
    if small:
        notes.append(small)
    errors, n_errors = _read_errors(run, max_error_rows)
    context = {
        "title": f"screening report — {run.name}",
        "subtitle": f"{n_images if n_images is not None else '?'} images screened; lists for subject {subject}; "
                    f"model {model.get('model_id') or '?'}",
        "synthetic": synthetic, "summary": _summary_items(manifest, rankings, subject, meta), "notes": notes,
        "legend": legend(meta), "definitions": definitions, "subject": subject, "rois": roi_ctx,
        "contrasts": contrasts, "n_errors": n_errors,
        "errors": H.table(errors, list(errors.columns) if errors is not None else [], max_rows=max_error_rows),
    }
    index = out / "index.html"
    index.write_text(H.render(context), encoding="utf-8")
    return str(index)


def _ranking_note():
    from screening.rank import RankingNote

    return RankingNote


def _signed(x) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:+.3g}"


def _n_finite(values, sets, roi, subject, n_images):
    """Images with a finite response for this ROI and subject: the histogram's values, else the set table."""
    if values is not None:
        return int(values.size)
    if sets is not None:
        row = sets[(sets.roi == roi) & (sets.subject == subject) & (sets.kind == "topk")]
        if len(row):
            return int(row.n_images.iloc[0])
    return int(n_images) if n_images is not None else None


def _vertex_counts(manifest, members, subject) -> dict:
    """Column -> model vertex count for ``subject`` (manifest first, then the atlas)."""
    from screening import atlas

    out = {}
    counts = atlas.roi_grayordinates()
    for c in members or []:
        per = ((manifest.get("rois") or {}).get(c) or {}).get("n_vertices") or {}
        if subject in per:
            out[c] = float(per[subject])
        elif c in counts:
            out[c] = float(len(counts[c]))
    return out


def _small_n_note(meta: dict, n_images) -> str | None:
    """Why p_null is coarse on a small set (its floor and step are 1/(n_null + 1))."""
    if n_images is None:
        return None
    n_null = min(int(meta.get("n_null", 10_000)), int(n_images))
    if n_null >= SMALL_NULL:
        return None
    return (f"Small set: the single-image null holds only {n_null} images (the screened set, the listed images "
            f"among them), so p_null cannot fall below 1/({n_null}+1) = {1 / (n_null + 1):.2g} and moves in steps "
            f"of that size. Read p_null and margin as descriptive here, not as tests; below {SMALL_NULL:,} images "
            f"no p_null reaches 0.001.")


def _image_shards(manifest: dict):
    """Where the run's images are: the manifest's list of input shards, else ``config.images``."""
    cfg = manifest.get("config") or {}
    listed = [s.get("path") for s in manifest.get("shards") or [] if isinstance(s, dict) and s.get("path")]
    out = []
    if listed:
        out.append(listed)
    if cfg.get("images"):
        out.append(str(cfg["images"]))
    return out


def _image_records(manifest: dict, thumb_ids, name_ids):
    """(``{id: {"bytes", "source"}}``, note or None): bytes for thumbnails, source only for table rows."""
    cfg = manifest.get("config") or {}
    kw = {"id_column": cfg.get("id_column") or "image_id", "image_column": cfg.get("image_column") or "image",
          "endpoint_url": cfg.get("endpoint_url"), "anonymous": cfg.get("anonymous")}
    if cfg.get("id_derived"):
        return {}, ("the image shards have no image_id column (the run derived the ids from the bytes), so images "
                    "cannot be looked up by id: thumbnails are placeholders and file names are missing")
    tried = []
    for where in _image_shards(manifest):
        try:
            recs = fetch_image_records(where, thumb_ids, **kw)
            recs.update({i: r for i, r in fetch_image_records(where, name_ids, with_bytes=False, **kw).items()
                         if i not in recs})
            return recs, None
        except Exception as exc:  # noqa: BLE001 - moved shards: try the next location, then say so
            tried.append(f"{where if isinstance(where, str) else f'{len(where)} shard(s) of the manifest'}: {exc}")
    if not tried:
        return {}, "the manifest names no image shards (config.images); thumbnails are placeholders"
    return {}, "image shards not found (" + "; ".join(tried) + "); thumbnails are placeholders"


def _write_image_files(out: Path, records: dict, ids) -> dict:
    """``thumbs/<id>.jpg`` for every shown image and ``images/<id>.<ext>`` (the original bytes) where known."""
    (out / "thumbs").mkdir(exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    files = {}
    for i in sorted(ids):
        stem = _slug(i)
        data = (records.get(i) or {}).get("bytes")
        write_thumbnail(data, out / "thumbs" / f"{stem}.jpg")
        f = {"thumb": f"thumbs/{stem}.jpg"}
        if data is not None:
            name = f"images/{stem}.{image_extension(data)}"
            (out / name).write_bytes(data)
            f["full"] = name
        files[i] = f
    return files


def _summary_items(manifest, rankings, subject, meta):
    model = manifest.get("model") or {}
    counts = manifest.get("counts") or {}
    cfg = manifest.get("config") or {}
    ranked = (f"top_k={meta.get('top_k')}, bottom_k={meta.get('bottom_k')}, n_null={meta.get('n_null')}, "
              f"null_draws={meta.get('null_draws')}, seed={meta.get('seed')}, selectivity={meta.get('selectivity')}"
              if meta else None)
    return [
        ("model_id", model.get("model_id")), ("variant", model.get("variant")),
        ("checkpoint_sha256", model.get("checkpoint_sha256")),
        ("weights", "SYNTHETIC" if model.get("synthetic") else "published" if model else "unknown"),
        ("width", model.get("width")), ("engine_version", manifest.get("engine_version")),
        ("created", manifest.get("created")), ("image shards", cfg.get("images")),
        ("images", counts.get("images")), ("responses_rows", counts.get("responses_rows")),
        ("errors", counts.get("errors")), ("subject shown", subject), ("ranking", ranked),
        ("ranked lists", rankings.groupby(["kind", "roi", "subject"]).ngroups),
    ]


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
