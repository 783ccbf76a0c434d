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
    outputs = _run_outputs(fs, path, storage)
    source = None
    if outputs is not None:
        from screening.pipeline.outputs import RESPONSES

        source = [filesystem_for(u, storage)[1] for u in outputs.files()[RESPONSES]]
        if not source:
            raise InvalidParameterError(f"responses={uri!r}: {outputs.why_no()}; nothing to rank")
    try:
        dataset = ds.dataset(path if source is None else source, format="parquet", filesystem=fs)
    except Exception as exc:
        raise InvalidParameterError(f"responses={uri!r} is not a readable Parquet table: {exc}") from exc
    return dataset, fs, path


def _run_outputs(fs, path: str, storage):
    """The :class:`~screening.pipeline.outputs.RunOutputs` of the run whose ``responses`` folder ``path`` is, or None
    for a plain table (a file, or a folder without ``_committed/`` beside it). Only the parts that commit markers
    list are a run's results; other files under ``responses/`` are leftovers of an interrupted run."""
    path = path.rstrip("/")
    if posixpath.basename(path) != "responses":
        return None
    from screening.pipeline.outputs import RunOutputs  # lazy: the pipeline package pulls in Ray

    outputs = RunOutputs(to_uri(fs, posixpath.dirname(path)), storage=storage)
    return outputs if outputs.is_run() else None


def run_sources(fs, responses_path: str, storage):
    """``image_id`` and ``source`` of every image of the run whose ``responses`` folder this is, or None (a plain
    table, or a run from before sources were recorded)."""
    outputs = _run_outputs(fs, responses_path, storage)
    dataset = outputs.dataset("sources") if outputs is not None else None
    if dataset is None:
        return None
    return dataset.to_table(columns=["image_id", "source"]).to_pandas()


def run_features(fs, responses_path: str, storage):
    """The ``features`` dataset of the run whose ``responses`` folder this is, or None."""
    outputs = _run_outputs(fs, responses_path, storage)
    return outputs.dataset("features") if outputs is not None else None


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
