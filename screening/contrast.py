"""``screening contrast``: in silico localizer contrasts from a run's per-label vertex statistics.

    screening contrast RUN --contrast "faces>bodies,places,objects" [--contrast "food>rest"] [--stat t|d|diff]
        [--out DIR] [--roi-from faces --threshold t=5|q=0.05|top=0.05 [--within FFC,VVC] [--cluster]]
        [--compare 'rois/sub-{subject}_floc-faces.dlabel.nii']

RUN is a run folder holding ``vertex_stats/`` (``screening run ... --vertex-stats LABELS``) or that folder itself.
A contrast ``A>B1,B2`` compares the images of label A with the pooled images of B1 and B2 (``rest``: every other
label). Each side's n, sum and centred sum of squares are pooled exactly (Chan's update), which is the pooled sample
only when the side's labels are disjoint: the statistics keep per-label sums, not which images carry two labels, so
an image with two labels of one side counts twice, and an image with a label on each side is in both samples. Where
the counts prove such overlap (the side labels' images add up to more than the run's images) a note says so.

Per contrast, subject and vertex: both means, their difference, Welch's t and its Welch-Satterthwaite df, Cohen's d
(pooled sd), the two-sided p (Student's t with that df) and the Benjamini-Hochberg q over the subject's vertices.
Written under ``--out`` (default ``RUN/contrasts``): ``contrasts.parquet``; ``NAME_sub-01.dscalar.nii`` (91,282
grayordinates, one map per statistic, NaN where the model has no vertex: MOSAIC's excluded grayordinates, the medial
wall, the subcortex and, for the visual model, cortex outside groups 1-5); ``NAME_mean.dscalar.nii`` (the mean of the
subjects' ``--stat`` maps); flatmaps ``NAME_sub-01_t.png`` and ``NAME_mean_t.png``. ROIs: ``sub-01_ROI.dlabel.nii``
per subject with a non-empty ROI and ``rois.csv``; ``--compare``: ``compare.csv``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np

from screening import atlas
from screening.exceptions import InvalidParameterError
from screening.localizer import THRESHOLD_HELP

STATS = ("t", "d", "diff")
REST = "rest"
MAP_STATS = ("mean_a", "mean_b", "diff", "t", "df", "d", "p", "q")
COLUMNS = ("contrast", "subject", "vertex", "grayordinate") + MAP_STATS + ("n_a", "n_b")
DEFAULT_MIN_CLUSTER = 20


# --------------------------------------------------------------------------- contrast specs

@dataclass(frozen=True)
class ContrastSpec:
    name: str      # file-safe: faces_vs_bodies_places_objects
    a: tuple
    b: tuple
    text: str      # as given: faces>bodies,places,objects


def parse_contrast(text, labels) -> ContrastSpec:
    """``A>B1,B2`` (either side a comma list; ``rest`` on the B side: every label not on the A side)."""
    labels = list(labels)
    m = re.fullmatch(r"([^<>]+)>([^<>]+)", str(text).strip())
    sides = [tuple(x.strip() for x in part.split(",")) for part in m.groups()] if m else []
    if not m or any(not x for side in sides for x in side):
        raise InvalidParameterError(f"--contrast {text!r} is not valid; write A>B1,B2 (labels, comma-separated; "
                                    f"'rest' for every other label), e.g. 'faces>bodies,places' or 'food>rest'")
    a, b = sides
    if REST in a or (REST in b and len(b) > 1):
        raise InvalidParameterError(f"--contrast {text!r}: 'rest' stands alone on the right side ('faces>rest')")
    for name in a + (() if b == (REST,) else b):
        if name not in labels:
            shown = ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else "")
            raise InvalidParameterError(f"--contrast {text!r}: label {name!r} has no vertex statistics; labels: "
                                        f"{shown} (and 'rest')")
    both = sorted(set(a) & set(b))
    if both:
        raise InvalidParameterError(f"--contrast {text!r}: {', '.join(both)} on both sides")
    if b == (REST,):
        b = tuple(x for x in labels if x not in a)
        if not b:
            raise InvalidParameterError(f"--contrast {text!r}: 'rest' is empty (no label besides {', '.join(a)})")
    name = _safe("_".join(a) + "_vs_" + ("rest" if sides[1] == (REST,) else "_".join(b)))
    return ContrastSpec(name, a, b, str(text).strip())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "contrast"


def parse_contrasts(texts, labels) -> list[ContrastSpec]:
    if isinstance(texts, str):
        texts = [texts]
    specs = [parse_contrast(t, labels) for t in texts or ()]
    if not specs:
        raise InvalidParameterError("give at least one --contrast A>B (e.g. 'faces>rest')")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidParameterError(f"--contrast given twice: {', '.join(dup)}")
    return specs


# --------------------------------------------------------------------------- statistics (pure functions)

def pool(parts) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, sum, m2)`` of the union of disjoint samples, each given as ``(n, sum, m2)``: Chan et al.'s update."""
    n, total, m2 = 0, None, None
    for nb, sb, mb in parts:
        nb = int(nb)
        if nb == 0:
            continue
        sb, mb = np.asarray(sb, dtype=np.float64), np.asarray(mb, dtype=np.float64)
        if n == 0:
            n, total, m2 = nb, sb.copy(), mb.copy()
            continue
        delta = sb / nb - total / n
        m2 = m2 + mb + delta * delta * (n * nb / (n + nb))
        total = total + sb
        n += nb
    return n, total, m2


