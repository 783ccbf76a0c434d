"""The pipeline on a real multi-node Ray cluster on this machine: a head and two worker nodes
(``ray.cluster_utils.Cluster``, Ray's own multi-node test utility: a raylet, object store and workers per node).

- a whole worker node (raylet and workers) killed mid-run: the run completes, every input row exactly once;
- the driver killed mid-run (a second run is refused while it is live), then a rerun that does only the missing units;
- a rerun into the same ``out`` with other images under the same shard names is refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from screening.exceptions import InputChangedError, RunLockedError
from tests.test_pipeline import MODEL_ID, ROIS, _child_env, assert_partition, make_shards, read_run

REPO = Path(__file__).resolve().parents[1]
NODE = {"num_cpus": 1, "object_store_memory": 256 * 2**20}
# The GCS notices a killed node in ~2 s instead of up to ~30 s (Ray's defaults): a run that finishes soon after the
# kill would otherwise end before Ray (and so the driver's node watch) knows the node is gone.
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False,
                                                       "_system_config": FAST_NODE_DEATH})
    workers = [c.add_node(**NODE) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    c.workers = workers
    yield c
    ray.shutdown()
    c.shutdown()


def _kw(**extra):
    kw = dict(model_id=MODEL_ID, rois=ROIS, progress=False, subjects=["sub-01", "sub-02"], batch_size=16,
              write_batch_size=32, num_encoders=(1, 2))
    kw.update(extra)
    return kw


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:   # the process ended since it was listed (Ray's short-lived workers)
        return ""


def _encoders_on(node) -> list[int]:
    raylet = node.all_processes["raylet"][0].process.pid
    return [p for p in _children(raylet) if "EncoderActor" in _cmdline(p)]


def _exactly_once_by_identity(out: Path, shards: dict[str, int]) -> None:
    """Each unit's marker accounts for each of its shard's rows once; each (image, subject) row is in one part."""
    for unit, rows in shards.items():
        m = json.loads((out / "_committed" / f"{unit}.json").read_text())
        assert m["rows"] == rows and sum(p["rows"] for p in m["parts"]) == rows
        covered = []
        for f in m["files"]["responses"] + m["files"]["errors"]:
            meta = json.loads(pq.read_schema(out / f).metadata[b"screening.part"])
            covered += [r for a, b in meta["rows"] for r in range(a, b)]
        # a part holding both responses and errors of one batch lists its rows in both files
        assert sorted(set(covered)) == list(range(rows))
    resp, _ = read_run(out)
    assert (resp.groupby(["image_id", "subject"]).size() == 1).all()


def _start_and_find_victim(cluster, screen, root, visual_store, out):
    """Start a run in a thread; return (thread, result box, a worker node running an encoder or None)."""
    box = {}

    def run():
        try:
            box["r"] = screen(str(root), str(visual_store), str(out), **_kw(throttle_s=1.0))
        except BaseException as exc:  # noqa: BLE001
            box["e"] = exc

    t = threading.Thread(target=run)
    t.start()
    # Kill once an encoder runs on a worker node and a unit has committed; on a loaded machine units may commit
    # only late, so after 15 s with a worker-node encoder the kill goes ahead without waiting for a commit.
    victim, deadline, seen_at = None, time.time() + 180, None
    while time.time() < deadline and t.is_alive():
        node = next((n for n in cluster.workers if _encoders_on(n)), None)
        if node is not None:
            seen_at = seen_at or time.time()
            if list(out.glob("_committed/*.json")) or time.time() - seen_at > 15:
                victim = node
                break
        time.sleep(0.2)
    return t, box, victim


@pytest.mark.timeout(420)
def test_a_worker_node_killed_mid_run(cluster, visual_store, tmp_path, capsys):
    from screening.pipeline import screen

    root = tmp_path / "in"
    ids = make_shards(root, 6, 32, seed=31)
    # Ray may place the whole pool on the head node; then no worker node has an encoder to lose, and the scenario
    # is set up again in a fresh out (at most 3 tries; the assertion below says if it never happened).
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        t, box, victim = _start_and_find_victim(cluster, screen, root, visual_store, out)
        if victim is not None:
            break
        t.join(360)
    assert victim is not None, "no encoder ran on a worker node before the run ended"
    committed_at_kill = len(list(out.glob("_committed/*.json")))
    cluster.remove_node(victim, allow_graceful=False)   # its raylet, object store and workers, at once
    cluster.workers.remove(victim)
    t.join(300)
    hung = t.is_alive()   # neither result nor error yet: say so, rather than read a run still in progress
    cluster.workers.append(cluster.add_node(**NODE))    # back to three nodes (also lets a stalled run go on)
    cluster.wait_for_nodes()
    if hung:
        t.join(60)
    assert not hung, f"the run neither returned nor failed within 300 s of the node kill (done 60 s after a new " \
                     f"node joined: {not t.is_alive()}; committed: {len(list(out.glob('_committed/*.json')))} of 6)"
    assert committed_at_kill < 6, "every unit was committed before the node died"
    assert "e" not in box, repr(box.get("e"))
    # the driver said so, and the manifest records it
    assert f"node {victim.node_id[:8]} (" in capsys.readouterr().err
    lost = json.loads((out / "manifest.json").read_text())["run"]["nodes_lost"]
    assert [x["node_id"] for x in lost] == [victim.node_id]
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=2)
    _exactly_once_by_identity(out, {f"part-{i:03d}": 32 for i in range(6)})


def _cli(images, store, out, address, *extra):
    return [sys.executable, "-m", "screening.cli", "run", str(images), "--store", str(store), "--out", str(out),
            "--model-id", MODEL_ID, "--rois", ",".join(ROIS), "--subjects", "sub-01,sub-02", "--batch-size", "16",
            "--write-batch-size", "32", "--no-progress", "--address", address, *extra]


@pytest.mark.timeout(420)
def test_driver_killed_mid_run_then_rerun_does_only_missing_units(cluster, visual_store, tmp_path):
    from screening.pipeline import screen

    root, out = tmp_path / "in", tmp_path / "out"
    ids = make_shards(root, 6, 32, seed=32)
    proc = subprocess.Popen(_cli(root, visual_store, out, cluster.address, "--test-throttle-s", "1.0"), cwd=REPO,
                            env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and not list(out.glob("_committed/*.json")):
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        # while it is live, a second run on the same out is refused, naming the live one
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {proc.pid} on "):
            screen(str(root), str(visual_store), str(out), **_kw())
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the driver only: the cluster lives on
        proc.wait(30)
    first = {p.name: p.read_bytes() for p in out.glob("_committed/*.json")}
    assert 1 <= len(first) < 6
    done = subprocess.run(_cli(root, visual_store, out, cluster.address), cwd=REPO, env=_child_env(),
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "images/s" in done.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["run"]["units_run"] == 6 - len(first) and m["run"]["units_skipped"] == len(first)
    for name, data in first.items():  # committed units were not redone
        assert (out / "_committed" / name).read_bytes() == data
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=2)
    _exactly_once_by_identity(out, {f"part-{i:03d}": 32 for i in range(6)})
    # every file on disk is listed by a marker: the killed run's leftovers were removed on resume
    listed = {f for p in out.glob("_committed/*.json") for k in ("responses", "errors", "sources", "features")
              for f in json.loads(p.read_text())["files"][k]}
    assert {str(p.relative_to(out)) for p in out.glob("*/*/*.parquet")} == listed


@pytest.mark.timeout(300)
def test_other_images_under_the_same_shard_names_are_refused(cluster, visual_store, tmp_path):
    from screening.pipeline import screen

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    make_shards(a, 2, 4, seed=33)
    make_shards(b, 2, 4, seed=34)
    screen(str(a), str(visual_store), str(out), **_kw())
    with pytest.raises(InputChangedError, match=r"changed since they were screened: .*b/part-000.parquet: uri "):
        screen(str(b), str(visual_store), str(out), **_kw())
