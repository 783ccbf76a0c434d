"""Listing rules every source follows: what counts as an image file, hidden entries, folder walks, symlinks,
brace patterns, and list files (docs/preprocess-ingest.md).

- image files are taken by extension (:data:`IMAGE_EXTENSIONS`, any case); hidden files and folders (``.x``, macOS
  ``._x.jpg``) are skipped;
- a folder is walked recursively, in sorted order of relative paths; a symlink to a file is that file, a dangling
  or looping one becomes an error row that names it, a symlink to a folder is reported, not followed;
- a list (``.csv`` with a ``path``/``uri`` column, ``.txt``/``.lst`` one entry per line) names local paths (relative
  ones resolve against the list's folder) or ``s3://`` URIs, in list order.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import posixpath
import re
import stat

from screening.fs import to_uri

#: File extensions taken from folders, archives and as single files (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
#: The listing type of a symlink to a folder: reported among what was not screened, never walked (loops).
LINKED_FOLDER = "(symlinked folder, not followed)"

_BRACE = re.compile(r"\{([^{}]*)\}")


def has_image_ext(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_hidden(relpath: str) -> bool:
    # "./a.jpg" (tar archives made with `tar -cf x.tar .`) is not hidden; "a/.b.jpg" is.
    return any(part.startswith(".") for part in relpath.split("/") if part not in ("", ".", ".."))


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
            info = followed(p, info)
        rel = p[len(root):].lstrip("/")
        if not is_hidden(rel):
            rows.append((rel, info))
    return sorted(rows, key=lambda r: r[0])


def followed(path: str, info: dict) -> dict:
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
    if "://" in path or not os.path.islink(path):
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
