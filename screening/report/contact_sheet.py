"""Image access for the report: filtered shard reads, thumbnails, full-size copies, contact-sheet PNGs."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from PIL import Image, ImageDraw, ImageFont

from screening.exceptions import InvalidParameterError

THUMB = 132
CAPTION = 30
PAD = 6


def _open_shards(images, filesystem=None, storage_options=None):
    """A dataset over image shards: a folder/glob (found as ``screening run`` finds it), a list of shard
    paths/URIs (a manifest's ``shards``), or a dataset."""
    if isinstance(images, ds.Dataset):
        return images
    from screening import sources
    from screening.fs import filesystem_for
    from screening.sources.parquet import ParquetSource

    def fs_path(p):
        if filesystem is not None:
            return filesystem, str(p)
        return filesystem_for(str(p), storage_options)

    if isinstance(images, (list, tuple)):
        if not images:
            raise InvalidParameterError("images=[] lists no image shard")
        fs = fs_path(images[0])[0]
        paths = [fs_path(p)[1] for p in images]
        missing = [p for p in paths if not fs.exists(p)]
        if missing:
            raise InvalidParameterError(f"image shard(s) {missing[:3]} do not exist ({len(missing)} of {len(paths)})")
        return ds.dataset(paths, format="parquet", filesystem=fs)
    if filesystem is not None:   # the caller's filesystem: its folder's shards, by the Parquet source's rule
        path = str(images)
        paths = ([p for p in sorted(filesystem.find(path)) if sources.source(ParquetSource.kind).claims(p)]
                 if filesystem.isdir(path) else [path])
        return ds.dataset(paths, format="parquet", filesystem=filesystem)
    found = sources.find(str(images), storage=storage_options)
    if found.kind != ParquetSource.kind:
        raise InvalidParameterError(f"images={str(images)!r} holds {found.kind} input, not Parquet image shards; "
                                    f"images are looked up by id in Parquet shards only")
    return ds.dataset(list(found.paths), format="parquet", filesystem=found.fs)


def fetch_image_records(images, image_ids, *, filesystem=None, id_column="image_id", image_column="image",
                        source_column="source", with_bytes=True,
                        storage_options=None) -> dict[str, dict]:
    """``{image_id: {"bytes": ..., "source": ...}}`` of the given images, one read with a pushed-down
    ``image_id`` filter that decodes only the id, image and source columns (without the image column
    when ``with_bytes=False``: then ``bytes`` is ``None``).

    Parameters
    ----------
    images : str, list of str or pyarrow.dataset.Dataset
        Folder (or glob) of image shards, a list of shard paths/URIs, or a dataset; columns ``image_id``,
        ``image`` (binary or Hugging Face ``{bytes, path}`` struct) and optionally ``source``.
    image_ids : iterable of str
    filesystem : fsspec filesystem, optional
    id_column, image_column, source_column : str
        Column names (the run manifest's ``config.id_column`` / ``config.image_column``). ``source``
        falls back to the struct's ``path``, else ``None``.
    with_bytes : bool, default=True
    storage_options : screening.fs.StorageOptions or dict, optional
        S3 access for ``s3://`` shards.

    Returns
    -------
    dict of str to dict
        Only the ids found (first occurrence).

    Raises
    ------
    InvalidParameterError
        If the shards have no ``id_column`` or ``image_column`` (the message lists their columns).
    """
    ids = sorted({str(i) for i in image_ids})
    if not ids:
        return {}
    dataset = _open_shards(images, filesystem, storage_options)
    names = dataset.schema.names
    for what, col in (("id_column", id_column), ("image_column", image_column)):
        if col not in names:
            raise InvalidParameterError(f"the image shards have no {what} {col!r}; their columns: {names}")
    value_set = pa.array(ids, pa.string())
    has_source = source_column in names
    struct_path = pa.types.is_struct(dataset.schema.field(image_column).type)
    small = [id_column] + ([source_column] if has_source else [])
    # The cheap way: scan only the id (and source) columns, shard by shard, and decode the image column only
    # of the row groups that hold a wanted id. A filtered dataset scan would decode every row group's image
    # bytes (random ids defeat the row-group statistics), i.e. read the whole image set for a few thumbnails.
    out, left = {}, set(ids)
    for frag in dataset.get_fragments():
        if not left:
            break
        t = frag.to_table(schema=dataset.schema, columns=small)
        found = t.column(id_column).cast(pa.string())
        idx = np.flatnonzero(pc.is_in(found, value_set=value_set).to_numpy(zero_copy_only=False))
        if not idx.size:
            continue
        fid = found.take(pa.array(idx)).to_pylist()
        keep = [j for j, i in enumerate(fid) if i in left and i not in fid[:j]]  # first occurrence only
        idx, fid = idx[keep], [fid[j] for j in keep]
        if not idx.size:
            continue
        sources = t.column(source_column).take(pa.array(idx)).to_pylist() if has_source else [None] * idx.size
        blobs = [None] * idx.size
        if with_bytes or (struct_path and not has_source):
            col = _take_rows(frag, dataset.schema, image_column, idx)
            if pa.types.is_struct(col.type):
                if not has_source and col.type.get_field_index("path") >= 0:
                    sources = pc.struct_field(col, "path").to_pylist()
                col = pc.struct_field(col, "bytes")
            if with_bytes:
                blobs = col.to_pylist()
        for i, b, src in zip(fid, blobs, sources):
            if with_bytes and b is None:
                continue
            out[i] = {"bytes": b, "source": src}
            left.discard(i)
    return out


def _take_rows(frag, schema, column, idx):
    """Rows ``idx`` (file order) of one column of a fragment, decoding only the row groups that hold them."""
    if not isinstance(frag, ds.ParquetFileFragment):
        return frag.to_table(schema=schema, columns=[column]).column(column).take(pa.array(idx))
    frag.ensure_complete_metadata()
    sizes = np.array([rg.num_rows for rg in frag.row_groups], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    group = np.searchsorted(starts, idx, side="right") - 1
    need = sorted(set(group.tolist()))
    sub = frag.subset(row_group_ids=need)
    col = sub.to_table(schema=schema, columns=[column]).column(column)
    offset = dict(zip(need, np.concatenate([[0], np.cumsum(sizes[need])])[:-1].tolist()))
    local = [offset[g] + int(i - starts[g]) for i, g in zip(idx, group)]
    return col.take(pa.array(local, pa.int64()))


def fetch_images(images, image_ids, *, filesystem=None, id_column="image_id") -> dict[str, bytes]:
    """Encoded bytes of the given images, read with a pushed-down ``image_id`` filter.

    Parameters
    ----------
    images : str, list of str or pyarrow.dataset.Dataset
        Directory of image shards (``image_id``, ``image`` binary or ``{bytes, path}`` struct), a list of
        shard paths, or a dataset.
    image_ids : iterable of str
    filesystem : fsspec or pyarrow filesystem, optional

    Returns
    -------
    dict of str to bytes
        Only the ids found (first occurrence).
    """
    recs = fetch_image_records(images, image_ids, filesystem=filesystem, id_column=id_column)
    return {i: r["bytes"] for i, r in recs.items()}


#: PIL format -> file extension of the full-size copy beside the report
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}


def image_extension(data: bytes) -> str:
    """File extension for encoded image bytes (``jpg``, ``png`` ...); ``bin`` when PIL cannot identify them."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _EXTENSIONS.get(im.format or "", (im.format or "bin").lower())
    except (OSError, ValueError, Image.DecompressionBombError):  # unknown bytes are still linked, as .bin
        return "bin"


def write_thumbnail(data: bytes | None, out_path, size: int = 2 * 132) -> str:
    """Write the centre-cropped thumbnail (what the model sees, before its resize) as JPEG."""
    _thumb(data, size).save(out_path, format="JPEG", quality=88)
    return str(out_path)


def _thumb(data: bytes | None, size: int = THUMB) -> Image.Image:
    if data is not None:
        try:
            from screening.preprocess import decode_image

            img = decode_image(data)
            w, h = img.size
            s = min(w, h)
            img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            return img.resize((size, size), Image.BILINEAR)
        except Exception:  # noqa: BLE001 - an undecodable image becomes a placeholder, not a failed report
            pass
    img = Image.new("RGB", (size, size), (200, 200, 200))
    d = ImageDraw.Draw(img)
    d.line((0, 0, size, size), fill=(150, 150, 150))
    d.line((0, size, size, 0), fill=(150, 150, 150))
    d.text((8, size // 2 - 6), "missing", fill=(60, 60, 60))
    return img


def _fmt(x) -> str:
    return "nan" if x is None or not np.isfinite(x) else f"{x:+.3g}"


def make_contact_sheet(top, bottom, images: dict, *, title: str, out_png, columns: int = 10, labels=None) -> str:
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
    labels : dict of str to str, optional
        Second caption line per image id (e.g. the file name); default the id.

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
            label = (labels or {}).get(str(r.image_id)) or str(r.image_id)
            draw.text((x0, y0 + THUMB + 15), label if len(label) <= 22 else label[:21] + "~", fill=(80, 80, 80),
                      font=font)
        y += h
    sheet.save(out_png, format="PNG")
    return str(out_png)
