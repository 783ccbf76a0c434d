#!/usr/bin/env bash
# GPU check sized for a short lease (target: <= 8 minutes on one H100, from a fresh machine).
#   bash benchmarks/gpu_check.sh            # writes results under $OUT (or /tmp/gpu-check)
# 1. installs what the GPU image lacks from carried wheels in .whl/ (see below), if any;
# 2. core at fp32 / TF32 / bf16 over a batch sweep, TFLOP/s vs peak, ROI-collapsed encoder, and the
#    reference-style path in the same run (benchmarks/gpu_bench.py);
# 3. the full Ray pipeline from JPEG shards, if ray is importable there.
# Without CUDA every GPU part says so and is skipped; the script still exits 0.
#
# Carrying wheels (the GPU image has torch, numpy, pyarrow, pandas, pillow, matplotlib, but no ray/s3fs):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl s3fs==2026.9.0 fsspec==2026.9.0 nibabel simplejpeg
# ray 2.60.0's cp312 wheel is 79 MB, over the device tool's 64 MiB carry limit, so step 3 only runs
# where ray is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== core sweep, ROI encoder, reference-style path"
timeout 330 python3 benchmarks/gpu_bench.py --seconds 2 --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.txt"

echo "== Ray pipeline from JPEG shards"
if python3 -c "import ray, s3fs" 2>/dev/null; then
  gpus=$(python3 -c "import torch; print(1 if torch.cuda.is_available() else 0)")
  timeout 150 python3 benchmarks/pipeline_cpu.py --quick --num-gpus-per-encoder "$gpus" 2>&1 | tee "$OUT/pipeline.txt"
else
  echo "ray/s3fs not importable here: pipeline part skipped"
fi
