#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite, slow tests included.
# Extra arguments go to pytest, e.g. `bash sh/test.sh -m "not slow"` for the fast subset.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/sh/setup_env.sh" test
cd "$ROOT"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"
