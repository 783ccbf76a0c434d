"""The report page: a Jinja2 template (autoescaped) rendered to one HTML file that links PNGs/JPEGs by relative path."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SYNTHETIC_BANNER = "SYNTHETIC WEIGHTS — responses are not brain predictions"
TEMPLATE = "report.html"


@lru_cache(maxsize=1)
def environment():
    import jinja2

    # autoescape on for every template: image sources, ROI names and error messages come from user data.
    # StrictUndefined: a misspelt field fails the report instead of rendering an empty cell.
    env = jinja2.Environment(loader=jinja2.PackageLoader("screening.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env


def fmt(x) -> str:
    """Numbers to 4 significant digits; NaN/None/NA to an empty cell."""
    if x is None:
        return ""
    try:
        import pandas as pd

        if x is pd.NA:
            return ""
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, (float, np.floating)):
        return "" if not np.isfinite(x) else f"{x:.4g}"
    return str(x)


def table(frame, columns, *, max_rows=50, text_columns=(), links=None) -> dict:
    """A table for the template: header, formatted cells (``{"text", "left", "href", "title"}``), rows left out.

    ``links`` maps a column to a function ``row -> (href, title)`` (e.g. the file name linking the image).
    """
    if frame is None or len(frame) == 0:
        return {"columns": list(columns), "rows": [], "more": 0}
    cols = [c for c in columns if c in frame.columns]
    rows = []
    for r in frame.head(max_rows).to_dict("records"):
        cells = []
        for c in cols:
            v = r.get(c)
            href, title = (links[c](r) if links and c in links else (None, None))
            cells.append({"text": fmt(v), "left": c in text_columns or isinstance(v, str), "href": href,
                          "title": title})
        rows.append(cells)
    return {"columns": cols, "rows": rows, "more": max(0, len(frame) - max_rows)}


def render(context: dict) -> str:
    """The page for a report context (see ``screening.report.write_report``)."""
    return environment().get_template(TEMPLATE).render(banner_text=SYNTHETIC_BANNER, **context)
