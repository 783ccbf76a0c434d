"""The write path: worker-side parts, driver-side commits by row identity, input identity on resume, the run lock,
shards that break after planning, S3 faults (through a fault-injecting proxy) and a full output disk.

Ray tests use the module's real local Ray (2 CPUs) and the width-16 visual test store."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from screening.fs import StorageOptions
from screening.exceptions import InputChangedError, OutputError, RunLockedError, UnitsFailedError
from screening.sources import Unit as Shard
from screening.pipeline.commit import UnitLedger
from screening.pipeline.lock import RunLock
from screening.pipeline.outputs import OutputLayout
from screening.pipeline.parts import describe_rows, row_ranges, write_parts
from tests.test_pipeline import MODEL_ID, _jpegs, assert_partition, make_shards, read_run, write_shard

ROIS = ["V1", "FFC"]
LABELS = ["sub-01", "sub-02", "mean"]


def _kw(**extra):
    kw = dict(model_id=MODEL_ID, rois=ROIS, progress=False, batch_size=8, subjects=["sub-01", "sub-02"],
              write_batch_size=8)
    kw.update(extra)
    return kw


def _batch(unit, rows, stage=None):
    n = len(rows)
    rng = np.random.default_rng(len(rows))
    return {"unit": np.array([unit] * n, dtype=object), "row": np.asarray(rows, dtype=np.int64),
            "image_id": np.array([f"{unit}-{r}" for r in rows], dtype=object),
            "source": np.array([f"src/{r}" for r in rows], dtype=object),
            "stage": np.array(stage or [""] * n, dtype=object), "error": np.array([""] * n, dtype=object),
            "roi": rng.standard_normal((n, len(LABELS), len(ROIS))).astype(np.float32)}


def _ledger(tmp_path, rows=5):
    layout = OutputLayout(str(tmp_path / "out"))
    layout.prepare()
    shard = Shard("/in/u.parquet", "/in/u.parquet", "u", rows, 123, "mtime_ns:1")
    return layout, UnitLedger(layout, [shard], "key", labels=len(LABELS))


def _receipts(layout, batch):
    return write_parts(batch, layout=layout, labels=LABELS, roi_names=ROIS, config_key="key")


# --------------------------------------------------------------------------- ledger and parts (no Ray)

def test_row_ranges_and_description():
    assert row_ranges([0, 1, 2, 7, 9, 8]) == [[0, 3], [7, 10]]
    assert describe_rows([4]) == "row 4" and describe_rows([1, 2, 3, 9]) == "rows 1-3, 9"


def test_unit_commits_when_every_row_arrived_once_and_lists_exactly_its_parts(tmp_path):
    layout, ledger = _ledger(tmp_path)
    stray = tmp_path / "out" / "responses" / "u" / "part-000000000-leftover.parquet"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"a retried task's partial part")
    ledger.add(_receipts(layout, _batch("u", [3, 4, 0], stage=["", "decode", ""])))
    assert not (tmp_path / "out" / "_committed" / "u.json").exists()
    ledger.add(_receipts(layout, _batch("u", [2, 1])))
    marker = json.loads((tmp_path / "out" / "_committed" / "u.json").read_text())
    assert ledger.stats.committed == ["u"] and not ledger.stats.failed
    on_disk = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").glob("*/u/*.parquet"))
    assert on_disk == sorted(marker["files"]["responses"] + marker["files"]["errors"] + marker["files"]["sources"])
    assert not stray.exists()
    src = pa.concat_tables([pq.read_table(tmp_path / "out" / f) for f in marker["files"]["sources"]])
    assert sorted(src.column("image_id").to_pylist()) == ["u-0", "u-1", "u-2", "u-3"]   # screened images, once each
    assert len(marker["files"]["sources"]) == 2 and all(src.column("source").to_pylist())
    assert marker["images_ok"] == 4 and marker["errors"] == 1 and marker["responses_rows"] == 4 * len(LABELS)
    assert marker["input"] == {"uri": "/in/u.parquet", "size": 123, "version": "mtime_ns:1", "rows": 5}
    resp = pa.concat_tables([pq.read_table(tmp_path / "out" / f) for f in marker["files"]["responses"]])
    assert sorted(set(resp.column("image_id").to_pylist())) == ["u-0", "u-1", "u-2", "u-3"]
    meta = json.loads(pq.read_schema(tmp_path / "out" / marker["files"]["responses"][0]).metadata[b"screening.part"])
    assert meta["unit"] == "u" and meta["rows"] in ([[0, 1], [3, 5]], [[1, 3]])


class InlineCompactor:
    """The ledger's compactor interface, running ``compact_unit`` in this process (run.py runs it as Ray tasks)."""

    def __init__(self, layout, row_group_rows):
        from screening.pipeline.parts import compact_unit

        self.run = lambda unit, parts: compact_unit(layout, unit, parts, row_group_rows=row_group_rows)
        self.done = []

    def submit(self, unit, parts):
        self.done.append((unit, self.run(unit, parts)))
        return unit

    def ready(self, block):
        out, self.done = self.done, []
        return out


