#!/usr/bin/env bash
# Runs the whole preloaded suite in one of the allocator's modes and checks the mode the
# allocator reports (FASTMALLOC_STATS=1: "fastmalloc: mode=MODE" from every process that exits
# normally).
#   mode_test.sh MODE LIB PRELOAD_TESTS DENY_SYSCALLS
#   MODE: native      glibc's rseq registration        -> rseq-mmcid (rseq-cpu without mm_cid)
#         own         glibc's rseq tuned off: ours      -> rseq-mmcid (rseq-cpu without mm_cid)
#         off         FASTMALLOC_RSEQ=0                 -> fallback
#         seccomp     rseq refused with EPERM           -> fallback
#         enosys      rseq, membarrier and madvise
#                     refused with ENOSYS               -> fallback
#         nomembarrier rseq allowed, membarrier refused -> rseq-* (no remote drains)
#         nomadvise   madvise refused: free pages stay   -> rseq-*
#         harden      FASTMALLOC_HARDEN=1               -> rseq-*
set -euo pipefail
mode=$1 lib=$2 tests=$3 deny=$4
# mm_cid is live when the kernel fills at least 28 bytes of struct rseq (AT_RSEQ_FEATURE_SIZE, 27).
# ld.so prints it as "AT_RSEQ_FEATURE_SIZE: 28" or, not knowing the name, "AT_??? (0x1b): 0x1c".
feature=$(LD_SHOW_AUXV=1 /bin/true | awk '/AT_RSEQ_FEATURE_SIZE|\(0x1b\)/ {print $NF}')
rseq_mode=rseq-cpu
[ -n "$feature" ] && [ "$((feature))" -ge 28 ] && rseq_mode=rseq-mmcid
prefix=() env_vars=()
case $mode in
  native) expect=$rseq_mode ;;
  own) expect=$rseq_mode; env_vars=(GLIBC_TUNABLES=glibc.pthread.rseq=0) ;;
  off) expect=fallback; env_vars=(FASTMALLOC_RSEQ=0) ;;
  seccomp) expect=fallback; prefix=("$deny" rseq --) ;;
  enosys) expect=fallback; prefix=("$deny" --errno ENOSYS rseq,membarrier,madvise --); env_vars=(FM_TEST_NO_MADVISE=1) ;;
  nomembarrier) expect=$rseq_mode; prefix=("$deny" membarrier --) ;;
  nomadvise) expect=$rseq_mode; prefix=("$deny" madvise --); env_vars=(FM_TEST_NO_MADVISE=1) ;;
  harden) expect=$rseq_mode; env_vars=(FASTMALLOC_HARDEN=1) ;;
  *) echo "unknown mode $mode"; exit 2 ;;
esac
err=$(mktemp)
trap 'rm -f "$err"' EXIT
if ! env "${env_vars[@]}" LD_PRELOAD="$lib" FASTMALLOC_STATS=1 "${prefix[@]}" "$tests" 2> "$err"; then
  echo "FAIL: the preloaded suite failed in mode $mode"
  grep -v '^fastmalloc: [a-z_]*[:=]' "$err" | tail -40  # all but the statistics: reports and crash backtraces kept
  exit 1
fi
modes=$(grep -o '^fastmalloc: mode=[a-z-]*' "$err" | sort -u | sed 's/.*=//')
if [ "$modes" != "$expect" ]; then
  echo "FAIL: mode $mode reported '${modes//$'\n'/,}', expected $expect"
  exit 1
fi
hits=$(grep -o 'cpu_cache: alloc_hits=[0-9]*' "$err" | tail -1 | sed 's/.*=//')
echo "mode $mode: the whole preloaded suite passed; reported mode=$expect, per-CPU alloc hits=$hits"
