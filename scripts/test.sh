#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this):
#  1. installs whatever is missing (scripts/setup.sh; skips what is there),
#  2. checks the formatting, builds with warnings as errors and runs every test,
#  3. builds again with clang, ASan + UBSan and libFuzzer instrumentation, and
#     -Wthread-safety (every lock annotation checked), as errors, and runs the
#     unit tests plus a short smoke run of every fuzz target.
# Environment: JOBS (default 2); PREMOE_SKIP_SANITIZERS=1 skips step 3.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}

scripts/setup.sh

echo "== format (clang-format, .clang-format)"
if ! git ls-files '*.cc' '*.h' | xargs clang-format --dry-run --Werror; then
  echo "test: run clang-format -i on the files above" >&2
  exit 1
fi

echo "== build (gcc, -Werror)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPREMOE_WERROR=ON >/dev/null
cmake --build build -j"$JOBS"

if [ "${PREMOE_SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== build (clang, ASan + UBSan, fuzzers)"
  CC=clang CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" -DPREMOE_SANITIZE=address,undefined -DPREMOE_FUZZ=ON \
    -DPREMOE_BUILD_BENCH=OFF \
    -DPREMOE_WERROR=ON >/dev/null
  cmake --build build-asan -j"$JOBS"
  echo "== sanitizer run: unit tests and fuzz smoke tests"
  # 20 kills per crash test here (70 in the plain run: 200 in all).
  ASAN_OPTIONS=detect_leaks=1 LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp \
    UBSAN_OPTIONS=print_stacktrace=1 PREMOE_CRASH_KILLS=20 \
    ctest --test-dir build-asan -L 'unit|fuzz' --output-on-failure -j"$JOBS"
fi

echo "== all tests"
ctest --test-dir build --output-on-failure -j"$JOBS"
