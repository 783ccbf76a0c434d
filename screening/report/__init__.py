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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds

from screening.validation import parse_subjects
from screening.exceptions import InvalidParameterError
from screening.fs import StorageOptions
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
    try:
        dataset = _committed_dataset(run, "errors")
        if dataset is None:
            return None, 0
        return dataset.head(n).to_pandas(), dataset.count_rows()
    except Exception:  # noqa: BLE001 - an empty/odd errors folder must not stop the report
        return None, 0


def _roi_values(responses: ds.Dataset, roi: str, subject: str, manifest: dict, members=None) -> np.ndarray:
    """All finite values of one ROI for one subject (streamed; only the member columns are read).

    ``members`` are the columns rank averaged for this ROI (rankings metadata); without them the name is
    resolved again against the table.
    """
    from screening.rank import roi_values

    return roi_values(responses, roi, subject, manifest=manifest, members=members)


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
        self.subjects = list(parse_subjects(subjects)) if isinstance(subjects, list) and subjects else "all"
        from screening.api import BERG

        options = _storage_options(cfg)
        self.berg = BERG(self.store, storage_options=options)
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
        now, with :func:`screening.rank.rank` defaults, if missing). Of a pipeline run (``_committed/``
        present) only the committed files are read.
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
    run = _check_run_dir(run_dir, top_k=top_k, bottom_k=bottom_k)
    inputs = _read_inputs(run, rois=rois, subject=subject, say=say)
    plans = []
    for roi in inputs.rois:
        say(f"ROI {roi}: values")
        plans.append(_plan_lists(inputs, roi, top_k, bottom_k))
    images = _fetch_shown_images(inputs, plans)
    if predict_91k is None:
        def predict_91k(image_bytes, subj):
            return _predict_91k(run, "", subj, manifest=inputs.manifest, image_bytes=image_bytes)
    flatmapper = _Flatmapper(predict_91k, inputs, images) if flatmaps else None
    roi_ctx = []
    for p in plans:
        say(f"ROI {p['roi']}: figures")
        roi_ctx.append(_roi_section(inputs, images, p, flatmapper))
    index = inputs.out / "index.html"
    index.write_text(H.render(_page_context(inputs, images, roi_ctx, max_error_rows)), encoding="utf-8")
    return str(index)


# -- input checks and the run's tables ------------------------------------------------------------------------
def _check_run_dir(run_dir, *, top_k, bottom_k) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise InvalidParameterError(f"run_dir={str(run_dir)!r} is not a directory")
    for name, k in (("top_k", top_k), ("bottom_k", bottom_k)):
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0):
            raise InvalidParameterError(f"{name} must be an integer >= 0 or None; got {k!r}")
    return run


@dataclass
class _Inputs:
    """What the page is made of: the run's manifest, its rankings and their metadata, the chosen subject and ROIs."""

    run: Path
    out: Path
    manifest: dict
    rankings: pd.DataFrame
    meta: dict
    sets: pd.DataFrame | None
    subject: str
    rois: list
    responses: ds.Dataset | None
    notes: list = field(default_factory=list)

    @property
    def cfg(self) -> dict:
        return self.manifest.get("config") or {}

    @property
    def model(self) -> dict:
        return self.manifest.get("model") or {}

    @property
    def synthetic(self) -> bool:
        return bool(self.model.get("synthetic", False))

    @property
    def members(self) -> dict:
        return self.meta.get("members") or {}

    @property
    def n_images(self):
        return self.meta.get("n_images") or (self.manifest.get("counts") or {}).get("images")

    def ranked(self, kind: str, roi: str, subject: str, k=None) -> pd.DataFrame:
        r = self.rankings
        r = r[(r.kind == kind) & (r.roi == roi) & (r.subject == subject)].sort_values("rank")
        return r.head(k) if k is not None else r


def _read_inputs(run: Path, *, rois, subject, say) -> _Inputs:
    from screening.rank import SETS_FILE, read_rankings, read_rankings_metadata

    manifest = _read_manifest(run)
    notes = [] if manifest else ["no manifest.json in the run folder"]
    responses = _committed_dataset(run, "responses")
    if not (run / "rankings").exists():
        _rank_now(run, manifest, say)
    rankings = read_rankings(str(run / "rankings"))
    try:
        meta = read_rankings_metadata(str(run / "rankings"))
    except InvalidParameterError:
        meta = {}
    notes += [f"ranking: {n}" for n in meta.get("notes") or []]
    sets_path = run / "rankings" / SETS_FILE
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    return _Inputs(run=run, out=out, manifest=manifest, rankings=rankings, meta=meta,
                   sets=pd.read_parquet(sets_path) if sets_path.exists() else None,
                   subject=_choose_subject(rankings, subject), rois=_choose_rois(rankings, rois),
                   responses=responses, notes=notes)


