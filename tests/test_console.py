"""The quiet run's console: Ray's lines (C++ on descriptor 2, its Python loggers, third-party warnings) go to the log
file; our own lines (``sys.stderr``, our warnings) reach the terminal; the terminal is restored afterwards."""

import os
import subprocess
import sys

CPP = b"[2026-12-02 00:26:53,001 E 25158 25170] core_worker.cc:999: Failed to connect to raylet\n"


def test_run_console_sends_rays_lines_to_the_log_and_ours_to_the_terminal(tmp_path):
    # C++ writes to fd 2 directly: emulate it with os.write, in a child so pytest's own capture is not involved
    log = tmp_path / "out" / "logs" / "ray.log"
    code = (
        "import logging, os, sys, warnings\n"
        "from screening.pipeline import console\n"
        f"with console.run_console(False, {str(log)!r}):\n"
        f"    os.write(2, {CPP!r})\n"
        "    print('screening: ours', file=sys.stderr)\n"
        "    logging.getLogger('ray').warning('token authentication is enabled')\n"
        "    logging.getLogger('ray.data').warning('operator has no outputs for 60 seconds')\n"
        "    warnings.warn_explicit('a library is deprecated', FutureWarning, '/lib/site-packages/x.py', 1)\n"
        "    warnings.warn_explicit('our note', UserWarning, console.__file__, 1)\n"
        "    print('summary on stdout')\n"
        "print('path', console.ray_log_path())\n"
        "os.write(2, b'after\\n')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert err.splitlines()[0] == "screening: ours" and err.endswith("after\n"), err
    assert "our note" in err
    for theirs in ("raylet", "token authentication", "no outputs", "a library is deprecated"):
        assert theirs not in err, (theirs, err)
    text = log.read_text()
    for theirs in ("Failed to connect to raylet", "token authentication", "no outputs", "a library is deprecated"):
        assert theirs in text, (theirs, text)
    assert "ours" not in text and "our note" not in text
    assert r.stdout.decode() == f"summary on stdout\npath {log}\n"


def test_a_run_that_makes_ray_say_nothing_leaves_no_log(tmp_path):
    log = tmp_path / "never" / "ray.log"
    code = ("import sys\nfrom screening.pipeline import console\n"
            f"with console.run_console(False, {str(log)!r}):\n    print('screening: ours', file=sys.stderr)\n"
            "print(console.ray_log_path())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert r.returncode == 0 and r.stdout == b"None\n" and r.stderr == b"screening: ours\n", r.stderr
    assert not log.parent.exists()
