"""The report page: one self-contained HTML file linking PNGs by relative path."""

from __future__ import annotations

import html

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:1.5em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:12px;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
.banner{background:#b00020;color:#fff;font-weight:700;font-size:1.3em;padding:14px;margin:8px 0 16px;border-radius:4px}
.note{color:#8a5a00;background:#fff7e0;padding:6px 10px;border-left:4px solid #e0a800;margin:6px 0}
img{max-width:100%;border:1px solid #eee} .row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
code{background:#f4f4f4;padding:1px 4px}
"""

# After load, count images that did not decode; headless tests read this back with --dump-dom.
IMAGE_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (im) { return !im.complete || im.naturalWidth === 0; });
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.brokenImages = String(broken.length);
  document.body.dataset.brokenSrc = broken.map(function (im) { return im.getAttribute('src'); }).join(' ');
});
"""

SYNTHETIC_BANNER = "SYNTHETIC WEIGHTS — responses are not brain predictions"


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, (float, np.floating)):
        return "" if not np.isfinite(x) else f"{x:.4g}"
    return str(x)


def table(frame, columns=None, max_rows=50) -> str:
    """An HTML table of the first ``max_rows`` rows of a DataFrame (text left-aligned)."""
    if frame is None or len(frame) == 0:
        return "<p><em>none</em></p>"
    cols = list(columns or frame.columns)
    head = "".join(f"<th class='l'>{esc(c)}</th>" for c in cols)
    body = []
    for r in frame[cols].head(max_rows).itertuples(index=False):
        cells = []
        for v in r:
            cls = " class='l'" if isinstance(v, str) else ""
            cells.append(f"<td{cls}>{esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p>… {len(frame) - max_rows} more rows</p>" if len(frame) > max_rows else ""
    return f"<table><tr>{head}</tr>{''.join(body)}</table>{more}"


def kv_table(items) -> str:
    rows = "".join(f"<tr><th class='l'>{esc(k)}</th><td class='l'>{esc(fmt(v))}</td></tr>" for k, v in items)
    return f"<table>{rows}</table>"


def page(title: str, sections: list[str], *, synthetic: bool) -> str:
    banner = f"<div class='banner' id='synthetic-banner'>{esc(SYNTHETIC_BANNER)}</div>" if synthetic else ""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{CSS}</style><script>{IMAGE_CHECK_JS}</script></head>"
        f"<body><h1>{esc(title)}</h1>{banner}{''.join(sections)}{banner}</body></html>\n"
    )
