#!/usr/bin/env bash
# The library's dynamic symbol table holds exactly the API: the C functions, the 20 C++
# operators, vfork where the per-CPU caches use rseq (x86-64), and nothing of the allocator's
# insides.
set -euo pipefail
lib=$1
expected=$(cat <<'LIST' | sort
__libc_calloc
__libc_free
__libc_malloc
__libc_memalign
__libc_pvalloc
__libc_realloc
__libc_valloc
__posix_memalign
aligned_alloc
calloc
cfree
fastmalloc_get_property
fastmalloc_release_memory
fastmalloc_stats_print
free
mallinfo
mallinfo2
malloc
malloc_info
malloc_stats
malloc_trim
malloc_usable_size
mallopt
memalign
posix_memalign
pvalloc
realloc
reallocarray
valloc
_Znwm
_Znam
_ZnwmRKSt9nothrow_t
_ZnamRKSt9nothrow_t
_ZnwmSt11align_val_t
_ZnamSt11align_val_t
_ZnwmSt11align_val_tRKSt9nothrow_t
_ZnamSt11align_val_tRKSt9nothrow_t
_ZdlPv
_ZdaPv
_ZdlPvRKSt9nothrow_t
_ZdaPvRKSt9nothrow_t
_ZdlPvm
_ZdaPvm
_ZdlPvSt11align_val_t
_ZdaPvSt11align_val_t
_ZdlPvSt11align_val_tRKSt9nothrow_t
_ZdaPvSt11align_val_tRKSt9nothrow_t
_ZdlPvmSt11align_val_t
_ZdaPvmSt11align_val_t
LIST
)
if [ "$(uname -m)" = x86_64 ]; then
  expected=$(printf '%s\n' "$expected" vfork __vfork | sort)
fi
# Defined symbols, without the version node the linker adds for the version script.
actual=$(nm -D --defined-only "$lib" | awk '$2 != "A" {print $3}' | sed 's/@.*//' | sort)
if [ "$expected" != "$actual" ]; then
  echo "exported symbols differ from the API (< expected, > actual):"
  diff <(echo "$expected") <(echo "$actual") || true
  exit 1
fi
echo "exports: $(echo "$actual" | wc -l) symbols, exactly the API"

# The library needs only libc: C programs that preload it do not load libstdc++ and libm.
needed=$(readelf -d "$lib" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
[ "$needed" = "libc.so.6 " ] || { echo "FAIL: the library needs more than libc: $needed"; exit 1; }
echo "exports: needs only libc"
