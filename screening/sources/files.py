"""Image files: a folder tree, a glob, a single image, or a list of paths / ``s3://`` URIs.

Folders and lists are cut into units of :data:`FILES_PER_UNIT` files in listing order. The driver only lists (paths,
sizes, versions); the bytes are read by the read tasks. A unit's version digests every file's location, size and
version, so a changed file changes its unit's identity.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from screening.exceptions import InvalidParameterError
from screening.sources.base import (DIRECT_SPEC, Found, ImageRef, PlanContext, Source, Unit,
                                    file_version, stem)
from screening.sources.listing import IMAGE_EXTENSIONS, link_problem, read_list_entries, resolve_entry

#: Files of a folder or list per unit of work (a commit / restart point; about one CPU write batch).
FILES_PER_UNIT = 1024
LIST_SUFFIXES = (".csv", ".txt", ".lst")


def _units(name: str, root: str, files, sizes, versions) -> tuple[Unit, ...]:
    units = []
    for k, start in enumerate(range(0, len(files), FILES_PER_UNIT)):
        sl = slice(start, start + FILES_PER_UNIT)
        f, s, v = tuple(files[sl]), tuple(sizes[sl]), versions[sl]
        digest = hashlib.sha256("".join(f"{a}\t{b}\t{c}\n" for a, b, c in zip(f, s, v)).encode()).hexdigest()
        uri = f"{root}#files={start}-{start + len(f) - 1}"
        units.append(Unit(uri, uri, f"{name}-{k:05d}", len(f), sum(max(0, x) for x in s),
                          "files-sha256:" + digest[:24], kind="files", detail=(("files", f), ("sizes", s))))
    return tuple(units)


def _read(fs, path: str):
    return lambda: fs.cat_file(path)


class ImageFilesSource(Source):
    """Image files found in a folder, a glob, or named alone."""

    kind = "files"
    suffixes = IMAGE_EXTENSIONS
    describe = f"images ({', '.join(IMAGE_EXTENSIONS)}) or a folder tree of them"
    precedence = 9   # what a folder holds when it holds no shards

    def plan(self, found: Found, ctx: PlanContext):
        from screening.fs import to_uri

        files = [to_uri(found.fs, p) for p in found.paths]
        sizes = [int(i.get("size", -1)) for i in found.infos]
        versions = [file_version(i) for i in found.infos]
        return _units(stem(found.root), found.root, files, sizes, versions), DIRECT_SPEC

    def rows(self, item: dict, storage):
        """A file that cannot be read, or whose size changed since the listing, is an error row naming it."""
        from screening.fs import filesystem_for

        for row, (uri, size) in enumerate(zip(item["files"], item["sizes"])):
            data, error = None, ""
            try:
                fs, path = filesystem_for(uri, storage)
                data = fs.cat_file(path)
                if size >= 0 and len(data) != size:
                    data, error = None, f"the file changed after the run was planned (size {size} -> {len(data)})"
            except Exception as exc:  # noqa: BLE001 - one file's problem is that file's error row
                error = f"read failed: {type(exc).__name__}: {exc}" + link_problem(uri)
            yield row, uri, data, error

    def images(self, found: Found, *, storage=None, on_other=None) -> Iterator[ImageRef]:
        from screening.fs import to_uri

        for p in found.paths:
            yield ImageRef(to_uri(found.fs, p), _read(found.fs, p))

    def count(self, found: Found) -> int:
        return len(found.paths)


class ListSource(ImageFilesSource):
    """A list file naming image files (local paths, relative to the list, or URIs), read as image files."""

    kind = "list"
    suffixes = LIST_SUFFIXES
    describe = f"a list of paths or s3:// URIs ({', '.join(LIST_SUFFIXES)})"
    in_folders = False

    def entries(self, found: Found) -> list[str]:
        entries = read_list_entries(found.fs, found.paths[0])
        if not entries:
            raise InvalidParameterError(f"images={found.root!r} lists no path or URI (one per line, or a 'path' "
                                        f"column)")
        return [resolve_entry(e, found.fs, found.paths[0]) for e in entries]

    def plan(self, found: Found, ctx: PlanContext):
        """Units of the listed files, stat'ed in parallel; one that cannot be stat'ed is read (and reported) per
        row by the read task."""
        files = self.entries(found)

        def stat(uri):
            from screening.fs import filesystem_for

            try:
                fs, p = filesystem_for(uri, ctx.storage)
                info = fs.info(p)
                return int(info.get("size", -1)), file_version(info)
            except (FileNotFoundError, OSError, ValueError) as exc:
                return -1, f"unreadable:{type(exc).__name__}"

        with ThreadPoolExecutor(16) as pool:
            stats = list(pool.map(stat, files))
        return _units(stem(found.root, LIST_SUFFIXES), found.root, files, [s for s, _ in stats],
                      [v for _, v in stats]), DIRECT_SPEC

    def images(self, found: Found, *, storage=None, on_other=None) -> Iterator[ImageRef]:
        from screening.fs import filesystem_for

        for uri in self.entries(found):
            # fsspec caches filesystem instances, so one per entry costs nothing.
            fs, path = filesystem_for(uri, storage)
            yield ImageRef(uri, _read(fs, path))

    def count(self, found: Found) -> int:
        return len(read_list_entries(found.fs, found.paths[0]))

