#!/usr/bin/env bash
# Runs the HTTP-layer tests with the oldest versions pyproject.toml admits for the web stack (the floors), so
# the floors stay true: fastapi, starlette (request.form(max_part_size=...) needs 0.44), pydantic (2.7:
# regex_engine, WithJsonSchema), pydantic-settings (2.7: NoDecode). Usage: scripts/check_floors.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
floors="$(mktemp -d)"
trap 'rm -rf "$floors"' EXIT
.venv/bin/python -m pip install -q --no-deps --target "$floors" \
  fastapi==0.115.8 starlette==0.44.0 pydantic==2.7.0 pydantic-core==2.18.1 pydantic-settings==2.7.0
PYTHONPATH="$floors" .venv/bin/python -c \
  "import fastapi, starlette, pydantic; print('floors:', fastapi.__version__, starlette.__version__, pydantic.VERSION)"
PYTHONPATH="$floors" .venv/bin/python -m pytest -q -p no:cacheprovider tests/service/routes tests/service/test_settings.py "$@"