def _rank_now(run: Path, manifest: dict, say) -> None:
    from screening.rank import rank

    if not (run / "responses").exists():
        raise InvalidParameterError(f"{run} has neither rankings/ nor responses/ to rank")
    say("ranking (rankings/ missing)")
    with warnings.catch_warnings():  # the notes land in the rankings metadata, shown on the page
        warnings.simplefilter("ignore", category=_ranking_note())
        rank(str(run / "responses"), str(run / "rankings"), manifest=manifest)


def _committed_files(run: Path, kind: str) -> list[str] | None:
    """The committed ``kind`` files of a pipeline run (``_committed/`` present), else ``None`` (a plain folder)."""
    from screening.pipeline.outputs import RunOutputs  # lazy: the pipeline package pulls in Ray

    outputs = RunOutputs(str(run))
    return outputs.files()[kind] if outputs.is_run() else None


def _committed_dataset(run: Path, kind: str) -> ds.Dataset | None:
    """``responses`` / ``errors`` as one dataset: only the committed files of a pipeline run (leftovers of an
    interrupted unit are not results), the whole folder otherwise; ``None`` when there is nothing."""
    files = _committed_files(run, kind)
    if files is None:
        return ds.dataset(run / kind, format="parquet") if (run / kind).exists() else None
    return ds.dataset(files, format="parquet") if files else None


def _choose_subject(rankings: pd.DataFrame, subject):
    subjects = list(dict.fromkeys(rankings.subject))
    if subject is None:
        return "mean" if "mean" in subjects else next((s for s in subjects if s != "consensus"), None)
    if subject not in subjects and subject not in ("mean", "consensus"):
        named = parse_subjects(subject, name="subject")  # any spelling of one subject: 1, "01", "subj01", ...
        if len(named) != 1:
            raise InvalidParameterError(f"subject={subject!r} names {len(named)} subjects; the page shows one")
        subject = named[0]
    if subject not in subjects:
        raise InvalidParameterError(f"subject={subject!r} is not in the rankings; valid: {subjects}")
    return subject


def _choose_rois(rankings: pd.DataFrame, rois) -> list:
    ranked_rois = list(dict.fromkeys(rankings[rankings.kind == "topk"].roi))
    if rois is None:
        return [r for r in DEFAULT_ROIS if r in ranked_rois] or ranked_rois[:4]
    rois = [rois] if isinstance(rois, str) else list(rois)
    unknown = [r for r in rois if r not in ranked_rois]
    if unknown:
        raise InvalidParameterError(
            f"ROI(s) {unknown} are not in the rankings; valid: {ranked_rois[:20]}"
            f"{' ...' if len(ranked_rois) > 20 else ''}")
    return rois


# -- the shown lists --------------------------------------------------------------------------------------------
def _plan_lists(inputs: _Inputs, roi: str, top_k, bottom_k) -> dict:
    """One ROI's values (histogram, N) and its shown lists, capped so that top and bottom never share images."""
    subject = inputs.subject
    p = {"roi": roi, "slug": _slug(roi), "notes": [], "values": None, "hist_error": None}
    if inputs.responses is not None:
        try:
            p["values"] = _roi_values(inputs.responses, roi, subject, inputs.manifest, inputs.members.get(roi))
        except Exception as exc:  # noqa: BLE001 - optional figure; the reason goes on the page
            p["hist_error"] = f"{type(exc).__name__}: {exc}"
    n = _n_finite(p["values"], inputs.sets, roi, subject, inputs.n_images)
    ranked_top, ranked_bottom = inputs.ranked("topk", roi, subject), inputs.ranked("bottomk", roi, subject)
    kt = len(ranked_top) if top_k is None else min(top_k, len(ranked_top))
    kb = len(ranked_bottom) if bottom_k is None else min(bottom_k, len(ranked_bottom))
    if n is not None and kt and kb and kt + kb > n:
        cap = n // 2
        p["notes"].append(
            f"Only {n} images have a response for {roi} (subject {subject}), fewer than top-{kt} + bottom-{kb}: "
            f"both lists are cut to k = floor({n}/2) = {cap} so that no image is in both.")
        kt, kb = min(kt, cap), min(kb, cap)
    top, bottom = ranked_top.head(kt), ranked_bottom.head(kb)
    shared = bottom.image_id.isin(set(top.image_id))
    if shared.any():  # ties can still put one image in both; show it once, in the top list
        p["notes"].append(f"{int(shared.sum())} image(s) tie between the top and bottom lists; shown in the "
                          f"top list only.")
        bottom = bottom[~shared]
    p.update(top=top, bottom=bottom, n=n)
    return p


