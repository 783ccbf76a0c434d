#!/usr/bin/env bash
# GPU check for one short lease: <= 8 minutes (--budget-s 480) on one H200, install included, on a machine with
# torch / torchvision / pyarrow / pandas / pillow / numpy but no Ray and no network.
#
#   bash benchmarks/gpu_bundle.sh                          # here, once: .gpu-bundle/ (cp312, <= 60 MiB)
#   device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu-bundle"], timeout_s=560)
#   dry run on a CPU machine:  GPU_BUNDLE=.gpu-bundle-cp311 bash benchmarks/gpu_check.sh --python .venv-x/bin/python
#   options: --bundle DIR (or GPU_BUNDLE)  --python PY (or PYTHON; default python3)  --budget-s 480  --out DIR
#
# Steps (each one recorded; one that fails or runs out of time does not stop the others):
#  1. unpack the bundle (benchmarks/gpu_bundle.sh) into a temp site dir, PYTHONPATH=SITE:REPO;
#  2. import ray, ray.data and our pipeline's modules from it (gpu_bench.py importcheck);
#  3. in the background: `screening make-store` of the full-size synthetic store (published architecture,
#     57,051 vertices) for the agreement part, then the width-384 visual store for the full pipeline run;
#  4. gpu_bench.py bench: matmul peak, core sweep fp32/TF32/bf16/fp16, ROI encoder vs reference, decode_jpeg(cuda);
#  5. gpu_bench.py bench --parts agreement,decode_agreement: bf16 / fp16 / TF32 vs fp32 on the demo photos, per-ROI
#     Pearson r, and --decode gpu's pixels vs the exact CPU decode through the model (photos: the bundle's copy);
#  6. pytest -m gpu: the tests of the CUDA paths (tests/test_gpu_paths.py), which CPU machines deselect;
#  7. the Ray pipeline from JPEG shards (benchmarks/pipeline_cpu.py): --quick with one GPU encoder and the
#     machine's cores for CPU decode; the same with --decode gpu; then, with the time left, 16,384 425x425 JPEGs
#     through the width-384 model.
# Output: everything printed goes to $OUT/check.log (the store builds to $OUT/store.log), the merged measurements to
# $OUT/bench.json, the pipelines' raw samples to $OUT/pipeline_*.json, and one $OUT/summary.json.
# $OUT defaults to a new temp dir. Without CUDA every GPU part says "skipped: no CUDA" in the summary (and its code
# runs on the CPU at toy sizes as a check); the script exits 0 when nothing failed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
START=$(date +%s)
BUDGET=480
BUNDLE=${GPU_BUNDLE:-.gpu-bundle}
PY=${PYTHON:-python3}
OUT=${OUT:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --budget-s) BUDGET=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] || OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-work.XXXXXX")   # stores, shards, site: not under $OUT (8 files come back)
mkdir -p "$W/parts"
DEADLINE=$((START + BUDGET))
NCPU=$(nproc)
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
exec > >(tee -a "$OUT/check.log") 2>&1
TEE_PID=$!

left() { echo $((DEADLINE - $(date +%s))); }
now() { date +%s.%N; }
jstr() { "$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }
record() {  # name status seconds [extra JSON members]
  printf '{"status": %s, "seconds": %.1f%s}\n' "$(jstr "$2")" "$3" "${4:+, $4}" > "$W/parts/$1.json"
}
# run_part NAME KIND CAP_S MIN_S CMD...   KIND=gpu: without CUDA the status is "skipped: no CUDA" and the CPU run
# is recorded as cpu_run. Timeout = min(CAP_S, time left - 5); skipped when less than MIN_S is left. A part cut
# short by the budget (not by its own cap) is "stopped: time budget", which does not count as a failure.
run_part() {
  local name=$1 kind=$2 cap=$3 min=$4 l t t0 rc st secs
  shift 4
  l=$(left)
  if [ "$l" -lt "$min" ]; then
    echo "== $name: skipped (time budget: ${l} s left)"; record "$name" "skipped: time budget" 0; return 0
  fi
  t=$(( cap < l - 5 ? cap : l - 5 ))
  echo "== $name (timeout ${t} s; ${l} s of the ${BUDGET} s budget left)"
  t0=$(now)
  timeout -k 10 "$t" "$@"
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')
  case $rc in
    0) st=ok ;;
    124|137) if [ "$t" -lt "$cap" ]; then st="stopped: time budget (after ${t} s)"; else st="failed: timed out after ${t} s"; fi ;;
    *) st="failed: exit $rc" ;;
  esac
  if [ "$kind" = gpu ] && [ "$CUDA" != 1 ]; then
    record "$name" "skipped: no CUDA" 0 "\"cpu_run\": {\"status\": $(jstr "$st"), \"seconds\": $secs}"
  else
    record "$name" "$st" "$secs"
  fi
  echo "   $name: $st (${secs%.*} s)"
  return $rc
}

