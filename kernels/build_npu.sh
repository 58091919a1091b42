#!/usr/bin/env bash
# Build the Ascend C kernels and their NPU launchers (CMakeLists.txt) into
# flashlb/libflashlb_npu.so (the package folder, so an install ships it; build it before
# installing the package), where CANN is found; elsewhere say so in one line and succeed.
# The chip: SOC_VERSION, else npu-smi (A2 names such as 910B3 -> Ascend910B3; A3 boards report
# "Chip Name Ascend910" with an "NPU Name" such as 9392 -> Ascend910_9392). SoCs without
# DataCopyPad (310P, 910A, ...) are refused. FLASHLB_NPU_DRY_RUN=1 stops after choosing the chip.
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
CHOSEN=${SOC:+yes}
if [ -z "$SOC" ] && command -v npu-smi >/dev/null 2>&1; then
  board=$(npu-smi info -t board -i 0 -c 0 2>/dev/null || true)
  chip=$(printf '%s\n' "$board" | awk -F: '/Chip Name/{gsub(/[ \t]/, "", $2); print $2; exit}')
  npu=$(printf '%s\n' "$board" | awk -F: '/NPU Name/{gsub(/[ \t]/, "", $2); print $2; exit}')
  if [ -n "$chip" ] && [ -n "$npu" ]; then
    SOC=${chip}_${npu}                     # A3: Ascend910 + 9392 -> Ascend910_9392
  elif [ -n "$chip" ]; then
    SOC=Ascend${chip#Ascend}               # A2: 910B3 -> Ascend910B3
  else
    # e.g. "910B1" in the Name column of `npu-smi info` -> Ascend910B1
    SOC=Ascend$(npu-smi info | awk '/^\| [0-9]+ +[0-9A-Za-z]+ /{print $3; exit}')
  fi
fi
SOC=${SOC:-Ascend910B1}
case "$SOC" in
  Ascend910B[0-9]*|Ascend910_93[0-9]*) ;;
  *)
    echo "build_npu.sh: $SOC has no DataCopyPad, which the kernels need (Atlas A2 Ascend910B* and A3 Ascend910_93* have it): not building the Ascend C kernels" >&2
    # Asked for by SOC_VERSION: an error; found on this host: the plain-torch paths serve it.
    [ -n "$CHOSEN" ] && exit 1
    exit 0 ;;
esac
if [ "${FLASHLB_NPU_DRY_RUN:-0}" = 1 ]; then
  echo "$SOC"
  exit 0
fi
PY=${PYTHON:-.venv/bin/python}
echo "build.sh: building the Ascend C kernels with CANN at $CANN for $SOC"
cmake -S . -B build/npu -DASCEND_HOME_PATH="$CANN" -DASCEND_CANN_PACKAGE_PATH="$CANN" -DSOC_VERSION="$SOC" \
  -DPython3_EXECUTABLE="$PY" -DFLASHLB_NPU_INSTALL_DIR="$PWD/flashlb"
cmake --build build/npu -j "$(nproc)"
cmake --install build/npu
