"""The ways a ``screening run`` ends: a normal end, Ctrl-C (twice), SIGTERM (Slurm's time limit, ``timeout``). Each
leaves no process of the local Ray it started (real subprocesses, each with its own RAY_TMPDIR, watched through
/proc), a resume after SIGTERM screens exactly the missing units, and a default run's stderr holds only our lines
(``--verbose``: Ray's too).
Also the stall watch's wording and timing (no Ray)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.test_pipeline import MODEL_ID, REPO, _child_env, assert_partition, make_shards, read_run

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the process checks read /proc (Linux)")

N_UNITS = 4


def _procs() -> dict[int, tuple[int, str, int, str]]:
    """``{pid: (ppid, state, start time, command line)}``."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out[int(name)] = (int(fields[1]), fields[0].decode(), int(fields[19]), cmd)
    return out


class _Tree(threading.Thread):
    """Every process that is ever a descendant of ``root`` while it runs, as (pid, start time, command line)."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.seen, self.stop = root, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            table = _procs()
            kids, todo = [], [self.root]
            while todo:
                parent = todo.pop()
                for pid, (ppid, _, start, cmd) in table.items():
                    if ppid == parent:
                        kids.append(pid)
                        todo.append(pid)
                        self.seen.setdefault((pid, start), cmd)
            time.sleep(0.1)


def _survivors(tree: _Tree, tmpdir: str, wait_s: float = 15.0) -> list[str]:
    """Ray processes of this run still alive (zombies are gone): seen in its tree, or naming its RAY_TMPDIR."""
    deadline = time.time() + wait_s
    while True:
        table = _procs()
        alive = [f"{pid} {cmd[:120]}" for (pid, start), cmd in tree.seen.items()
                 if pid in table and table[pid][2] == start and table[pid][1] != "Z"]
        alive += [f"{pid} {c[:120]}" for pid, (_, state, _, c) in table.items() if tmpdir in c and state != "Z"]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("exits-in")
    return root, make_shards(root, N_UNITS, 16, seed=61)


def _cmd(root, store, out, *extra):
    return [sys.executable, "-m", "screening.cli", "run", str(root), "--store", str(store), "--out", str(out),
            "--model-id", MODEL_ID, "--rois", "V1,FFC", "--subjects", "sub-01", "--batch-size", "16",
            "--write-batch-size", "16", "--address", "local", *extra]


def _start(cmd, tmpdir, env=None):
    env = dict(env or _child_env(), RAY_TMPDIR=tmpdir)
    # SIGINT as in a foreground terminal: a runner that starts us in the background may have it ignored
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tree = _Tree(proc.pid)
    tree.start()
    return proc, tree


def _finish(proc, tree, timeout=120):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        tree.stop.set()
    return out, err


def _wait_for_a_commit(proc, out, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not list(out.glob("_committed/*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert len(list(out.glob("_committed/*.json"))) < N_UNITS, "the run committed everything before the signal"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["SIGINT twice", "SIGTERM, then resume"])
def test_no_ray_process_outlives_the_run_and_resume_does_the_rest(visual_store, shards, tmp_path, how):
    root, ids = shards
    out = tmp_path / "out"
    tmpdir = tempfile.mkdtemp(prefix="rx", dir="/tmp")   # short: Ray's socket paths live under it
    proc, tree = _start(_cmd(root, visual_store, out, "--no-progress", "--test-throttle-s", "0.7"), tmpdir)
    _wait_for_a_commit(proc, out)
    if how == "SIGINT twice":
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)   # the second one lands during the shutdown (or after the exit: then it is a no-op)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        code, word = 130, "interrupted"
    else:
        proc.send_signal(signal.SIGTERM)
        code, word = 143, "terminated (SIGTERM)"
    _, err = _finish(proc, tree)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert any("raylet" in c for c in tree.seen.values()), "the run started no local Ray?"
    assert _survivors(tree, tmpdir) == []
    if how == "SIGINT twice":
        return
    committed = len(list(out.glob("_committed/*.json")))
    assert f"screening run: {word}; {committed} unit(s) are committed" in err
    # resume: a normal end, which also stops its Ray completely; --verbose: Ray's lines as they come, no log file
    tmpdir2 = tempfile.mkdtemp(prefix="rx", dir="/tmp")
    proc, tree = _start(_cmd(root, visual_store, out, "--no-progress", "--verbose"), tmpdir2)
    stdout, err = _finish(proc, tree, timeout=200)
    assert proc.returncode == 0, err[-3000:]
    assert "Started a local Ray instance" in err and "Ray's log" not in stdout
    assert f"this run: {N_UNITS - committed} unit(s)" in stdout and f"{committed} unit(s) already committed" in stdout
    assert _survivors(tree, tmpdir2) == []
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=1)


@pytest.mark.timeout(300)
def test_default_run_prints_only_our_lines_and_names_rays_log(visual_store, tmp_path):
    """Progress bar and summary only: Ray's token-authentication WARNING (RAY_AUTH_MODE unset here), its INFO lines,
    its core worker's C++ line and RayDeprecationWarning go to OUT/logs/, which the summary names."""
    root, out = tmp_path / "in", tmp_path / "out"
    make_shards(root, 1, 6, seed=62)
    env = _child_env()
    env.pop("RAY_AUTH_MODE", None)
    env["SCREENING_DRIVER_COLLAPSE"] = "1"   # the driver's build beside Ray's start, also on a 2-core machine
    tmpdir = tempfile.mkdtemp(prefix="rx", dir="/tmp")
    proc, tree = _start(_cmd(root, visual_store, out), tmpdir, env=env)   # progress on: the default
    stdout, err = _finish(proc, tree, timeout=200)
    assert proc.returncode == 0, err[-3000:]
    ours = re.compile(r"^screening(:| run:)")
    foreign = [ln for ln in re.split(r"[\r\n]+", err) if ln.strip() and not ours.match(ln)]
    assert foreign == [], err[-3000:]
    for word in ("WARNING", "Warning", " INFO ", "core_worker", "deprecated"):
        assert word not in err, (word, err[-3000:])
    log = re.search(r"^  Ray's log: (.+)$", stdout, re.MULTILINE)
    assert log and log.group(1).startswith(str(out / "logs")), stdout
    text = open(log.group(1)).read()
    assert "Started a local Ray instance" in text
    assert "RayDeprecationWarning" not in text   # none of ours is raised at all (run.py: named parameters)
    assert _survivors(tree, tmpdir) == []
    # the driver built the collapsed matrix while Ray started the encoder (pipeline.prebuild); it is built once
    setup = json.loads((out / "manifest.json").read_text())["run"]["setup"]
    driver = [s for s in setup["driver"] if s["step"].startswith("collapse (driver")]
    assert len(driver) == 1 and driver[0]["outcome"] in ("built", "present"), setup
    sources = [driver[0]["outcome"]] + [e["collapse_source"] for e in setup["encoders"]]
    assert sources.count("built") <= 1 and all(e["collapse_source"] in ("hit", "built") for e in setup["encoders"])


