"""``screening rois``: every ROI name the engine accepts for a variant, with its model vertex count.

Areas (``L_FFC``), bilateral names (``FFC`` = ``L_FFC`` ∪ ``R_FFC``), Glasser groups (``group_04``) and the
default composites of ``screening rank`` / ``screening report`` (``faces``, ``L_faces`` ...). Counts are model
vertices of the variant, from :mod:`screening.rois` (the sets the engine averages over).
"""

from __future__ import annotations

import argparse
import sys

KINDS = ("area", "bilateral", "group", "composite")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", choices=("all", "visual"), default="all",
                   help="all: 57,051 vertices, groups 1-22 (default); visual: 7,831 vertices, groups 1-5")
    p.add_argument("--kind", choices=KINDS, action="append", default=None,
                   help="list only this kind (repeatable); default all kinds")
    p.add_argument("--tsv", action="store_true", help="tab-separated kind, name, vertices, detail (for scripts)")
    p.add_argument("--parcellation", metavar="FILE",
                   help="list the ROI columns of a parcellation of your own (.dlabel.nii, or .npy + .tsv; {subject} "
                        "for one file per subject) with their model vertex counts per subject")
    p.add_argument("--parcellation-prefix", default=None, help="its column prefix (default: the file stem)")
    p.add_argument("--subjects", default="all", help="subjects of --parcellation (default all)")


def parcellation_rows(args) -> int:
    """``screening rois --parcellation FILE``: its columns and their model vertices per subject."""
    from screening.models.registry import weights_for_variant
    from screening.parcellation import load_parcellation
    from screening.validation import parse_subjects

    subjects = list(parse_subjects(args.subjects, name="--subjects"))
    p = load_parcellation(args.parcellation, subjects, prefix=args.parcellation_prefix)
    counts = p.vertex_counts(args.variant)
    w = weights_for_variant(args.variant)
    if args.tsv:
        print("name\t" + "\t".join(subjects))
        for name, per in counts.items():
            print(name + "\t" + "\t".join(str(per[s]) for s in subjects))
        return 0
    print(f"parcellation {args.parcellation} (prefix {p.prefix!r}): {len(counts)} ROI column(s); model vertices of "
          f"variant {args.variant!r} ({w.model_id}) per subject")
    width = max(len(n) for n in counts)
    print(f"  {'name':<{width}}  " + "  ".join(f"{s:>7}" for s in subjects))
    for name, per in counts.items():
        print(f"  {name:<{width}}  " + "  ".join(f"{per[s]:>7,}" for s in subjects)
              + ("   (refused: no model vertex)" if min(per.values()) == 0 else ""))
    return 0


def roi_rows(variant: str) -> tuple[list[tuple[str, str, int, str]], list[tuple[str, str]]]:
    """``(rows, refused)``: rows are ``(kind, name, n_vertices, detail)`` for every accepted name;
    ``refused`` are ``(name, why)`` for atlas areas and default composites with no vertex in ``variant``."""
    from screening import atlas, rois
    from screening.rank import DEFAULT_COMPOSITES

    areas = rois.area_columns(variant)
    groups = rois.group_columns(variant)
    rows = []
    for name in rois.default_roi_names(variant):
        if name in areas:
            g = atlas.area_group(name)
            rows.append(("area", name, int(areas[name].size), f"group {g}: {atlas.GROUP_NAMES[g]}"))
    for base in sorted({n[2:] for n in areas}):
        sides = [h + base for h in ("L_", "R_") if h + base in areas]
        detail = " + ".join(sides) if len(sides) == 2 else f"{sides[0]} only (the other side has no vertex)"
        rows.append(("bilateral", base, int(rois.resolve_roi(base, variant).size), detail))
    for name in sorted(groups):
        rows.append(("group", name, int(groups[name].size), atlas.GROUP_NAMES[int(name[-2:])]))
    refused = []
    for comp, members in DEFAULT_COMPOSITES.items():
        missing = [m for m in members if not any(h + m in areas for h in ("", "L_", "R_"))]
        if missing:
            refused.append((comp, f"composite: {', '.join(missing)} not in this variant"))
            continue
        cols = rois.resolve_roi(comp, variant, DEFAULT_COMPOSITES)
        rows.append(("composite", comp, int(cols.size), ", ".join(members)))
        for h in ("L_", "R_"):  # rank's hemisphere versions: the members' same-side areas
            side = [areas[h + m] for m in members if h + m in areas]
            if side:
                n = int(len(set().union(*(c.tolist() for c in side))))
                rows.append(("composite", h + comp, n, ", ".join(h + m for m in members if h + m in areas)))
    refused += [(n, "no model vertex in this variant") for n in atlas.area_names() if n not in areas]
    return rows, refused


def run_from_args(args) -> int:
    if args.parcellation:
        return parcellation_rows(args)
    rows, refused = roi_rows(args.variant)
    kinds = args.kind or list(KINDS)
    rows = [r for r in rows if r[0] in kinds]
    out = sys.stdout
    if args.tsv:
        print("kind\tname\tvertices\tdetail", file=out)
        for r in rows:
            print("\t".join(map(str, r)), file=out)
        return 0
    from screening.models.registry import weights_for_variant

    w = weights_for_variant(args.variant)
    print(f"ROI names accepted for variant {args.variant!r} ({w.model_id}, {w.n_vertices:,} vertices); "
          "counts are model vertices", file=out)
    titles = {"area": "areas (BERG selection['roi'], screening run --rois, rank, report)",
              "bilateral": "bilateral names: left ∪ right (everywhere an area is accepted)",
              "group": "Glasser groups (everywhere an area is accepted; BERG also takes selection['glasser_group'])",
              "composite": "default composites (screening rank / report by name; screening run via --composites)"}
    width = max((len(r[1]) for r in rows), default=4)
    for kind in kinds:
        part = [r for r in rows if r[0] == kind]
        print(f"\n{titles[kind]}: {len(part)}", file=out)
        for _, name, n, detail in part:
            print(f"  {name:<{width}}  {n:>6,}  {detail}", file=out)
    if refused:
        shown = ", ".join(f"{n} ({why})" for n, why in refused[:8])
        more = f" and {len(refused) - 8} more atlas areas outside this variant" if len(refused) > 8 else ""
        print(f"\nnot accepted here: {shown}{more}", file=out)
    return 0
