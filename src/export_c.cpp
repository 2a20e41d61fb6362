// The C API: the only default-visibility C symbols of the library. Each is a short forward to
// the front end, adding the argument checks its contract (glibc's) asks for.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <malloc.h>
#include <sys/types.h>

#include "base.h"
#include "cpu_cache.h"
#include "front_end.h"
#include "fastmalloc.h"
#include "os/os.h"
#include "page_heap.h"
#include "report.h"
#include "transfer_cache.h"
#include "vfork.h"

using namespace fastmalloc;

namespace {

// memalign and friends take any alignment: below a pointer it is raised to 16 (what malloc
// gives), otherwise rounded up to a power of two, as glibc does. Only one that no power of two
// holds (above 2^63) is refused with EINVAL; 2^63 itself fails as memory no address space has.
void* memalign_any(size_t align, size_t size) {
  if (align <= 16) return allocate_aligned(16, size);
  if (align > (size_t{1} << 63)) {
    errno = EINVAL;
    return nullptr;
  }
  if (!is_power_of_two(align)) align = size_t{1} << (64 - __builtin_clzll(align));
  return allocate_aligned(align, size);
}

void* page_aligned(size_t size) { return allocate_aligned(os::hardware_page_size(), size); }

}  // namespace

extern "C" {

FM_EXPORT void* malloc(size_t size) noexcept { return allocate(size); }
FM_EXPORT void free(void* p) noexcept { deallocate(p, "free"); }
FM_EXPORT void cfree(void* p) noexcept { deallocate(p, "cfree"); }
FM_EXPORT void* calloc(size_t count, size_t size) noexcept { return allocate_zeroed(count, size); }
FM_EXPORT void* realloc(void* p, size_t size) noexcept { return reallocate(p, size, "realloc"); }

FM_EXPORT void* reallocarray(void* p, size_t count, size_t size) noexcept {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return nullptr;
  }
  return reallocate(p, total, "reallocarray");
}

FM_EXPORT int posix_memalign(void** out, size_t align, size_t size) noexcept {
  if (!is_power_of_two(align) || align % sizeof(void*) != 0) return EINVAL;
  int saved_errno = errno;
  void* p = allocate_aligned(align, size);
  if (p == nullptr) {
    errno = saved_errno;
    return ENOMEM;
  }
  *out = p;
  return 0;
}

// C17: an alignment that is not a power of two is refused (glibc 2.38 and later do the same).
FM_EXPORT void* aligned_alloc(size_t align, size_t size) noexcept {
  if (!is_power_of_two(align)) {
    errno = EINVAL;
    return nullptr;
  }
  return allocate_aligned(align, size);
}

FM_EXPORT void* memalign(size_t align, size_t size) noexcept { return memalign_any(align, size); }
FM_EXPORT void* valloc(size_t size) noexcept { return page_aligned(size); }

FM_EXPORT void* pvalloc(size_t size) noexcept {
  size_t page = os::hardware_page_size();
  size_t rounded = round_up(size == 0 ? 1 : size, page);
  if (rounded < size) {
    errno = ENOMEM;
    return nullptr;
  }
  return page_aligned(rounded);
}

FM_EXPORT size_t malloc_usable_size(void* p) noexcept { return usable_size(p, "malloc_usable_size"); }

// The names glibc's own code and some programs call directly.
FM_EXPORT void* __libc_malloc(size_t size) noexcept { return allocate(size); }
FM_EXPORT void __libc_free(void* p) noexcept { deallocate(p, "free"); }
FM_EXPORT void* __libc_calloc(size_t count, size_t size) noexcept { return allocate_zeroed(count, size); }
FM_EXPORT void* __libc_realloc(void* p, size_t size) noexcept { return reallocate(p, size, "realloc"); }
FM_EXPORT void* __libc_memalign(size_t align, size_t size) noexcept { return memalign_any(align, size); }
FM_EXPORT void* __libc_valloc(size_t size) noexcept { return page_aligned(size); }
FM_EXPORT void* __libc_pvalloc(size_t size) noexcept { return pvalloc(size); }
FM_EXPORT int __posix_memalign(void** out, size_t align, size_t size) noexcept {
  return posix_memalign(out, align, size);
}

