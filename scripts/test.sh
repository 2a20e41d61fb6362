#!/usr/bin/env bash
# Installs what the build and the tests need (Debian packages, when missing), configures and
# builds into build/, and runs the whole test suite with CTest.
#   bash scripts/test.sh            build and run every test
#   bash scripts/test.sh -R REGEX   run only the tests whose names match (passed to ctest)
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/packages.sh
ensure_packages cmake g++ make catch2 libhwloc-dev pkg-config python3 sqlite3 git perl

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
cd build
ctest --output-on-failure -j"$(nproc)" --timeout 600 "$@"
