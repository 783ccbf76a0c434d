"""The report's figures: response histograms with the list thresholds, contact sheets, and flatmaps of the top
image's ROI responses, all drawn from the run's outputs (the report never runs a model)."""

from __future__ import annotations

import numpy as np

from screening import atlas
from screening.exceptions import InvalidParameterError
from screening.rank.kinds import TOPK
from screening.report.contact_sheet import make_contact_sheet
from screening.report.data import Images, Inputs
from screening.report.flatmap import draw_flatmap, roi_grayordinate_mask


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


# -- pictures ---------------------------------------------------------------------------------------------------
def draw_sheet(inputs: Inputs, images: Images, p: dict) -> str:
    top, bottom, name = p["top"], p["bottom"], f"sheet_{p['slug']}.png"
    labels = {i: images.name_of(i) for i in images.thumb_ids if images.name_of(i)}
    make_contact_sheet(top.assign(score=top.response), bottom.assign(score=bottom.response),
                       {i: rec["bytes"] for i, rec in images.records.items() if rec.get("bytes") is not None},
                       title=f"{p['roi']} - subject {inputs.subject}: top-{len(top)} / bottom-{len(bottom)} "
                             "(score = ROI response)", out_png=inputs.out / name, labels=labels)
    return name


def draw_histogram(inputs: Inputs, p: dict) -> dict:
    """``{hist, hist_top, hist_bottom}`` of the page's ROI section (empty strings without values)."""
    if p["values"] is None:
        return {"hist": None, "hist_top": "", "hist_bottom": ""}
    name = f"hist_{p['slug']}.png"
    thr = _histogram(p["values"], k_top=len(p["top"]), k_bottom=len(p["bottom"]), out_png=inputs.out / name,
                     title=f"{p['roi']}, subject {inputs.subject}: {p['values'].size} images")
    top, bottom = (repr(t) if t is not None else "" for t in thr)
    return {"hist": name, "hist_top": top, "hist_bottom": bottom}


ROI_MEANS = ("ROI means: each screened ROI painted with the image's committed response over its vertices "
             "(screening report --vertex-maps paints every vertex, computed for these images with the run's model)")


class Flatmapper:
    """Flatmaps of each ROI's top image. By default painted from the run's committed responses: every response
    column the atlas can place (an area, a bilateral area, a group, a composite) shows the image's response over its
    vertices, coarse columns first so that the finest one wins where they overlap. With ``vertex_maps``
    (``report.vertex_maps.VertexMaps``) every vertex's response, computed now for the shown images with the run's
    model; where that fails (store unreachable, image gone) the ROI means, and the page says why. After a failure
    every later map says the same reason."""

    def __init__(self, inputs: Inputs, images: Images, vertex_maps=None):
        self.inputs, self.images, self.vertex_maps = inputs, images, vertex_maps
        self.error = None
        self.vertex_error = None
        self._masks = None

    def masks(self) -> list:
        """``[(column, grayordinate mask)]`` of the placeable response columns, largest first."""
        if self._masks is None:
            placed = []
            for c in self.inputs.responses.schema.names:
                if c in ("image_id", "subject"):
                    continue
                try:
                    placed.append((c, roi_grayordinate_mask(c)))
                except InvalidParameterError:   # a custom ROI: no atlas outline to paint
                    continue
            self._masks = sorted(placed, key=lambda cm: -int(cm[1].sum()))
        return self._masks

    def values(self, image_id: str, subject: str) -> np.ndarray:
        """(91282,) responses of one image: each placed column's value on its vertices, NaN elsewhere."""
        import pyarrow.compute as pc

        if self.inputs.responses is None:
            raise InvalidParameterError("the run has no committed responses to paint")
        masks = self.masks()
        if not masks:
            raise InvalidParameterError("none of the run's response columns is an atlas area, group or composite")
        row = self.inputs.responses.to_table(
            columns=[c for c, _ in masks],
            filter=(pc.field("image_id") == image_id) & (pc.field("subject") == subject)).slice(0, 1).to_pylist()
        if not row:
            raise InvalidParameterError(f"image {image_id!r} has no committed {subject} response row")
        out = np.full(atlas.N_GRAYORDINATES, np.nan)
        for c, m in masks:
            out[m] = np.nan if row[0][c] is None else row[0][c]
        return out

    def __call__(self, p: dict) -> dict:
        """``{flatmap, flatmap_error}`` of the page's ROI section."""
        if not len(p["top"]):
            return {"flatmap": None, "flatmap_error": None, "flatmap_note": None}
        roi, subject = p["roi"], self.inputs.subject
        best = str(p["top"].image_id.iloc[0])
        name = f"flatmap_{p['slug']}.png"
        label = self.images.name_of(best) or best
        synthetic = " — SYNTHETIC WEIGHTS" if self.inputs.synthetic else ""
        if self.vertex_maps is not None and self.vertex_error is None:
            try:
                values = self.vertex_maps.values(best, subject)
                draw_flatmap(values, outline_rois=_outline(roi), out_png=self.inputs.out / name,
                             colorbar_label="vertex response (model output units)",
                             title=f"responses to {label} (top-1 for {roi}, subject {subject}), every vertex"
                                   + synthetic)
                return {"flatmap": name, "flatmap_error": None, "flatmap_note": (
                    f"vertex responses: all {self.vertex_maps.n_vertices:,} vertices of the run's model, computed "
                    f"now for this image ({self.vertex_maps.precision})")}
            except Exception as exc:  # noqa: BLE001 - the ROI means are drawn instead, and the page says why
                self.vertex_error = f"{type(exc).__name__}: {exc}"
        note = ROI_MEANS if self.vertex_maps is None else (
            f"ROI means: vertex maps unavailable ({self.vertex_error}); each screened ROI painted with the image's "
            f"committed response")
        try:
            if self.error is not None:
                raise RuntimeError(self.error)
            values = self.values(best, subject)
            draw_flatmap(values, outline_rois=_outline(roi), out_png=self.inputs.out / name,
                         colorbar_label="ROI response (model output units)",
                         title=f"responses to {label} (top-1 for {roi}, subject {subject}), per screened ROI"
                               + synthetic)
            return {"flatmap": name, "flatmap_error": None, "flatmap_note": note}
        except Exception as exc:  # noqa: BLE001 - optional figure; the reason goes on the page
            self.error = self.error or f"{type(exc).__name__}: {exc}"
            return {"flatmap": None, "flatmap_error": self.error, "flatmap_note": None}


