#!/usr/bin/env bash
# Installs what the build and the tests need (Debian packages, when missing), configures and
# builds into build/, and runs the whole test suite with CTest.
#   bash scripts/test.sh              build and run every test
#   bash scripts/test.sh -R REGEX     run only the tests whose names match (passed to ctest)
#   bash scripts/test.sh --sanitize   instead, the unit and stress tests of the allocator's
#                                     modules under AddressSanitizer+UBSan (build-asan/) and
#                                     ThreadSanitizer (build-tsan/): CMakePresets.json
#   bash scripts/test.sh --clang      instead, the library and its unit and preloaded tests
#                                     built with clang++ (build-clang/), which must build and
#                                     behave as the g++ build does
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/packages.sh

if [ "${1:-}" = "--sanitize" ]; then
  shift
  ensure_packages cmake g++ make catch2 libasan8 libubsan1 libtsan2
  for preset in asan tsan; do
    echo "== $preset"
    cmake --preset "$preset" >/dev/null
    cmake --build --preset "$preset" -j"$(nproc)"
    # halt_on_error: the first report fails the test; TSan's exit code says it reported.
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
      ctest --preset "$preset" -j"$(nproc)" --timeout 600 "$@"
  done
  exit 0
fi

if [ "${1:-}" = "--clang" ]; then
  shift
  ensure_packages cmake clang make catch2 libhwloc-dev pkg-config
  cmake -S . -B build-clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build-clang -j"$(nproc)"
  cd build-clang
  ctest --output-on-failure -j"$(nproc)" --timeout 600 -R "^(unit/|preload/|exports|link)" "$@"
  exit 0
fi

ensure_packages cmake g++ make catch2 libhwloc-dev pkg-config python3 sqlite3 git perl \
  clang libclang-rt-14-dev nodejs openjdk-17-jdk-headless

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
cd build
ctest --output-on-failure -j"$(nproc)" --timeout 600 "$@"
