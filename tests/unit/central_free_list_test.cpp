// Central free lists: batches of distinct, aligned objects; spans taken and given back; each
// CPU's batches from spans of its own.
#include <catch2/catch.hpp>

#include <linux/perf_event.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>
#include <vector>

#include "central_free_list.h"
#include "os/os.h"
#include "span_map.h"

using namespace fastmalloc;

namespace {
void check_objects(unsigned cls, const std::vector<void*>& objects) {
  const SizeClass& sc = size_class(cls);
  std::set<uintptr_t> seen;
  for (void* p : objects) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    Span* span = g_span_map.lookup(a);
    REQUIRE(span != nullptr);
    REQUIRE(span->state == SpanState::kSmall);
    REQUIRE(span->size_class == cls);
    REQUIRE((a - span->start) % sc.size == 0);
    if (sc.size >= 16) REQUIRE(a % 16 == 0);
    REQUIRE(seen.insert(a).second);
  }
  // No two objects overlap: sorted, each ends before the next starts.
  std::vector<uintptr_t> sorted(seen.begin(), seen.end());
  for (size_t i = 1; i < sorted.size(); ++i) REQUIRE(sorted[i] - sorted[i - 1] >= sc.size);
}

// The page faults the calling thread takes (the kernel's software counter), where the kernel lets
// a process count them. The faults MADV_POPULATE_WRITE takes on the thread's behalf do not count.
class FaultCounter {
 public:
  FaultCounter() {
    perf_event_attr attr{};
    attr.type = PERF_TYPE_SOFTWARE;
    attr.size = sizeof(attr);
    attr.config = PERF_COUNT_SW_PAGE_FAULTS;
    attr.exclude_kernel = 1;
    attr.exclude_hv = 1;
    fd_ = static_cast<int>(syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
  }
  ~FaultCounter() {
    if (fd_ >= 0) close(fd_);
  }
  bool available() const { return fd_ >= 0; }
  // -1 when the counter cannot be read. No assertion here: a REQUIRE between two readings
  // would count the page faults of the test framework's own bookkeeping (it allocates).
  long long count() const {
    long long value = -1;
    return read(fd_, &value, sizeof(value)) == static_cast<ssize_t>(sizeof(value)) ? value : -1;
  }

 private:
  int fd_;
};

// Sanitizers read their shadow memory on every access, and its untouched pages fault too.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kShadowFaults = true;
#else
constexpr bool kShadowFaults = false;
#endif
}  // namespace

TEST_CASE("central lists hand out distinct objects of their class, across several spans") {
  for (unsigned cls : {1u, 2u, 9u, 10u, 30u, kNumClasses - 1}) {
    INFO("class " << cls);
    CentralFreeList list(cls);
    const SizeClass& sc = size_class(cls);
    int want = static_cast<int>(sc.objects) * 3 + 1;  // spills into a fourth span
    std::vector<void*> objects(want);
    // A batch may come back short (it carves at most a page beyond its first object): ask again.
    for (int got = 0; got < want;) {
      int n = list.allocate_batch(objects.data() + got, want - got);
      REQUIRE(n > 0);
      got += n;
    }
    check_objects(cls, objects);
    for (void* p : objects) memset(p, 0xcd, sc.size);
    CentralStats s = list.stats();
    REQUIRE(s.live_objects == static_cast<uint64_t>(want));
    REQUIRE(s.spans == 4);
    REQUIRE(s.span_misses == 4);

    list.deallocate_batch(objects.data(), want);
    s = list.stats();
    REQUIRE(s.live_objects == 0);
    REQUIRE(s.spans == 1);  // empty spans went back to the page heap, but one is kept
  }
}

TEST_CASE("each CPU's batches come from spans of its own, so no page holds two CPUs' objects") {
  // Two CPUs refilling one class in turn were handed alternate runs of one span, and each CPU's
  // prefetches then pulled in the lines the other was writing.
  const unsigned cls = size_to_class(64);
  CentralFreeList list(cls);
  std::vector<void*> objects[2];
  void* batch[32];
  for (int round = 0; round < 40; ++round)
    for (unsigned cpu = 0; cpu < 2; ++cpu) {
      int n = list.allocate_batch(batch, 32, cpu);
      REQUIRE(n > 0);
      objects[cpu].insert(objects[cpu].end(), batch, batch + n);
    }
  const uintptr_t os_page = os::hardware_page_size();
  std::set<uintptr_t> pages_of_cpu0;
  for (void* p : objects[0]) pages_of_cpu0.insert(reinterpret_cast<uintptr_t>(p) / os_page);
  size_t shared = 0;
  for (void* p : objects[1]) shared += pages_of_cpu0.count(reinterpret_cast<uintptr_t>(p) / os_page);
  REQUIRE(shared == 0);
  for (auto& v : objects) {
    check_objects(cls, v);
    list.deallocate_batch(v.data(), static_cast<int>(v.size()));
  }
}