// Everything the caches hold goes back to the spans, and every free page to the OS.
FM_EXPORT size_t fastmalloc_release_memory(void) noexcept {
  cache_drain_all();
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    transfer_cache(cls).drain();
    central_list(cls).release_empty_spans();
  }
  sync::rcu_barrier();  // retired span descriptors back to their pool
  size_t released = g_page_heap.release_free_pages();
  sync::rcu_barrier();  // the descriptors of the spans it merged too
  return released + g_span_pool.release_free_pages();
}

FM_EXPORT int malloc_trim(size_t) noexcept { return fastmalloc_release_memory() > 0 ? 1 : 0; }

FM_EXPORT struct mallinfo2 mallinfo2() noexcept {
  Totals t = gather_totals();
  struct mallinfo2 info {};
  info.arena = t.heap.system_bytes;
  info.ordblks = t.heap.free_spans;
  info.hblks = t.heap.large_count;
  info.hblkhd = t.heap.large_bytes;
  info.uordblks = t.small_in_use_bytes;
  info.fordblks = t.heap.free_bytes + t.small_free_bytes + t.cache.cached_bytes + t.transfer_cache_bytes;
  info.keepcost = t.heap.free_bytes - t.heap.released_bytes;
  return info;
}

// The old interface's int fields wrap above 2 GiB, as glibc's do.
FM_EXPORT struct mallinfo mallinfo() noexcept {
  struct mallinfo2 wide = mallinfo2();
  struct mallinfo info {};
  info.arena = static_cast<int>(wide.arena);
  info.ordblks = static_cast<int>(wide.ordblks);
  info.hblks = static_cast<int>(wide.hblks);
  info.hblkhd = static_cast<int>(wide.hblkhd);
  info.uordblks = static_cast<int>(wide.uordblks);
  info.fordblks = static_cast<int>(wide.fordblks);
  info.keepcost = static_cast<int>(wide.keepcost);
  return info;
}

// No glibc tunable applies to this allocator; accepting them keeps programs that set them going.
FM_EXPORT int mallopt(int, int) noexcept { return 1; }

FM_EXPORT void malloc_stats() noexcept { print_stats(); }

// A null stream is refused as an error rather than written to (glibc's would crash).
FM_EXPORT int malloc_info(int options, FILE* out) noexcept {
  if (options != 0 || out == nullptr) {
    errno = EINVAL;
    return -1;
  }
  return write_malloc_info(out);
}

FM_EXPORT void fastmalloc_stats_print(void) noexcept { print_stats(); }

FM_EXPORT int fastmalloc_get_property(const char* name, size_t* value) noexcept {
  if (name == nullptr || value == nullptr || !lookup_property(gather_totals(), name, value)) return EINVAL;
  return 0;
}

// vfork, defined by the architecture's assembly (arch/*/vfork.h), which hands the system call's
// result here: the child must keep off the per-CPU slabs until it is done, and its parent thread,
// which resumes only then, lets the fast paths back on (cache_vfork_child_started says why).
// The child enters by the same path, so it is marked before it can call malloc. errno is left
// as it was but on failure, as glibc's vfork leaves it.
FM_HIDDEN __attribute__((used)) pid_t fastmalloc_vfork_returned(long raw) noexcept {
  int saved_errno = errno;
  if (raw == 0) cache_vfork_child_started();
  else cache_vfork_parent_resumed();
  if (raw < 0 && raw > -4096) {
    errno = static_cast<int>(-raw);
    return -1;
  }
  errno = saved_errno;
  return static_cast<pid_t>(raw);
}

}  // extern "C"

FM_DEFINE_VFORK(fastmalloc_vfork_returned)
