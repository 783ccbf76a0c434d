"""Where a run's first minute goes: the driver's setup steps and each encoder's own, recorded in the manifest.

The driver marks its steps (``step("plan")``, ...) in this process; an encoder actor measures its checkpoint load,
its collapse and its first batch and leaves them in ``OUT/logs/encoder-setup-*.json`` (local outputs only; a file
per actor, since actors run in other processes and possibly other nodes). ``record`` joins both for
``manifest["run"]["setup"]``, offsets in seconds from the process start (imports included). Measuring costs a few
clock reads; nothing is measured twice.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import time
import uuid

_STEPS: list[dict] = []
ENCODER_FILE = "encoder-setup-{}.json"


def process_start() -> float:
    """Wall-clock time this process started (so Python's and the libraries' imports count)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return time.time()


_T0 = process_start()


@contextlib.contextmanager
def step(name: str):
    """Time one driver step (appended when it ends, also when it raises); what the body puts in the yielded dict
    is recorded with it."""
    start, extra = time.time(), {}
    try:
        yield extra
    finally:
        _STEPS.append({"step": name, "at_s": round(start - _T0, 2), "s": round(time.time() - start, 2), **extra})


def mark(name: str) -> None:
    """A moment rather than a step (``first unit committed``)."""
    _STEPS.append({"step": name, "at_s": round(time.time() - _T0, 2), "s": 0.0})


def driver_steps() -> list[dict]:
    return list(_STEPS)


def setup_log_dir(out: str) -> str | None:
    """Where the encoders leave their setup times: ``OUT/logs`` for a local output, none for object storage."""
    return None if "://" in str(out) and not str(out).startswith("file://") else os.path.join(
        str(out).removeprefix("file://"), "logs")


def write_encoder_setup(log_dir: str | None, times: dict) -> None:
    """An encoder's own setup, for the driver to read at the end; never fails the encoder."""
    if not log_dir:
        return
    try:
        os.makedirs(log_dir, exist_ok=True)
        path = os.path.join(log_dir, ENCODER_FILE.format(uuid.uuid4().hex[:8]))
        with open(path, "w") as f:
            json.dump({**times, "pid": os.getpid()}, f)
    except OSError:
        pass


def record(log_dir: str | None) -> dict:
    """``{"driver": [...], "encoders": [...]}``; encoder times are converted to offsets from this process's start."""
    encoders = []
    for path in sorted(glob.glob(os.path.join(log_dir, ENCODER_FILE.format("*")))) if log_dir else []:
        try:
            with open(path) as f:
                e = json.load(f)
        except (OSError, ValueError):
            continue
        encoders.append({k: (round(v - _T0, 2) if k.endswith("_at") else v) for k, v in e.items()})
    return {"driver": driver_steps(), "encoders": encoders}


def setup_record(out: str) -> dict:
    """:func:`record` of a run into ``out``; the encoders' files are removed once read (a rerun writes its own)."""
    log_dir = setup_log_dir(out)
    got = record(log_dir)
    for path in glob.glob(os.path.join(log_dir, ENCODER_FILE.format("*"))) if log_dir else []:
        with contextlib.suppress(OSError):
            os.remove(path)
    return got
