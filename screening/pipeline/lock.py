"""One live run per output root: ``OUT/_lock.json`` with an owner and a heartbeat.

- Taken by an exclusive create: locally ``O_CREAT | O_EXCL``; on S3 a conditional PUT (``If-None-Match: *``), which
  S3 (and S3-compatible servers that implement it) answer 412 when the object exists.
- The owner rewrites the heartbeat every ``heartbeat_s``. A lock is stale, and is taken over, when its heartbeat is
  older than ``stale_s`` (a run that died anywhere), or at once when its owner is a dead process on this host.
  Heartbeats are wall-clock times: the hosts sharing an ``out`` need clocks within ``stale_s`` of each other.
- A takeover deletes the stale lock and creates a new one exclusively, then re-reads it: of two runs taking over at
  once, the one whose id is not in the file backs off with :class:`RunLockedError`.
- A run that finds its lock rewritten by someone else (it was considered dead) stops committing (``lost``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from screening.exceptions import RunLockedError
from screening.pipeline.outputs import LOCK, OutputLayout
from screening.fs import write_atomic

HEARTBEAT_S = float(os.environ.get("SCREENING_LOCK_HEARTBEAT_S", 5))
STALE_S = float(os.environ.get("SCREENING_LOCK_STALE_S", 60))


def _pid_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot
    except (OSError, IndexError):
        return None


def _alive_here(owner: dict) -> bool | None:
    """True/False for an owner on this host (pid alive with the same start time); None for another host."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = int(owner.get("pid", -1))
    return pid > 0 and _pid_start(pid) is not None and _pid_start(pid) == owner.get("pid_start")


class RunLock:
    def __init__(self, layout: OutputLayout, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.layout = layout
        self.path = layout.join(LOCK)
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.run_id = uuid.uuid4().hex
        pid = os.getpid()
        self.owner = {"host": socket.gethostname(), "pid": pid, "pid_start": _pid_start(pid),
                      "user": os.environ.get("USER", "")}
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"run_id": self.run_id, "owner": self.owner, "heartbeat": now,
                           "heartbeat_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}).encode()

    def _create(self) -> bool:
        fs = self.layout.fs
        fs.makedirs(self.layout.root, exist_ok=True)
        if self.layout.is_local():
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
                f.flush()
                os.fsync(f.fileno())
            return True
        try:
            fs.pipe_file(self.path, self._record(), mode="create")
        except FileExistsError:
            return False
        except OSError as exc:  # s3fs: PreconditionFailed (412) surfaces as an OSError on some versions
            if "Precondition" in str(exc) or "412" in str(exc):
                return False
            raise
        return True

    def read(self) -> dict | None:
        fs = self.layout.fs
        try:
            fs.invalidate_cache(self.path)
            with fs.open(self.path, "rb") as f:
                return json.loads(f.read().decode() or "{}")
        except FileNotFoundError:
            return None
        except ValueError:  # torn or foreign content: treat as stale
            return {}

    def _stale(self, rec: dict) -> bool:
        alive = _alive_here(rec.get("owner") or {})
        if alive is not None:
            return not alive
        return time.time() - float(rec.get("heartbeat", 0)) > self.stale_s

    def acquire(self) -> "RunLock":
        for _ in range(3):
            if self._create():
                break
            rec = self.read()
            if rec is None:
                continue  # released in between: try again
            if not self._stale(rec):
                o = rec.get("owner") or {}
                age = time.time() - float(rec.get("heartbeat", 0))
                raise RunLockedError(
                    f"out={self.layout.out!r} is in use by another run (pid {o.get('pid')} on {o.get('host')}, "
                    f"last heartbeat {age:.0f} s ago); wait for it to end. A lock whose run died is taken over "
                    f"after {self.stale_s:.0f} s without heartbeat (at once on the same host).")
            try:
                self.layout.fs.rm(self.path)  # stale: take it over
            except FileNotFoundError:
                pass
        else:
            raise RunLockedError(f"out={self.layout.out!r}: could not take the run lock {self.path} (contended)")
        if (self.read() or {}).get("run_id") != self.run_id:
            raise RunLockedError(f"out={self.layout.out!r} was taken by another run at the same moment")
        self._thread = threading.Thread(target=self._beat, name="screening-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(self.heartbeat_s):
            try:
                rec = self.read()
                if not rec or rec.get("run_id") != self.run_id:
                    self.lost.set()
                    return
                write_atomic(self.layout.fs, self.path, self._record())  # never seen torn
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried; staleness needs many in a row
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
        try:
            if (self.read() or {}).get("run_id") == self.run_id:
                self.layout.fs.rm(self.path)
        except Exception:  # noqa: BLE001 - a lock left behind is stale for the next run on this host
            pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
