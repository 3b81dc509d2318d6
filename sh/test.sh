#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite, slow tests included, on one pytest
# worker per CPU core (pytest-xdist), each with one intra-op thread: on 2 cores that takes
# about half the time of one worker with two threads (most tests are small or wait on
# subprocesses, which one process cannot overlap).
# `bash sh/test.sh --full` adds the full tier (tests marked `full`: the dry run of every recipe, not only
# one per entry script and method, and the longest end-to-end runs): run it when recipes change.
# Extra arguments go to pytest, e.g. `bash sh/test.sh -m "not slow"` for the fast subset,
# `bash sh/test.sh -n 0` for one process, `bash sh/test.sh tests/test_losses.py`; pytest's own
# help: `bash sh/test.sh tests --help`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPACO_TAKES_ARGS=1 . "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
bash "$ROOT/sh/setup_env.sh" test
cd "$ROOT"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/python" -m pytest -q -n "${GPACO_TEST_WORKERS:-auto}" --dist worksteal "$@"
