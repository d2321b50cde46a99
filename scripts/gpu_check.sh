#!/usr/bin/env bash
# One-shot GPU check (issue 6), <= 8 minutes, no network. Run from anywhere on the GPU machine:
#   bash scripts/gpu_check.sh [extra gpu_check.py args]      (reports -> $OUT or benchmarks/out, and benchmarks/)
# Installs the wheels carried in .whl/ (scripts/gpu_wheels.sh downloads them where PyPI is reachable) into
# /tmp/site when the image lacks them; then exports a random-init vit_b bundle there, builds TensorRT engines
# if TensorRT exists, and gates + benchmarks every GPU backend found (tensorrt, ort-cuda, torch-cuda).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import fastapi, pydantic_settings, multipart, pycocotools, ftfy" 2>/dev/null \
   && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 3; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout -k 15 455 "$PY" scripts/gpu_check.py --budget-s "${GPU_CHECK_BUDGET_S:-420}" "$@"
