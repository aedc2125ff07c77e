#!/usr/bin/env bash
# Usage: scripts/setup-venv.sh VENV_DIR [EXTRAS]
# Creates (or reuses) a Python 3.11+ virtual environment and installs this project into it (editable).
# Everything the project needs comes from PyPI through this script; with the test extra it also installs the few
# Debian libraries PyQt5 needs when they are missing, and Debian's chromium for the report.html browser test
# (overlay PNGs need none: Slicer's slice compositing).
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
# The GUI harness (test extra) runs real Qt offscreen from the PyQt5 wheel, which needs a few system libraries
# (OpenGL/EGL, fontconfig, xkbcommon, D-Bus, GLib). Debian images usually have them; install them when missing.
if [[ ",$EXTRAS," == *",test,"* ]]; then
  if ! QT_QPA_PLATFORM=offscreen "$VENV/bin/python" -c 'from PyQt5 import QtWidgets' >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq libgl1 libegl1 libfontconfig1 libxkbcommon0 libdbus-1-3 \
        libglib2.0-0 >/dev/null
    fi
    QT_QPA_PLATFORM=offscreen "$VENV/bin/python" -c 'from PyQt5 import QtWidgets' \
      || { echo "PyQt5 cannot load: install Debian's libgl1 libegl1 libfontconfig1 libxkbcommon0" >&2; exit 1; }
  fi
  # The report test opens report.html in a real headless browser (Debian's chromium).
  if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
    command -v chromium >/dev/null \
      || echo "chromium is missing: the report.html browser test will skip (install Debian's chromium)" >&2
  fi
fi