def _outline(roi: str) -> list:
    """``[roi]`` if the atlas can outline it (an area, bilateral area or group), else nothing."""
    try:
        roi_grayordinate_mask(roi)
        return [roi]
    except InvalidParameterError:
        return []


#: Labels shown per ROI in the label figures (the most enriched ones, then the most common).
SHOWN_LABELS = 12
SIGNIFICANT_Q = 0.05


def draw_labels(inputs: Inputs, p: dict) -> dict:
    """``{labels_fig, tuning_fig}`` of the page's ROI section: the label shares of its top-k beside their base
    rates (labels with q < 0.05 starred), and its mean response per label with s.e.m. bars (empty without
    ``rank --labels``)."""
    out = {"labels_fig": None, "tuning_fig": None}
    roi, subject = p["roi"], inputs.subject
    e = inputs.enrichment
    if e is not None:
        rows = TOPK.rows(e)
        rows = rows[(rows.roi == roi) & (rows.subject == subject)]
        if len(rows):
            out["labels_fig"] = _label_shares(rows, inputs, p)
    t = inputs.label_means
    if t is not None:
        rows = t[(t.roi == roi) & (t.subject == subject) & (t.n > 0)]
        if len(rows):
            out["tuning_fig"] = _tuning(rows, inputs, p)
    return out


def _label_shares(rows, inputs: Inputs, p: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows.sort_values(["p", "fold"], ascending=[True, False]).head(SHOWN_LABELS)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.8, 0.5 * len(rows) + 2), 3.4), dpi=100)
    k = int(rows.k.iloc[0])
    ax.bar(x - 0.2, rows.share, width=0.4, color="#c0392b", label=f"share of the top-{k}")
    ax.bar(x + 0.2, rows.base_rate, width=0.4, color="#9aa5b1", label="share of all screened images")
    for xi, (share, q) in enumerate(zip(rows.share, rows.q)):
        if q < SIGNIFICANT_Q:
            ax.text(xi - 0.2, share, "*", ha="center", va="bottom", fontsize=12)
    ax.set_xticks(x, [str(v) for v in rows.label], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("share of images")
    ax.set_title(f"{p['roi']}, subject {inputs.subject}: labels of the top-{k} (* q < {SIGNIFICANT_Q}, "
                 f"one-sided Fisher, BH)", fontsize=8)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
    ax.set_ylim(top=max(float(rows.share.max()), float(rows.base_rate.max())) * 1.35 or 1.0)
    return _saved(fig, inputs, f"labels_{p['slug']}.png")


def _saved(fig, inputs: Inputs, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(inputs.out / name)
    plt.close(fig)
    return name


def _tuning(rows, inputs: Inputs, p: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows.sort_values("mean", ascending=False)
    if len(rows) > 2 * SHOWN_LABELS:   # the highest and the lowest
        rows = rows.iloc[list(range(SHOWN_LABELS)) + list(range(len(rows) - SHOWN_LABELS, len(rows)))]
    sem = rows.sd / np.sqrt(rows.n.clip(lower=1))
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.8, 0.42 * len(rows) + 2), 3.4), dpi=100)
    ax.bar(x, rows["mean"], yerr=np.nan_to_num(sem), color="#5b7fa6", capsize=2, label="mean ± s.e.m.")
    ax.axhline(0, color="#444444", lw=0.8)
    ax.set_xticks(x, [f"{lab} (n={n})" for lab, n in zip(rows.label, rows.n)], rotation=40, ha="right",
                  fontsize=7)
    ax.set_ylabel("ROI response (model output units)")
    ax.set_title(f"{p['roi']}, subject {inputs.subject}: response per label", fontsize=8)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
    return _saved(fig, inputs, f"tuning_{p['slug']}.png")
