#!/usr/bin/env bash
# Build the Ascend C kernels and their NPU launchers (CMakeLists.txt) into
# flashlb/libflashlb_npu.so, where CANN is found; elsewhere say so in one line and succeed.
set -euo pipefail
cd "$(dirname "$0")/.."
CANN=${ASCEND_HOME_PATH:-${ASCEND_TOOLKIT_HOME:-}}
if [ -z "$CANN" ]; then
  for env in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/cann/set_env.sh; do
    if [ -f "$env" ]; then
      set +u
      # shellcheck disable=SC1090
      source "$env"
      set -u
      CANN=${ASCEND_HOME_PATH:-${ASCEND_TOOLKIT_HOME:-}}
      break
    fi
  done
fi
if [ -z "$CANN" ]; then
  echo "build.sh: CANN not found (ASCEND_HOME_PATH unset): skipping the Ascend C kernels; the CPU and plain-torch paths are built"
  exit 0
fi
SOC=${SOC_VERSION:-}
if [ -z "$SOC" ] && command -v npu-smi >/dev/null 2>&1; then
  # e.g. "910B1" in the Name column of `npu-smi info` -> Ascend910B1
  SOC=Ascend$(npu-smi info | awk '/^\| [0-9]+ +[0-9A-Za-z]+ /{print $3; exit}')
fi
SOC=${SOC:-Ascend910B1}
PY=${PYTHON:-.venv/bin/python}
echo "build.sh: building the Ascend C kernels with CANN at $CANN for $SOC"
cmake -S . -B build/npu -DASCEND_HOME_PATH="$CANN" -DSOC_VERSION="$SOC" -DPython3_EXECUTABLE="$PY"
cmake --build build/npu -j "$(nproc)"
cmake --install build/npu
