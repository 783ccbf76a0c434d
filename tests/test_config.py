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


def test_each_option_is_defined_once_and_everything_follows_from_its_field():
    """The CLI arguments, from_args, the manifest record, the configuration key and screen()'s documented parameters
    all come from RunConfig's fields: every field is documented, every flagged field parses back to itself."""
    from screening.pipeline import screen

    fields = dataclasses.fields(RunConfig)
    for f in fields:
        assert f.metadata["doc"].strip(), f.name
        assert f"    {f.name} : " in screen.__doc__, f.name
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    flags = {a.dest: a.option_strings for a in parser._actions}
    for f in fields:
        flag = f.metadata["flag"]
        if flag and flag not in ("storage", f.name):
            assert flags[f.name] == [flag], f.name
    assert "encoder_stage" not in flags   # benchmarks only: no flag
    from screening.sources import source_options

    for o in source_options():   # each input kind's own options: documented and flagged like the fields
        assert f"    {o.name} : " in screen.__doc__ and flags[o.name] == [o.flag], o.name
    # a non-default value of every flagged option survives CLI -> from_args, and lands in the record or the key
    cli = _cli(["imgs/", "--store", "s/", "--out", "o/", "--model-id", "m", "--subjects", "3", "--rois", "V1",
                "--composites", '{"c": ["V1"]}', "--custom-rois", '{"u": [1, 2]}', "--precision", "bf16",
                "--batch-size", "7", "--write-batch-size", "9", "--num-encoders", "2", "--num-gpus-per-encoder",
                "0.5", "--num-cpus-per-encoder", "3", "--exact-decode", "--decode", "actor", "--image-column", "img",
                "--id-column", "uid", "--no-progress", "--reliability-threshold", "0.1", "--noise-ceiling",
                "train_n-1", "--redo-changed", "--test-throttle-s", "0.5"])
    api = RunConfig.of("imgs/", "s/", "o/", model_id="m", subjects=["sub-03"], rois=["V1"], composites={"c": ["V1"]},
                       custom_rois={"u": [1, 2]}, precision="bf16", batch_size=7, write_batch_size=9, num_encoders=2,
                       num_gpus_per_encoder=0.5, num_cpus_per_encoder=3, fast_decode=False, decode="actor",
                       image_column="img", id_column="uid", progress=False, reliability_threshold=0.1,
                       noise_ceiling="train_n-1", redo_changed=True, throttle_s=0.5)
    assert cli == api
    record = cli.record()
    assert record["custom_rois"] == ["u"] and record["composites"] == {"c": ["V1"]} and record["subjects"] == ["sub-03"]
    assert record["store"] == "s/" and record["batch_size"] == 7 and "progress" not in record
    assert cli.key_fields() == {"subjects": ("sub-03",), "fast_decode": False, "image_column": "img",
                                "id_column": "uid", "reliability": [0.1, "train_n-1"],
                                "features": "core-spatial-mean-fp16"}   # actor pixels = cpu pixels
    assert "features" not in _cli(["i", "--store", "s", "--out", "o", "--no-features"]).key_fields()
    assert RunConfig.of("i", "s", "o", decode="gpu").key_fields()["decode"] == "gpu"


def test_the_old_fast_decode_flag_still_means_fast_decode():
    assert _cli(["i", "--store", "s", "--out", "o", "--fast-decode"]).fast_decode is True


def test_a_recorded_config_reads_back_as_itself():
    """RunConfig.from_record (what RunOutputs.config() returns) inverts record(), field by field, through JSON."""
    import json

    asked = RunConfig.of("imgs/", "s/", "o/", model_id="m", subjects=["sub-03", "sub-05"], composites={"c": ["V1"]},
                         parcellation="p/sub-{subject}.dlabel.nii", parcellation_prefix="pp", precision="bf16",
                         batch_size=7, write_batch_size=9, num_encoders=(1, 3), num_gpus_per_encoder=0.5,
                         num_cpus_per_encoder=3, fast_decode=False, decode="actor", hdf5_dataset="stimuli",
                         image_column="img", id_column="uid", features=False, reliability_threshold=0.0,
                         noise_ceiling="train_n-1", endpoint_url="http://127.0.0.1:9", anonymous=True)
    record = json.loads(json.dumps(asked.record()))
    assert record["hdf5_dataset"] == "stimuli"   # a kind's own option, recorded under its name
    got = RunConfig.from_record(record)
    assert got == asked and got.hdf5_dataset == "stimuli" and got.reliability_threshold == 0.0
    assert RunConfig.from_record({**record, "rois": ["V1", "FFC"]}).rois == ("V1", "FFC")   # the plan's resolved list
    assert RunConfig.from_record(record, storage={"anonymous": False}).storage == StorageOptions(anonymous=False)
    with pytest.raises(InvalidParameterError, match="has no store"):
        RunConfig.from_record({"images": "i", "out": "o"})


def test_a_source_kinds_option_is_a_run_option_by_its_name():
    c = RunConfig.of("in", "s", "o", hdf5_dataset="stimuli")
    assert c.hdf5_dataset == "stimuli" and dict(c.source_options) == {"hdf5_dataset": "stimuli"}
    assert _cli(["in", "--store", "s", "--out", "o", "--hdf5-dataset", "stimuli"]) == c
    assert RunConfig.of("in", "s", "o").hdf5_dataset == "imgBrick"
    with pytest.raises(InvalidParameterError, match="hdf5_dataset must be a non-empty string; got ''"):
        RunConfig.of("in", "s", "o", hdf5_dataset="")
    with pytest.raises(AttributeError, match="no attribute 'hdf6_dataset'"):
        c.hdf6_dataset


def test_a_run_whose_label_table_moved_still_reads_back_without_it(tmp_path):
    """`search --like` encodes a new image with the run's recorded config; the --vertex-stats label table it does not
    need may be gone since, and is then left out (``without``), while a full read-back still names it."""
    import json

    from screening.pipeline.outputs import RunOutputs

    table = tmp_path / "labels.csv"
    table.write_text("label,image_id\nred,a\n")
    asked = RunConfig.of("imgs/", "s/", str(tmp_path / "out"), model_id="m", vertex_stats=str(table))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"config": asked.record()}))
    table.unlink()
    outputs = RunOutputs(str(tmp_path / "out"))
    with pytest.raises(InvalidParameterError, match="labels.csv"):
        outputs.config()
    got = outputs.config(without=("vertex_stats",))
    assert got.vertex_stats is None and got.model_id == "m" and got.out == asked.out
