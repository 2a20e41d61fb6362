#!/usr/bin/env bash
# In a setgid program (the kernel's AT_SECURE) the FASTMALLOC_ variables are ignored, as glibc
# and jemalloc ignore theirs: whoever starts a privileged program must not switch its allocator
# off rseq, size its caches or have its statistics printed. The same copy of the program without
# the setgid bit shows that the variables do take effect otherwise.
#   secure_test.sh LINK_TEST SCRATCH_DIR
# Needs root, to give the copy another group; exits 77 (skipped) otherwise, or where the scratch
# directory is on a nosuid mount.
set -euo pipefail
program=$1
scratch=$2
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root to make a setgid program"; exit 77; }
mkdir -p "$scratch"
dir=$(mktemp -d "$scratch/secure.XXXXXX")
trap 'rm -rf "$dir"' EXIT
if findmnt -no OPTIONS --target "$dir" | tr ',' '\n' | grep -qx nosuid; then
  echo "SKIP: $dir is on a nosuid mount"
  exit 77
fi
group=$(getent group nogroup >/dev/null && echo nogroup || echo nobody)
cp "$program" "$dir/plain"
cp "$program" "$dir/setgid"
chgrp "$group" "$dir/setgid"
chmod 2755 "$dir/setgid"

run() { env FASTMALLOC_RSEQ=0 FASTMALLOC_HELP=1 FASTMALLOC_NO_SUCH_OPTION=1 "$1" 2>&1; }

out=$(run "$dir/plain")
grep -q '^fastmalloc: mode=fallback$' <<<"$out" || { echo "FAIL: FASTMALLOC_RSEQ=0 not applied to the plain copy: $out"; exit 1; }
grep -q '^fastmalloc: FASTMALLOC_HELP (' <<<"$out" || { echo "FAIL: no help from the plain copy: $out"; exit 1; }

# The mode the program runs in with no options (rseq where the kernel allows it).
default_mode=$("$dir/plain" 2>&1 | grep '^fastmalloc: mode=')
out=$(run "$dir/setgid")
grep -q 'linked ok' <<<"$out" || { echo "FAIL: the setgid copy did not run: $out"; exit 1; }
grep -qx "$default_mode" <<<"$out" || { echo "FAIL: the setgid copy took FASTMALLOC_RSEQ=0 ($default_mode by default): $out"; exit 1; }
if grep -q -e 'FASTMALLOC_HELP (' -e 'NO_SUCH_OPTION' <<<"$out"; then
  echo "FAIL: the setgid copy read the environment: $out"
  exit 1
fi
echo "ok: the setgid copy kept the defaults and printed nothing of the environment's"
