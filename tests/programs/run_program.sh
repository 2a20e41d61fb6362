#!/usr/bin/env bash
# Runs a real program's workload twice, without and with libfastmalloc.so preloaded, and checks
# that (1) the outputs are the same and (2) the library was really loaded and used: with
# FASTMALLOC_STATS=1 every process using it reports at exit, and at least one must report
# allocations.
#   run_program.sh python|sqlite3|git|perl|gxx|dash|xz|java|node PATH/TO/libfastmalloc.so
set -euo pipefail
program=$1
lib=$(readlink -f "$2")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Fixed identity and dates so git produces the same commits twice.
export GIT_AUTHOR_NAME=Test GIT_AUTHOR_EMAIL=test@example.com GIT_COMMITTER_NAME=Test
export GIT_COMMITTER_EMAIL=test@example.com GIT_AUTHOR_DATE="2026-01-01T00:00:00Z"
export GIT_COMMITTER_DATE="2026-01-01T00:00:00Z" GIT_CONFIG_NOSYSTEM=1 HOME=$work

# 8.6 MB of text, the same every time, for xz to compress on two threads (34 blocks).
text_input() {
  awk 'BEGIN { srand(1); for (i = 0; i < 200000; i++) printf "%d %x line %d of the input\n", int(rand() * 1e9), i * 7919, i }'
}

# The workload; run in its own directory ($1), printing what must match.
workload() {
  local dir=$1
  mkdir -p "$dir" && cd "$dir"
  case $program in
    python) PYTHONMALLOC=malloc PYTHONHASHSEED=0 /usr/bin/python3 "$here/workload.py" ;;
    sqlite3) sqlite3 :memory: < "$here/workload.sql" ;;
    perl) perl "$here/workload.pl" ;;
    git) bash "$here/git_workload.sh" ;;
    gxx) g++ -std=c++17 -O2 -c "$here/workload.cpp" -o out.o && sha256sum out.o | cut -d' ' -f1 ;;
    dash) dash "$here/workload.dash" ;;
    xz) text_input > in.txt
        xz -T2 --block-size=256KiB -c in.txt > in.txt.xz
        sha256sum < in.txt.xz | cut -d' ' -f1
        xz -T2 -d -c in.txt.xz | cmp - in.txt && echo "round trip ok" ;;
    java) java "$here/Workload.java" ;;
    node) node "$here/workload.js" ;;
    *) echo "unknown program $program" >&2; exit 2 ;;
  esac
}

(workload "$work/plain") > "$work/plain.out"
(export LD_PRELOAD=$lib FASTMALLOC_STATS=1; workload "$work/preloaded") > "$work/preloaded.out" 2> "$work/preloaded.err"

if ! cmp -s "$work/plain.out" "$work/preloaded.out"; then
  echo "FAIL: $program output differs with libfastmalloc.so"
  diff "$work/plain.out" "$work/preloaded.out" | head -20
  exit 1
fi
[ -s "$work/plain.out" ] || { echo "FAIL: $program printed nothing"; exit 1; }
reports=$(grep -c '^fastmalloc: mode=' "$work/preloaded.err" || true)
busy=$(grep -cE '^fastmalloc: central: allocations=[1-9]' "$work/preloaded.err" || true)
if [ "$reports" -lt 1 ] || [ "$busy" -lt 1 ]; then
  echo "FAIL: $program did not run on fastmalloc (reports=$reports, with allocations=$busy)"
  head -5 "$work/preloaded.err"
  exit 1
fi
echo "$program: same output ($(wc -c < "$work/plain.out") bytes); $reports processes reported by fastmalloc, $busy with allocations"
