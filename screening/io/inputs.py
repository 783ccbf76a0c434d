"""What a user points ``screening run`` / ``screening ingest`` at: find it, classify it, list its images.

One copy of the rules both commands follow (docs/preprocess-ingest.md):

- image files are taken by extension (:data:`IMAGE_EXTENSIONS`, any case); hidden files and folders (``.x``, macOS
  ``._x.jpg``) are skipped;
- a folder is walked recursively, images in sorted order of their relative paths;
- a tar archive (``.tar``, ``.tar.gz``, ``.tgz``; plain or WebDataset shards) is streamed in archive order; each image
  member is one row, other members (WebDataset's ``key.json`` / ``key.txt``) are metadata and passed over;
- a list (``.csv`` with a ``path``/``uri`` column, ``.txt``/``.lst`` one entry per line) names local paths (relative
  ones resolve against the list's folder) or ``s3://`` URIs, in list order.

For ``screening run`` this module also turns the input into planned units (:func:`plan_inputs`): Parquet shards and
tar archives are one unit each, folders and lists are cut into units of :data:`FILES_PER_UNIT` files. The driver only
lists (paths, sizes, versions); image bytes are read by the read tasks (``image_source.read_shards``) on workers.
"""

from __future__ import annotations

import collections
import csv
import errno
import hashlib
import io
import os
import posixpath
import re
import stat
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

from screening.exceptions import InvalidParameterError
from screening.fs import filesystem_for, to_uri

#: File extensions taken from folders, archives and as single files (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LIST_SUFFIXES = (".csv", ".txt", ".lst")
#: Files of a folder or list per unit of work (a commit / restart point; about one CPU write batch).
FILES_PER_UNIT = 1024

ACCEPTED = ("Parquet image shards (.parquet: engine or Hugging Face layout), tar archives or WebDataset shards "
            f"({', '.join(TAR_SUFFIXES)}), images ({', '.join(IMAGE_EXTENSIONS)}) or a folder tree of them, a list "
            f"of paths or s3:// URIs ({', '.join(LIST_SUFFIXES)}), or a glob / brace pattern "
            "(shard-{000..009}.tar) of these")