TEST_CASE("a span its CPU stopped taking from goes to the next CPU that needs one") {
  const unsigned cls = size_to_class(64);
  CentralFreeList list(cls);
  void* first;
  REQUIRE(list.allocate_batch(&first, 1, 0) == 1);
  Span* cpu0_span = g_span_map.lookup(reinterpret_cast<uintptr_t>(first));
  // CPU 1 does not take from CPU 0's span while CPU 0 may come back to it...
  std::vector<void*> taken;
  void* batch[32];
  REQUIRE(list.allocate_batch(batch, 1, 1) == 1);
  REQUIRE(g_span_map.lookup(reinterpret_cast<uintptr_t>(batch[0])) != cpu0_span);
  taken.push_back(batch[0]);
  // ...and once the class has handed out kAffinityLapse objects since CPU 0 took from it (CPU 0's
  // one and CPU 1's), CPU 2 takes it instead of a fresh span.
  while (taken.size() < CentralFreeList::kAffinityLapse - 1) {
    int n = list.allocate_batch(batch, static_cast<int>(std::min<size_t>(32, CentralFreeList::kAffinityLapse - 1 - taken.size())), 1);
    REQUIRE(n > 0);
    taken.insert(taken.end(), batch, batch + n);
  }
  for (void* p : taken) REQUIRE(g_span_map.lookup(reinterpret_cast<uintptr_t>(p)) != cpu0_span);
  const uint64_t spans = list.stats().spans;
  void* adopted;
  REQUIRE(list.allocate_batch(&adopted, 1, 2) == 1);
  REQUIRE(g_span_map.lookup(reinterpret_cast<uintptr_t>(adopted)) == cpu0_span);
  REQUIRE(list.stats().spans == spans);
  taken.push_back(first);
  taken.push_back(adopted);
  list.deallocate_batch(taken.data(), static_cast<int>(taken.size()));
}

TEST_CASE("malloc_trim's release gives back the empty span a list keeps, and only empty ones") {
  const unsigned cls = size_to_class(3000);
  CentralFreeList list(cls);
  const int per_span = static_cast<int>(size_class(cls).objects);
  std::vector<void*> objects(per_span);
  for (int got = 0; got < per_span;) got += list.allocate_batch(objects.data() + got, per_span - got);
  REQUIRE(list.stats().spans == 1);
  list.deallocate_batch(objects.data(), per_span - 1);
  REQUIRE(list.release_empty_spans() == 0);  // one object is still live
  Span* span = g_span_map.lookup(reinterpret_cast<uintptr_t>(objects[0]));
  REQUIRE(span->state == SpanState::kSmall);
  REQUIRE(span->size_class == cls);
  list.deallocate_batch(&objects[per_span - 1], 1);
  REQUIRE(list.stats().spans == 1);  // the class's only span is kept for the next allocation
  REQUIRE(list.release_empty_spans() == 1);
  REQUIRE(list.stats().spans == 0);
  REQUIRE(g_span_map.lookup(reinterpret_cast<uintptr_t>(objects[0]))->state != SpanState::kSmall);
}

TEST_CASE("central lists reuse returned objects before carving new ones") {
  CentralFreeList list(5);
  void* batch[4];
  REQUIRE(list.allocate_batch(batch, 4) == 4);
  list.deallocate_batch(&batch[2], 1);
  void* again;
  REQUIRE(list.allocate_batch(&again, 1) == 1);
  REQUIRE(again == batch[2]);
  REQUIRE(list.stats().span_misses == 1);
}

