"""Local / s3:// access for ranking and reporting (pyarrow.dataset over an fsspec filesystem)."""

from __future__ import annotations

import posixpath

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from screening.exceptions import InvalidParameterError
from screening.fs import StorageOptions, filesystem_for, read_json, to_uri


def open_responses(uri, storage: StorageOptions | None = None) -> tuple[ds.Dataset, object, str]:
    """Open a responses table (a directory of Parquet files or one file) as a dataset.

    A pipeline run's ``RUN/responses`` folder (``RUN/_committed/`` exists) is opened as the committed files only.
    """
    fs, path = filesystem_for(uri, storage)
    if not fs.exists(path):
        raise InvalidParameterError(f"responses={uri!r} does not exist")
    source = committed_responses(fs, path, storage)
    if source is not None and not source:
        from screening.pipeline.outputs import RunOutputs  # lazy: the pipeline package pulls in Ray

        why = RunOutputs(to_uri(fs, posixpath.dirname(path.rstrip("/"))), storage=storage).why_no()
        raise InvalidParameterError(f"responses={uri!r}: {why}; nothing to rank")
    try:
        dataset = ds.dataset(path if source is None else source, format="parquet", filesystem=fs)
    except Exception as exc:
        raise InvalidParameterError(f"responses={uri!r} is not a readable Parquet table: {exc}") from exc
    return dataset, fs, path


def committed_responses(fs, path: str, storage: StorageOptions | None = None) -> list[str] | None:
    """Paths (inside ``fs``) of the committed response files when ``path`` is a pipeline run's ``responses``
    folder, i.e. its parent holds ``_committed/`` markers; ``None`` otherwise.

    A file under ``responses/`` whose unit has no marker is a leftover of an interrupted run (docs/pipeline.md),
    so only :func:`screening.pipeline.outputs.committed_files` of the run are read.
    """
    path = path.rstrip("/")
    if posixpath.basename(path) != "responses":
        return None
    from screening.pipeline.outputs import RESPONSES, RunOutputs  # lazy: the pipeline package pulls in Ray

    outputs = RunOutputs(to_uri(fs, posixpath.dirname(path)), storage=storage)
    if not outputs.is_run():
        return None
    return [filesystem_for(u, storage)[1] for u in outputs.files()[RESPONSES]]


def find_manifest(fs, responses_path: str):
    """The run's ``manifest.json``: beside the responses directory (``RUN/responses`` -> ``RUN/manifest.json``)."""
    parent = posixpath.dirname(responses_path.rstrip("/"))
    for cand in (posixpath.join(parent, "manifest.json"), posixpath.join(responses_path, "manifest.json")):
        m = read_json(fs, cand)
        if m is not None:
            return m
    return None


def write_table(table, fs, path: str) -> None:
    """Write one Parquet file through ``fs`` (parents created)."""
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