_BRACE = re.compile(r"\{([^{}]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def has_image_ext(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def is_hidden(relpath: str) -> bool:
    # "./a.jpg" (tar archives made with `tar -cf x.tar .`) is not hidden; "a/.b.jpg" is.
    return any(part.startswith(".") for part in relpath.split("/") if part not in ("", ".", ".."))


# ----------------------------------------------------------------------------------------------
# listing (shared with screening ingest)
# ----------------------------------------------------------------------------------------------

LINKED_FOLDER = "(symlinked folder, not followed)"


def walk_folder(fs, root: str) -> list[tuple[str, dict]]:
    """``(relative path, listing info)`` of every non-hidden file under ``root``, sorted by relative path.

    A symlink to a file is that file (labs build category folders out of symlinks). A dangling or looping symlink is
    listed as a file of size -1 whose read fails, so it becomes an error row that names it, never a silent gap. A
    symlink to a folder is not followed (loops): it is listed with type :data:`LINKED_FOLDER`, to be reported."""
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    rows = []
    for p, info in found.items():
        if info.get("type", "file") != "file":
            if not info.get("islink"):
                continue
            info = _followed(p, info)
        rel = p[len(root):].lstrip("/")
        if not is_hidden(rel):
            rows.append((rel, info))
    return sorted(rows, key=lambda r: r[0])


def _followed(path: str, info: dict) -> dict:
    """A listing's info, with a local symlink's replaced: its target's when that is a file; a LINKED_FOLDER entry for
    a folder; a file of size -1 for a dangling or looping link (reading it then fails and names it)."""
    if not info.get("islink") or info.get("type") == "file":
        return info
    try:
        st = os.stat(path)   # follows the link
    except OSError:
        return {**info, "type": "file", "size": -1}
    if stat.S_ISDIR(st.st_mode):
        return {**info, "type": LINKED_FOLDER}
    return {**info, "type": "file", "size": st.st_size, "mtime": st.st_mtime}


def link_problem(path: str) -> str:
    """For a local path that is a broken symlink, what is wrong with it ("" otherwise): added to its error row."""
    if not os.path.islink(path):
        return ""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f" (a symlink loop: {path} -> {target})"
        return f" (a dangling symlink: {path} -> {target}, which does not exist)"
    return ""


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


def file_version(info: dict) -> str:
    """What changes when a file is rewritten, read from a listing/HEAD at no extra cost.

    S3: the ETag (content MD5 for single-part uploads, a hash of part hashes for multipart; any rewrite changes it).
    Local: the modification time in nanoseconds. Together with the size and the footer's row count this is the
    input's fingerprint recorded in each commit marker.
    """
    for key in ("ETag", "etag"):
        if info.get(key):
            return "etag:" + str(info[key]).strip('"')
    mtime = info.get("mtime", info.get("LastModified"))
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"mtime_ns:{int(round(float(mtime or 0) * 1e9))}"


def read_list_entries(fs, path: str) -> list[str]:
    """Entries of a ``.csv`` (column ``path``, else ``uri``, else the first) or ``.txt``/``.lst`` list."""
    text = fs.cat_file(path).decode("utf-8-sig")
    if path.lower().endswith(".csv"):
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col = header.index("path") if "path" in header else header.index("uri") if "uri" in header else 0
        return [r[col].strip() for r in rows[1:] if len(r) > col and r[col].strip()]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def resolve_entry(entry: str, list_fs, list_path: str) -> str:
    """A list entry as a location: URIs as given, relative paths against the list's folder (local or remote)."""
    if "://" in entry:
        return entry
    remote = to_uri(list_fs, list_path) != list_path
    if remote:
        return to_uri(list_fs, posixpath.normpath(posixpath.join(posixpath.dirname(list_path), entry)))
    return os.path.abspath(os.path.join(os.path.dirname(list_path), os.path.expanduser(entry)))


def expand_braces(pattern: str) -> list[str]:
    """WebDataset shard notation: ``shard-{000..009}.tar`` (zero-padded ranges) and ``{a,b}`` alternatives."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        width = len(lo) if lo.startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    return [e for c in choices for e in expand_braces(head + c + tail)]


# ----------------------------------------------------------------------------------------------
# screening run: classify the input
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FoundInputs:
    """What ``images=`` holds: one kind, its files (scheme-less paths of ``fs``) and, for listings, their infos;
    ``skipped``: what a folder or glob of images held besides them, as (extension or kind, count) pairs."""

    kind: str                 # "parquet" | "tar" | "files" | "list"
    fs: object
    root: str                 # the location as given (display form)
    paths: tuple[str, ...]
    infos: tuple[dict, ...] = ()
    skipped: tuple[tuple[str, int], ...] = ()


def _kinds(entries) -> collections.Counter:
    """How many listed entries of each extension (a linked folder counts as :data:`LINKED_FOLDER`)."""
    return collections.Counter(
        LINKED_FOLDER if i.get("type") == LINKED_FOLDER else (posixpath.splitext(p)[1].lower() or "(no extension)")
        for p, i in entries)


def _found_summary(entries) -> str:
    exts = _kinds(entries)
    return ", ".join(f"{n} {e}" for e, n in exts.most_common(6)) + (", ..." if len(exts) > 6 else "")


def _classify(images: str, fs, entries: list[tuple[str, dict]]) -> FoundInputs:
    """One kind from a listing: tar shards (Parquet beside them is img2dataset metadata) > Parquet > images."""
    files = [(p, i) for p, i in entries if i.get("type", "file") == "file"]
    tars = [(p, i) for p, i in files if is_tar(p)]
    parquet = [(p, i) for p, i in files if p.endswith(".parquet") and not posixpath.basename(p).startswith("_")]
    imgs = [(p, i) for p, i in files if has_image_ext(p)]
    for kind, chosen in (("tar", tars), ("parquet", parquet)):
        if chosen and imgs:
            raise InvalidParameterError(
                f"images={images!r} mixes {len(chosen)} {kind} file(s) with {len(imgs)} image file(s); point "
                f"images= at one kind (accepted: {ACCEPTED})")
        if chosen:   # other files beside shards are their metadata (ingest's _manifest.json, img2dataset's stats)
            return FoundInputs(kind, fs, images, tuple(p for p, _ in chosen), tuple(i for _, i in chosen))
    if imgs:
        taken = {p for p, _ in imgs}
        return FoundInputs("files", fs, images, tuple(p for p, _ in imgs), tuple(i for _, i in imgs),
                           tuple(_kinds((p, i) for p, i in entries if p not in taken).most_common()))
    what = f"found {_found_summary(entries)}" if entries else "it is empty"
    raise InvalidParameterError(f"images={images!r} holds nothing screening run reads ({what}); accepted: {ACCEPTED}")


def find_inputs(images: str, *, storage=None) -> FoundInputs:
    """Classify ``images`` (file, folder, glob or brace pattern; local or ``s3://``); raise naming what was found."""

    fs, path = filesystem_for(images, storage)
    if "{" in path or any(ch in path for ch in "*?["):
        paths = sorted({p for pat in expand_braces(path) for p in
                        (fs.glob(pat) if any(ch in pat for ch in "*?[") else [pat] if fs.isfile(pat) else [])})
        if not paths:
            raise InvalidParameterError(f"images={images!r} matches no file")
        with ThreadPoolExecutor(max(1, min(16, len(paths)))) as pool:
            infos = list(pool.map(fs.info, paths))
        return _classify(images, fs, [(p, _followed(p, i)) for p, i in zip(paths, infos)
                                      if i.get("type", "file") == "file" or i.get("islink")])
    if fs.isdir(path):
        root = path.rstrip("/")
        return _classify(images, fs, [(f"{root}/{rel}", info) for rel, info in walk_folder(fs, root)])
    if not fs.exists(path):
        raise InvalidParameterError(f"images={images!r} does not exist")
    if path.lower().endswith(LIST_SUFFIXES):
        return FoundInputs("list", fs, images, (path,), (fs.info(path),))
    if path.lower().endswith(".parquet") or is_tar(path) or has_image_ext(path):
        return _classify(images, fs, [(path, _followed(path, fs.info(path)))])
    ext = posixpath.splitext(path)[1] or "(no extension)"
    raise InvalidParameterError(f"images={images!r} is a {ext} file, which screening run does not read; "
                                f"accepted: {ACCEPTED}")


# ----------------------------------------------------------------------------------------------
# screening run: units of image files (folders and lists)
# ----------------------------------------------------------------------------------------------

def stem(path: str) -> str:
    """A file's name without the input suffixes, safe as an output stem."""
    name = posixpath.basename(path.rstrip("/"))
    for suffix in (".parquet",) + TAR_SUFFIXES + LIST_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _UNSAFE.sub("_", name) or "shard"


@dataclass(frozen=True)
class FileUnit:
    """Up to FILES_PER_UNIT image files read as one unit; ``version`` digests every file's location, size, version."""

    unit: str
    uri: str
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    size: int
    version: str


def _file_units(name: str, root: str, files, sizes, versions) -> list[FileUnit]:
    units = []
    for k, start in enumerate(range(0, len(files), FILES_PER_UNIT)):
        sl = slice(start, start + FILES_PER_UNIT)
        f, s, v = tuple(files[sl]), tuple(sizes[sl]), versions[sl]
        digest = hashlib.sha256("".join(f"{a}\t{b}\t{c}\n" for a, b, c in zip(f, s, v)).encode()).hexdigest()
        units.append(FileUnit(f"{name}-{k:05d}", f"{root}#files={start}-{start + len(f) - 1}", f, s,
                              sum(max(0, x) for x in s), "files-sha256:" + digest[:24]))
    return units


def file_units(found: FoundInputs, *, storage=None) -> list[FileUnit]:
    """Units of a folder / glob of images (sizes and versions from the listing) or of a list (stat'ed in parallel)."""
    if found.kind == "files":
        files = [to_uri(found.fs, p) for p in found.paths]
        sizes = [int(i.get("size", -1)) for i in found.infos]
        versions = [file_version(i) for i in found.infos]
        return _file_units(stem(found.root), found.root, files, sizes, versions)
    entries = read_list_entries(found.fs, found.paths[0])
    if not entries:
        raise InvalidParameterError(f"images={found.root!r} lists no path or URI (one per line, or a 'path' column)")
    files = [resolve_entry(e, found.fs, found.paths[0]) for e in entries]

    def stat(uri):
        try:
            fs, p = filesystem_for(uri, storage)
            info = fs.info(p)
            return int(info.get("size", -1)), file_version(info)
        except (FileNotFoundError, OSError, ValueError) as exc:  # read (and reported) per row by the read task
            return -1, f"unreadable:{type(exc).__name__}"

    with ThreadPoolExecutor(16) as pool:
        stats = list(pool.map(stat, files))
    return _file_units(stem(found.root), found.root, files, [s for s, _ in stats], [v for _, v in stats])
