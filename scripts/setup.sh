#!/usr/bin/env bash
# Sets up a development/test environment in .venv from the project's own files.
#   scripts/setup.sh            -> .venv with the `dev` extra (torch CPU/CUDA wheel, references, test tools)
#   scripts/setup.sh serve      -> .venv with only the `serve` extra (no torch)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-dev}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extra}]"
if [ "$extra" = "dev" ] && [ -x deploy/tools/install_ci_tools.sh ]; then
  deploy/tools/install_ci_tools.sh
fi
