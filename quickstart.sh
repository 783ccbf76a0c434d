#!/usr/bin/env bash
# One entry point for a fresh machine:
#   ./quickstart.sh demo   set up .venv if needed, then run the demo screening (synthetic weights)
#   ./quickstart.sh test   set up .venv if needed, then run the test suite
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SCREENING_VENV:-.venv}

setup() {
  if [ -f "$VENV/.screening-ready" ] && [ "$VENV/.screening-ready" -nt pyproject.toml ] \
     && [ "$VENV/.screening-ready" -nt constraints.txt ]; then return; fi
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # CPU machines get the CPU torch wheel first: an unpinned torch resolves to a multi-GB CUDA build.
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "torch==2.13.0" \
      || "$VENV/bin/python" -m pip install -q "torch>=2.4,<3" --index-url https://download.pytorch.org/whl/cpu
  fi
  # the build backend's notices go to a log (printed if the install fails): a first run prints only our lines
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[test,demo]" 2>"$VENV/pip-install.log" \
    || { cat "$VENV/pip-install.log" >&2; exit 1; }
  touch "$VENV/.screening-ready"
}

export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
export RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=${RAY_DATA_PARQUET_FOOTER_NUM_ACTORS:-1}
export RAY_USAGE_STATS_ENABLED=0

case "${1:-}" in
  demo) setup; shift; exec "$VENV/bin/screening" demo "$@" ;;
  test) setup; shift; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  setup) setup ;;
  *) echo "usage: ./quickstart.sh demo|test|setup" >&2; exit 2 ;;
esac
