#!/usr/bin/env bash
# Set up .venv at the repo root with torch (the CPU build, 2.13.0) and flashlb with its C++
# extension; build the Ascend C kernels too where CANN is found. Safe to run again: the
# extension is rebuilt only when host/ or setup.py changed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
# torch first, from its pinned CPU build; then the build and test tools; then flashlb itself
# without build isolation, so the build uses this torch instead of fetching another one.
pip_install torch==2.13.0
pip_install numpy ninja "setuptools>=64" wheel safetensors pytest hypothesis matplotlib
stamp="$VENV/.flashlb-build"
want=$(cat setup.py pyproject.toml $(find host -type f | sort) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c "import flashlb" 2>/dev/null; then
  pip_install --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
bash kernels/build_npu.sh
