#!/usr/bin/env bash
# The allocator comparison: installs the allocators and tools it needs (Debian packages, when
# missing), builds fastmalloc and the benchmark, and runs every workload under glibc, jemalloc,
# mimalloc, tcmalloc and fastmalloc. Options: bash scripts/bench.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake g++ make catch2 libhwloc-dev pkg-config python3 gnuplot-nox
          libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench.sh: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target fastmalloc alloc_bench >/dev/null
exec python3 bench/run_bench.py "$@"
