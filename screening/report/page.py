"""Page assembly: the shown lists per ROI, their sections, tables and notes, rendered into ``index.html``."""

from __future__ import annotations

from screening.rank.kinds import BOTTOMK, TOPK, shown_in_roi_sections
from screening.report import html as H
from screening.report.data import (Images, Inputs, check_run_dir, contrast_rows, fetch_shown_images,
                                   n_finite, read_errors, read_inputs, roi_column_values, slug, vertex_counts)
from screening.report.describe import describe_roi, legend
from screening.report.figures import Flatmapper, draw_histogram, draw_labels, draw_sheet


#: Below this many null images the page says p_null is coarse (its floor 1/(n+1) is then above 0.001).
SMALL_NULL = 1000


def write_report(run_dir, *, rois=None, subject=None, top_k=None, bottom_k=None, flatmaps=True,
                 vertex_maps=False, max_error_rows=50, progress=None) -> str:
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
    flatmaps : bool, default=True
        A flatmap per ROI of its top image's committed responses, each screened ROI painted over its vertices
        (no model is run: the page shows what the run computed, and says the map is of ROI means). Where none
        can be drawn the page says "flatmap unavailable: <reason>".
    vertex_maps : bool, default=False
        Paint every vertex instead: the run's model (store, model id, subjects and precision from its manifest,
        through :class:`screening.BERG`) is run now on the few images the flatmaps show, and their full vertex
        responses (57,051 per subject for the ``all`` model; ``mean``: the mean over the run's subjects) are
        painted. Where the store cannot be opened or an image's bytes cannot be read again, the ROI-mean maps are
        drawn and the page says why.
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
    run = check_run_dir(run_dir, top_k=top_k, bottom_k=bottom_k)
    inputs = read_inputs(run, rois=rois, subject=subject, say=say)
    plans = []
    for roi in inputs.rois:
        say(f"ROI {roi}: values")
        plans.append(_plan_lists(inputs, roi, top_k, bottom_k))
    images = fetch_shown_images(inputs, plans)
    flatmapper = Flatmapper(inputs, images, _vertex_maps(inputs, images, plans) if vertex_maps else None) \
        if flatmaps else None
    roi_ctx = []
    for p in plans:
        say(f"ROI {p['roi']}: figures")
        roi_ctx.append(_roi_section(inputs, images, p, flatmapper))
    index = inputs.out / "index.html"
    index.write_text(H.render(_page_context(inputs, images, roi_ctx, max_error_rows)), encoding="utf-8")
    return str(index)


def _vertex_maps(inputs: Inputs, images: Images, plans: list):
    """The model run of ``vertex_maps=True``: the top-1 image of each shown ROI, encoded together on first use."""
    from screening.report.vertex_maps import VertexMaps

    wanted = [str(p["top"].image_id.iloc[0]) for p in plans if len(p["top"])]
    ranked = [s for s in dict.fromkeys(inputs.rankings.subject) if str(s).startswith("sub-")]
    return VertexMaps(inputs.manifest, images, wanted, subjects=ranked)


# -- the shown lists --------------------------------------------------------------------------------------------
def _plan_lists(inputs: Inputs, roi: str, top_k, bottom_k) -> dict:
    """One ROI's values (histogram, N) and its shown lists, capped so that top and bottom never share images."""
    subject = inputs.subject
    p = {"roi": roi, "slug": slug(roi), "notes": [], "values": None, "hist_error": None}
    if inputs.responses is not None:
        try:
            p["values"] = roi_column_values(inputs.responses, roi, subject, inputs.manifest, inputs.members.get(roi))
        except Exception as exc:  # noqa: BLE001 - optional figure; the reason goes on the page
            p["hist_error"] = f"{type(exc).__name__}: {exc}"
    n = n_finite(p["values"], inputs.sets, roi, subject, inputs.n_images)
    ranked_top, ranked_bottom = inputs.ranked(TOPK, roi, subject), inputs.ranked(BOTTOMK, roi, subject)
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


# -- tables -----------------------------------------------------------------------------------------------------
_LIST_COLUMNS = ["rank", "file", "image_id", "response", "z", "margin", "p_null"]


def _roi_section(inputs: Inputs, images: Images, p: dict, flatmapper) -> dict:
    """The template's context of one ROI: description, notes, thumbnails, pictures and tables."""
    roi, top, bottom = p["roi"], p["top"], p["bottom"]
    members = inputs.members.get(roi)
    r = {"name": roi, "slug": p["slug"], "notes": p["notes"], "hist_error": p["hist_error"],
         "what": describe_roi(roi, members, inputs.cfg, vertex_counts(inputs.manifest, members, inputs.subject)),
         "top": images.cells(top), "bottom": images.cells(bottom), "sheet": draw_sheet(inputs, images, p)}
    r.update(draw_histogram(inputs, p))
    r.update(draw_labels(inputs, p))
    r.update(flatmapper(p) if flatmapper is not None else {"flatmap": None, "flatmap_error": None,
                                                            "flatmap_note": None})
    lists = [{"title": TOPK.title.format(k=len(top)), "note": None, "table": images.table(top, _LIST_COLUMNS)}]
    if len(bottom):
        lists.append({"title": BOTTOMK.title.format(k=len(bottom)), "note": None,
                      "table": images.table(bottom, _LIST_COLUMNS)})
    extra = _kind_tables(inputs, images, roi, len(top) or None, r["notes"])
    sets = _sets_table(inputs, roi, p)
    r["tables"] = [lists] + ([extra] if extra else []) + ([sets] if sets else [])
    return r


def _kind_tables(inputs: Inputs, images: Images, roi: str, k, notes: list) -> list:
    """The tables of every kind the registry shows in an ROI's section (consensus, selectivity, ...)."""
    extra = []
    for kind in shown_in_roi_sections():
        rows = inputs.ranked(kind, roi, k=k)
        if len(rows):
            extra.append({"title": kind.table.title, "note": kind.table.note,
                          "table": images.table(rows, list(kind.table.columns))})
        elif kind.explain_absence and inputs.meta and not inputs.meta.get(kind.name, True):
            notes.append(f"No {kind.name} list: " + next(
                (n for n in inputs.meta.get("notes") or [] if n.startswith(kind.name)), f"ranked without {kind.name}"))
    return extra


def _sets_table(inputs: Inputs, roi: str, p: dict) -> list:
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


def _contrast_sections(inputs: Inputs, images: Images) -> list:
    contrasts = []
    by = inputs.meta.get("contrast_by", "z")
    for cname, g in contrast_rows(inputs).groupby("roi", sort=False):
        a, _, b = cname.partition(">")
        what = [f"score = {by}({a}) − {by}({b}); response = response({a}) − response({b})"] + [
            f"{side}: {describe_roi(side, inputs.members.get(side), inputs.cfg)}" for side in (a, b)]
        contrasts.append({"name": cname, "what": what,
                          "table": images.table(g.sort_values("rank").head(images.table_k),
                                                ["rank", "file", "image_id", "score", "response", "z", "margin",
                                                 "p_null"])})
    return contrasts


# -- the page ---------------------------------------------------------------------------------------------------
def _page_context(inputs: Inputs, images: Images, roi_ctx: list, max_error_rows: int) -> dict:
    notes = list(inputs.notes)
    small = _small_n_note(inputs.meta, inputs.n_images)
    if small:
        notes.append(small)
    errors, n_errors = read_errors(inputs.run, max_error_rows)
    n_images, subject = inputs.n_images, inputs.subject
    return {
        "title": f"screening report — {inputs.run.name}",
        "subtitle": f"{n_images if n_images is not None else '?'} images screened; lists for subject {subject}; "
                    f"model {inputs.model.get('model_id') or '?'}",
        "synthetic": inputs.synthetic, "summary": _summary_items(inputs.manifest, inputs.rankings, subject,
                                                                 inputs.meta),
        "notes": notes, "legend": legend(inputs.meta), "definitions": dict(legend(inputs.meta)),
        "subject": subject, "rois": roi_ctx, "contrasts": _contrast_sections(inputs, images),
        "vertex_contrasts": _vertex_contrast_maps(inputs), "n_errors": n_errors,
        "errors": H.table(errors, list(errors.columns) if errors is not None else [], max_rows=max_error_rows),
    }


def _vertex_contrast_maps(inputs: Inputs) -> list:
    """The across-subject flatmaps ``screening contrast`` wrote into ``RUN/contrasts/``, copied beside the page."""
    import shutil

    found = sorted((inputs.run / "contrasts").glob("*_mean_*.png")) if (inputs.run / "contrasts").is_dir() else []
    maps = []
    for png in found:
        name = f"vertex_contrast_{png.name}"
        shutil.copyfile(png, inputs.out / name)
        maps.append({"name": png.stem.replace("_mean_", " (mean of subjects, ") + ")", "png": name})
    return maps


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