# -- image fetching ---------------------------------------------------------------------------------------------
@dataclass
class _Images:
    """The shown images: bytes and source per id (``records``), their files beside the page (``files``)."""

    records: dict
    files: dict
    thumb_ids: set
    table_k: int

    def name_of(self, i):
        return short_name(self.source_of(i))

    def source_of(self, i):
        return (self.records.get(str(i)) or {}).get("source")

    def bytes_of(self, i):
        return (self.records.get(str(i)) or {}).get("bytes")

    def file_link(self, row):
        i = str(row["image_id"])
        return (self.files.get(i, {}).get("full"), self.source_of(i))

    def with_names(self, frame):
        frame = frame.copy()
        frame["file"] = [self.name_of(i) or "" for i in frame.image_id]
        return frame

    def table(self, frame, columns):
        return H.table(self.with_names(frame), columns, links={"file": self.file_link})

    def cells(self, frame):
        return [{"rank": int(r.rank), "image_id": str(r.image_id), "score": _signed(r.response), "z": _signed(r.z),
                 "p": f"{r.p_null:.2g}" if np.isfinite(r.p_null) else "", "name": self.name_of(r.image_id),
                 "source": self.source_of(r.image_id), "thumb": self.files[str(r.image_id)]["thumb"],
                 "full": self.files[str(r.image_id)].get("full")}
                for r in frame.itertuples(index=False)]


def _fetch_shown_images(inputs: _Inputs, plans: list) -> _Images:
    """Bytes of every thumbnail's image; only id + source of the images named in the tables."""
    thumb_ids = set()
    for p in plans:
        thumb_ids |= set(p["top"].image_id) | set(p["bottom"].image_id)
    table_k = max([len(p["top"]) for p in plans] + [1])
    con = _contrasts(inputs)
    table_ids = set(con[con["rank"] <= table_k].image_id)
    for roi in inputs.rois:
        for kind, subj in (("consensus", "consensus"), ("selectivity", inputs.subject)):
            table_ids |= set(inputs.ranked(kind, roi, subj, table_k).image_id)
    records, shards_note = _image_records(inputs.manifest, thumb_ids, table_ids - thumb_ids)
    missing = (thumb_ids | table_ids) - set(records)
    if missing:  # images read straight from files or tars: the run's sources table says where each one is
        found = _records_from_sources(inputs.run, inputs.manifest, missing, thumb_ids)
        records.update(found)
        if found and missing <= set(found):
            shards_note = None
    if shards_note:
        inputs.notes.append(shards_note)
    return _Images(records, _write_image_files(inputs.out, records, thumb_ids), thumb_ids, table_k)


def _contrasts(inputs: _Inputs) -> pd.DataFrame:
    r = inputs.rankings
    return r[(r.kind == "contrast") & (r.subject == inputs.subject)]


# -- pictures ---------------------------------------------------------------------------------------------------
def _draw_sheet(inputs: _Inputs, images: _Images, p: dict) -> str:
    top, bottom, name = p["top"], p["bottom"], f"sheet_{p['slug']}.png"
    labels = {i: images.name_of(i) for i in images.thumb_ids if images.name_of(i)}
    make_contact_sheet(top.assign(score=top.response), bottom.assign(score=bottom.response),
                       {i: rec["bytes"] for i, rec in images.records.items() if rec.get("bytes") is not None},
                       title=f"{p['roi']} - subject {inputs.subject}: top-{len(top)} / bottom-{len(bottom)} "
                             "(score = ROI response)", out_png=inputs.out / name, labels=labels)
    return name


def _draw_histogram(inputs: _Inputs, p: dict) -> dict:
    """``{hist, hist_top, hist_bottom}`` of the page's ROI section (empty strings without values)."""
    if p["values"] is None:
        return {"hist": None, "hist_top": "", "hist_bottom": ""}
    name = f"hist_{p['slug']}.png"
    thr = _histogram(p["values"], k_top=len(p["top"]), k_bottom=len(p["bottom"]), out_png=inputs.out / name,
                     title=f"{p['roi']}, subject {inputs.subject}: {p['values'].size} images")
    top, bottom = (repr(t) if t is not None else "" for t in thr)
    return {"hist": name, "hist_top": top, "hist_bottom": bottom}


