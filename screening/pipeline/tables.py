"""The run's two output tables (``docs/contracts.md``): their schemas, and how encoder rows become them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MEAN_SUBJECT = "mean"
STAGE_OK = ""   # the stage column of a row that was screened (an error row names its stage)
ERROR_SCHEMA = pa.schema([("image_id", pa.string()), ("source", pa.string()), ("stage", pa.string()),
                          ("error", pa.string())])


def responses_schema(roi_names) -> pa.Schema:
    return pa.schema([("image_id", pa.string()), ("subject", pa.string())]
                     + [(n, pa.float32()) for n in roi_names])


def response_table(ids, roi: np.ndarray, labels, schema: pa.Schema) -> pa.Table:
    """Long format: per image, one row per label (``sub-01``.., ``mean``), in that order; ``roi`` is (k, S+1, R)."""
    k, s1, r = roi.shape
    ids = pa.array(list(ids), pa.string())
    # take() on the k ids and the S+1 labels: no Python string per output row
    cols = [pc.take(ids, pa.array(np.repeat(np.arange(k), s1))),
            pc.take(pa.array(list(labels), pa.string()), pa.array(np.tile(np.arange(s1), k)))]
    by_roi = np.ascontiguousarray(roi.reshape(k * s1, r).T, dtype=np.float32)  # one contiguous run per column
    cols += [pa.array(by_roi[j]) for j in range(r)]
    return pa.Table.from_arrays(cols, schema=schema)


SOURCE_SCHEMA = pa.schema([("image_id", pa.string()), ("source", pa.string())])


def source_table(ids, sources) -> pa.Table:
    """One row per screened image: its id and where it came from (file, ``tar://member::archive``, shard column)."""
    return pa.table({"image_id": pa.array(list(ids), pa.string()), "source": pa.array(list(sources), pa.string())},
                    schema=SOURCE_SCHEMA)


def feature_columns(n: int) -> list[str]:
    return [f"f{j:03d}" for j in range(n)]


def feature_table(ids, feats: np.ndarray) -> pa.Table:
    """One row per screened image: its id and the core output's spatial mean (``f000`` ..), float16."""
    feats = np.asarray(feats, dtype=np.float16)
    cols = [pa.array(list(ids), pa.string())] + [pa.array(feats[:, j]) for j in range(feats.shape[1])]
    return pa.Table.from_arrays(cols, names=["image_id"] + feature_columns(feats.shape[1]))


def error_table(ids, sources, stages, errors) -> pa.Table:
    return pa.table({"image_id": pa.array(list(ids), pa.string()), "source": pa.array(list(sources), pa.string()),
                     "stage": pa.array(list(stages), pa.string()), "error": pa.array(list(errors), pa.string())},
                    schema=ERROR_SCHEMA)


# Dictionary-encode only the two string columns: trying dictionaries on the float32 ROI columns made writing ~9x
# slower (226 vs 25 us/image, 379 ROIs) and the files larger (19.8 vs 13.4 KiB/image).
PARQUET_OPTIONS = {"use_dictionary": ["image_id", "subject"]}
