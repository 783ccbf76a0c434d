"""RunConfig: one checked configuration that the API, the CLI and jobs/screen.py all build."""

from __future__ import annotations

import argparse
import dataclasses
import pickle

import pytest

from screening.exceptions import InvalidParameterError
from screening.fs import StorageOptions
from screening.pipeline import RunConfig, build_plan
from screening.pipeline.cli import configure_parser


def _cli(argv):
    p = argparse.ArgumentParser()
    configure_parser(p)
    return RunConfig.from_args(p.parse_args(argv))


def test_cli_and_api_build_the_same_config():
    api = RunConfig.of("in/", "store/", "out/", subjects="sub-01,2", rois="V1, FFC", precision="fp32", batch_size=8,
                       fast_decode=False, endpoint_url="http://127.0.0.1:9", anonymous=True, progress=False)
    cli = _cli(["in/", "--store", "store/", "--out", "out/", "--subjects", "sub-01,2", "--rois", "V1, FFC",
                "--precision", "fp32", "--batch-size", "8", "--exact-decode", "--endpoint-url", "http://127.0.0.1:9",
                "--anonymous", "--no-progress"])
    assert api == cli
    assert api.subjects == ("sub-01", "sub-02") and api.rois == ("V1", "FFC")
    assert api.storage == StorageOptions(endpoint_url="http://127.0.0.1:9", anonymous=True)
    assert _cli(["in/", "--store", "s", "--out", "o"]).storage == StorageOptions()   # no flag: decide by credentials


def test_config_is_frozen_normalised_and_picklable():
    c = RunConfig.of("in", "store", "out", decode="gpu", num_encoders=[1, 3])
    assert c.fast_decode is False and c.num_encoders == (1, 3)   # GPU decode is a full-size decode
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.precision = "fp32"
    assert pickle.loads(pickle.dumps(c)) == c


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "fp8"}, r"precision='fp8' is not valid; valid precisions: fp32, bf16, fp16"),
    ({"decode": "nvjpeg"}, r"decode='nvjpeg' is not valid; valid values: 'cpu', 'gpu'"),
    ({"subjects": "sub-09"}, r"is not valid; valid values: 1, 2, 3"),
    ({"write_batch_size": 0}, r"write_batch_size=0 must be a positive integer"),
    ({"num_gpus_per_encoder": 1.5}, r"num_gpus_per_encoder above 1 must be a whole number"),
    ({"reliability_threshold": float("nan")}, r"reliability_threshold must be a finite number"),
    ({"noise_ceiling": "test"}, r"noise_ceiling='test' is not valid; valid noise ceilings: test_n-avg, test_n-1"),
    ({"fast_decode": "yes"}, r"fast_decode must be True or False; got 'yes'"),
    ({"throttle_s": float("nan")}, r"throttle_s must be a number >= 0; got nan"),   # NaN < 0 is False
    ({"rois": [1, 2]}, r"rois must be ROI names"),
    ({"batchsize": 8}, r"unknown option\(s\) batchsize; valid options: model_id, subjects"),
    ({"storage_options": {"endpoint": "x"}}, r"storage_options keys \['endpoint'\] are not valid"),
])
def test_bad_option_named_when_the_config_is_built(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        RunConfig.of("in", "store", "out", **kwargs)


def test_build_plan_takes_only_a_config(visual_store, tmp_path):
    with pytest.raises(InvalidParameterError, match="build_plan takes a RunConfig"):
        build_plan(str(tmp_path))


def test_one_config_resolves_once_into_the_plan(visual_store, tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.image_corpus import photo_like

    def jpeg(seed):
        buf = io.BytesIO()
        photo_like(64, 48, seed).save(buf, "JPEG")
        return buf.getvalue()

    shard = tmp_path / "in" / "s.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({"image_id": ["a", "b"], "image": [jpeg(0), jpeg(1)]}), shard)
    config = RunConfig.of(str(shard.parent), str(visual_store), str(tmp_path / "out"), subjects=[1, "sub-02"],
                          rois=["V1"], precision="fp32")
    plan = build_plan(config)
    assert plan.options is config and plan.subjects == ("sub-01", "sub-02") and plan.roi_names == ("V1",)
    assert plan.config["precision"] == "fp32" and plan.config["rois"] == ["V1"]
    # the same ask through the CLI resolves to the same results key: a resume across the two is allowed
    cli = _cli([str(shard.parent), "--store", str(visual_store), "--out", str(tmp_path / "out"), "--subjects",
                "1,2", "--rois", "V1", "--precision", "fp32"])
    assert build_plan(cli).config_key == plan.config_key
