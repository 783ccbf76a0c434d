"""``jobs/slurm/screen.sbatch`` on a real Slurm (munged + slurmctld + 2 slurmd on loopback, started by
``.ci/slurm.sh``) running a real Ray inside each job: a 2-node job end to end, and a cancelled job that is
resubmitted and finishes only the missing units.

Results are read only through ``committed_files`` and the markers under ``OUT/_committed/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_pipeline import MODEL_ID, REPO, _child_env, assert_partition, make_shards, read_run

SBATCH = "jobs/slurm/screen.sbatch"
SLURM_SH = REPO / ".ci" / "slurm.sh"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")
SBIN_PATH = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"


class Slurm:
    def __init__(self, root: Path):
        self.root = root
        self.conf = str(root / "etc" / "slurm.conf")
        env = {k: v for k, v in _child_env().items() if not k.startswith("SLURM_")}
        env.pop("RAY_AUTH_MODE", None)      # conftest disables Ray token auth; the job's default (token) is tested
        env.update(SLURM_CONF=self.conf, PATH=os.path.dirname(sys.executable) + os.pathsep + SBIN_PATH,
                   SCREENING_PYTHON=sys.executable,
                   SCREENING_RAY_HEAD_IP="127.0.0.1")   # loopback only, also for the 2-node job
        self.env = env

    def run(self, *cmd, timeout=60, check=True):
        p = subprocess.run(list(cmd), cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert p.returncode == 0, f"{cmd}: rc {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p

    def state(self, job: int) -> str:
        """The job's state, or "" once Slurm has forgotten it (MinJobAge after it ended)."""
        p = self.run("squeue", "-h", "-j", str(job), "-o", "%T", check=False)
        return p.stdout.strip() if p.returncode == 0 else ""

    def job_processes(self, job: int) -> list[str]:
        """Live processes of this job: its environment names this Slurm and job (Ray's processes inherit it), or its
        command line names the job's Ray temp dir. Zombies (dead, not yet reaped by init) do not count."""
        mine = [f"SLURM_JOB_ID={job}".encode(), f"SLURM_CONF={self.conf}".encode()]
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                environ = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] == "Z" or "slurmstepd" in stat:
                continue
            if all(m in environ for m in mine) or f"/rs{job}n" in cmd:
                found.append(f"{d}: {cmd[:160]}")
        return found

    def assert_no_job_processes(self, job: int, within_s: float = 20):
        deadline = time.time() + within_s
        while (left := self.job_processes(job)) and time.time() < deadline:
            time.sleep(0.5)
        assert not left, f"processes of job {job} left behind:\n" + "\n".join(left)
        leftover_dirs = [p for p in Path(self.env.get("SCREENING_RAY_TMPDIR", "/tmp")).glob(f"rs{job}n*")]
        assert not leftover_dirs, leftover_dirs