def welch(n_a, mean_a, var_a, n_b, mean_b, var_b) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t (A - B) and its Welch-Satterthwaite degrees of freedom."""
    va, vb = np.asarray(var_a) / n_a, np.asarray(var_b) / n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (np.asarray(mean_a) - mean_b) / np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    return t, df


def cohens_d(n_a, mean_a, var_a, n_b, mean_b, var_b) -> np.ndarray:
    """(mean A - mean B) / pooled sd, the sd pooled with n - 1 weights."""
    pooled = ((n_a - 1) * np.asarray(var_a) + (n_b - 1) * np.asarray(var_b)) / (n_a + n_b - 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(mean_a) - mean_b) / np.sqrt(pooled)


def two_sided_p(t, df) -> np.ndarray:
    from scipy import stats

    return 2 * stats.t.sf(np.abs(t), df)


def bh_q(p) -> np.ndarray:
    """Benjamini-Hochberg q along the last axis, over the finite p values (NaN stays NaN). (The same step-up as
    ``screening.rank``'s, over a 2-D array; that one is private to ``screening.rank``.)"""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    for idx in np.ndindex(p.shape[:-1]):
        row = p[idx]
        ok = np.flatnonzero(np.isfinite(row))
        if not ok.size:
            continue
        order = ok[np.argsort(row[ok], kind="stable")]
        ranked = row[order] * ok.size / np.arange(1, ok.size + 1)
        out[idx + (order,)] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return out


def side_stats(stats, labels) -> tuple[int, np.ndarray, np.ndarray]:
    """Pooled ``(n, sum (S, V), m2 (S, V))`` of ``labels`` of a :class:`VertexStats`."""
    idx = [stats.index(lab) for lab in labels]
    return pool((stats.n[i], stats.sum[i], stats.m2[i]) for i in idx)


def contrast_stats(stats, spec: ContrastSpec) -> dict:
    """Statistic name -> (S, V) array (and ``n_a``, ``n_b`` ints) of one contrast."""
    sides = {}
    for key, labels in (("a", spec.a), ("b", spec.b)):
        n, total, m2 = side_stats(stats, labels)
        if n < 2:
            what = "no images" if n == 0 else "1 image"
            raise InvalidParameterError(f"--contrast {spec.text!r}: side {key.upper()} ({', '.join(labels)}) has "
                                        f"{what}; Welch's t needs at least 2 images per side")
        sides[key] = (n, total / n, m2 / (n - 1))
    (na, ma, va), (nb, mb, vb) = sides["a"], sides["b"]
    t, df = welch(na, ma, va, nb, mb, vb)
    p = two_sided_p(t, df)
    return {"mean_a": ma, "mean_b": mb, "diff": ma - mb, "t": t, "df": df, "d": cohens_d(na, ma, va, nb, mb, vb),
            "p": p, "q": bh_q(p), "n_a": na, "n_b": nb}


def overlap_note(stats, spec: ContrastSpec) -> str | None:
    """A note when the label counts prove that some image of the contrast carries two of its labels."""
    counted = int(sum(stats.n[stats.index(lab)] for lab in spec.a + spec.b))
    if stats.images and counted > stats.images:
        return (f"contrast {spec.text!r}: its labels hold {counted} images but the run saw {stats.images}: at least "
                f"{counted - stats.images} image(s) carry two of its labels and count once per label")
    return None


# --------------------------------------------------------------------------- the result

@dataclass
class ContrastResult:
    """``table``: one row per contrast, subject and vertex (:data:`COLUMNS`); ``maps[contrast][subject]``: the
    ``stat`` map over the 91,282 grayordinates (NaN off the model's vertices), ``maps[contrast]["mean"]`` the mean
    of the subjects' maps; ``rois``: vertex counts of the derived ROIs; ``roi_grayordinates[subject]``: each
    subject's ROI; ``comparison``: AP and Dice against ``--compare``'s ROIs; ``files``: what was written."""

    contrasts: list
    subjects: list
    variant: str
    stat: str
    table: object
    maps: dict
    rois: object = None
    roi_grayordinates: dict = field(default_factory=dict)
    comparison: object = None
    files: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def find_stats_folder(path: str) -> tuple[str, str]:
    """``(vertex_stats folder, run folder)`` of RUN or of the statistics folder itself."""
    path = os.fspath(path)
    for folder in (path, os.path.join(path, "vertex_stats")):
        if os.path.isfile(os.path.join(folder, "meta.json")):
            return folder, os.path.dirname(os.path.abspath(folder))
    raise InvalidParameterError(f"{path!r} holds no vertex statistics (neither meta.json nor vertex_stats/): screen "
                                f"with `screening run IMAGES --vertex-stats LABELS` first")


def build_table(specs, results: dict, subjects, variant: str):
    import pandas as pd

    mapping = atlas.variant_vertex_mapping(variant)
    V, parts = mapping.size, []
    for spec in specs:
        r = results[spec.name]
        for si, s in enumerate(subjects):
            cols = {"contrast": spec.name, "subject": s, "vertex": np.arange(V), "grayordinate": mapping}
            cols.update({k: r[k][si] for k in MAP_STATS})
            cols.update(n_a=np.full(V, r["n_a"]), n_b=np.full(V, r["n_b"]))
            parts.append(pd.DataFrame(cols, columns=list(COLUMNS)))
    table = pd.concat(parts, ignore_index=True)
    return table.astype({"contrast": "category", "subject": "category"})


def to_91k(values, variant: str) -> np.ndarray:
    out = np.full(atlas.N_GRAYORDINATES, np.nan)
    out[atlas.variant_vertex_mapping(variant)] = values
    return out


def stat_maps(specs, results: dict, subjects, variant: str, stat: str) -> dict:
    maps = {}
    for spec in specs:
        per = {s: to_91k(results[spec.name][stat][i], variant) for i, s in enumerate(subjects)}
        per["mean"] = to_91k(results[spec.name][stat].mean(axis=0), variant)
        maps[spec.name] = per
    return maps


def contrast(run, contrasts, *, stat: str = "t", out: str | None = None, roi_from: str | None = None,
             threshold: str | None = None, within=None, cluster: bool = False,
             min_cluster: int = DEFAULT_MIN_CLUSTER, compare: str | None = None, write: bool = True,
             flatmaps: bool = True) -> ContrastResult:
    """The Python API of ``screening contrast`` (see the module docstring); ``run``: RUN, its ``vertex_stats``
    folder, or a :class:`screening.vertex_stats.VertexStats`. ``write=False`` computes without writing."""
    from screening.vertex_stats import VertexStats

    if stat not in STATS:
        raise InvalidParameterError(f"--stat {stat!r} is not valid; valid: {', '.join(STATS)}")
    if isinstance(run, VertexStats):
        stats, run_dir = run, None
    else:
        folder, run_dir = find_stats_folder(run)
        stats = VertexStats.load(folder)
    if write and out is None and run_dir is None:
        raise InvalidParameterError("give out= (a folder) to write the results of in-memory statistics")
    roi_args = _check_roi_args(roi_from, threshold, within, cluster, min_cluster, stats.variant)
    specs = parse_contrasts(contrasts, stats.labels)
    results = {spec.name: contrast_stats(stats, spec) for spec in specs}
    result = ContrastResult(specs, list(stats.subjects), stats.variant, stat,
                            build_table(specs, results, stats.subjects, stats.variant),
                            stat_maps(specs, results, stats.subjects, stats.variant, stat))
    result.notes += [n for n in (overlap_note(stats, s) for s in specs) if n]
    if roi_args is not None:
        from screening.localizer import derive_rois

        derive_rois(result, results, _roi_spec(specs, roi_from), *roi_args, roi=_safe(roi_from))
    if compare:
        from screening.localizer import compare_rois

        compare_rois(result, results, compare, roi_args[1] if roi_args else _region(within, stats.variant))
    if write:
        write_outputs(result, results, out or os.path.join(run_dir, "contrasts"), flatmaps=flatmaps)
    return result


def _region(within, variant):
    from screening.localizer import search_region

    return search_region(within, variant)


def _check_roi_args(roi_from, threshold, within, cluster, min_cluster, variant):
    """``None`` without --roi-from, else ``(threshold, region, min_cluster or None)``; checked before any work."""
    from screening.localizer import parse_threshold

    if (roi_from is None) != (threshold is None):
        raise InvalidParameterError("--roi-from and --threshold go together: --roi-from faces --threshold t=5")
    if roi_from is None:
        if cluster:
            raise InvalidParameterError("--cluster needs --roi-from and --threshold")
        return None
    if cluster and (not isinstance(min_cluster, int) or min_cluster < 1):
        raise InvalidParameterError(f"--min-cluster {min_cluster!r} must be a positive integer")
    return parse_threshold(threshold), _region(within, variant), (min_cluster if cluster else None)


def _roi_spec(specs, roi_from: str) -> ContrastSpec:
    """The contrast ``--roi-from`` names: by name, as written, or by its A side's single label."""
    hits = [s for s in specs if roi_from in (s.name, s.text)] or [s for s in specs if s.a == (roi_from,)]
    if len(hits) == 1:
        return hits[0]
    names = ", ".join(f"{s.name} ({s.text})" for s in specs)
    why = "is ambiguous" if hits else "names no contrast"
    raise InvalidParameterError(f"--roi-from {roi_from!r} {why}; contrasts: {names}")


# --------------------------------------------------------------------------- files and the printed summary

def write_outputs(result: ContrastResult, results: dict, out: str, *, flatmaps: bool = True) -> None:
    from screening import cifti

    os.makedirs(out, exist_ok=True)
    files = [os.path.join(out, "contrasts.parquet")]
    result.table.to_parquet(files[0], index=False)
    for spec in result.contrasts:
        r = results[spec.name]
        for si, s in enumerate(result.subjects):
            maps = {k: to_91k(r[k][si], result.variant) for k in MAP_STATS}
            files.append(cifti.write_dscalar(os.path.join(out, f"{spec.name}_{s}.dscalar.nii"), maps))
        mean = {f"mean_{result.stat}": result.maps[spec.name]["mean"]}
        files.append(cifti.write_dscalar(os.path.join(out, f"{spec.name}_mean.dscalar.nii"), mean))
        if flatmaps:
            files += _flatmaps(result, spec, out)
    files += _write_rois(result, out)
    if result.comparison is not None:
        files.append(os.path.join(out, "compare.csv"))
        result.comparison.to_csv(files[-1], index=False)
    result.files = files


def _flatmaps(result: ContrastResult, spec: ContrastSpec, out: str) -> list[str]:
    from screening.report.flatmap import draw_flatmap

    files = []
    for who, values in result.maps[spec.name].items():
        title = f"{spec.text}: {result.stat}, " + (f"mean of {len(result.subjects)} subjects" if who == "mean" else who)
        files.append(draw_flatmap(values, title=title, out_png=os.path.join(out, f"{spec.name}_{who}_{result.stat}.png"),
                                  colorbar_label=f"{result.stat} (A - B)"))
    return files


def _write_rois(result: ContrastResult, out: str) -> list[str]:
    from screening import cifti

    if result.rois is None:
        return []
    paths, column = [], []
    for row in result.rois.itertuples():
        g = result.roi_grayordinates[row.subject]
        path = os.path.join(out, f"{row.subject}_{row.roi}.dlabel.nii") if g.size else ""
        if path:
            paths.append(cifti.write_dlabel(path, g, row.contrast))
        column.append(path)
    result.rois["file"] = column
    paths.append(os.path.join(out, "rois.csv"))
    result.rois.to_csv(paths[-1], index=False)
    return paths


def print_summary(result: ContrastResult, f) -> None:
    for spec in result.contrasts:
        rows = result.table[result.table.contrast == spec.name]
        n_a, n_b = int(rows.n_a.iloc[0]), int(rows.n_b.iloc[0])
        print(f"contrast {spec.name} ({spec.text}): A {n_a:,} images, B {n_b:,} images; {result.stat} maps of "
              f"{len(result.subjects)} subject(s), model {result.variant!r}", file=f)
        for s, g in rows.groupby("subject", observed=True):
            up = int(((g.q < 0.05) & (g["diff"] > 0)).sum())
            print(f"  {s}  max {result.stat} {np.nanmax(g[result.stat]):8.3f}   {up:7,} vertices q < 0.05 with A > B",
                  file=f)
    if result.rois is not None:
        r = result.rois
        print(f"ROI {r.roi.iloc[0]} from {r.contrast.iloc[0]}: {r.attrs['threshold']}, searching "
              f"{r.attrs['searched']:,} vertices", file=f)
        print(r.drop(columns=["roi", "contrast"]).to_string(index=False), file=f)
    if result.comparison is not None:
        how = (f"the ROI's threshold ({result.rois.attrs['threshold']}) is yours, not tuned on the real ROIs; "
               if result.rois is not None else "")
        print(f"against the real ROIs ({how}AP ranks the {result.stat} map; chance = the real ROI's share):", file=f)
        print(result.comparison.to_string(index=False, float_format=lambda x: f"{x:.3f}"), file=f)
    if result.files:
        out = os.path.dirname(result.files[0])
        print(f"wrote {len(result.files)} file(s) under {out}", file=f)


# --------------------------------------------------------------------------- command line

def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder holding vertex_stats/ (screening run --vertex-stats), "
                                              "or that folder")
    p.add_argument("--contrast", action="append", required=True, metavar="A>B",
                   help="'faces>bodies,places' (pooled B side) or 'food>rest' (every other label); repeatable")
    p.add_argument("--stat", choices=STATS, default="t", help="statistic of the maps and of top= (default t)")
    p.add_argument("--out", default=None, help="output folder (default RUN/contrasts)")
    p.add_argument("--roi-from", default=None, metavar="CONTRAST",
                   help="derive an ROI per subject from this contrast (its A label or its name)")
    p.add_argument("--threshold", default=None, help=THRESHOLD_HELP)
    p.add_argument("--within", action="append", default=None, metavar="NAMES",
                   help="search only these ROIs (areas, bilateral names, group_NN, composites; 'FFC,VVC,PIT')")
    p.add_argument("--cluster", action="store_true", help="keep clusters connected on the fsLR32k mesh")
    p.add_argument("--min-cluster", type=int, default=DEFAULT_MIN_CLUSTER,
                   help=f"smallest cluster kept, in vertices (default {DEFAULT_MIN_CLUSTER})")
    p.add_argument("--compare", default=None, metavar="PATTERN",
                   help="your real ROIs (.dlabel.nii or .npy+.tsv; {subject} per subject): AP of the map, Dice of "
                        "the derived ROI")
    p.add_argument("--no-flatmaps", action="store_true", help="write no PNG flatmaps")


def run_from_args(args) -> int:
    result = contrast(args.run, args.contrast, stat=args.stat, out=args.out, roi_from=args.roi_from,
                      threshold=args.threshold, within=args.within, cluster=args.cluster,
                      min_cluster=args.min_cluster, compare=args.compare, flatmaps=not args.no_flatmaps)
    print_summary(result, sys.stdout)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