class _Flatmapper:
    """Flatmaps of each ROI's top image; after the first failure every later one says the same reason."""

    def __init__(self, predict_91k, inputs: _Inputs, images: _Images):
        self.predict_91k, self.inputs, self.images = predict_91k, inputs, images
        self.error = None

    def __call__(self, p: dict) -> dict:
        """``{flatmap, flatmap_error}`` of the page's ROI section."""
        if not len(p["top"]):
            return {"flatmap": None, "flatmap_error": None}
        roi, subject = p["roi"], self.inputs.subject
        best = str(p["top"].image_id.iloc[0])
        name = f"flatmap_{p['slug']}.png"
        try:
            if self.error is not None:
                raise RuntimeError(self.error)
            data = self.images.bytes_of(best)
            if data is None:
                raise InvalidParameterError(f"image {best!r} not found in the image shards")
            values = self.predict_91k(data, subject)
            label = self.images.name_of(best) or best
            draw_flatmap(values, outline_rois=_outline(roi), out_png=self.inputs.out / name,
                         colorbar_label="predicted response (model output units)",
                         title=f"predicted response to {label} (top-1 for {roi}, subject {subject})"
                               + (" — SYNTHETIC WEIGHTS" if self.inputs.synthetic else ""))
            return {"flatmap": name, "flatmap_error": None}
        except Exception as exc:  # noqa: BLE001 - optional figure; the reason goes on the page
            self.error = self.error or f"{type(exc).__name__}: {exc}"
            return {"flatmap": None, "flatmap_error": self.error}


def _outline(roi: str) -> list:
    """``[roi]`` if the atlas can outline it (an area, bilateral area or group), else nothing."""
    try:
        roi_grayordinate_mask(roi)
        return [roi]
    except InvalidParameterError:
        return []


# -- tables -----------------------------------------------------------------------------------------------------
_LIST_COLUMNS = ["rank", "file", "image_id", "response", "z", "margin", "p_null"]


def _roi_section(inputs: _Inputs, images: _Images, p: dict, flatmapper) -> dict:
    """The template's context of one ROI: description, notes, thumbnails, pictures and tables."""
    roi, top, bottom = p["roi"], p["top"], p["bottom"]
    members = inputs.members.get(roi)
    r = {"name": roi, "slug": p["slug"], "notes": p["notes"], "hist_error": p["hist_error"],
         "what": describe_roi(roi, members, inputs.cfg, _vertex_counts(inputs.manifest, members, inputs.subject)),
         "top": images.cells(top), "bottom": images.cells(bottom), "sheet": _draw_sheet(inputs, images, p)}
    r.update(_draw_histogram(inputs, p))
    r.update(flatmapper(p) if flatmapper is not None else {"flatmap": None, "flatmap_error": None})
    lists = [{"title": f"top-{len(top)}", "note": None, "table": images.table(top, _LIST_COLUMNS)}]
    if len(bottom):
        lists.append({"title": f"bottom-{len(bottom)} (rank 1 = lowest)", "note": None,
                      "table": images.table(bottom, _LIST_COLUMNS)})
    extra = _consensus_and_selectivity(inputs, images, roi, len(top) or None, r["notes"])
    sets = _sets_table(inputs, roi, p)
    r["tables"] = [lists] + ([extra] if extra else []) + ([sets] if sets else [])
    return r


def _consensus_and_selectivity(inputs: _Inputs, images: _Images, roi: str, k, notes: list) -> list:
    extra = []
    cons = inputs.ranked("consensus", roi, "consensus", k)
    if len(cons):
        extra.append({"title": "consensus over subjects", "note": "score = the image's mean z over the "
                      "subjects; n_subjects_topk = subjects with it in their own top-k",
                      "table": images.table(cons, ["rank", "file", "image_id", "score", "n_subjects_topk",
                                                   "margin", "p_null"])})
    sel = inputs.ranked("selectivity", roi, inputs.subject, k)
    if len(sel):
        extra.append({"title": "most selective", "note": "score = z of this ROI minus the mean z of the "
                      "comparison areas (every area column not overlapping it, unless --comparison was given)",
                      "table": images.table(sel, ["rank", "file", "image_id", "score", "response", "z",
                                                  "margin", "p_null"])})
    elif inputs.meta and not inputs.meta.get("selectivity", True):
        notes.append("No selectivity list: " + next(
            (n for n in inputs.meta.get("notes") or [] if n.startswith("selectivity")), "ranked without selectivity"))
    return extra


