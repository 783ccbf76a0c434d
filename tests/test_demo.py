"""`screening demo` end to end, as CI runs it: real photos, local Ray, rank, report.

CI uses a reduced-width (16-channel) visual-variant store to keep the suite short; the README's
`./quickstart.sh demo` runs the published architecture (width 384, all vertices).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest


# Ray's log lines: "2026-12-06 16:44:52,994	INFO ...", C++ "[2026-12-06 ...", "(raylet)" / "(MapWorker pid=...)"
# prefixes, and the messages seen before in a quiet demo.
RAY_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING|ERROR)|\[\d{4}-\d\d-\d\d \d\d:|"
                      r"\((raylet|MapWorker|pid=)|core_worker\.cc|Progress bars disabled|issue_detector|"
                      r"Started a local Ray instance")


def demo_command(tmp_path):
    """``(argv, env, out)`` of the demo at CI size: a reduced-width visual store, a private cache."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "SCREENING_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "demo"
    argv = [sys.executable, "-m", "screening.cli", "demo", "--variant", "visual", "--width", "16", "--out", str(out)]
    return argv, env, out


@pytest.mark.timeout(900)
def test_demo_runs_end_to_end_and_says_it_is_synthetic(tmp_path):
    argv, env, out = demo_command(tmp_path)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=880)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SYNTHETIC WEIGHTS" in proc.stdout
    # the precision auto chose, and why, in the summary and the manifest
    m = re.search(r"precision: (fp32|bf16) \(auto: (.+)\)", proc.stdout)
    assert m, proc.stdout[-2000:]
    # quiet without --verbose: our progress bar only, no line of Ray's (Python loggers, C++ lines, worker prefixes)
    ray_lines = [ln for ln in re.split(r"[\r\n]", proc.stderr) if RAY_LINE.search(ln)]
    assert not ray_lines, ray_lines[:5]
    index = Path(re.search(r"open (\S+index\.html)", proc.stdout).group(1))
    assert index.is_file()
    html = index.read_text()
    assert "SYNTHETIC" in html
    pngs = re.findall(r"src=['\"]([^'\"]+\.png)", html)
    assert len(pngs) >= 3, pngs
    for src in pngs:
        assert (index.parent / src).is_file(), src
    assert any("flatmap" in s for s in re.findall(r"src=['\"]([^'\"]+)", html)), "no brain flatmap in the report"

    manifest = json.loads((out / "run" / "manifest.json").read_text())
    assert manifest["model"]["synthetic"] is True
    choice = manifest["config"]["precision_choice"]
    assert manifest["config"]["precision"] == choice["precision"] == m.group(1) and choice["why"] == m.group(2)
    n_images = len(list((out / "images").iterdir()))
    from tests.test_pipeline import read_run

    responses, errors = read_run(out / "run")   # through committed_files, as every reader must
    screened = set(responses["image_id"]) | set(errors["image_id"])
    # identical files share an image_id (content-addressed), so ids <= files
    assert 0 < len(screened) <= n_images and len(errors) == 0
    assert set(responses["subject"]) == {f"sub-0{i}" for i in range(1, 9)} | {"mean"}
    rankings = pd.read_parquet(out / "run" / "rankings")
    assert {"roi", "subject", "rank", "image_id", "response", "z"} <= set(rankings.columns)


@pytest.mark.timeout(300)
def test_demo_ctrl_c_exits_130_with_one_line(tmp_path):
    argv, env, _ = demo_command(tmp_path)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:   # interrupt once the screening step has started (Ray up, the run in flight)
        seen.append(line)
        if line.startswith("[3/5]"):
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + rest + err
    assert "Traceback" not in err, err[-3000:]
    assert re.search(r"^screening demo: interrupted; .* \(rerun to resume\)$", err, re.MULTILINE), err[-2000:]
