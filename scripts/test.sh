#!/usr/bin/env bash
# Runs every test (slow ones included) in .venv. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -p no:cacheprovider -n "${PYTEST_WORKERS:-2}" --durations=15 "$@"
rc=$?
set -e
# pytest exit 5 = no tests collected: treat as failure (CI must run tests).
exit $rc
