"""Brain flatmaps of 91k-grayordinate values on the fsLR32k flat surfaces (HCP S1200), with ROI outlines."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from screening import atlas
from screening.exceptions import InvalidParameterError

HEMISPHERES = ("L", "R")


@lru_cache(maxsize=1)
def flat_surfaces() -> dict:
    """``{"L"/"R": (xy (32492, 2), triangles (F, 3), grayordinate->vertex (n,), first grayordinate)}``."""
    import nibabel as nib

    with atlas.data_path("fslr32k_grayordinate_to_vertex.npz").open("rb") as f:
        d = np.load(f)
        gray = {"L": d["grayl"].astype(np.int64), "R": d["grayr"].astype(np.int64)}
    out, offset = {}, 0
    for h in HEMISPHERES:
        path = atlas.data_path(f"S1200.{h}.flat.32k_fs_LR.surf.gii")
        with path.open("rb") as f:
            img = nib.GiftiImage.from_bytes(f.read())
        xy = np.asarray(img.darrays[0].data, dtype=np.float64)[:, :2]
        tri = np.asarray(img.darrays[1].data, dtype=np.int64)
        out[h] = (xy, tri, gray[h], offset)
        offset += gray[h].size
    return out


def roi_grayordinate_mask(name: str) -> np.ndarray:
    """Boolean (91282,) mask of an outline ROI: an area (``L_FFC``), a bilateral area (``FFC``),
    a group (``group_04``) or a default composite (``faces``, ``L_places`` ...), parsed by the one ROI
    grammar (:func:`screening.rois.expand_roi`) over the whole atlas."""
    from screening import rois

    vocab = rois.atlas_vocabulary()

    def unknown(bad: str, within: tuple):
        hint = rois.did_you_mean(bad, rois.accepted_in(vocab, rois.DEFAULT_COMPOSITES))
        raise InvalidParameterError(
            f"outline ROI {name!r} is not valid; use an area (L_FFC), a bilateral area (FFC), group_01..group_22 "
            f"or a composite {sorted(rois.DEFAULT_COMPOSITES)}{hint}")

    mask = np.zeros(atlas.N_GRAYORDINATES, dtype=bool)
    areas = atlas.roi_grayordinates()
    for atom in rois.expand_roi(name, vocab, rois.DEFAULT_COMPOSITES, unknown=unknown):
        if atom in areas:
            mask[areas[atom]] = True
        else:
            g = int(atom[len("group_"):])
            mask[atlas.vertex_mapping_all()[atlas.glasser_group_id() == g]] = True
    return mask


def hemisphere_values(values_91k: np.ndarray, hemi: str) -> np.ndarray:
    """Per-mesh-vertex values (32492,) of one hemisphere; NaN where no grayordinate (medial wall)."""
    xy, _, gray, offset = flat_surfaces()[hemi]
    out = np.full(xy.shape[0], np.nan)
    out[gray] = values_91k[offset:offset + gray.size]
    return out


def draw_flatmap(values_91k, *, outline_rois=(), title="", out_png, cmap="RdBu_r", vlim=None,
                 colorbar_label="predicted response", dpi=110):
    """Draw left and right flat cortex side by side, NaN/medial wall grey, ROIs outlined.

    Parameters
    ----------
    values_91k : array-like, shape (91282,)
        One value per grayordinate (cortex part used); NaN where there is no model vertex.
        Expand model outputs with :func:`screening.atlas.expand_to_91k`.
    outline_rois : sequence of str, default=()
        ROIs to outline (see :func:`roi_grayordinate_mask`); drawn with a 0.5-level contour of the
        ROI indicator.
    title : str, default=""
    out_png : str or os.PathLike
        PNG written.
    cmap : str, default="RdBu_r"
    vlim : float, optional
        Colour range ``[-vlim, vlim]`` for diverging maps; default the 99th percentile of ``|values|``.
    colorbar_label : str
    dpi : int, default=110

    Returns
    -------
    str
        ``out_png``.

    Raises
    ------
    InvalidParameterError
        If ``values_91k`` is not of shape (91282,) or an outline ROI is unknown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.tri import Triangulation

    v = np.asarray(values_91k, dtype=np.float64)
    if v.shape != (atlas.N_GRAYORDINATES,):
        raise InvalidParameterError(f"values_91k must have shape ({atlas.N_GRAYORDINATES},); got {v.shape}")
    masks = [(name, roi_grayordinate_mask(name)) for name in outline_rois]
    fin = v[np.isfinite(v)]
    if vlim is None:
        vlim = float(np.percentile(np.abs(fin), 99)) if fin.size else 1.0
        vlim = vlim if vlim > 0 else 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=dpi)
    grey = ListedColormap(["#cfcfcf"])
    colours = plt.get_cmap("tab10")
    mappable = None
    for ax, h in zip(axes, HEMISPHERES):
        xy, tri, _, _ = flat_surfaces()[h]
        vals = hemisphere_values(v, h)
        t_all = Triangulation(xy[:, 0], xy[:, 1], tri)
        ax.tripcolor(t_all, facecolors=np.zeros(tri.shape[0]), cmap=grey, vmin=0, vmax=1, edgecolors="none")
        face = vals[tri].mean(axis=1)
        ok = np.isfinite(face)
        if ok.any():
            t_ok = Triangulation(xy[:, 0], xy[:, 1], tri, mask=~ok)
            mappable = ax.tripcolor(t_ok, facecolors=np.where(ok, face, 0.0), cmap=cmap, vmin=-vlim, vmax=vlim,
                                    edgecolors="none")
        for i, (name, mask) in enumerate(masks):
            ind = hemisphere_values(mask.astype(np.float64), h)
            ind = np.nan_to_num(ind, nan=0.0)
            if ind.max() > 0:
                ax.tricontour(t_all, ind, levels=[0.5], colors=[colours(i % 10)], linewidths=1.2)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title("left" if h == "L" else "right", fontsize=9)
    handles = [plt.Line2D([], [], color=colours(i % 10), lw=1.5, label=n) for i, (n, _) in enumerate(masks)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    if mappable is not None:
        cb = fig.colorbar(mappable, ax=list(axes), shrink=0.7, pad=0.02)
        cb.set_label(colorbar_label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out_png, bbox_inches="tight")
    plt.close(fig)
    return str(out_png)