def test_a_unit_written_in_several_parts_is_compacted_into_one_file_before_its_commit(tmp_path):
    layout, _ = _ledger(tmp_path, rows=7)
    shard = Shard("/in/u.parquet", "/in/u.parquet", "u", 7, 1, "v")
    ledger = UnitLedger(layout, [shard], "key", labels=len(LABELS), compactor=InlineCompactor(layout, 6))
    for rows in ([0, 1], [2, 3, 4], [5, 6]):
        ledger.add(_receipts(layout, _batch("u", rows, stage=["decode"] + [""] * (len(rows) - 1))))
    marker = json.loads((tmp_path / "out" / "_committed" / "u.json").read_text())
    (resp,) = marker["files"]["responses"]
    assert resp.startswith("responses/u/unit-") and marker["compacted"]["from_parts"] == 3
    md = pq.read_metadata(tmp_path / "out" / resp)
    assert [md.row_group(g).num_rows for g in range(md.num_row_groups)] == [6, 6]   # 4 images x 3 labels = 12 rows
    assert sorted(pq.read_table(tmp_path / "out" / resp).column("image_id").to_pylist()) == sorted(
        [f"u-{r}" for r in (1, 3, 4, 6)] * 3)
    assert len(marker["files"]["errors"]) == 3   # error parts are small and stay as written
    on_disk = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").glob("*/u/*.parquet"))
    assert len(marker["files"]["sources"]) == 3   # and so are the source parts
    assert on_disk == sorted([resp] + marker["files"]["errors"] + marker["files"]["sources"])   # merged parts gone


class LosingCompactor(InlineCompactor):
    """A compactor that never reports back (its task vanished): the ledger must not wait forever or commit."""

    def submit(self, unit, parts):
        return unit

    def ready(self, block):
        return []


def test_a_compaction_that_never_reports_back_fails_its_unit_at_the_end(tmp_path):
    layout, _ = _ledger(tmp_path, rows=4)
    shard = Shard("/in/u.parquet", "/in/u.parquet", "u", 4, 1, "v")
    ledger = UnitLedger(layout, [shard], "key", labels=len(LABELS), compactor=LosingCompactor(layout, 6))
    for rows in ([0, 1], [2, 3]):
        ledger.add(_receipts(layout, _batch("u", rows)))
    assert not ledger.stats.committed and not ledger.stats.failed   # waiting for the compaction
    stats = ledger.finish()
    assert stats.failed["u"].endswith("its compaction never reported back") and not stats.committed
    assert not (tmp_path / "out" / "_committed" / "u.json").exists()


def test_the_ledger_never_returns_with_a_unit_undecided(tmp_path):
    from screening.exceptions import IntegrityError

    layout, ledger = _ledger(tmp_path)
    ledger.units.clear()   # a unit the ledger lost track of (a bug): the run must not end as a success
    with pytest.raises(IntegrityError, match=r"1 unit\(s\) neither committed nor failed .*: u;"):
        ledger.finish()


def test_a_duplicated_and_a_missing_row_fail_the_unit_naming_them(tmp_path):
    layout, ledger = _ledger(tmp_path)
    ledger.add(_receipts(layout, _batch("u", [0, 1, 2])))
    ledger.add(_receipts(layout, _batch("u", [2, 3])))      # row 2 twice; row 4 never: the count says 5 of 5
    assert "u" in ledger.stats.failed and not ledger.stats.committed
    why = ledger.stats.failed["u"]
    assert "unit 'u'" in why and "row 2 delivered more than once" in why and "row 4 never arrived" in why
    assert not (tmp_path / "out" / "_committed" / "u.json").exists()


def test_a_missing_row_at_the_end_of_the_stream_fails_the_unit(tmp_path):
    layout, ledger = _ledger(tmp_path)
    ledger.add(_receipts(layout, _batch("u", [0, 1, 3])))
    stats = ledger.finish()
    assert stats.failed["u"].endswith("rows 2, 4 never arrived") and not stats.committed


def test_a_part_that_could_not_be_written_fails_only_its_unit(tmp_path, monkeypatch):
    from screening.pipeline import parts

    layout = OutputLayout(str(tmp_path / "out"))
    layout.prepare()
    shards = [Shard(f"/in/{u}", f"/in/{u}", u, 2, 1, "v") for u in ("a", "b")]
    ledger = UnitLedger(layout, shards, "key", labels=len(LABELS))
    real = parts._write_parquet
    monkeypatch.setattr(parts.time, "sleep", lambda s: None)
    monkeypatch.setattr(parts, "_write_parquet", lambda fs, path, *a: (
        (_ for _ in ()).throw(OSError(28, "No space left on device")) if "/a/" in path else real(fs, path, *a)))
    batch = {k: np.concatenate([_batch("a", [0, 1])[k], _batch("b", [0, 1])[k]]) for k in _batch("a", [0])}
    ledger.add(_receipts(layout, batch))
    assert ledger.stats.committed == ["b"]
    assert "No space left on device" in ledger.stats.failed["a"] and "failed 3 times" in ledger.stats.failed["a"]


# --------------------------------------------------------------------------- the run lock (no Ray)

def test_the_node_watch_reports_a_node_that_died_just_before_the_run_ended(ray_local, capsys):
    """The watch looks once more when the run ends: a node gone since its last look is still reported."""
    from screening.pipeline.run import _NodeWatch

    watch = _NodeWatch(every_s=3600)   # never looks during the run
    alive = watch._alive()
    assert alive, "a local Ray has its one node"
    watch.watching["f" * 56] = "10.9.9.9"   # a node that was alive at the start and is gone now
    with watch:
        pass
    assert [x["node_id"] for x in watch.lost] == ["f" * 56]
    assert "node ffffffff (10.9.9.9) left the cluster" in capsys.readouterr().err


def test_second_lock_is_refused_with_the_owner_and_released_lock_is_free(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    with RunLock(layout, heartbeat_s=0.2):
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {os.getpid()} on "
                                                 rf"{socket.gethostname()}, last heartbeat \d+ s ago\)"):
            RunLock(layout).acquire()
        first = json.loads((tmp_path / "out" / "_lock.json").read_text())["heartbeat"]
        time.sleep(0.7)
        assert json.loads((tmp_path / "out" / "_lock.json").read_text())["heartbeat"] > first   # heartbeat
    assert not (tmp_path / "out" / "_lock.json").exists()
    RunLock(layout).acquire().release()


def test_stale_locks_are_taken_over(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    lock_file = tmp_path / "out" / "_lock.json"
    dead = subprocess.Popen(["true"])
    dead.wait()
    # a dead process on this host: taken over at once
    lock_file.write_text(json.dumps({"run_id": "x", "heartbeat": time.time(),
                                     "owner": {"host": socket.gethostname(), "pid": dead.pid, "pid_start": "1"}}))
    lock = RunLock(layout).acquire()
    assert json.loads(lock_file.read_text())["run_id"] == lock.run_id
    lock.release()
    # another host: live while its heartbeat is fresh, stale after stale_s
    other = {"run_id": "y", "owner": {"host": "elsewhere", "pid": 1}}
    lock_file.write_text(json.dumps({**other, "heartbeat": time.time()}))
    with pytest.raises(RunLockedError, match="pid 1 on elsewhere"):
        RunLock(layout, stale_s=60).acquire()
    lock_file.write_text(json.dumps({**other, "heartbeat": time.time() - 120}))
    RunLock(layout, stale_s=60).acquire().release()


def test_new_errors_survive_pickling():
    for cls in (InputChangedError, RunLockedError, UnitsFailedError, OutputError):
        e = cls("unit 'x' failed")
        assert str(pickle.loads(pickle.dumps(e))) == str(e) and type(pickle.loads(pickle.dumps(e))) is cls


# --------------------------------------------------------------------------- resume knows its inputs (Ray)

@pytest.mark.timeout(300)
def test_changed_input_under_the_same_names_is_refused_or_redone(ray_local, visual_store, tmp_path):
    from screening.pipeline import screen

    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    ids_a = make_shards(a, 2, 4, seed=21)
    ids_b = make_shards(b, 2, 4, seed=22)          # another image set, same shard names
    screen(str(a), str(visual_store), str(out), **_kw())
    before = {p.name: p.read_bytes() for p in (out / "_committed").iterdir()}
    with pytest.raises(InputChangedError, match=r"2 shard\(s\) that changed since they were screened: "
                                                r".*b/part-000.parquet: uri .*a/part-000.parquet.* -> "):
        screen(str(b), str(visual_store), str(out), **_kw())
    assert {p.name: p.read_bytes() for p in (out / "_committed").iterdir()} == before
    # the same folder, one shard rewritten in place: named, with what changed
    time.sleep(0.01)
    write_shard(a / "part-001.parquet", ids_b[4:], _jpegs(4, 23))
    with pytest.raises(InputChangedError, match=r"1 shard\(s\) .*part-001.parquet: size \d+ -> \d+, version "
                                                r"'mtime_ns:\d+' -> 'mtime_ns:\d+'"):
        screen(str(a), str(visual_store), str(out), **_kw())
    r = screen(str(a), str(visual_store), str(out), **_kw(redo_changed=True))
    assert r.units_run == 1 and r.units_skipped == 1
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids_a[:4] + ids_b[4:], n_subjects=2)
    # fewer inputs than committed: the extra unit's results are not this run's
    with pytest.raises(InputChangedError, match=r"1 shard\(s\) that are not among this run's inputs \(part-001 from"):
        screen(str(a / "part-000.parquet"), str(visual_store), str(out), **_kw())


@pytest.mark.timeout(300)
def test_a_second_live_run_on_the_same_out_is_refused(ray_local, visual_store, tmp_path):
    from screening.pipeline import screen

    root, out = tmp_path / "in", tmp_path / "out"
    ids = make_shards(root, 2, 8, seed=24)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", screen(str(root), str(visual_store), str(out),
                                                                    **_kw(throttle_s=1.0))))
    t.start()
    deadline = time.time() + 60
    while not (out / "_lock.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(RunLockedError, match=rf"out='{out}' is in use by another run \(pid {os.getpid()}"):
        screen(str(root), str(visual_store), str(out), **_kw())
    t.join(240)
    assert box["r"].counts["images"] == len(ids) and not (out / "_lock.json").exists()


# --------------------------------------------------------------------------- shards that break after planning (Ray)

def _corrupt_first_row_group(path: Path) -> int:
    """Overwrite the middle of row group 0's image column chunk; the footer stays intact. Returns its row count."""
    md = pq.ParquetFile(path).metadata
    col = next(md.row_group(0).column(i) for i in range(md.num_columns)
               if md.row_group(0).column(i).path_in_schema == "image")
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 8:start + col.total_compressed_size - 8] = os.urandom(col.total_compressed_size - 16)
    path.write_bytes(bytes(data))
    return md.row_group(0).num_rows


@pytest.mark.timeout(300)
def test_shards_that_break_after_planning_become_read_errors(ray_local, visual_store, tmp_path):
    from screening.pipeline import RunConfig, build_plan, execute

    root, out = tmp_path / "in", tmp_path / "out"
    ids = make_shards(root, 4, 6, seed=25)
    # part-000: two row groups, the first with corrupt data pages (footer intact)
    pq.write_table(pq.read_table(root / "part-000.parquet"), root / "part-000.parquet", row_group_size=3,
                   compression="snappy")
    bad_rows = _corrupt_first_row_group(root / "part-000.parquet")
    plan = build_plan(RunConfig.of(str(root), str(visual_store), str(out), **_kw()))
    (root / "part-001.parquet").unlink()                                   # deleted after planning
    write_shard(root / "part-002.parquet", ids[12:18], _jpegs(6, 99))      # replaced after planning
    result = execute(plan)   # no exception: a broken shard is that shard's problem only
    resp, errs = read_run(out)
    assert len(list((out / "_committed").iterdir())) == 4
    read = errs[errs.stage == "read"]
    assert len(read) == bad_rows + 6 + 6
    assert read.image_id.isna().all()
    by_shard = read.source.str.replace(r"#row=\d+$", "", regex=True).value_counts()
    assert by_shard.to_dict() == {str(root / "part-000.parquet"): bad_rows, str(root / "part-001.parquet"): 6,
                                  str(root / "part-002.parquet"): 6}
    assert read[read.source.str.contains("part-001")].error.str.contains("deleted after the run was planned").all()
    assert read[read.source.str.contains("part-002")].error.str.contains("changed after the run was planned").all()
    assert read[read.source.str.contains("part-000")].error.str.contains("row group 0 is unreadable").all()
    # the readable row group of part-000 and the untouched part-003 were screened
    assert set(resp.image_id) == set(ids[bad_rows:6]) | set(ids[18:24])
    summary = result.summary()
    for name in ("part-000", "part-001", "part-002"):
        assert f"{name}.parquet could not be read" in summary
    assert "part-003" not in summary.split("UNREADABLE", 1)[1]


# --------------------------------------------------------------------------- S3 faults through a proxy (Ray)

@pytest.mark.timeout(400)
def test_s3_faults_are_retried_or_fail_only_their_unit(ray_local, visual_store, tmp_path, monkeypatch):
    from screening.pipeline import committed_files, screen
    from tests.faulty_proxy import faulty_proxy
    from tests.s3server import boto3_client, dummy_credentials, s3_server

    dummy_credentials(monkeypatch)
    root = tmp_path / "in"
    ids = make_shards(root, 3, 6, seed=26)
    with s3_server() as s3, faulty_proxy(s3) as proxy:
        boto3_client(s3).create_bucket(Bucket="runs")
        # 1. PUTs answered 500/503, and uploads cut off mid-body: retried, the run completes
        proxy.fail("PUT", "/runs/r1/responses/", [503, 500, 503])
        proxy.drop("PUT", "/runs/r1/responses/", times=2, after_bytes=300)
        r = screen(str(root), str(visual_store), "s3://runs/r1", **_kw(endpoint_url=proxy.url))
        assert proxy.count("503") == 2 and proxy.count("500") == 1 and proxy.count("dropped") == 2
        assert r.counts["images"] == len(ids)
        assert_partition(r.responses(), r.errors(), ids, n_subjects=2)
        # 2. a unit whose PUTs keep failing: only that unit fails; what is committed is right; a rerun completes
        proxy.fail_always("PUT", "/runs/r2/responses/part-001/")
        with pytest.raises(UnitsFailedError, match=r"(?s)1 unit\(s\) could not be committed; the other 2 are.*"
                                                   r"unit 'part-001'.*failed 3 times"):
            screen(str(root), str(visual_store), "s3://runs/r2", **_kw(endpoint_url=proxy.url))
        files = committed_files("s3://runs/r2", storage=StorageOptions(endpoint_url=s3))
        assert files["responses"] and not any("/part-001/" in f for f in files["responses"])
        proxy.clear()
        r2 = screen(str(root), str(visual_store), "s3://runs/r2", **_kw(endpoint_url=proxy.url))
        assert r2.units_run == 1 and r2.units_skipped == 2
        assert_partition(r2.responses(), r2.errors(), ids, n_subjects=2)
        one = r2.responses().groupby(["image_id", "subject"]).size()
        assert (one == 1).all()


# --------------------------------------------------------------------------- output disk full (Ray)

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB loopback ext4 filesystem (tmpfs with a size limit where loop devices are not available)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    img = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "4M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True,
                                 text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a small filesystem (root needed): {mounted.stderr}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.timeout(300)
def test_output_disk_full_fails_units_cleanly_and_a_rerun_completes(ray_local, visual_store, tmp_path, small_disk):
    from screening.pipeline import screen

    root, out = tmp_path / "in", small_disk / "out"
    ids = make_shards(root, 4, 32, seed=27)  # 32-row shards: one decode block, so units finish one by one
    box = {}

    def run():
        try:
            box["r"] = screen(str(root), str(visual_store), str(out),
                              **_kw(batch_size=16, write_batch_size=32, throttle_s=1.0))
        except BaseException as exc:  # noqa: BLE001
            box["e"] = exc

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("_committed/*.json")):
        time.sleep(0.05)
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk to the last byte
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    t.join(240)
    assert "e" in box, "the run should have reported the full disk"
    err = box["e"]
    assert isinstance(err, (UnitsFailedError, OutputError)) and "No space left on device" in str(err)
    committed = {p.stem: json.loads(p.read_text()) for p in (out / "_committed").glob("*.json")}
    assert 1 <= len(committed) < 4
    for unit, m in committed.items():  # nothing half-committed: every listed part is whole and readable
        rows = sum(pq.read_metadata(out / f).num_rows for f in m["files"]["responses"])
        assert rows == m["responses_rows"] == m["rows"] * 3
    filler.unlink()
    r = screen(str(root), str(visual_store), str(out), **_kw())
    assert r.units_skipped == len(committed)
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=2)
    shutil.rmtree(out)


# --------------------------------------------------------------------------- Ctrl-C and SIGTERM (CLI)

@pytest.mark.timeout(400)
def test_interrupted_run_says_how_to_resume_and_releases_its_lock(visual_store, tmp_path):
    import signal
    import sys

    from tests.test_pipeline import REPO, _child_env

    root, out = tmp_path / "in", tmp_path / "out"
    ids = make_shards(root, 6, 32, seed=28)
    cmd = [sys.executable, "-m", "screening.cli", "run", str(root), "--store", str(visual_store), "--out", str(out),
           "--model-id", MODEL_ID, "--rois", ",".join(ROIS), "--subjects", "sub-01,sub-02", "--batch-size", "16",
           "--write-batch-size", "32", "--no-progress", "--address", "local", "--test-throttle-s", "1.0"]
    for sig, code, word in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")):
        before = len(list(out.glob("_committed/*.json")))
        # SIGINT as in a foreground terminal: a runner that starts us in the background may have it ignored
        proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.time() + 180
            while time.time() < deadline and proc.poll() is None and len(list(out.glob("_committed/*.json"))) <= before:
                time.sleep(0.1)
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert len(list(out.glob("_committed/*.json"))) < 6, "the run committed everything before the signal"
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        n = len(list(out.glob("_committed/*.json")))
        assert proc.returncode == code, err[-2000:]
        assert f"screening run: {word}; {n} unit(s) are committed in {out}. Rerun the same command to resume" in err
        assert "Traceback" not in err
        assert not (out / "_lock.json").exists(), "the lock outlived its run"
    done = subprocess.run(cmd[:-2], cwd=REPO, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # quiet by default: none of Ray's INFO lines, nor its core worker's constructor-arguments line
    assert " INFO " not in done.stderr and "core_worker.cc" not in done.stderr, done.stderr[-3000:]
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=2)


def test_a_unit_commits_as_soon_as_its_last_part_is_written(ray_local, visual_store, tmp_path):
    """The driver commits a unit when its last receipt arrives, not when the next one does: with a 3 s encoder
    batch the marker follows the unit's part by well under one batch (the old prefetching iterator: two batches)."""
    from screening.pipeline import screen

    root, out = tmp_path / "in", tmp_path / "out"
    make_shards(root, 6, 16, seed=41)
    screen(str(root), str(visual_store), str(out), **_kw(num_encoders=1, throttle_s=3.0, batch_size=16,
                                                         write_batch_size=16))
    lags = []
    for marker in sorted((out / "_committed").glob("*.json"), key=lambda m: m.stat().st_mtime):
        unit = marker.stem
        parts = list((out / "responses" / unit).glob("*.parquet"))
        assert parts, unit
        lags.append(marker.stat().st_mtime - max(p.stat().st_mtime for p in parts))
    assert len(lags) == 6
    # the last units commit at the end either way; the first ones show the lag. Their median, so that one commit
    # delayed by a loaded machine does not decide (measured 0.2 s, one outlier 3.1 s; one receipt late: 6.2-6.5 s)
    assert float(np.median(lags[:-2])) < 3.0, lags