TEST_CASE("allocate_one says an object is untouched only when carved from pages that were not resident") {
  unsigned cls = size_to_class(768 * 1024);
  CentralFreeList list(cls);
  g_page_heap.release_free_pages();  // the next span comes from pages given back to the OS, or new ones
  bool untouched = false;
  void* fresh = list.allocate_one(&untouched);
  REQUIRE(fresh != nullptr);
  REQUIRE(untouched);
  list.deallocate_batch(&fresh, 1);
  void* reused = list.allocate_one(&untouched);
  REQUIRE(reused == fresh);  // the class keeps its one empty span, and reuses its object
  REQUIRE_FALSE(untouched);
  list.deallocate_batch(&reused, 1);
}

TEST_CASE("a batch carves at most a page beyond its first object; free objects come in full batches") {
  for (unsigned cls : {2u, size_to_class(4096), size_to_class(20000)}) {
    INFO("class " << cls);
    CentralFreeList list(cls);
    const size_t size = size_class(cls).size;
    void* batch[32];
    int carved = list.allocate_batch(batch, 32);
    REQUIRE(carved >= 1);
    REQUIRE(static_cast<size_t>(carved - 1) * size <= kPageSize);
    if (size * 32 <= kPageSize) REQUIRE(carved == 32);  // small objects: the whole batch
    // Returned objects are not carved again: a batch of them comes back whole.
    list.deallocate_batch(batch, carved);
    void* again[32];
    REQUIRE(list.allocate_batch(again, carved) == carved);
    list.deallocate_batch(again, carved);
  }
}

TEST_CASE("a class's first batch carves one OS page, so a class used a little holds one page") {
  const size_t os_page = os::hardware_page_size();
  const unsigned cls = size_to_class(256);
  const size_t size = size_class(cls).size;
  REQUIRE(size * 32 > os_page);  // a whole batch would spill onto a second OS page
  CentralFreeList list(cls);
  void* first[32];
  int carved = list.allocate_batch(first, 32);
  REQUIRE(static_cast<size_t>(carved) == os_page / size);
  void* second[32];
  int more = list.allocate_batch(second, 32);
  REQUIRE(static_cast<size_t>(more) * size == (size * 32 < kPageSize ? size * 32 : kPageSize));
  list.deallocate_batch(first, carved);
  list.deallocate_batch(second, more);
}

TEST_CASE("carving pages that are not resident faults in, in one call, the pages it writes and no others") {
  const size_t os_page = os::hardware_page_size();
  const unsigned cls = size_to_class(os_page);  // objects of one OS page: one first word per page
  const SizeClass& sc = size_class(cls);
  REQUIRE(sc.size == os_page);
  REQUIRE(sc.objects >= 6);
  g_page_heap.release_free_pages();  // the next span comes from pages given back to the OS
  CentralFreeList list(cls);
  void* first[32];
  int carved = list.allocate_batch(first, 32);  // takes the span: its metadata may fault
  REQUIRE(carved == 1);  // a class's first batch: one OS page's worth
  Span* span = g_span_map.lookup(reinterpret_cast<uintptr_t>(first[0]));
  REQUIRE(span->released);  // carved from pages that were not resident

  // The second batch touches nothing but the span's next objects.
  FaultCounter faults;
  long long before = faults.available() ? faults.count() : 0;
  void* second[32];
  int more = list.allocate_batch(second, 32);
  long long after = faults.available() ? faults.count() : 0;
  REQUIRE(before >= 0);
  REQUIRE(after >= 0);
  long long taken = after - before;
  REQUIRE(more == static_cast<int>(kPageSize / os_page));  // later batches: a page's worth
  if (!faults.available() || kShadowFaults) {
    WARN("page faults not counted here (no perf counter, or a sanitizer's shadow faults); residency checked only");
  } else {
    INFO(taken << " page faults while carving " << more << " objects of " << os_page << " bytes");
    REQUIRE(taken == 0);
  }
  // Resident: the pages of the carved objects, and not one after them.
  uintptr_t carved_end = reinterpret_cast<uintptr_t>(second[more - 1]) + sc.size;
  REQUIRE(os::resident_bytes(reinterpret_cast<void*>(span->start), carved_end - span->start) == carved_end - span->start);
  REQUIRE(os::resident_bytes(reinterpret_cast<void*>(carved_end), span->end() - carved_end) == 0);
  list.deallocate_batch(first, carved);
  list.deallocate_batch(second, more);
}

