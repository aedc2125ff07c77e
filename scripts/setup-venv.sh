#!/usr/bin/env bash
# Usage: scripts/setup-venv.sh VENV_DIR [EXTRAS]
# Creates (or reuses) a Python 3.11+ virtual environment and installs this project into it (editable).
# Everything the project needs comes from PyPI through this script; no Debian package is required
# (overlay PNGs use Slicer's slice compositing, which needs no OpenGL).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
EXTRAS="${2:-}"
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or later is required"'
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 ships venv/ensurepip separately.
    rm -rf "$VENV"
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else
      echo "python3 -m venv failed: install Debian's python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
    "$PY" -m venv "$VENV"
  fi
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [ -n "$EXTRAS" ]; then
  "$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]"
else
  "$VENV/bin/python" -m pip install --quiet -e .
fi
