#!/usr/bin/env bash
# Installs what neatt needs on a fresh machine; fast when nothing changed.
#   1. the native libraries that ffcv and neatt's JPEG window decoder build against (apt, when run as root)
#   2. a virtual environment in $VENV with neatt and its Python packages
# Usage: tools/setup_env.sh [VENV]    (default .venv; called by `make setup`)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
APT_PACKAGES="pkg-config libopencv-dev libturbojpeg0-dev libjpeg-dev"

missing=""
for pkg in $APT_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing system libraries:$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "[setup] ffcv and neatt build against these system libraries, which are missing:$missing" >&2
        echo "[setup] install them (e.g. 'sudo apt-get install$missing'), or use environment.yml with conda," >&2
        echo "[setup] then run this again." >&2
        exit 1
    fi
fi

# The stamp names the hash of the package's build files and C source: a changed dependency list, or a changed
# decoder, reinstalls (which also rebuilds the decoder).
stamp="$VENV/.neatt-installed-$(cat pyproject.toml setup.py pipelines/*.c | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && ls pipelines/_jpeg_window.*.so >/dev/null 2>&1; then
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "[setup] installing Python packages into $VENV (first time: a few minutes)"
"$VENV/bin/pip" install -q --upgrade pip wheel setuptools
"$VENV/bin/pip" install -q -e ".[dev]"
rm -f "$VENV"/.neatt-installed-*
touch "$stamp"
echo "[setup] done"
