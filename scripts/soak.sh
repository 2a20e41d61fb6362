#!/usr/bin/env bash
# Soak test: runs the stress workload (tests/tools/soak.cpp: 8 threads replacing blocks of
# 8 B - 1 MiB at random, handing some to other threads, reallocating others, every block
# pattern-checked) under libfastmalloc.so for MINUTES, printing RSS every few seconds. Fails if
# a block was corrupted, or if RSS did not stay flat (the largest RSS of the second half above
# 1.15x the largest of the first half).
#   bash scripts/soak.sh MINUTES [--build-dir DIR] [SOAK OPTIONS...]   (MINUTES may be a fraction)
# SOAK OPTIONS go to the program: --chaos adds malloc_trim, migrations, a 10 kHz signal and forks
# all through the run (tests/tools/soak.cpp), --threads N, --max-growth F.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash scripts/soak.sh MINUTES [--build-dir DIR] [--chaos] [--threads N] [--max-growth F]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
minutes=$1 build=build
shift
if [ "${1:-}" = "--build-dir" ]; then
  [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
  build=$2
  shift 2
fi

source scripts/lib/packages.sh
ensure_packages cmake g++ make catch2 libhwloc-dev pkg-config
if [ ! -x "$build/tests/soak" ] || [ ! -f "$build/libfastmalloc.so" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" --target fastmalloc soak >/dev/null
fi
seconds=$(awk -v m="$minutes" 'BEGIN { s = m * 60; if (s <= 0) exit 1; print s }') || {
  echo "soak: MINUTES must be a positive number" >&2; exit 2; }
# Sample about 60 times over the run, at least every 10 s.
interval=$(awk -v s="$seconds" 'BEGIN { i = s / 60; if (i < 0.5) i = 0.5; if (i > 10) i = 10; print i }')
LD_PRELOAD="$(cd "$build" && pwd)/libfastmalloc.so" "$build/tests/soak" --seconds "$seconds" --interval "$interval" "$@"
