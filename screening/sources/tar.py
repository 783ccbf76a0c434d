"""Tar archives and WebDataset shards (``.tar``, ``.tar.gz``, ``.tgz``): one unit per archive.

An archive is streamed in archive order (gzip and S3 streams too; no seeking). Each image member is one row; other
members (WebDataset's ``key.json`` / ``key.txt``) are metadata and passed over. Row counts need a pass over the
archive, so they are counted by tasks on the cluster (archive bytes never reach the driver), unless a commit
marker already records them for this very archive.
"""

from __future__ import annotations

import tarfile
from typing import Callable, Iterator

from screening.sources.base import (DIRECT_SPEC, Found, ImageRef, PlanContext, Source, Unit, changed_since_plan,
                                    stat_files, unit_names)
from screening.sources.listing import IMAGE_EXTENSIONS, has_image_ext, is_hidden

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def iter_tar_images(fileobj, on_other: Callable[[str], None] | None = None) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of the image members of a tar stream, in archive order (gzip too; no seeking)."""
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for member in tar:
            if not member.isfile() or is_hidden(member.name):
                continue
            if not has_image_ext(member.name):
                if on_other is not None:
                    on_other(member.name)
                continue
            f = tar.extractfile(member)
            yield member.name, (f.read() if f is not None else b"")


def count_tar_images(uri: str, storage=None) -> tuple[int, str]:
    """``(image members, why the archive broke or "")``: a tar unit's row count, counted by a task on a worker."""
    from screening.fs import filesystem_for

    fs, path = filesystem_for(uri, storage)
    n = 0
    try:
        with fs.open(path, "rb") as f:
            for _ in iter_tar_images(f):
                n += 1
    except Exception as exc:  # noqa: BLE001 - recorded; the unit gets one error row for it
        return n, f"the archive is unreadable after {n} image(s): {type(exc).__name__}: {exc}"
    return n, ""


class TarSource(Source):
    kind = "tar"
    suffixes = TAR_SUFFIXES
    describe = f"tar archives or WebDataset shards ({', '.join(TAR_SUFFIXES)})"
    precedence = 0   # Parquet beside tars is img2dataset's metadata

    def plan(self, found: Found, ctx: PlanContext):
        """One unit per archive; a rerun after success starts no Ray (the markers hold the counts)."""
        from screening.fs import to_uri

        fs, paths = found.fs, list(found.paths)
        stats = stat_files(fs, paths)
        units = [Unit(p, to_uri(fs, p), u, 0, size, version, kind=self.kind)
                 for p, u, (size, version) in zip(paths, unit_names(paths, self.suffixes), stats)]
        rows = {}
        for s in units:
            rec = (ctx.markers.get(s.unit) or {}).get("input") or {}
            if (rec.get("uri"), rec.get("size"), rec.get("version")) == (s.uri, s.size, s.version):
                rows[s.unit] = (int(rec.get("rows", 0)), "")
        todo = [s.uri for s in units if s.unit not in rows]
        if todo:
            counted = ctx.remote_map(count_tar_images, [(u, ctx.storage) for u in todo])
            rows.update(zip((s.unit for s in units if s.unit not in rows), (tuple(r) for r in counted)))
        out = []
        for s in units:
            n, broken = rows[s.unit]
            if n == 0 and not broken:
                broken = f"the archive holds no image member ({', '.join(IMAGE_EXTENSIONS)})"
            # an archive that breaks gets one more row: the error row that names it
            out.append(Unit(s.path, s.uri, s.unit, n + (1 if broken else 0), s.size, s.version, kind=self.kind,
                            detail=(("broken", broken),)))
        return tuple(out), DIRECT_SPEC

    def rows(self, item: dict, storage):
        """The archive is streamed once; members past a point where it breaks, and rows it no longer has, become
        error rows (stage ``read``) naming the archive, like an unreadable row group of a Parquet shard."""
        from screening.fs import filesystem_for

        fs, path = filesystem_for(item["uri"], storage)
        n, row = int(item["rows"]), 0
        reason = changed_since_plan(item, fs, path)
        if reason is None:
            try:
                with fs.open(path, "rb") as f:
                    for name, data in iter_tar_images(f):
                        if row >= n:
                            break
                        yield row, f"tar://{name}::{item['uri']}", data, ""
                        row += 1
            except Exception as exc:  # noqa: BLE001 - the archive's own problem: its remaining rows become error rows
                reason = f"the archive is unreadable after {row} image(s): {type(exc).__name__}: {exc}"
        reason = reason or item.get("broken") or f"the archive ended after {row} of its {n} planned image(s)"
        for r in range(row, n):
            yield r, f"{item['uri']}#image={r}", None, reason

    def images(self, found: Found, *, storage=None, on_other=None) -> Iterator[ImageRef]:
        from screening.fs import to_uri

        for path in found.paths:
            archive = to_uri(found.fs, path)
            with found.fs.open(path, "rb") as f:
                for name, data in iter_tar_images(f, on_other=on_other):
                    yield ImageRef(f"tar://{name}::{archive}", (lambda d=data: d))
