#!/usr/bin/env bash
# The FASTMALLOC_* options as a user meets them: an unknown name and a bad value each get one
# line naming them (and the default is kept), FASTMALLOC_HELP lists every option, and a valid
# value takes effect.
set -euo pipefail
lib=$1
memory_return=$2
run() { env "$@" LD_PRELOAD="$lib" /usr/bin/python3 -c 'pass' 2>&1 >/dev/null; }

out=$(run FASTMALLOC_NO_SUCH_OPTION=1)
[ "$(grep -c '^fastmalloc: ignoring FASTMALLOC_NO_SUCH_OPTION=1: unknown option' <<<"$out")" = 1 ] ||
  { echo "FAIL: unknown option not reported once: $out"; exit 1; }

out=$(run FASTMALLOC_STATS=maybe)
grep -q '^fastmalloc: ignoring FASTMALLOC_STATS=maybe: expected 1/0, true/false, yes/no or on/off' <<<"$out" ||
  { echo "FAIL: bad value not reported: $out"; exit 1; }
! grep -q '^fastmalloc: mode=' <<<"$out" || { echo "FAIL: the bad value did not keep the default (off)"; exit 1; }

out=$(run FASTMALLOC_HELP=yes)
for name in STATS RSEQ CPU_CACHE_SIZE DECAY HELP; do
  grep -q "^fastmalloc: FASTMALLOC_$name (" <<<"$out" || { echo "FAIL: HELP does not list $name: $out"; exit 1; }
done

out=$(run FASTMALLOC_stats=ON FASTMALLOC_RSEQ=off)  # names and values in any case
grep -q '^fastmalloc: mode=fallback$' <<<"$out" || { echo "FAIL: STATS=ON / RSEQ=off not applied: $out"; exit 1; }
out=$(run FASTMALLOC_CPU_CACHE_SIZE=12Q FASTMALLOC_DECAY=2x)
grep -q '^fastmalloc: ignoring FASTMALLOC_CPU_CACHE_SIZE=12Q: expected a size' <<<"$out" ||
  { echo "FAIL: bad size not reported: $out"; exit 1; }
grep -q '^fastmalloc: ignoring FASTMALLOC_DECAY=2x: expected a duration' <<<"$out" ||
  { echo "FAIL: bad duration not reported: $out"; exit 1; }

# A cache size takes effect: after 64 MiB of blocks come and go, the per-CPU caches hold no
# more than 64 KiB per cache (and more than that without the option).
cached() {
  env "$@" FASTMALLOC_STATS=1 LD_PRELOAD="$lib" "$memory_return" --mib 64 --within 0 2>&1 >/dev/null |
    sed -n 's/^fastmalloc: cpu_cache: .*cached_bytes=\([0-9]*\) caches=\([0-9]*\)$/\1 \2/p'
}
read -r small caches < <(cached FASTMALLOC_CPU_CACHE_SIZE=64K)
read -r large _ < <(cached)
[ -n "$small" ] && [ "$small" -le $((65536 * caches)) ] ||
  { echo "FAIL: CPU_CACHE_SIZE=64K left $small bytes in $caches caches"; exit 1; }
[ "$large" -gt $((65536 * caches)) ] || { echo "FAIL: default caches held only $large bytes"; exit 1; }

echo "options: unknown names and bad values reported, defaults kept, HELP lists all, values applied"