namespace {
// While a central list is watched, madvise() counts the calls that fault pages in for writing,
// and those made with that list's lock held (the test runs on one thread).
std::atomic<CentralFreeList*> g_watched_list{nullptr};
std::atomic<int> g_populates{0}, g_populates_under_lock{0};
}  // namespace

// This program's madvise: the allocator's objects are linked into it, so their calls come here
// first; every call is passed on to the kernel.
extern "C" int madvise(void* addr, size_t length, int advice) {
  if (CentralFreeList* list = g_watched_list.load(); list != nullptr && advice == MADV_POPULATE_WRITE) {
    ++g_populates;
    if (list->lock().try_lock()) list->lock().unlock();
    else ++g_populates_under_lock;
  }
  return static_cast<int>(syscall(SYS_madvise, addr, length, advice));
}

TEST_CASE("a central list faults in what it carves after dropping its lock") {
  // A page fault, or the system call that takes them all at once, can wait long for the
  // process's mmap lock; under the class's lock it would stall every thread of the class.
  const size_t os_page = os::hardware_page_size();
  const unsigned cls = size_to_class(os_page);  // objects of one OS page: carving populates
  g_page_heap.release_free_pages();             // the next span comes from pages given back
  CentralFreeList list(cls);
  g_populates = 0;
  g_populates_under_lock = 0;
  g_watched_list = &list;
  void* first[32];
  int carved = list.allocate_batch(first, 32);
  void* second[32];
  int more = list.allocate_batch(second, 32);
  g_watched_list = nullptr;
  REQUIRE(carved > 0);
  REQUIRE(more > 0);
  REQUIRE(g_populates > 0);
  REQUIRE(g_populates_under_lock == 0);
  list.deallocate_batch(first, carved);
  list.deallocate_batch(second, more);
}

TEST_CASE("a class that hands nothing out for a whole period gives its kept span back") {
  CentralFreeList list(size_to_class(5000));
  void* object;
  REQUIRE(list.allocate_batch(&object, 1) == 1);
  list.deallocate_batch(&object, 1);
  REQUIRE(list.stats().spans == 1);  // kept
  list.release_idle();               // it allocated since the last check: kept
  REQUIRE(list.stats().spans == 1);
  list.release_idle();  // nothing handed out for a period
  REQUIRE(list.stats().spans == 0);
  REQUIRE(list.allocate_batch(&object, 1) == 1);
  list.deallocate_batch(&object, 1);
  list.release_idle();
  REQUIRE(list.stats().spans == 1);
  list.release_idle();
  REQUIRE(list.stats().spans == 0);
}

TEST_CASE("a held one-object span that realloc resizes moves to its new class, counts and carving end included") {
  const unsigned k1M = kNumClasses - 1, k64K = size_to_class(64 << 10);
  REQUIRE(size_class(k1M).objects == 1);
  REQUIRE(size_class(k64K).objects == 1);
  void* p;
  REQUIRE(central_list(k1M).allocate_batch(&p, 1) == 1);
  Span* span = g_span_map.lookup(reinterpret_cast<uintptr_t>(p));
  REQUIRE(span->size_class == k1M);
  CentralStats big = central_list(k1M).stats(), small = central_list(k64K).stats();

  REQUIRE(central_list(k1M).shrink_live_span(span, k64K));
  REQUIRE(span->size_class == k64K);
  REQUIRE(span->bytes == size_class(k64K).pages * kPageSize);
  // pop() carves a span's objects up to never_used: it must end with the new class's object.
  REQUIRE(span->never_used == span->start + size_class(k64K).size);
  REQUIRE(central_list(k1M).stats().spans == big.spans - 1);
  REQUIRE(central_list(k1M).stats().live_objects == big.live_objects - 1);
  REQUIRE(central_list(k64K).stats().spans == small.spans + 1);
  REQUIRE(central_list(k64K).stats().live_objects == small.live_objects + 1);

  // Back up, into the pages it just gave back (nobody else took them meanwhile).
  REQUIRE(central_list(k64K).grow_live_span(span, k1M));
  REQUIRE(span->never_used == span->start + size_class(k1M).size);
  REQUIRE(central_list(k1M).stats().spans == big.spans);
  REQUIRE(central_list(k64K).stats().spans == small.spans);
  central_list(k1M).deallocate_batch(&p, 1);
}