# --------------------------------------------------------------------------- the stall watch (no Ray)

class _Res:
    max_size, num_cpus, num_gpus, task_cpus, batch_size, threads, device = 1, 1.75, 0.0, 0.0625, 32, 2, "cpu"


def test_stall_watch_says_once_per_silent_stretch_and_a_beat_resets_it(capsys):
    from screening.pipeline.run import StallWatch

    now = [0.0]
    watch = StallWatch(100.0, lambda idle: f"stalled {idle:.0f}", every_s=1.0, clock=lambda: now[0])
    now[0] = 99.0
    assert watch.check() is None
    watch.beat()
    now[0] = 150.0
    assert watch.check() is None                       # 51 s since the last image
    now[0] = 200.0
    assert watch.check() == "stalled 101"
    now[0] = 250.0
    assert watch.check() is None                       # said; quiet until another full stretch
    now[0] = 301.0
    assert watch.check() == "stalled 101"
    assert capsys.readouterr().err.count("stalled 101") == 2


def test_stall_message_says_what_waits_on_what():
    from screening.pipeline.run import stall_after_s, stall_message

    held = stall_message(150, _Res, 0.0, 2.0, None)
    assert "no image written for 150 s; Ray has 0 of 2 CPU(s) free" in held
    assert "1 encoder(s) of 1.75 CPU(s)" in held and "asks for 0.0625 CPU" in held
    assert "waiting for a CPU that encoders hold" in held and "--num-cpus-per-encoder" in held
    free = stall_message(150, _Res, 0.25, 2.0, "/o/logs/ray.log")
    assert "CPUs are free" in free and "Ray's log (/o/logs/ray.log)" in free
    assert "--verbose" in stall_message(150, _Res, 0.25, 2.0, None)
    assert stall_after_s(_Res, 16) == 180.0            # a tiny model: the floor
    one_thread = type("R", (_Res,), {"threads": 1})
    assert stall_after_s(one_thread, 384) == pytest.approx(4 * 32 * 2.0)   # 4 batches at the measured CPU cost
