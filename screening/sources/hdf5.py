"""HDF5 stimulus arrays (``.hdf5``, ``.h5``): an ``N x H x W x 3`` uint8 dataset, NSD's ``nsd_stimuli.hdf5``
(``imgBrick``, 73,000 x 425 x 425 x 3) and MindEye-style files.

Units are row ranges of :data:`ROWS_PER_UNIT` images; workers read their slice (locally, or on S3 through fsspec's
random access). A row's id is the digest of its pixel bytes, its source ``FILE#index`` (NSD's 0-based image index).
Pixels travel as the raw-pixel container of :func:`screening.preprocess.raw_pixels`, so they take the same centre
crop and resize as a decoded image. A dataset of another shape or dtype is refused with what was found.

The kind owns its option (``hdf5_dataset``, ``--hdf5-dataset``: :data:`DATASET`) and reads its recorded sources back
(``FILE#index``, as PNG) for the report's and the search's pictures.
"""

from __future__ import annotations

from screening.exceptions import InvalidParameterError
from screening.sources.base import (DIRECT_SPEC, Found, PlanContext, Source, SourceOption, Unit,
                                    changed_since_plan, derived_id, non_empty_string, stat_files, stem)

HDF5_SUFFIXES = (".hdf5", ".h5")
DEFAULT_DATASET = "imgBrick"
#: Images per unit of work (a commit / restart point).
ROWS_PER_UNIT = 1024
#: Images per slice read from the file.
READ_ROWS = 64

#: The one option of HDF5 inputs: which dataset of the file holds the images.
DATASET = SourceOption(
    "hdf5_dataset", DEFAULT_DATASET, flag="--hdf5-dataset",
    help="the N x H x W x 3 uint8 dataset of HDF5 inputs (default imgBrick, NSD's nsd_stimuli.hdf5)",
    doc="""str, default="imgBrick"
        The ``N x H x W x 3`` uint8 dataset of an HDF5 input (:mod:`screening.sources.hdf5`); a unit is a range of
        its rows, an image's source ``FILE#index``.""", check=non_empty_string)


def _source(uri: str, index: int) -> str:
    """The recorded source of one image: ``FILE#index`` (NSD's 0-based index)."""
    return f"{uri}#{index}"


def _indexed(source: str) -> tuple[str, int] | None:
    """``(FILE, index)`` of a recorded source this kind wrote (:func:`_source`), else None."""
    path, sep, fragment = source.rpartition("#")
    if not sep or not fragment.isdigit() or not path.lower().endswith(HDF5_SUFFIXES):
        return None
    return path, int(fragment)


def _open(fs, path: str):
    import h5py

    return h5py.File(fs.open(path, "rb"), "r")


def check_dataset(f, name: str, where: str):
    """The ``N x H x W x 3`` uint8 dataset ``name`` of an open file, or a refusal naming what is there."""
    import h5py

    if name not in f or not isinstance(f[name], h5py.Dataset):
        found = ", ".join(f"{k} {f[k].shape} {f[k].dtype}" for k in f if isinstance(f[k], h5py.Dataset))
        raise InvalidParameterError(f"{where} has no dataset {name!r} (datasets: {found or 'none'}); give "
                                    f"--hdf5-dataset NAME")
    d = f[name]
    if d.ndim != 4 or d.shape[3] != 3 or d.dtype != "uint8":
        raise InvalidParameterError(f"{where}: dataset {name!r} is {d.dtype} of shape {d.shape}; expected uint8 "
                                    f"N x H x W x 3 (RGB images)")
    return d


def read_pixels(uri: str, index: int, dataset: str = DEFAULT_DATASET, storage=None):
    """One image (H, W, 3) of an HDF5 input, by its 0-based row (a recorded source ``FILE#index``)."""
    from screening.fs import filesystem_for

    fs, path = filesystem_for(uri, storage)
    with _open(fs, path) as f:
        return check_dataset(f, dataset, repr(uri))[int(index)]


class Hdf5Source(Source):
    kind = "hdf5"
    suffixes = HDF5_SUFFIXES
    describe = f"HDF5 stimulus arrays ({', '.join(HDF5_SUFFIXES)}: N x H x W x 3 uint8, e.g. NSD's imgBrick)"
    precedence = 1
    options = (DATASET,)

    def made(self, source: str) -> bool:
        return _indexed(source) is not None

    def picture(self, source: str, options=None, storage=None) -> bytes | None:
        """The image at ``FILE#index``, as PNG, from the run's dataset (``options``: its ``hdf5_dataset``)."""
        import io

        from PIL import Image

        from screening.fs import StorageOptions

        path, index = _indexed(source)
        buf = io.BytesIO()
        Image.fromarray(read_pixels(path, index, self.option(options, DATASET.name),
                                    StorageOptions.of(storage))).save(buf, "PNG")
        return buf.getvalue()

    def plan(self, found: Found, ctx: PlanContext):
        from screening.fs import to_uri

        name = self.option(ctx.source_options, DATASET.name)
        units = []
        for path, (size, version) in zip(found.paths, stat_files(found.fs, list(found.paths))):
            uri = to_uri(found.fs, path)
            try:
                with _open(found.fs, path) as f:
                    n = int(check_dataset(f, name, repr(uri)).shape[0])
            except InvalidParameterError:
                raise
            except Exception as exc:  # noqa: BLE001 - not HDF5, truncated: say which file and why
                raise InvalidParameterError(f"{uri!r} is not a readable HDF5 file: {type(exc).__name__}: {exc}") \
                    from None
            base = stem(path, HDF5_SUFFIXES) + (f"-{len(units):03d}" if len(found.paths) > 1 else "")
            for k, start in enumerate(range(0, n, ROWS_PER_UNIT)):
                stop = min(n, start + ROWS_PER_UNIT)
                units.append(Unit(path, f"{uri}#{name}[{start}:{stop}]", f"{base}-{k:05d}", stop - start, size,
                                  version, kind=self.kind, detail=(("file", uri), ("dataset", name),
                                                                   ("start", start))))
        return tuple(units), DIRECT_SPEC

    def rows(self, item: dict, storage):
        from screening.fs import filesystem_for
        from screening.preprocess import raw_pixels

        fs, path = filesystem_for(item["file"], storage)
        start, n, row = int(item["start"]), int(item["rows"]), 0
        reason = changed_since_plan(item, fs, path, "the HDF5 file")
        if reason is None:
            try:
                with _open(fs, path) as f:
                    d = check_dataset(f, item["dataset"], repr(item["file"]))
                    while row < n:
                        block = d[start + row: start + min(n, row + READ_ROWS)]
                        if len(block) == 0:
                            raise ValueError(f"the dataset ends at {start + row} images")
                        for pixels in block:
                            yield row, _source(item["file"], start + row), raw_pixels(pixels), "", \
                                derived_id(pixels.tobytes())
                            row += 1
            except Exception as exc:  # noqa: BLE001 - the file's own problem: its remaining rows become error rows
                reason = f"the HDF5 file is unreadable at image {start + row}: {type(exc).__name__}: {exc}"
        for r in range(row, n):
            yield r, _source(item["file"], start + r), None, reason
