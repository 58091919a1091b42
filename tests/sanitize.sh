#!/usr/bin/env bash
# The C++ extension built with AddressSanitizer and UndefinedBehaviorSanitizer (plus the search's
# bounds checks and libstdc++'s container assertions), in its own build folder, and the tests
# that reach C++ run against it. The in-place build is left alone: the package and the tests
# (the working tree) are copied into build/sanitize/tree, next to the sanitized flashlb/_C.
#
#   bash tests/sanitize.sh            # PYTHON=... to choose the interpreter (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
# The tests run from a copy of the tree below: a relative interpreter path must be made absolute.
case "$PY" in /*) ;; */*) PY="$PWD/$PY" ;; *) PY=$(command -v "$PY") ;; esac
OUT=build/sanitize
CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize=vptr -fno-omit-frame-pointer -g -UNDEBUG \
-DFLASHLB_BOUNDS_CHECKS -D_GLIBCXX_ASSERTIONS"

echo "sanitize: building the extension into $OUT"
rm -rf "$OUT/tree"
mkdir -p "$OUT/tree"
CFLAGS="$CXX_FLAGS" LDFLAGS="-fsanitize=address,undefined" MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" setup.py -q build_ext --build-temp "$OUT/temp" --build-lib "$OUT/lib" >"$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log"; exit 1; }
# The working tree (its tests read kernels/, CMakeLists.txt, ...), without builds and caches.
tar -c --exclude=./build --exclude=./.venv --exclude=./.git --exclude='*.so' --exclude=__pycache__ \
  --exclude=.hypothesis --exclude=.pytest_cache . | tar -x -C "$OUT/tree"
cp "$OUT"/lib/flashlb/_C*.so "$OUT/tree/flashlb/"

# Python itself is not instrumented: the ASan runtime must be loaded first, and libstdc++ with
# it (else ASan's __cxa_throw interceptor finds no real one and every C++ exception aborts).
# Leaks of the interpreter and of torch are not ours (detect_leaks=0); any report fails the run.
ASAN_LIB=$(${CXX:-c++} -print-file-name=libasan.so)
STDCXX_LIB=$(${CXX:-c++} -print-file-name=libstdc++.so)
export LD_PRELOAD="$ASAN_LIB:$STDCXX_LIB${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_odr_violation=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$PWD/$OUT/tree"
cd "$OUT/tree"
"$PY" - <<'EOF'
import flashlb, pathlib
assert pathlib.Path(flashlb.__file__).resolve().is_relative_to(pathlib.Path.cwd()), flashlb.__file__
EOF
echo "sanitize: running the C++-touching tests"
"$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_solver.py tests/test_redeploy.py \
  tests/test_hostile.py "$@"
