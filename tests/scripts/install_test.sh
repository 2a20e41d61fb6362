#!/usr/bin/env bash
# `cmake --install` gives a prefix from which a CMake project (find_package(fastmalloc)) and a
# pkg-config build both link a program to libfastmalloc.so.
set -euo pipefail
src=$1 build=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

cmake --install "$build" --prefix "$prefix" >/dev/null
for f in lib/libfastmalloc.so include/fastmalloc.h lib/pkgconfig/fastmalloc.pc \
         lib/cmake/fastmalloc/fastmalloc-config.cmake lib/cmake/fastmalloc/fastmalloc-targets.cmake; do
  [ -e "$prefix/$f" ] || { echo "missing after install: $f"; exit 1; }
done

# A consumer project using the CMake package.
mkdir -p "$work/consumer"
cp "$src/tests/link/link_test.c" "$work/consumer/main.c"
cat > "$work/consumer/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.20)
project(consumer C)
find_package(fastmalloc REQUIRED)
add_executable(consumer main.c)
target_link_libraries(consumer PRIVATE fastmalloc::fastmalloc ${CMAKE_DL_LIBS})
CMAKE
cmake -S "$work/consumer" -B "$work/consumer/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/consumer/build" >/dev/null
out=$(LD_LIBRARY_PATH=$prefix/lib "$work/consumer/build/consumer" 2>&1)
grep -q "linked ok" <<<"$out" || { echo "CMake consumer failed: $out"; exit 1; }

# The same program built with pkg-config's flags.
flags=$(PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs fastmalloc)
cc -o "$work/pc" "$src/tests/link/link_test.c" $flags -ldl
out=$(LD_LIBRARY_PATH=$prefix/lib "$work/pc" 2>&1)
grep -q "linked ok" <<<"$out" || { echo "pkg-config consumer failed: $out"; exit 1; }
echo "install: CMake package and pkg-config both link"
