#!/usr/bin/env bash
# The allocator comparison: installs the allocators and tools it needs (Debian packages, when
# missing), builds fastmalloc and the benchmark, and runs every workload under glibc, jemalloc,
# mimalloc, tcmalloc and fastmalloc. Options: bash scripts/bench.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/packages.sh
ensure_packages cmake g++ make catch2 libhwloc-dev pkg-config python3 gnuplot-nox \
  libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target fastmalloc alloc_bench sync_bench >/dev/null
exec python3 bench/run_bench.py "$@"
