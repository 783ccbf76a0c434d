"""End-to-end tests of ``screening.pipeline`` on a real local Ray (2 CPUs), the width-16 visual test store."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from screening.fs import StorageOptions
from screening.exceptions import InvalidParameterError
from tests.image_corpus import bad_image_corpus, encode, photo_like

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "fmri-mosaic-CNN8_multihead_subNSD_verticesVisual"
ROIS = ["V1", "FFC", "group_02"]
COMPOSITES = {"early": ["V1", "V2"]}
ROI_COLUMNS = ROIS + ["early"]


# --------------------------------------------------------------------------- helpers

def _jpegs(n, seed, size=(64, 48)):
    return [encode(photo_like(*size, seed=seed * 1000 + i), "JPEG", quality=90) for i in range(n)]


def write_shard(path, ids, images, sources=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "image_id": pa.array(ids, pa.string()), "image": pa.array(images, pa.binary()),
        "source": pa.array(sources or [f"gen/{i}" for i in ids], pa.string()),
        "width": pa.array([64] * len(ids), pa.int32()), "height": pa.array([48] * len(ids), pa.int32())}), path)


def make_shards(root: Path, n_shards: int, per_shard: int, seed=0) -> list[str]:
    ids = []
    for s in range(n_shards):
        sid = [f"img-{seed}-{s:02d}-{i:03d}" for i in range(per_shard)]
        write_shard(root / f"part-{s:03d}.parquet", sid, _jpegs(per_shard, seed * 100 + s))
        ids += sid
    return ids


def read_run(out: Path):
    """(responses, errors) of committed units, read through the public helper."""
    from screening.pipeline import committed_files

    from screening.pipeline.tables import ERROR_SCHEMA

    files = committed_files(str(out))
    resp = pa.concat_tables([pq.read_table(f) for f in files["responses"]]).to_pandas()
    errs = pa.concat_tables([ERROR_SCHEMA.empty_table()] + [pq.read_table(f) for f in files["errors"]]).to_pandas()
    return resp, errs


def assert_partition(resp, errs, ids, n_subjects=8):
    """Every input id exactly once: in responses (n_subjects + 1 rows) or errors (1 row), never both."""
    counts = resp.groupby("image_id").size()
    assert (counts == n_subjects + 1).all(), counts[counts != n_subjects + 1]
    ok, bad = set(counts.index), list(errs["image_id"])
    assert len(bad) == len(set(bad)), "an image is in errors twice"
    assert not ok & set(bad), "an image is in both responses and errors"
    assert sorted(ok | set(bad)) == sorted(ids)
    assert len(ok) + len(bad) == len(ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kw(**extra):
    kw = dict(model_id=MODEL_ID, rois=ROIS, composites=COMPOSITES, progress=False, batch_size=8)
    kw.update(extra)
    return kw


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def corpus():
    return bad_image_corpus()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, corpus):
    """Two photo shards, one bad-image corpus shard (plus good images), one empty shard."""
    root = tmp_path_factory.mktemp("inputs")
    ids = make_shards(root, 2, 12)
    names = sorted(corpus)
    good = _jpegs(3, 77)
    cids = [f"corpus-{n}" for n in names] + [f"corpus-good-{i}" for i in range(3)]
    write_shard(root / "part-corpus.parquet", cids, [corpus[n][0] for n in names] + good)
    write_shard(root / "part-empty.parquet", [], [])
    return root, ids + cids


@pytest.fixture(scope="module")
def local_run(ray_local, visual_store, inputs, tmp_path_factory):
    from screening.pipeline import screen

    root, ids = inputs
    out = tmp_path_factory.mktemp("run") / "out"
    result = screen(str(root), str(visual_store), str(out), **_kw(precision="fp32"))
    return result, out, ids


# --------------------------------------------------------------------------- validation (driver side, no Ray work)

@pytest.mark.timeout(120)
@pytest.mark.parametrize("kwargs, match", [
    ({"subjects": ["sub-09"]}, r"subjects 'sub-09' in \['sub-09'\] is not valid; valid values: 1, 2"),
    ({"rois": ["NOT_AN_AREA"]}, r"Unknown ROI 'NOT_AN_AREA'; valid ROIs"),
    ({"precision": "fp8"}, r"precision='fp8' is not valid; valid precisions: fp32, bf16, fp16"),
    ({"model_id": "nope"}, r"model_id='nope' is not in the store; models in the store: fmri-mosaic"),
    ({"image_column": "pixels"}, r"image_column='pixels' is not a column of the input shards; columns: image_id"),
    ({"batch_size": 0}, r"batch_size=0 must be a positive integer"),
    ({"num_encoders": (3, 1)}, r"min <= max"),
])
def test_invalid_arguments_fail_before_ray(visual_store, inputs, tmp_path, kwargs, match, monkeypatch):
    from screening.pipeline import screen
    from screening.pipeline import run as run_mod

    monkeypatch.setattr(run_mod, "_ensure_ray", lambda: pytest.fail("Ray was touched before validation"))
    kw = _kw()
    kw.update(kwargs)
    with pytest.raises(InvalidParameterError, match=match):
        screen(str(inputs[0]), str(visual_store), str(tmp_path / "out"), **kw)
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(120)
def test_gpu_request_without_gpus_is_an_error_not_a_hang(ray_local, visual_store, inputs, tmp_path, monkeypatch):
    from screening.pipeline import screen
    from screening.pipeline import run as run_mod

    monkeypatch.setattr(run_mod, "build_dataset", lambda *a: pytest.fail("a dataset was built"))
    with pytest.raises(InvalidParameterError, match=r"num_gpus_per_encoder=1.0 but the Ray cluster has 0 GPU"):
        screen(str(inputs[0]), str(visual_store), str(tmp_path / "out"), **_kw(num_gpus_per_encoder=1))
    with pytest.raises(InvalidParameterError, match=r"num_cpus_per_encoder=64 but the Ray cluster has 2 CPU"):
        screen(str(inputs[0]), str(visual_store), str(tmp_path / "out2"), **_kw(num_cpus_per_encoder=64))


# --------------------------------------------------------------------------- local end to end

@pytest.mark.timeout(300)
def test_local_end_to_end_partition_and_manifest(local_run):
    result, out, ids = local_run
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids)
    assert list(resp.columns) == ["image_id", "subject"] + ROI_COLUMNS
    assert all(resp[c].dtype == np.float32 for c in ROI_COLUMNS)
    assert set(resp["subject"]) == {f"sub-{i:02d}" for i in range(1, 9)} | {"mean"}
    assert list(errs.columns) == ["image_id", "source", "stage", "error"]
    # mean row = mean over the 8 subjects
    piv = resp[resp.subject != "mean"].groupby("image_id")[ROI_COLUMNS].mean()
    mean = resp[resp.subject == "mean"].set_index("image_id")[ROI_COLUMNS].loc[piv.index]
    np.testing.assert_allclose(mean.to_numpy(), piv.to_numpy(), rtol=1e-5, atol=1e-5)
    # parts under responses/<unit>/ and errors/<unit>/, written by workers; each marker lists exactly what is there
    units = ["part-000", "part-001", "part-corpus", "part-empty"]
    assert sorted(p.stem for p in (out / "_committed").iterdir()) == units
    on_disk = sorted(str(p.relative_to(out)) for p in out.glob("*/*/*.parquet"))
    from screening.pipeline.outputs import KINDS   # responses, errors, sources, features

    listed = sorted(f for u in units for k in KINDS
                    for f in json.loads((out / "_committed" / f"{u}.json").read_text())["files"][k])
    assert on_disk == listed and listed
    assert sorted(p.name for p in (out / "responses").iterdir()) == units[:3]   # the empty shard has no part
    assert sorted(p.name for p in (out / "errors").iterdir()) == ["part-corpus"]
    marker = json.loads((out / "_committed" / "part-000.json").read_text())
    assert marker["input"]["uri"].endswith("part-000.parquet") and marker["input"]["rows"] == 12
    assert marker["input"]["size"] > 0 and marker["input"]["version"].startswith("mtime_ns:")
    assert sum(p["rows"] for p in marker["parts"]) == 12
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["model_id"] == MODEL_ID and m["model"]["variant"] == "visual" and m["model"]["synthetic"]
    assert m["model"]["width"] == 16 and len(m["model"]["checkpoint_sha256"]) == 64
    assert list(m["rois"]) == ROI_COLUMNS
    assert set(m["rois"]["V1"]["n_vertices"]) == {f"sub-{i:02d}" for i in range(1, 9)}
    assert all(s["state"] == "committed" for s in m["shards"]) and len(m["shards"]) == 4
    assert {s["unit"]: s["rows"] for s in m["shards"]}["part-empty"] == 0
    assert m["counts"] == {"images": len(ids), "responses_rows": len(resp), "errors": len(errs)}
    assert m["config"]["precision"] == "fp32" and m["engine_version"]
    assert m["run"]["state"] == "complete" and m["run"]["units_run"] == 4
    # the result object reads the same tables
    assert result.counts == m["counts"]
    assert len(result.responses()) == len(resp) and len(result.errors()) == len(errs)
    assert result.responses_dataset().count() == len(resp)
    assert "images/s" in result.summary()
    assert result.summary().startswith("SYNTHETIC WEIGHTS")   # the test store is synthetic, and says so


@pytest.mark.timeout(120)
def test_bad_image_corpus_lands_in_responses_or_errors(local_run, corpus):
    _, out, _ = local_run
    resp, errs = read_run(out)
    ok_ids = set(resp["image_id"])
    errs = errs.set_index("image_id")
    for name, (_, expected) in corpus.items():
        iid = f"corpus-{name}"
        if expected == "ok":
            assert iid in ok_ids, f"{name} should have been screened; error: {errs.error.get(iid)}"
        else:
            assert iid in errs.index, f"{name} should be an error row"
            assert errs.loc[iid, "stage"] == "decode"
            assert re.search(expected, errs.loc[iid, "error"]), (name, errs.loc[iid, "error"])
            assert errs.loc[iid, "source"] == f"gen/{iid}"
    assert {f"corpus-good-{i}" for i in range(3)} <= ok_ids


@pytest.mark.timeout(120)
def test_pipeline_equals_roi_encoder_and_full_vertex_mean(local_run, visual_store, inputs):
    """fp32: pipeline value == RoiEncoder(preprocess_bytes(img)) == mean of the full-vertex output over the ROI."""
    import torch

    from screening.models.encoder import Normalize, RoiEncoder
    from screening.preprocess import preprocess_bytes
    from screening.rois import build_roi_set
    from screening.store import open_store

    _, out, _ = local_run
    resp, _ = read_run(out)
    shard = pq.read_table(inputs[0] / "part-001.parquet").to_pylist()[:4]
    x = np.stack([preprocess_bytes(r["image"]) for r in shard])
    store = open_store(str(visual_store))
    subjects = [f"sub-{i:02d}" for i in range(1, 9)]
    rois = build_roi_set("visual", ROIS + ["early"], composites=COMPOSITES)
    enc = RoiEncoder.from_model(store.load_model(MODEL_ID)[0], subjects, rois, precision="fp32")
    direct = enc.encode_numpy(x)                                            # (4, 8, R)
    full_model = store.load_model(MODEL_ID)[0]
    with torch.no_grad():
        xn = Normalize()(torch.from_numpy(x))
    for k, row in enumerate(shard):
        got = resp[resp.image_id == row["image_id"]].set_index("subject")
        for si, s in enumerate(subjects):
            pipe = got.loc[s, ROI_COLUMNS].to_numpy(dtype=np.float64)
            ref = direct[k, si].astype(np.float64)
            assert np.max(np.abs(pipe - ref)) <= 1e-5 * np.max(np.abs(ref)), (s, pipe, ref)
            with torch.no_grad():
                verts = full_model(xn[k:k + 1], s)[0].double().numpy()
            full = np.array([verts[rois[n]].mean() for n in ROI_COLUMNS])
            assert np.max(np.abs(pipe - full)) <= 1e-5 * np.max(np.abs(full)), (s, pipe, full)


@pytest.mark.timeout(300)
def test_decode_in_the_encoder_actor_gives_the_decode_tasks_results(local_run, visual_store, inputs, tmp_path):
    """decode='actor': no decode tasks, the encoder actors decode the raw rows in threads with the same code, so the
    same rows, numbers (fp32) and error rows as the decode tasks, and the same config key (resumable across)."""
    from screening.pipeline import screen
    from screening.pipeline.config import RunConfig
    from screening.pipeline.plan import build_plan

    root, ids = inputs
    _, cpu_out, _ = local_run
    out = tmp_path / "actor"
    screen(str(root), str(visual_store), str(out), **_kw(precision="fp32", decode="actor"))
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids)
    cpu_resp, cpu_errs = read_run(cpu_out)
    key = ["image_id", "subject"]
    a, b = (t.sort_values(key).reset_index(drop=True) for t in (resp, cpu_resp))
    assert a[key].equals(b[key])
    np.testing.assert_allclose(a[ROI_COLUMNS].to_numpy(), b[ROI_COLUMNS].to_numpy(), rtol=1e-5, atol=1e-6)
    e, f = (t.sort_values("image_id").reset_index(drop=True) for t in (errs, cpu_errs))
    assert e.equals(f) and len(e) > 0
    assert json.loads((out / "manifest.json").read_text())["config"]["decode"] == "actor"
    keys = {d: build_plan(RunConfig.of(str(root), str(visual_store), str(tmp_path / d), decode=d,
                                       **_kw(precision="fp32"))).config_key for d in ("cpu", "actor", "gpu")}
    assert keys["actor"] == keys["cpu"] != keys["gpu"]


@pytest.mark.timeout(120)
def test_rerun_after_success_does_no_model_work(local_run, visual_store, inputs, monkeypatch):
    from screening.pipeline import screen
    from screening.pipeline import run as run_mod

    _, out, ids = local_run
    before = {p.name: p.read_bytes() for p in (out / "_committed").iterdir()}
    monkeypatch.setattr(run_mod, "build_dataset", lambda *a: pytest.fail("a Ray Dataset was built on a rerun"))
    monkeypatch.setattr(run_mod, "_ensure_ray", lambda: pytest.fail("Ray was used on a rerun"))
    again = screen(str(inputs[0]), str(visual_store), str(out), **_kw(precision="fp32"))
    assert again.units_run == 0 and again.units_skipped == 4 and again.images_this_run == 0
    assert again.counts["images"] == len(ids)
    assert {p.name: p.read_bytes() for p in (out / "_committed").iterdir()} == before
    # a different configuration must not be mixed into the same output
    with pytest.raises(InvalidParameterError, match="different configuration"):
        screen(str(inputs[0]), str(visual_store), str(out), **_kw(precision="bf16"))
    # precision="auto" resumes in the precision the output holds, whatever this machine would choose
    auto = screen(str(inputs[0]), str(visual_store), str(out), **_kw(precision="auto"))
    assert auto.units_run == 0 and auto.precision == "fp32"
    assert "precision: fp32 (auto: out already holds units screened in fp32" in auto.summary()


@pytest.mark.timeout(120)
def test_uncommitted_leftovers_are_ignored_and_overwritten(ray_local, visual_store, tmp_path):
    from screening.pipeline import committed_files, screen

    root = tmp_path / "in"
    ids = make_shards(root, 2, 5, seed=3)
    out = tmp_path / "out"
    (out / "responses").mkdir(parents=True)
    (out / "responses" / "part-001.parquet").write_bytes(b"half-written garbage")
    assert committed_files(str(out)) == {"responses": [], "errors": [], "sources": [], "features": []}
    r = screen(str(root), str(visual_store), str(out), **_kw(subjects=["sub-02", "sub-05"]))
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=2)
    assert r.units_run == 2 and len(errs) == 0


# --------------------------------------------------------------------------- Hugging Face layout

@pytest.mark.timeout(120)
def test_hf_struct_image_column_and_derived_ids(ray_local, visual_store, tmp_path):
    import hashlib

    from screening.pipeline import screen

    imgs = _jpegs(5, 9)
    imgs[2] = b"\x89PNG\r\n\x1a\n broken"
    struct = pa.array([{"bytes": b, "path": f"photo_{i}.jpg"} for i, b in enumerate(imgs)],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.table({"img": struct, "label": pa.array(range(5), pa.int64())}),
                   tmp_path / "hf" / "train-00000-of-00001.parquet")
    r = screen(str(tmp_path / "hf"), str(visual_store), str(tmp_path / "out"),
               **_kw(image_column="img", subjects="sub-01"))
    expected = [hashlib.sha256(b).hexdigest()[:16] for b in imgs]
    resp, errs = r.responses(), r.errors()
    assert_partition(resp, errs, expected, n_subjects=1)
    assert list(errs.image_id) == [expected[2]] and list(errs.source) == ["photo_2.jpg"]
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["config"]["id_derived"] is True


# --------------------------------------------------------------------------- S3 in, S3 out, store on S3

@pytest.mark.timeout(240)
def test_s3_inputs_outputs_and_store(ray_local, visual_store, tmp_path, monkeypatch):
    from screening.pipeline import committed_files, screen
    from tests.s3server import dummy_credentials, s3_server, upload_dir

    dummy_credentials(monkeypatch)
    root = tmp_path / "in"
    ids = make_shards(root, 3, 6, seed=5)
    with s3_server() as endpoint:
        upload_dir(endpoint, visual_store, "models", "berg")
        upload_dir(endpoint, root, "data", "shards")
        kw = _kw(endpoint_url=str(endpoint), subjects=["sub-01", "sub-08"])
        r = screen("s3://data/shards", "s3://models/berg", "s3://data/runs/r1", **kw)
        assert r.counts["images"] == len(ids) and r.units_run == 3
        files = committed_files("s3://data/runs/r1", storage=StorageOptions(endpoint_url=str(endpoint)))
        assert files["responses"][0].startswith("s3://data/runs/r1/responses/part-")
        assert_partition(r.responses(), r.errors(), ids, n_subjects=2)
        assert r.responses_dataset().count() == len(ids) * 3
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": str(endpoint)})
        m = json.loads(fs.cat("data/runs/r1/manifest.json"))
        assert m["counts"]["images"] == len(ids) and all(s["path"].startswith("s3://") for s in m["shards"])
        again = screen("s3://data/shards", "s3://models/berg", "s3://data/runs/r1", **kw)
        assert again.units_run == 0


# --------------------------------------------------------------------------- failures mid-run

def _encoder_pids():
    """PIDs of this session's encoder actors: children of our raylet titled ``ray::MapWorker(...EncoderActor)``.

    (``ray.util.state.list_actors`` needs the dashboard, which the in-process test cluster does not start.)
    """
    import ray._private.worker as rw

    raylet = rw._global_node.all_processes["raylet"][0].process.pid
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().decode(errors="replace")
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "EncoderActor" in cmd and "MapWorker" in cmd and ppid == raylet:
            pids.append(int(d))
    return pids


@pytest.mark.timeout(300)
def test_killed_encoder_actor_is_restarted_and_no_row_is_lost(ray_local, visual_store, tmp_path):
    from screening.pipeline import screen

    root = tmp_path / "in"
    # 32-row shards: one decode block and one encoder task per unit, so units commit one after another.
    ids = make_shards(root, 4, 32, seed=7)
    out = tmp_path / "out"
    box = {}

    def run():
        try:
            box["result"] = screen(str(root), str(visual_store), str(out),
                                   **_kw(subjects=["sub-03"], batch_size=16, num_encoders=1, write_batch_size=32,
                                         throttle_s=0.5))
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    killed, committed_at_kill, later = None, None, set()
    deadline = time.time() + 120
    while time.time() < deadline and t.is_alive():
        committed = list((out / "_committed").glob("*.json")) if (out / "_committed").exists() else []
        pids = _encoder_pids() if committed else []
        if pids:
            killed, committed_at_kill = pids[0], len(committed)
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.2)
    while t.is_alive():  # the pool must bring up a new encoder process to finish
        later |= set(_encoder_pids()) - {killed}
        time.sleep(0.2)
    t.join(240)
    assert killed is not None, "the run finished before an encoder could be killed"
    assert committed_at_kill < 4, "every unit was committed before the encoder died"
    assert later, "no new encoder process ran after the kill"
    assert "error" not in box, box.get("error")
    assert len(list((out / "_committed").glob("*.json"))) == 4
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=1)
    assert len(errs) == 0


def _cli(images, store, out, *extra):
    return [sys.executable, "-m", "screening.cli", "run", str(images), "--store", str(store), "--out", str(out),
            "--model-id", MODEL_ID, "--rois", ",".join(ROIS), "--subjects", "sub-01,sub-02", "--batch-size", "32",
            "--write-batch-size", "32",
            "--no-progress", "--address", "local", *extra]


def _child_env():
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# The driver-kill + rerun test runs on the multi-node cluster: tests/test_cluster.py.


# --------------------------------------------------------------------------- ray job submit against a real head node

def _dashboard_installed() -> bool:
    try:
        from ray._private.utils import check_dashboard_dependencies_installed

        return bool(check_dashboard_dependencies_installed())
    except ImportError:  # pragma: no cover - older/newer Ray
        import importlib.util

        return all(importlib.util.find_spec(m) for m in ("aiohttp_cors", "prometheus_client", "opencensus"))


@pytest.mark.timeout(300)
@pytest.mark.skipif(not _dashboard_installed(),
                    reason="`ray job submit` needs the Ray dashboard (pip install 'ray[default]'); only ray[data] is installed")
def test_ray_job_submit_runs_jobs_screen(visual_store, tmp_path):
    root = tmp_path / "in"
    ids = make_shards(root, 2, 6, seed=13)
    out = tmp_path / "out"
    port, dash = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    env = _child_env()
    env["RAY_AUTH_MODE"] = "disabled"
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    ray_bin = os.path.join(bindir, "ray")
    # `ray start --block` keeps the head's processes in a session we own, so the test stops exactly them
    # (rather than `ray stop`, which would also stop every other Ray instance on this machine).
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={dash}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                             # the ray_local fixture's node already holds the default agent ports (52365, ...):
                             # a second node on them has no job agent ("No available agent to submit job")
                             f"--dashboard-agent-listen-port={free_port()}",
                             f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
                             f"--runtime-env-agent-port={free_port()}", f"--ray-client-server-port={free_port()}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import urllib.request

        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2)
                break
            except Exception:
                if time.time() > deadline or head.poll() is not None:
                    raise AssertionError("the Ray head did not come up")
                time.sleep(1)
        # The dashboard answers before its job agent is registered ("No available agent to submit job"; seen on a
        # loaded machine): retry the submission for up to a minute in that case only.
        agent_deadline = time.time() + 60
        while True:
            job = subprocess.run(
                [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
                 "--", "python", "jobs/screen.py", str(root), "--store", str(visual_store), "--out", str(out),
                 "--model-id", MODEL_ID, "--rois", ",".join(ROIS), "--subjects", "sub-04", "--no-progress"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
            if job.returncode == 0 or "No available agent" not in job.stdout + job.stderr \
                    or time.time() > agent_deadline:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
        assert "images/s" in job.stdout and "succeeded" in job.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=1)


@pytest.mark.timeout(300)
def test_encoder_killed_past_its_restarts_fails_only_the_open_units_naming_memory(ray_local, visual_store, tmp_path,
                                                                                monkeypatch):
    """SIGKILL (what the OOM killer sends) to every encoder process as it comes up, once a unit is committed: after
    ENCODER_MAX_RESTARTS restarts the run stops instead of looping; the open units fail with a message that names
    memory, the committed ones stay, and a rerun does only the failed ones."""
    from screening.exceptions import UnitsFailedError
    from screening.pipeline import run as run_mod, screen

    monkeypatch.setattr(run_mod, "ENCODER_MAX_RESTARTS", 1)
    root = tmp_path / "in"
    ids = make_shards(root, 6, 32, seed=11)
    out = tmp_path / "out"
    box = {}
    kw = _kw(subjects=["sub-03"], batch_size=16, num_encoders=1, write_batch_size=32, throttle_s=0.5)

    def run():
        try:
            box["result"] = screen(str(root), str(visual_store), str(out), **kw)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    killed: set = set()
    deadline = time.time() + 200
    while t.is_alive() and time.time() < deadline:
        if (out / "_committed").exists() and list((out / "_committed").glob("*.json")):
            for pid in set(_encoder_pids()) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.1)
    t.join(60)
    assert not t.is_alive(), "the run kept restarting its encoder"
    assert len(killed) >= 2, f"killed {len(killed)} encoder process(es)"
    err = box.get("error")
    assert isinstance(err, UnitsFailedError), box
    assert "restarted 1 times, then given up" in str(err) and "memory" in str(err), str(err)
    committed = {p.stem for p in (out / "_committed").glob("*.json")}
    assert 1 <= len(committed) < 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["run"]["units_failed"]) == 6 - len(committed)
    assert not set(manifest["run"]["units_failed"]) & committed
    monkeypatch.setattr(run_mod, "ENCODER_MAX_RESTARTS", 4)
    again = screen(str(root), str(visual_store), str(out), **{**kw, "throttle_s": 0.0})
    assert again.units_run == 6 - len(committed) and again.units_skipped == len(committed)
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=1)
