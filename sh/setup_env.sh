#!/usr/bin/env bash
# Create .venv (if missing) and install gpaco with the given extras.
# Idempotent: re-installs only when pyproject.toml changed since the last install.
# Usage: bash sh/setup_env.sh [extras]   (extras default: test; e.g. demo, "test,autoattack")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPACO_TAKES_ARGS=1 . "$ROOT/sh/lib/usage.bash" "$@"   # --help: print the header above
EXTRAS="${1:-test}"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.gpaco-installed-$EXTRAS"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "[setup] installing gpaco[$EXTRAS] into $VENV (torch 2.14.1 installs from local disk here: about a minute)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]"
    echo "$WANT" > "$STAMP"
fi
