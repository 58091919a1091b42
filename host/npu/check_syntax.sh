#!/usr/bin/env bash
# Compile the NPU launchers (host/npu/*.cpp) with -fsyntax-only against the ACL and torch_npu
# headers that the torch-npu wheel ships, on a machine without CANN. The wheel is fetched once
# (no dependencies, never imported) into .venv/torch-npu.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DEST=.venv/torch-npu
if [ ! -f "$DEST/torch_npu/include/acl/acl.h" ]; then
  rm -rf "$DEST.tmp"
  if ! "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$DEST.tmp" torch-npu==2.13.0; then
    echo "check_syntax: torch-npu==2.13.0 could not be downloaded; NPU launcher syntax not checked"
    exit 0
  fi
  mkdir -p "$DEST"
  "$PY" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [z.extract(n, sys.argv[2]) for n in z.namelist() if n.startswith('torch_npu/include/')]" "$DEST".tmp/*.whl "$DEST"
  rm -rf "$DEST.tmp"
fi
TORCH=$("$PY" -c "import torch, os; print(os.path.dirname(torch.__file__))")
PYINC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
for f in host/npu/*.cpp; do
  g++ -std=c++20 -fsyntax-only -Ihost/include -I"$DEST/torch_npu/include" \
      -I"$DEST/torch_npu/include/third_party/acl/inc" -I"$TORCH/include" \
      -I"$TORCH/include/torch/csrc/api/include" -I"$PYINC" "$f"
  echo "check_syntax: $f compiles against torch_npu 2.13.0 and ACL headers"
done
