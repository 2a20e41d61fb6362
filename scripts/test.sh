#!/usr/bin/env bash
# Installs what the build and the tests need (Debian packages, when missing), configures and
# builds into build/, and runs the whole test suite with CTest.
#   bash scripts/test.sh            build and run every test
#   bash scripts/test.sh -R REGEX   run only the tests whose names match (passed to ctest)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake g++ make catch2 libhwloc-dev pkg-config python3 sqlite3 git perl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd=sudo
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
cd build
ctest --output-on-failure -j"$(nproc)" --timeout 600 "$@"
