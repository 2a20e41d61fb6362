#!/usr/bin/env bash
# The FASTMALLOC_* options as a user meets them: an unknown name and a bad value each get one
# line naming them (and the default is kept), FASTMALLOC_HELP lists every option, and a valid
# value takes effect.
set -euo pipefail
lib=$1
run() { env "$@" LD_PRELOAD="$lib" /usr/bin/python3 -c 'pass' 2>&1 >/dev/null; }

out=$(run FASTMALLOC_NO_SUCH_OPTION=1)
[ "$(grep -c '^fastmalloc: ignoring FASTMALLOC_NO_SUCH_OPTION=1: unknown option' <<<"$out")" = 1 ] ||
  { echo "FAIL: unknown option not reported once: $out"; exit 1; }

out=$(run FASTMALLOC_STATS=maybe)
grep -q '^fastmalloc: ignoring FASTMALLOC_STATS=maybe: expected 1/0, true/false, yes/no or on/off' <<<"$out" ||
  { echo "FAIL: bad value not reported: $out"; exit 1; }
! grep -q '^fastmalloc: mode=' <<<"$out" || { echo "FAIL: the bad value did not keep the default (off)"; exit 1; }

out=$(run FASTMALLOC_HELP=yes)
for name in STATS RSEQ HELP; do
  grep -q "^fastmalloc: FASTMALLOC_$name (" <<<"$out" || { echo "FAIL: HELP does not list $name: $out"; exit 1; }
done

out=$(run FASTMALLOC_stats=ON FASTMALLOC_RSEQ=off)  # names and values in any case
grep -q '^fastmalloc: mode=fallback$' <<<"$out" || { echo "FAIL: STATS=ON / RSEQ=off not applied: $out"; exit 1; }
echo "options: unknown names and bad values reported, defaults kept, HELP lists all, values applied"
