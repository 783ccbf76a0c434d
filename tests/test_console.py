"""The quiet-run stderr filter: drops Ray's known-benign C++ line, passes everything else at once."""

import os
import subprocess
import sys

from screening.pipeline.console import filter_chunk

BENIGN = (b"[2026-12-02 00:26:52,859 E 25158 25158] core_worker.cc:2465: Actor with class name: "
          b"'MapWorker(MapBatches(EncoderActor))' and ID: '30813f' has constructor arguments in the object store "
          b"and max_restarts > 0. If the arguments ...\n")
REAL = b"[2026-12-02 00:26:53,001 E 25158 25170] core_worker.cc:999: Failed to connect to raylet\n"
BAR = b"\rscreening:  10%|#         | 3/31 [00:01<00:09,  2.9img/s]"


def _feed(chunks):
    out, held = bytearray(), b""
    for c in chunks:
        o, held = filter_chunk(held + c)
        out += o
    return bytes(out + held)


def test_benign_line_dropped_even_mid_line_after_a_progress_bar():
    assert _feed([BAR + BENIGN + BAR]) == BAR + BAR


def test_other_cpp_lines_and_plain_text_pass():
    assert _feed([b"hello [world]\n", REAL, BAR]) == b"hello [world]\n" + REAL + BAR


def test_a_line_split_across_reads_is_still_recognised():
    data = BAR + BENIGN + REAL
    for cut in (1, len(BAR) + 1, len(BAR) + 5, len(BAR) + 30, len(BAR) + len(BENIGN) - 1):
        assert _feed([data[:cut], data[cut:]]) == BAR + REAL, cut


def test_progress_bar_is_not_held_back():
    out, held = filter_chunk(BAR)
    assert out == BAR and held == b""


def test_run_console_filters_descriptor_2_and_restores_it(tmp_path):
    # C++ writes to fd 2 directly: emulate it with os.write, in a child so pytest's own capture is not involved
    code = (
        "import os, sys\n"
        "from screening.pipeline.console import run_console\n"
        f"with run_console(False):\n"
        f"    os.write(2, {BENIGN!r}); os.write(2, {REAL!r}); print('bar', file=sys.stderr)\n"
        "os.write(2, b'after\\n')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stderr == REAL + b"bar\nafter\n"
