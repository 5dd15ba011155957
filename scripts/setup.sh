#!/usr/bin/env bash
# One-time (and idempotent) set-up on a fresh Debian 12 / Ubuntu machine:
#   1. apt: the headers and compiler ffcv 1.0.2 builds with (it ships no wheels), and the
#      distribution Python's headers and venv module when that is the Python used,
#   2. a virtual environment in .venv with the pinned Python packages and this project.
# Rerunning is cheap: pip runs again only when pyproject.toml or requirements/ change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# (g++: ffcv's extension is C++; a stock Debian/Ubuntu image has no compiler)
APT_PACKAGES=(libopencv-dev libturbojpeg0-dev pkg-config g++)
case "$(readlink -f "$(command -v "$PYTHON" || echo "$PYTHON")")" in
  # the distribution's Python: its headers and venv module are packages of their own, named
  # by its version (python3.11-dev, python3.11-venv: PYTHON=python3.12 needs the 3.12 ones)
  /usr/bin/*) v=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
              APT_PACKAGES+=("python$v-dev" "python$v-venv") ;;
esac
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${missing[@]}" >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  # (also a .venv a failed attempt left without pip: created again)
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv --clear .venv
fi
want=$(cat pyproject.toml requirements/cpu.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -r requirements/cpu.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  .venv/bin/python -c "import ffcv.loader, webdataset, numba, torch, torchvision" 2>/dev/null \
    || { echo "setup: import check failed (ffcv/webdataset/numba/torch)" >&2; exit 1; }
  echo "$want" > .venv/.setup-stamp
fi
echo "setup: ready (.venv/bin/just, .venv/bin/dp4tl)"