def _sets_table(inputs: _Inputs, roi: str, p: dict) -> list:
    if inputs.sets is None:
        return []
    srow = inputs.sets[(inputs.sets.roi == roi) & (inputs.sets.subject == inputs.subject)]
    if not len(srow):
        return []
    note = "a top-k of pure noise beats random sets too: compare ROIs by set_margin"
    ks = sorted(set(int(k) for k in srow.k))
    if p["n"] is not None and any(2 * k > p["n"] for k in ks):
        note = (f"rank's lists hold k = {', '.join(map(str, ks))} of the {p['n']} images, not the "
                f"{len(p['top'])} shown: with k that close to N the set score is nearly the set mean and "
                f"this test says little. " + note)
    return [{"title": "set-level null (the ranked lists against random sets of k)", "note": note,
             "table": H.table(srow, ["kind", "k", "n_images", "set_score", "null_mean", "null_q", "set_margin",
                                     "set_p_null", "null_draws"])}]


def _contrast_sections(inputs: _Inputs, images: _Images) -> list:
    contrasts = []
    by = inputs.meta.get("contrast_by", "z")
    for cname, g in _contrasts(inputs).groupby("roi", sort=False):
        a, _, b = cname.partition(">")
        what = [f"score = {by}({a}) − {by}({b}); response = response({a}) − response({b})"] + [
            f"{side}: {describe_roi(side, inputs.members.get(side), inputs.cfg)}" for side in (a, b)]
        contrasts.append({"name": cname, "what": what,
                          "table": images.table(g.sort_values("rank").head(images.table_k),
                                                ["rank", "file", "image_id", "score", "response", "z", "margin",
                                                 "p_null"])})
    return contrasts


# -- the page ---------------------------------------------------------------------------------------------------
def _page_context(inputs: _Inputs, images: _Images, roi_ctx: list, max_error_rows: int) -> dict:
    notes = list(inputs.notes)
    small = _small_n_note(inputs.meta, inputs.n_images)
    if small:
        notes.append(small)
    errors, n_errors = _read_errors(inputs.run, max_error_rows)
    n_images, subject = inputs.n_images, inputs.subject
    return {
        "title": f"screening report — {inputs.run.name}",
        "subtitle": f"{n_images if n_images is not None else '?'} images screened; lists for subject {subject}; "
                    f"model {inputs.model.get('model_id') or '?'}",
        "synthetic": inputs.synthetic, "summary": _summary_items(inputs.manifest, inputs.rankings, subject,
                                                                 inputs.meta),
        "notes": notes, "legend": legend(inputs.meta), "definitions": dict(legend(inputs.meta)),
        "subject": subject, "rois": roi_ctx, "contrasts": _contrast_sections(inputs, images), "n_errors": n_errors,
        "errors": H.table(errors, list(errors.columns) if errors is not None else [], max_rows=max_error_rows),
    }


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


def _storage_options(cfg: dict) -> StorageOptions:
    """The S3 options the run was made with (its manifest's config)."""
    return StorageOptions(endpoint_url=cfg.get("endpoint_url"), anonymous=cfg.get("anonymous"))


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
          "storage_options": _storage_options(cfg)}
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


def _records_from_sources(run: Path, manifest: dict, ids, thumb_ids) -> dict:
    """``{id: {"source", "bytes"}}`` from the run's committed ``sources`` parts; bytes (thumbnails only) are read from
    the source itself: a file, an ``s3://`` object or a ``tar://member::archive`` URL. A source that is gone keeps
    its name and gets a placeholder."""
    files = _committed_files(run, "sources")
    if not files:
        return {}
    import fsspec
    import pyarrow.compute as pc

    table = ds.dataset(files, format="parquet").to_table(filter=pc.field("image_id").isin(sorted(ids)))
    options = _storage_options(manifest.get("config") or {})
    out = {}
    for image_id, source in zip(table.column("image_id").to_pylist(), table.column("source").to_pylist()):
        rec = out.setdefault(image_id, {"source": source})
        if image_id in thumb_ids and "bytes" not in rec:
            try:
                kw = (options.to_fsspec() if source.startswith("s3://")
                      else {"s3": options.to_fsspec()} if "::s3://" in source else {})  # chained: per layer
                with fsspec.open(source, "rb", **kw) as f:
                    rec["bytes"] = f.read()
            except Exception:  # noqa: BLE001 - moved or deleted since the run: the name is still shown
                pass
    return out


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
    path = write_report(args.run_dir, rois=args.rois, subject=args.subject, top_k=args.top_k,
                        bottom_k=args.bottom_k, flatmaps=not args.no_flatmaps,
                        progress=lambda m: print(f"[{time.perf_counter() - t0:6.1f}s] {m}", file=sys.stderr))
    print(f"wrote {os.path.relpath(path)}")
    return 0
