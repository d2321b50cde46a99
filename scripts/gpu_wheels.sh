#!/usr/bin/env bash
# Download (here, where PyPI is reachable) the wheels scripts/gpu_check.sh installs on an offline GPU machine
# whose Python 3.12 image already has torch+CUDA, numpy, onnx, onnxruntime (CPU), pillow, opencv, tokenizers,
# safetensors, tqdm, httpx, anyio, prometheus-client, cupy and cuda-bindings, but not the service's web stack.
# Usage: bash scripts/gpu_wheels.sh [DEST=.whl]   (.whl/ is git-ignored; carry it with the working tree)
set -euo pipefail
DEST="${1:-.whl}"
PIP="${PIP:-python3 -m pip}"
WHEELS=(
  fastapi==0.165.0 starlette==1.10.0 annotated-doc==0.0.7 opentelemetry-api==1.45.2
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  python-multipart==0.0.34 pycocotools==2.0.11 ftfy==6.3.1 wcwidth==0.9.4
  open-clip-torch==3.3.0  # only its BPE vocabulary file is read (model_export.tokenizer), never imported
)
mkdir -p "$DEST"
$PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"
du -sh "$DEST"