echo "== gpu_check.sh $(date -u +%FT%TZ): repo $REPO, out $OUT, work $W, budget ${BUDGET} s, ${NCPU} cores"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
"$PY" - "$W/env.json" "$BUNDLE" "$CUDA" <<'EOF'
import json, os, platform, subprocess, sys
import torch
env = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
       "cuda": sys.argv[3] == "1", "cpu_count": os.cpu_count(), "bundle": os.path.abspath(sys.argv[2])}
try:
    import torchvision
    env["torchvision"] = torchvision.__version__
except Exception as e:  # noqa: BLE001
    env["torchvision"] = f"absent ({type(e).__name__})"
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                        "--format=csv,noheader"], capture_output=True, text=True,
                                       timeout=20).stdout.strip()
except Exception:  # noqa: BLE001
    env["nvidia_smi"] = None
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env))
EOF

# ---- 1. bundle
SITE=$W/site
bundle_unpack() {
  local want have
  [ -f "$BUNDLE/site.tar.xz" ] && [ -f "$BUNDLE/manifest.json" ] || {
    echo "no bundle at $BUNDLE (make it with: bash benchmarks/gpu_bundle.sh)"; return 1; }
  want=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  have=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["python_tag"])' "$BUNDLE/manifest.json")
  if [ "$want" != "$have" ]; then
    echo "bundle $BUNDLE is $have but $PY is $want: build one with benchmarks/gpu_bundle.sh --python-version" \
         "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') and pass it with GPU_BUNDLE= / --bundle"
    return 1
  fi
  mkdir -p "$SITE"
  "$PY" - "$BUNDLE" <<'EOF' || return 1
import hashlib, json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
h = hashlib.sha256()
with open(sys.argv[1] + "/site.tar.xz", "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != m["archive_sha256"]:
    sys.exit("site.tar.xz does not match manifest.json's sha256")
print(f"bundle {m['python_tag']}: {m['archive_bytes'] / 2**20:.1f} MiB archive, sha256 ok, "
      f"{len(m['distributions'])} distributions")
EOF
  tar -xJf "$BUNDLE/site.tar.xz" -C "$SITE" || return 1
  "$PY" - "$BUNDLE" "$SITE" "$W/bundle.json" <<'EOF'
import json, os, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
n = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(sys.argv[2]) for f in fs)
total = sum(os.path.getsize(os.path.join(sys.argv[1], f)) for f in os.listdir(sys.argv[1]))
json.dump({"python_tag": m["python_tag"], "bundle_mib": round(total / 2**20, 2),
           "archive_sha256": m["archive_sha256"], "unpacked_mib": round(n / 2**20, 1),
           "distributions": {k: v["version"] for k, v in m["distributions"].items()},
           "stripped": m["stripped"]}, open(sys.argv[3], "w"), indent=1)
print(f"unpacked {n / 2**20:.0f} MiB into {sys.argv[2]}")
EOF
}
export BUNDLE SITE W PY
export -f bundle_unpack
run_part bundle cpu 120 10 bash -c bundle_unpack
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
GPU_CHECK_PHOTOS=$(cd "$BUNDLE" 2>/dev/null && pwd)/demo_photos.npz
export GPU_CHECK_PHOTOS

# ---- 2. import ray, ray.data, our pipeline
RAY_OK=0
run_part import cpu 90 10 "$PY" benchmarks/gpu_bench.py importcheck --site "$SITE" --json "$W/import.json" && RAY_OK=1

# ---- 3. stores (background on a GPU machine; the toy store in the foreground without CUDA)
STORE_ALL=$W/store-all
PIPE=$W/pipe
mkdir -p "$PIPE"
build_stores() {
  if [ "$CUDA" = 1 ]; then
    OMP_NUM_THREADS=$(( NCPU > 4 ? NCPU - 2 : NCPU )) nice -n 10 "$PY" -m screening.cli make-store "$STORE_ALL" \
      --variant all --width 384 || return 1
    OMP_NUM_THREADS=$(( NCPU > 4 ? NCPU - 2 : NCPU )) nice -n 10 "$PY" -m screening.cli make-store \
      "$PIPE/store-w384" --variant visual --width 384
  else
    "$PY" -m screening.cli make-store "$STORE_ALL" --variant visual --width 8
  fi
}
export CUDA STORE_ALL PIPE NCPU
export -f build_stores
STORE_PID=
if [ "$CUDA" = 1 ]; then
  echo "== store: building in the background (log: $OUT/store.log)"
  run_part store cpu 300 20 bash -c build_stores > "$OUT/store.log" 2>&1 &
  STORE_PID=$!
