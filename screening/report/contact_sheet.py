"""Contact sheets: top-k thumbnails (rank and score) above bottom-k, one PNG per ROI."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from PIL import Image, ImageDraw, ImageFont

THUMB = 132
CAPTION = 30
PAD = 6


def fetch_images(images, image_ids, *, filesystem=None, id_column="image_id") -> dict[str, bytes]:
    """Encoded bytes of the given images, read with a pushed-down ``image_id`` filter.

    Parameters
    ----------
    images : str or pyarrow.dataset.Dataset
        Directory of image shards (``image_id``, ``image`` binary or ``{bytes, path}`` struct).
    image_ids : iterable of str
    filesystem : fsspec or pyarrow filesystem, optional

    Returns
    -------
    dict of str to bytes
        Only the ids found (first occurrence).
    """
    ids = sorted({str(i) for i in image_ids})
    if not ids:
        return {}
    if isinstance(images, ds.Dataset):
        dataset = images
    else:  # the same shard listing the pipeline reads (only *.parquet: ingest writes CSV reports beside them)
        from screening.io.image_source import list_shards
        from screening.store._fs import filesystem_for

        fs, path = (filesystem, str(images)) if filesystem is not None else filesystem_for(str(images))
        dataset = ds.dataset(list_shards(fs, path), format="parquet", filesystem=fs)
    value_set = pa.array(ids, pa.string())
    field = ds.field(id_column)
    id_type = dataset.schema.field(id_column).type
    if id_type != pa.string():
        value_set = value_set.cast(id_type)
    table = dataset.to_table(columns=[id_column, "image"], filter=field.isin(value_set))
    col = table.column("image")
    if pa.types.is_struct(col.type):
        col = pc.struct_field(col, "bytes")
    out = {}
    for i, b in zip(table.column(id_column).to_pylist(), col.to_pylist()):
        if b is not None and str(i) not in out:
            out[str(i)] = b
    return out


def _thumb(data: bytes | None) -> Image.Image:
    if data is not None:
        try:
            from screening.preprocess import decode_image

            img = decode_image(data)
            w, h = img.size
            s = min(w, h)
            img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            return img.resize((THUMB, THUMB), Image.BILINEAR)
        except Exception:  # noqa: BLE001 - an undecodable image becomes a placeholder, not a failed report
            pass
    img = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
    d = ImageDraw.Draw(img)
    d.line((0, 0, THUMB, THUMB), fill=(150, 150, 150))
    d.line((0, THUMB, THUMB, 0), fill=(150, 150, 150))
    d.text((8, THUMB // 2 - 6), "missing", fill=(60, 60, 60))
    return img


def _fmt(x) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:+.3g}"


def make_contact_sheet(top, bottom, images: dict, *, title: str, out_png, columns: int = 10) -> str:
    """Write a contact sheet PNG.

    Parameters
    ----------
    top, bottom : pandas.DataFrame
        Ranking rows (``rank``, ``image_id``, ``score``; ``p_null`` optional), best first.
        ``bottom`` may be empty.
    images : dict of str to bytes
        Encoded images by id; a missing id is drawn as a grey placeholder.
    title : str
    out_png : str or os.PathLike
    columns : int, default=10

    Returns
    -------
    str
        ``out_png``.
    """
    font = ImageFont.load_default()
    sections = [("top", top)] + ([("bottom", bottom)] if bottom is not None and len(bottom) else [])
    cell_w, cell_h = THUMB + PAD, THUMB + CAPTION + PAD
    ncol = max(1, min(columns, max(len(s) for _, s in sections) if sections else 1))
    heights = [22 + int(np.ceil(max(len(s), 1) / ncol)) * cell_h for _, s in sections]
    width = PAD + ncol * cell_w
    sheet = Image.new("RGB", (max(width, 360), 30 + sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 8), title, fill="black", font=font)
    y = 30
    for (label, rows), h in zip(sections, heights):
        draw.text((PAD, y + 4), f"{label}-{len(rows)}", fill=(90, 90, 90), font=font)
        for i, r in enumerate(rows.itertuples(index=False)):
            x0 = PAD + (i % ncol) * cell_w
            y0 = y + 22 + (i // ncol) * cell_h
            sheet.paste(_thumb(images.get(str(r.image_id))), (x0, y0))
            p = getattr(r, "p_null", None)
            line1 = f"#{r.rank} {_fmt(r.score)}" + (f" p={p:.2g}" if p is not None and np.isfinite(p) else "")
            draw.text((x0, y0 + THUMB + 2), line1, fill="black", font=font)
            draw.text((x0, y0 + THUMB + 15), str(r.image_id)[:22], fill=(80, 80, 80), font=font)
        y += h
    sheet.save(out_png, format="PNG")
    return str(out_png)
