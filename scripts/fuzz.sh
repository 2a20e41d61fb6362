#!/usr/bin/env bash
# Fuzzes fastmalloc with libFuzzer (Debian's clang): tests/fuzz/alloc_fuzz.cpp drives sequences
# of malloc/calloc/realloc/aligned/free/usable-size calls from the fuzz input against
# libfastmalloc.so and checks every invariant after each call. It starts from the corpus kept
# in tests/fuzz/corpus and runs for a bounded time; a failed check or a crash leaves the input
# in the work directory and exits non-zero.
#   bash scripts/fuzz.sh [--seconds N] [--build-dir DIR] [--merge]
#     --seconds N    how long to fuzz (default 60)
#     --build-dir D  the build directory (default build/); the fuzzer and its instrumented
#                    build of the library go in D/fuzz/
#     --merge        afterwards, fold the inputs that found new coverage into tests/fuzz/corpus
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60 build=build merge=0
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --build-dir) build=$2; shift 2 ;;
    --merge) merge=1; shift ;;
    *) echo "usage: bash scripts/fuzz.sh [--seconds N] [--build-dir DIR] [--merge]" >&2; exit 2 ;;
  esac
done

source scripts/lib/packages.sh
ensure_packages cmake make clang libclang-rt-14-dev catch2

mkdir -p "$build"
build=$(cd "$build" && pwd)
work=$build/fuzz
mkdir -p "$work/corpus"
# The library is built again with clang, instrumented, so that libFuzzer is guided by the
# allocator's own branches (the fuzzer executable provides the coverage callbacks).
cmake -S . -B "$work/lib" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DFASTMALLOC_FUZZ_COVERAGE=ON >/dev/null
cmake --build "$work/lib" -j"$(nproc)" --target fastmalloc >/dev/null
# -fno-builtin: clang would otherwise fold calls it thinks it understands (calloc of an
# overflowing product becomes NULL without errno), and the target is there to make those calls.
clang++ -std=c++20 -O1 -g -fno-builtin -fsanitize=fuzzer,undefined -fno-sanitize-recover=undefined \
  tests/fuzz/alloc_fuzz.cpp -L"$work/lib" -lfastmalloc -Wl,-rpath,"$work/lib" -o "$work/alloc_fuzz"

# New inputs go to the work corpus; the kept one is only read.
cd "$work"
./alloc_fuzz -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=512 -print_final_stats=1 \
  corpus "$OLDPWD/tests/fuzz/corpus" 2> alloc_fuzz.log || {
  grep -v '^#' alloc_fuzz.log | tail -25
  echo "fuzz: a check failed or the allocator crashed; the input is in $work (crash-*)"
  exit 1
}
grep -E '^stat::number_of_executed_units|^stat::new_units_added' alloc_fuzz.log | tr '\n' ' '
echo
if [ "$merge" = 1 ]; then
  ./alloc_fuzz -merge=1 -max_len=512 "$OLDPWD/tests/fuzz/corpus" corpus 2>/dev/null
  echo "fuzz: tests/fuzz/corpus now holds $(ls "$OLDPWD/tests/fuzz/corpus" | wc -l) inputs"
fi