else
  run_part store cpu 120 20 bash -c build_stores
fi

# ---- 4. speed: matmul peak, core sweep, ROI encoder vs reference, decode_jpeg
run_part bench_speed cpu 260 30 "$PY" benchmarks/gpu_bench.py bench --parts matmul,core,encoder,decode \
  --json "$W/speed.json" --deadline $((DEADLINE - 150))

# ---- 5. agreement (needs the full-size store)
if [ -n "$STORE_PID" ]; then
  echo "== waiting for the store build ($(left) s left)"
  while kill -0 "$STORE_PID" 2>/dev/null && [ "$(left)" -gt 100 ]; do sleep 2; done
  if kill -0 "$STORE_PID" 2>/dev/null; then echo "store build still running: agreement may fail"; fi
fi
run_part bench_agreement cpu 170 30 "$PY" benchmarks/gpu_bench.py bench --parts agreement,decode_agreement \
  --store "$STORE_ALL" --json "$W/agreement.json" --deadline $((DEADLINE - 75))

# ---- 6. the tests marked gpu (deselected on CPU machines, so they run only here)
if [ "$CUDA" = 1 ]; then
  run_part pytest_gpu gpu 120 30 "$PY" -m pytest -q -p no:logging -p no:cacheprovider -m gpu tests/test_gpu_paths.py
else
  record pytest_gpu "skipped: no CUDA (the gpu tests are deselected without it)" 0
fi

# ---- 7. the Ray pipeline from JPEG shards
if [ "$RAY_OK" = 1 ]; then
  if [ "$CUDA" = 1 ]; then
    run_part pipeline_quick gpu 120 45 "$PY" benchmarks/pipeline_cpu.py --quick --num-gpus-per-encoder 1 \
      --num-cpus "$NCPU" --workdir "$W/pq" --json "$W/pipeline_quick.json"
    run_part pipeline_gpu_decode gpu 120 45 "$PY" benchmarks/pipeline_cpu.py --quick --num-gpus-per-encoder 1 \
      --decode gpu --num-cpus "$NCPU" --workdir "$W/pqg" --json "$W/pipeline_gpu_decode.json"
    if [ -n "$STORE_PID" ]; then wait "$STORE_PID" 2>/dev/null; fi
    if grep -q '"status": "ok"' "$W/parts/store.json" 2>/dev/null; then
      run_part pipeline_full gpu 240 60 "$PY" benchmarks/pipeline_cpu.py --rows 16384 --shard-rows 512 \
        --image-size 425 --width 384 --num-gpus-per-encoder 1 --num-cpus "$NCPU" --encoder-seconds 5 \
        --workdir "$PIPE" --json "$W/pipeline_full.json"
    else
      record pipeline_full "skipped: the width-384 visual store was not built in time" 0
    fi
  else
    run_part pipeline_quick gpu 240 45 "$PY" benchmarks/pipeline_cpu.py --quick --workdir "$W/pq" \
      --json "$W/pipeline_quick.json"
    record pipeline_gpu_decode "skipped: no CUDA" 0
    record pipeline_full "skipped: no CUDA" 0
  fi
else
  record pipeline_quick "skipped: ray not importable from the bundle" 0
  record pipeline_gpu_decode "skipped: ray not importable from the bundle" 0
  record pipeline_full "skipped: ray not importable from the bundle" 0
fi

# ---- summary
if [ -n "$STORE_PID" ] && kill -0 "$STORE_PID" 2>/dev/null; then  # still building: stop it (timeout passes it on)
  pkill -TERM -P "$STORE_PID" 2>/dev/null; kill "$STORE_PID" 2>/dev/null
fi
printf '{"elapsed_s": %d, "budget_s": %d}\n' $(( $(date +%s) - START )) "$BUDGET" > "$W/timing.json"
for f in pipeline_quick pipeline_gpu_decode pipeline_full; do [ -f "$W/$f.json" ] && cp "$W/$f.json" "$OUT/"; done
echo "== summary ($(( $(date +%s) - START )) s since start)"
"$PY" benchmarks/gpu_bench.py summarize --work "$W" --out "$OUT/summary.json" --bench-out "$OUT/bench.json"
rc=$?
[ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$W"
echo "gpu_check.sh: $([ $rc = 0 ] && echo ok || echo 'FAILED parts, see summary.json') in" \
     "$(( $(date +%s) - START )) s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit $rc