@pytest.fixture(scope="module")
def slurm():
    """A private 2-node Slurm on this host (both slurmd on 127.0.0.1), stopped by its daemons' pids afterwards."""
    missing = [b for b in DAEMONS if not shutil.which(b, path=SBIN_PATH)]
    if missing:
        pytest.skip(f"Slurm is not installed (missing {', '.join(missing)}): run .ci/slurm.sh install "
                    "(Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("a private Slurm needs root (slurmd starts jobs as their users)")
    root = Path(tempfile.mkdtemp(prefix="sl", dir="/tmp"))   # short: the munge socket path lives under it
    start = subprocess.run(["bash", str(SLURM_SH), "start", str(root), "2"], capture_output=True, text=True,
                           timeout=120)
    try:
        assert start.returncode == 0, f".ci/slurm.sh start failed:\n{start.stdout}\n{start.stderr}"
        yield Slurm(root)
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env={**os.environ, "SLURM_CONF": str(root / "etc" /
                       "slurm.conf")}, capture_output=True, timeout=30)
        subprocess.run(["bash", str(SLURM_SH), "stop", str(root)], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _screen_args(images, store, out, *extra):
    return [str(images), "--store", str(store), "--out", str(out), "--model-id", MODEL_ID, "--rois", "V1,FFC",
            "--no-progress", *extra]


def _job_id(sbatch_stdout: str) -> int:
    return int(sbatch_stdout.strip().splitlines()[0].split(";")[0])


@pytest.mark.timeout(240)
def test_sbatch_two_node_job_screens_every_image_once(slurm, visual_store, tmp_path):
    root = tmp_path / "in"
    ids = make_shards(root, 2, 6, seed=21)
    out = tmp_path / "out"
    t0 = time.time()
    job = slurm.run("sbatch", "--wait", "--parsable", "--nodes=2", "--cpus-per-task=1", "--mem=3000",
                    f"--output={tmp_path}/job-%j.out", SBATCH,
                    *_screen_args(root, visual_store, out, "--subjects", "sub-04"), timeout=200, check=False)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert job.returncode == 0, f"rc {job.returncode}\n{job.stderr[-2000:]}\n{logs[-6000:]}"
    job_id = _job_id(job.stdout)
    text = (tmp_path / f"job-{job_id}.out").read_text()
    print(f"2-node sbatch job: {time.time() - t0:.1f} s")
    assert "2 of 2 Ray nodes up" in text, text[-4000:]          # the srun'd worker joined the head
    assert "Ray auth: token" in text
    assert "images/s" in text, text[-4000:]                     # the summary is in the job's output
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=1)
    assert len(errs) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["run"]["state"] == "complete" and m["counts"]["images"] == len(ids)
    slurm.assert_no_job_processes(job_id)


@pytest.mark.timeout(300)
def test_cancelled_job_resubmitted_finishes_only_the_missing_units(slurm, visual_store, tmp_path):
    root = tmp_path / "in"
    ids = make_shards(root, 6, 32, seed=23)     # 6 units of 2 encoder batches each, throttled: ~2 s per unit
    out = tmp_path / "out"
    # small encoder and write batches: units commit one after another, not all at the end
    args = _screen_args(root, visual_store, out, "--subjects", "sub-01", "--batch-size", "16",
                        "--write-batch-size", "32")
    sub = slurm.run("sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", "--mem=4000",
                    f"--output={tmp_path}/job-%j.out", SBATCH, *args, "--test-throttle-s", "1.0")
    job = _job_id(sub.stdout)
    log = tmp_path / f"job-{job}.out"
    deadline = time.time() + 150
    while time.time() < deadline:
        if list((out / "_committed").glob("*.json")) if (out / "_committed").exists() else []:
            break
        assert slurm.state(job) in ("PENDING", "CONFIGURING", "RUNNING"), log.read_text()[-4000:]
        time.sleep(0.1)
    else:
        pytest.fail("no unit committed within 150 s:\n" + log.read_text()[-4000:])
    slurm.run("scancel", str(job))
    deadline = time.time() + 90
    while slurm.state(job) and time.time() < deadline:
        time.sleep(0.5)
    assert not slurm.state(job), f"job {job} still {slurm.state(job)} 90 s after scancel"
    text = log.read_text()
    assert "exit 143" in text, text[-4000:]          # the batch script's trap ran (TERM), not just Slurm's SIGKILL
    slurm.assert_no_job_processes(job)
    first = {p.name: p.read_bytes() for p in (out / "_committed").glob("*.json")}
    assert 1 <= len(first) < 6, f"{len(first)} units committed before the cancel took effect"

    again = slurm.run("sbatch", "--wait", "--parsable", "--nodes=1", "--cpus-per-task=2", "--mem=4000",
                      f"--output={tmp_path}/job-%j.out", SBATCH, *args, timeout=200, check=False)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert again.returncode == 0, f"rc {again.returncode}\n{again.stderr[-2000:]}\n{logs[-6000:]}"
    job2 = _job_id(again.stdout)
    text2 = (tmp_path / f"job-{job2}.out").read_text()
    assert "images/s" in text2, text2[-4000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["run"]["state"] == "complete"
    assert m["run"]["units_run"] == 6 - len(first) and m["run"]["units_skipped"] == len(first), m["run"]
    for name, data in first.items():    # committed units were not redone
        assert (out / "_committed" / name).read_bytes() == data, name
    resp, errs = read_run(out)
    assert_partition(resp, errs, ids, n_subjects=1)
    slurm.assert_no_job_processes(job2)
