#!/usr/bin/env bash
# Set up .venv at the repo root with torch (the CPU build, 2.13.0) and flashlb with its C++
# extension; build the Ascend C kernels too where CANN is found. With --test, also install the
# released vLLM and SGLang wheels (into .venv/upstream) and vllm-ascend's with its vLLM (into
# .venv/upstream-ascend), without their dependencies, for the tests that run the adapters
# through them. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in
  "") WITH_TESTS=0 ;;
  --test) WITH_TESTS=1 ;;
  *) echo "build.sh: unknown argument '$1' (usage: bash build.sh [--test])" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
VENV=.venv
TORCH_VERSION=${FLASHLB_TORCH_VERSION:-2.13.0}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

# torch, the CPU build by its exact name (the registry's default on Linux is a CUDA build):
# 1. from the indexes and wheel folders pip is configured with (e.g. a local find-links);
# 2. from PyTorch's CPU index; 3. else the registry's default build, said in one line.
install_torch() {
  local want="$TORCH_VERSION+cpu"
  if "$VENV/bin/python" -c "import sys, torch; sys.exit(torch.__version__ != '$want')" 2>/dev/null; then
    return
  fi
  pip_install "torch==$want" 2>/dev/null && return
  pip_install --retries 1 --timeout 30 --index-url https://download.pytorch.org/whl/cpu \
    "torch==$want" 2>/dev/null && return
  echo "build.sh: no CPU build of torch $TORCH_VERSION reachable; installing the registry's default build"
  pip_install "torch==$TORCH_VERSION"
}
install_torch
pip_install numpy ninja "setuptools>=77" wheel safetensors pytest hypothesis matplotlib

# flashlb itself, without build isolation: the extension is compiled against this torch, and
# the installed package then requires exactly this torch.
stamp="$VENV/.flashlb-build"
want=$(cat setup.py pyproject.toml $(find host -type f | sort) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c "import flashlb" 2>/dev/null; then
  pip_install --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
bash kernels/build_npu.sh

[ "$WITH_TESTS" = 1 ] || exit 0
# The serving stacks' released code for tests/test_integrations_upstream.py: the wheels without
# their dependencies, plus the light libraries their EPLB modules import (pinned together), each
# set in a folder of its own; a set that cannot be installed is removed and its tests skip.
light="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  msgspec==0.22.0 regex==2026.11.19 psutil==7.2.2 orjson==3.13.0 cachetools==8.0.2
  cloudpickle==3.1.3 cbor2==6.3.0 pyzmq==27.3.0 py-cpuinfo==9.0.0 pybase64==1.5.1
  requests==2.34.2 urllib3==2.8.0 idna==3.20 charset-normalizer==3.5.3 certifi==2026.10.19.post1
  tqdm==4.70.1 uvloop==0.23.0 prometheus-client==0.26.0"
install_upstream() {  # folder, what the tests run, packages
  local dir=$1 what=$2 want
  shift 2
  want=$(echo "$@" | sha256sum | cut -d' ' -f1)
  [ "$(cat "$dir/.flashlb-want" 2>/dev/null)" = "$want" ] && return
  rm -rf "$dir"
  if pip_install --no-deps --target "$dir" "$@" 2>/dev/null; then
    echo "$want" > "$dir/.flashlb-want"
  else
    rm -rf "$dir"
    echo "build.sh: the $what wheels could not be installed; their upstream tests will skip"
  fi
}
install_upstream "$VENV/upstream" "vLLM/SGLang" vllm==0.33.0 sglang==0.5.23 $light
# vllm-ascend's newest release, 0.23.0.post1, is published only as an sdist whose build needs
# CANN; its Python code, EPLB included, is the 0.23.0 wheel's. That wheel goes beside the vLLM
# it is built for (0.23.0), with transformers, whose version that vLLM's config reads at import.
install_upstream "$VENV/upstream-ascend" "vllm-ascend" vllm-ascend==0.23.0 vllm==0.23.0 \
  transformers==5.5.4 $light
