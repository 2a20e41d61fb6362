// The page heap: exact sizes, splitting, coalescing with both neighbours, large mappings.
#include <catch2/catch.hpp>

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "os/os.h"
#include "page_heap.h"
#include "size_classes.h"

using namespace fastmalloc;

namespace {
constexpr unsigned kSomeClass = 7;

// Each test uses its own heap and span map (1 MiB each: static, not on the stack); the
// descriptor pool is the process's.
Span* take(PageHeap& heap, size_t pages) {
  Span* s = heap.allocate(pages, kSomeClass);
  REQUIRE(s != nullptr);
  REQUIRE(s->pages() == pages);
  REQUIRE(s->start % kPageSize == 0);
  REQUIRE(s->state == SpanState::kSmall);
  return s;
}

// The same, with every byte written (not zero), so its pages are resident until released.
Span* take_resident(PageHeap& heap, size_t pages) {
  Span* s = take(heap, pages);
  memset(reinterpret_cast<void*>(s->start), 0x5a, s->bytes);
  return s;
}
// Takes n resident spans of `pages` pages, waits long enough that the heap no longer counts
// as taking spans (kCapIntervalMs), frees them all, and returns the heap's figures.
PageHeapStats take_and_free_all(PageHeap& heap, Span** spans, size_t n, size_t pages) {
  for (size_t i = 0; i < n; ++i) spans[i] = take_resident(heap, pages);
  std::this_thread::sleep_for(std::chrono::milliseconds(2 * PageHeap::kCapIntervalMs));
  for (size_t i = 0; i < n; ++i) heap.deallocate(spans[i]);
  return heap.stats();
}
}  // namespace

TEST_CASE("page heap hands out spans recorded on every page") {
  static SpanMap map;
  static PageHeap heap(map);
  Span* s = take(heap, 5);
  for (size_t i = 0; i < 5; ++i) REQUIRE(map.lookup(s->start + i * kPageSize + 17) == s);
  memset(reinterpret_cast<void*>(s->start), 0xab, s->bytes);
  heap.deallocate(s);
}

TEST_CASE("page heap splits one chunk and coalesces neighbours back into it") {
  static SpanMap map;
  static PageHeap heap(map);
  Span* a = take(heap, 3);
  Span* b = take(heap, 4);
  Span* c = take(heap, 5);
  // Carved one after the other from the same chunk.
  REQUIRE(b->start == a->end());
  REQUIRE(c->start == b->end());
  PageHeapStats before = heap.stats();
  REQUIRE(before.free_spans == 1);  // the rest of the chunk

  uintptr_t a_start = a->start;
  heap.deallocate(a);
  // c stays apart from the rest of the chunk on its right: that was never touched (released),
  // c is resident, and a free span is all one or all the other.
  heap.deallocate(c);
  REQUIRE(heap.stats().free_spans == 3);
  heap.deallocate(b);  // merges with both resident neighbours
  REQUIRE(heap.stats().free_spans == 2);
  // Released, the two merge.
  heap.release_free_pages();
  PageHeapStats after = heap.stats();
  REQUIRE(after.free_spans == 1);
  REQUIRE(after.free_bytes == after.system_bytes);
  REQUIRE(after.released_bytes == after.free_bytes);

  // The whole chunk is one span again: a request for all of it is served without growing.
  Span* whole = take(heap, after.system_bytes / kPageSize);
  REQUIRE(whole->start == a_start);
  REQUIRE(heap.stats().system_bytes == after.system_bytes);
  heap.deallocate(whole);
}

TEST_CASE("page heap reuses a freed span of the right size before growing") {
  static SpanMap map;
  static PageHeap heap(map);
  Span* keep = take(heap, 1);
  Span* a = take(heap, 2);
  Span* guard = take(heap, 1);  // keeps a from merging with the chunk's rest
  uintptr_t a_start = a->start;
  heap.deallocate(a);
  Span* again = take(heap, 2);
  REQUIRE(again->start == a_start);
  heap.deallocate(again);
  heap.deallocate(guard);
  heap.deallocate(keep);
}

TEST_CASE("page heap hands out resident free pages before released ones") {
  static SpanMap map;
  static PageHeap heap(map);
  heap.set_decay_ms(3'600'000);
  Span* a = take_resident(heap, 4);
  Span* guard_a = take(heap, 1);  // keeps a and b apart
  Span* b = take_resident(heap, 4);
  Span* guard_b = take(heap, 1);
  uintptr_t b_start = b->start;
  heap.deallocate(b);  // stays resident
  heap.set_decay_ms(0);
  heap.deallocate(a);  // released at once, and freed after b
  REQUIRE(heap.stats().released_bytes >= 4 * kPageSize);
  heap.set_decay_ms(3'600'000);
  Span* again = take(heap, 4);
  REQUIRE(again->start == b_start);  // not a's released pages, which would fault in afresh
  heap.deallocate(again);
  heap.deallocate(guard_a);
  heap.deallocate(guard_b);
}

// The sanitizers intercept mmap to keep their shadow memory right; this program's own mmap
// would bypass them, so the check below is built without them only.
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
namespace {
// While a heap is watched, mmap() counts its calls and those made with that heap's lock held
// (the test runs on one thread).
std::atomic<PageHeap*> g_watched_heap{nullptr};
std::atomic<int> g_maps{0}, g_maps_under_lock{0};
}  // namespace

// This program's mmap: the allocator's objects are linked into it, so their calls come here
// first; every call is passed on to the kernel.
extern "C" void* mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset) {
  if (PageHeap* heap = g_watched_heap.load(); heap != nullptr) {
    ++g_maps;
    if (heap->lock().try_lock()) heap->lock().unlock();
    else ++g_maps_under_lock;
  }
  return reinterpret_cast<void*>(syscall(SYS_mmap, addr, length, prot, flags, fd, offset));
}

TEST_CASE("the page heap maps more memory without holding its lock") {
  // mmap waits for the process's mmap lock; under the heap's it would stall every thread that
  // needs a span meanwhile.
  static SpanMap map;
  static PageHeap heap(map);
  g_maps = 0;
  g_maps_under_lock = 0;
  g_watched_heap = &heap;
  Span* first = heap.allocate(8, kSomeClass);  // a new heap: its first memory is mapped now
  g_watched_heap = nullptr;
  REQUIRE(first != nullptr);
  REQUIRE(g_maps > 0);
  REQUIRE(g_maps_under_lock == 0);
  heap.deallocate(first);
}
#endif

TEST_CASE("page heap grows for requests larger than a chunk") {
  static SpanMap map;
  static PageHeap heap(map);
  Span* big = take(heap, 300);
  REQUIRE(heap.stats().system_bytes >= 300 * kPageSize);
  memset(reinterpret_cast<void*>(big->start), 1, big->bytes);
  heap.deallocate(big);
}

TEST_CASE("the page heap grows by an eighth of itself, so a big heap takes few growths") {
  static SpanMap map;
  static PageHeap heap(map);
  constexpr size_t kSpanPages = 8, kSpans = 1024;  // 64 MiB, never touched
  static Span* spans[kSpans];
  for (size_t i = 0; i < kSpans; ++i) spans[i] = take(heap, kSpanPages);
  PageHeapStats st = heap.stats();
  const size_t taken = kSpans * kSpanPages * kPageSize;
  // 1 MiB at a time would be 64 growths; by eighths it is about 26.
  REQUIRE(st.grows <= 32);
  REQUIRE(st.system_bytes <= taken + taken / 8 + (size_t{1} << 20));
  for (Span* s : spans) heap.deallocate(s);
}

TEST_CASE("threads that run dry at once map memory once, not each its own growth") {
  static SpanMap map;
  static PageHeap heap(map);
  constexpr int kThreads = 8;
  constexpr size_t kSpanPages = 8, kSpansEach = 128;  // 8 MiB a thread, never touched
  static Span* spans[kThreads][kSpansEach];
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      for (size_t i = 0; i < kSpansEach; ++i) spans[t][i] = heap.allocate(kSpanPages, kSomeClass);
    });
  for (auto& th : threads) th.join();
  for (auto& row : spans)
    for (Span* s : row) REQUIRE(s != nullptr);
  // Each thread that found the heap dry mapping its own eighth would leave up to 8 of them.
  const size_t taken = kThreads * kSpansEach * kSpanPages * kPageSize;
  REQUIRE(heap.stats().system_bytes <= taken + taken / 8 + (size_t{1} << 20));
  for (auto& row : spans)
    for (Span* s : row) heap.deallocate(s);
}

TEST_CASE("page heap releases free pages to the OS and counts them") {
  static SpanMap map;
  static PageHeap heap(map);
  Span* s = take_resident(heap, 8);
  size_t bytes = s->bytes;
  heap.deallocate(s);
  REQUIRE(heap.stats().released_bytes == heap.stats().free_bytes - bytes);  // the chunk's untouched rest
  size_t released = heap.release_free_pages();
  REQUIRE(released == bytes);
  REQUIRE(heap.stats().released_bytes == heap.stats().free_bytes);
  REQUIRE(heap.stats().free_spans == 1);  // merged with the rest once released
  REQUIRE(heap.release_free_pages() == 0);  // nothing new to release
  size_t released_before = heap.stats().released_bytes;
  Span* again = take(heap, 8);
  REQUIRE(reinterpret_cast<unsigned char*>(again->start)[100] == 0);  // released pages read zero
  REQUIRE(heap.stats().released_bytes == released_before - again->bytes);
  heap.deallocate(again);
}

TEST_CASE("released spans keep span-map entries only at their ends, and the map's pages go back") {
  static SpanMap map;
  static PageHeap heap(map);
  // Two neighbours cut from one growth, released one after the other so that the second merges
  // with the first as released spans.
  heap.deallocate(take(heap, 4096));
  Span* low = take(heap, 2048);
  Span* high = take(heap, 2048);
  REQUIRE(low->end() == high->start);
  const uintptr_t start = low->start, junction = high->start, end = high->end();
  size_t resident_in_use = map.resident_leaf_bytes();
  REQUIRE(resident_in_use >= 2 * 2048 * sizeof(uintptr_t));
  heap.deallocate(high);
  heap.release_free_pages();
  heap.deallocate(low);
  heap.release_free_pages();
  REQUIRE(heap.stats().free_spans == 1);
  // What stays: the pages holding the span's two end entries, and, when the span's ends fall on
  // the edges of pages of entries (a growth 4 MiB aligned), the pages beside them, which the
  // neighbour lookups of coalescing read: mincore counts the zero page a read maps there. Before
  // released spans dropped their entries, all 9 or 10 pages stayed.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  INFO(resident_in_use / page << " pages of entries in use, " << map.resident_leaf_bytes() / page << " after");
  REQUIRE(map.resident_leaf_bytes() <= 4 * page);
  Span* free_span = map.lookup(start);
  REQUIRE(free_span->state == SpanState::kFree);
  REQUIRE(free_span->start == start);
  REQUIRE(map.lookup(end - 1) == free_span);
  for (uintptr_t addr : {start + kPageSize, junction - kPageSize, junction, end - 2 * kPageSize})
    REQUIRE(map.lookup(addr) == nullptr);
  // A span cut from it again is named on every page, and the rest at its ends.
  Span* again = take(heap, 3);
  for (size_t i = 0; i < 3; ++i) REQUIRE(map.lookup(again->start + i * kPageSize) == again);
  REQUIRE(map.lookup(again->end())->state == SpanState::kFree);
  REQUIRE(map.lookup(end - 1) == map.lookup(again->end()));
  heap.deallocate(again);
}

TEST_CASE("large mappings are aligned, recorded at their first page, and resizable") {
  static SpanMap map;
  static PageHeap heap(map);
  Span* s = heap.map_large(3 * 1024 * 1024 + 5, 1 << 20);
  REQUIRE(s != nullptr);
  REQUIRE(s->start % (1 << 20) == 0);
  REQUIRE(s->bytes >= 3 * 1024 * 1024 + 5);
  REQUIRE(map.lookup(s->start) == s);
  REQUIRE(heap.stats().large_count == 1);
  memset(reinterpret_cast<void*>(s->start), 7, s->bytes);

  REQUIRE(heap.remap_large(s, 64 * 1024 * 1024));
  REQUIRE(s->bytes == 64 * 1024 * 1024);
  REQUIRE(map.lookup(s->start) == s);
  REQUIRE(reinterpret_cast<unsigned char*>(s->start)[3 * 1024 * 1024] == 7);
  REQUIRE(heap.stats().large_bytes == 64 * 1024 * 1024);

  uintptr_t start = s->start;
  heap.unmap_large(s);
  REQUIRE(map.lookup(start) == nullptr);
  REQUIRE(heap.stats().large_count == 0);
  REQUIRE(heap.stats().large_bytes == 0);
}

TEST_CASE("no two large blocks start in one span-map page, however small they are") {
  // A block of one 4 KiB OS page at the start of an 8 KiB span-map page, with another mapping
  // placed right after it, would share its entry: freeing one found the other's descriptor
  // (libFuzzer: "free(): invalid pointer" for a live memalign(16 KiB, 1) block).
  static SpanMap map;
  static PageHeap heap(map);
  Span* tiny = heap.map_large(1, 16 << 10);
  REQUIRE(tiny != nullptr);
  REQUIRE(tiny->start % (16 << 10) == 0);
  // So whatever is mapped after it starts in a later span-map page.
  REQUIRE(tiny->bytes >= kPageSize);
  REQUIRE((tiny->start + tiny->bytes) / kPageSize != tiny->start / kPageSize);
  heap.unmap_large(tiny);
}

TEST_CASE("an unmapped large block gives back the page of span-map entries it alone used") {
  static SpanMap map;
  static PageHeap heap(map);
  // Each holds a page of entries of its own: one page of entries covers 4 MiB of addresses.
  Span* first = heap.map_large(8 << 20, 0);
  REQUIRE(first != nullptr);
  const size_t resident_one = map.resident_leaf_bytes();
  Span* second = heap.map_large(8 << 20, 0);
  REQUIRE(second != nullptr);
  const size_t resident_two = map.resident_leaf_bytes();
  REQUIRE(resident_two > resident_one);
  heap.unmap_large(second);
  REQUIRE(map.resident_leaf_bytes() == resident_one);
  heap.unmap_large(first);
  REQUIRE(map.resident_leaf_bytes() < resident_one);
}

TEST_CASE("a span just handed out is never merged into a neighbour that is freed") {
  // The bug this guards against: allocate() returned spans still marked free, so a neighbour
  // freed before the caller marked its span could swallow it.
  static SpanMap map;
  static PageHeap heap(map);
  Span* a = heap.allocate(2, kSomeClass);
  Span* b = heap.allocate(3, kSomeClass);
  REQUIRE(b->start == a->end());
  uintptr_t a_start = a->start;
  size_t a_bytes = a->bytes;
  heap.deallocate(b);
  REQUIRE(a->start == a_start);
  REQUIRE(a->bytes == a_bytes);
  REQUIRE(a->state == SpanState::kSmall);
  REQUIRE(map.lookup(a_start) == a);
  heap.deallocate(a);
}

TEST_CASE("small spans carry their class and page index in the span map, until freed") {
  static SpanMap map;
  static PageHeap heap(map);
  Span* a = heap.allocate(3, 12);
  Span* b = heap.allocate(2, 40);
  for (uintptr_t i = 0; i < 3; ++i) {
    uintptr_t addr = a->start + i * kPageSize + 100;
    uintptr_t entry = map.lookup_entry(addr);
    REQUIRE(SpanMap::entry_span(entry) == a);
    REQUIRE(SpanMap::entry_class(entry) == 12);
    REQUIRE(SpanMap::entry_offset(entry, addr) == i * kPageSize + 100);
  }
  REQUIRE(SpanMap::entry_class(map.lookup_entry(b->start)) == 40);
  uintptr_t a_start = a->start;
  heap.deallocate(a);
  // Every page of a freed span reads class 0, so free() can no longer take it for a live block.
  for (uintptr_t i = 0; i < 3; ++i) REQUIRE(SpanMap::entry_class(map.lookup_entry(a_start + i * kPageSize)) == 0);
  REQUIRE(SpanMap::entry_class(map.lookup_entry(b->start)) == 40);
  heap.deallocate(b);
}

TEST_CASE("the page heap's churn leaves its span-map leaf counting its pins and large blocks only") {
  // The heap's entries are written uncounted (its leaves are pinned); a large block's is
  // counted. A count that drifted with the heap's writes could reach 0 and unmap a leaf in use.
  static SpanMap map;
  static PageHeap heap(map);
  Span* first = take(heap, 2);
  const int32_t pins = map.leaf_count(first->start);
  for (int round = 0; round < 50; ++round) {
    Span* a = take_resident(heap, 1 + round % 7);
    Span* b = take(heap, 3);
    heap.extend(b, 5, kSomeClass);  // into the free pages after it, when there are some
    heap.shrink(b, 2, kSomeClass);
    heap.deallocate(a);
    heap.deallocate(b);
    if (round % 10 == 0) heap.release_free_pages();
  }
  REQUIRE(map.leaf_count(first->start) == pins);
  Span* large = heap.map_large(3 * kPageSize, 0);
  REQUIRE(large != nullptr);
  const uintptr_t large_start = large->start;
  const bool same_leaf = large_start >> kPageShift >> SpanMap::kLeafBits == first->start >> kPageShift >> SpanMap::kLeafBits;
  REQUIRE(map.leaf_count(large_start) == (same_leaf ? pins : 0) + 1);
  heap.unmap_large(large);
  REQUIRE(map.leaf_count(large_start) == (same_leaf ? pins : 0));
  REQUIRE(map.leaf_count(first->start) == pins);
  heap.deallocate(first);
}

TEST_CASE("free pages go back to the OS once they have been free for the decay time") {
  static SpanMap map;
  static PageHeap heap(map);
  heap.set_decay_ms(100);
  Span* s = take_resident(heap, 8);
  heap.deallocate(s);
  size_t resident = heap.stats().free_bytes - heap.stats().released_bytes;
  REQUIRE(resident >= 8 * kPageSize);  // kept for reuse at first
  heap.decay_tick(os::now_ms());
  REQUIRE(heap.stats().free_bytes - heap.stats().released_bytes == resident);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  heap.decay_tick(os::now_ms());
  REQUIRE(heap.stats().released_bytes == heap.stats().free_bytes);
}

TEST_CASE("with a decay time of 0, freed pages go back at once") {
  static SpanMap map;
  static PageHeap heap(map);
  heap.set_decay_ms(0);
  Span* s = take_resident(heap, 8);
  heap.deallocate(s);
  REQUIRE(heap.stats().released_bytes == heap.stats().free_bytes);
}

TEST_CASE("free pages beyond the cap go back once a quarter of the decay time old") {
  static SpanMap map;
  static PageHeap heap(map);
  heap.set_decay_ms(400);  // decay_tick is never called here: only the cap can release
  // 60 MiB stay in use and 60 MiB are freed: above the cap (32 MiB + a quarter of the heap in
  // use), but the heap in use has not halved, so the young spans are kept at first.
  constexpr size_t kSpans = 120, kPages = 64;
  static Span* kept[kSpans];
  static Span* freed[kSpans + 1];
  for (Span*& s : kept) s = take(heap, kPages);
  for (Span*& s : freed) s = take_resident(heap, kPages);
  for (size_t i = 0; i < kSpans; ++i) heap.deallocate(freed[i]);
  PageHeapStats young = heap.stats();
  INFO("just freed: free " << young.free_bytes << " released " << young.released_bytes);
  REQUIRE(young.free_bytes - young.released_bytes >= kSpans * kPages * kPageSize);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  heap.deallocate(freed[kSpans]);  // the next free finds them old enough
  PageHeapStats st = heap.stats();
  INFO("150 ms later: free " << st.free_bytes << " released " << st.released_bytes);
  REQUIRE(st.free_bytes - st.released_bytes <= PageHeap::kRetainBytes);
  for (Span* s : kept) heap.deallocate(s);
}

TEST_CASE("a heap that gives up most of its pages gives them back while it frees") {
  static SpanMap map;
  static PageHeap heap(map);
  heap.set_decay_ms(3'600'000);  // no decay scan releases anything here
  constexpr size_t kSpans = 160, kPages = 64;  // 80 MiB, all freed: more than kShrinkMinDrop
  static_assert(kSpans * kPages * kPageSize > PageHeap::kShrinkMinDrop);
  static Span* spans[kSpans];
  PageHeapStats st = take_and_free_all(heap, spans, kSpans, kPages);
  INFO("free " << st.free_bytes << " released " << st.released_bytes);
  REQUIRE(heap.shrinking());
  // What was resident when the shrink began went back at the next free, and after it each freed
  // span that took the resident free pages over the cap (kShrinkingRetainBytes plus an eighth
  // of the pages still in use, at most 80 - 64 MiB) went back at once, not at the next cap
  // release (at most one per kCapIntervalMs).
  size_t in_use_when_shrinking = kSpans * kPages * kPageSize - PageHeap::kShrinkMinDrop;
  REQUIRE(st.free_bytes - st.released_bytes <= PageHeap::kShrinkingRetainBytes + in_use_when_shrinking / 8);
}

TEST_CASE("a small heap that halves keeps its young free pages for reuse") {
  static SpanMap map;
  static PageHeap heap(map);
  heap.set_decay_ms(3'600'000);
  constexpr size_t kSpans = 80, kPages = 64;  // 40 MiB, all freed: less than kShrinkMinDrop
  static Span* spans[kSpans];
  PageHeapStats st = take_and_free_all(heap, spans, kSpans, kPages);
  INFO("free " << st.free_bytes << " released " << st.released_bytes);
  REQUIRE_FALSE(heap.shrinking());
  // Nothing given back: what counts as released is only the growth never handed out.
  REQUIRE(st.released_bytes == st.system_bytes - kSpans * kPages * kPageSize);
  // Taken again, they come back resident, without growing the heap.
  for (Span*& s : spans) s = take(heap, kPages);
  REQUIRE(heap.stats().grows == st.grows);
  for (Span* s : spans) heap.deallocate(s);
}

namespace {
// Classes whose spans hold one block, as realloc grows them: 128 and 256 KiB.
const unsigned kAlone128K = size_to_class(128 << 10), kAlone256K = size_to_class(256 << 10);

void require_recorded_as(const SpanMap& map, const Span* s, unsigned cls) {
  for (uintptr_t i = 0; i < s->pages(); ++i) {
    uintptr_t entry = map.lookup_entry(s->start + i * kPageSize);
    REQUIRE(SpanMap::entry_span(entry) == s);
    REQUIRE(SpanMap::entry_class(entry) == cls);
    REQUIRE(SpanMap::entry_offset(entry, s->start + i * kPageSize) == i * kPageSize);
  }
}
}  // namespace

TEST_CASE("a span lengthens into the free pages after it, never into used ones") {
  static SpanMap map;
  static PageHeap heap(map);
  Span* a = take(heap, 8);  // the first pages of a fresh chunk; the rest is free after it
  size_t free_before = heap.stats().free_bytes;
  REQUIRE(heap.extend(a, 16, kAlone128K));
  REQUIRE(a->pages() == 16);
  REQUIRE(a->size_class == kAlone128K);
  require_recorded_as(map, a, kAlone128K);
  REQUIRE(heap.stats().free_bytes == free_before - 8 * kPageSize);

  // A span in use after it: no room, and nothing changes.
  Span* b = take(heap, 4);
  REQUIRE(b->start == a->end());
  REQUIRE_FALSE(heap.extend(a, 32, kAlone256K));
  REQUIRE(a->pages() == 16);
  require_recorded_as(map, a, kAlone128K);

  // Free after it, but too short: b's 4 pages do not merge with the untouched rest of the chunk
  // (one is resident, the other released).
  heap.deallocate(b);
  REQUIRE_FALSE(heap.extend(a, 21, kAlone256K));
  REQUIRE(a->pages() == 16);
  // Exactly long enough: the free span is used up and its descriptor goes.
  size_t spans_before = heap.stats().free_spans;
  REQUIRE(heap.extend(a, 20, kAlone256K));
  REQUIRE(heap.stats().free_spans == spans_before - 1);
  require_recorded_as(map, a, kAlone256K);

  // Freed, it merges back with the free pages it grew towards.
  heap.deallocate(a);
  heap.release_free_pages();
  PageHeapStats st = heap.stats();
  REQUIRE(st.free_spans == 1);
  REQUIRE(st.free_bytes == st.system_bytes);
}

TEST_CASE("a span shortens to its first pages and frees the rest, which joins the free pages after it") {
  static SpanMap map;
  static PageHeap heap(map);
  Span* a = heap.allocate(32, kAlone256K);  // the start of a fresh chunk
  REQUIRE(a != nullptr);
  REQUIRE(size_class(kAlone256K).pages == 32);
  // Resident free pages after it (the untouched rest of the chunk would not merge with them).
  Span* b = heap.allocate(16, kSomeClass);
  REQUIRE(b->start == a->end());
  heap.deallocate(b);
  size_t free_before = heap.stats().free_bytes, spans_before = heap.stats().free_spans;
  uintptr_t start = a->start;
  REQUIRE(heap.shrink(a, 16, kAlone128K));
  REQUIRE(a->start == start);
  REQUIRE(a->pages() == 16);
  require_recorded_as(map, a, kAlone128K);
  REQUIRE(heap.stats().free_bytes == free_before + 16 * kPageSize);
  REQUIRE(heap.stats().free_spans == spans_before);  // merged with the free pages after it
  // The freed pages carry no class, so free() of an address there goes to the slow path.
  for (uintptr_t page = a->end(); page < a->end() + 16 * kPageSize; page += kPageSize)
    REQUIRE(SpanMap::entry_class(map.lookup_entry(page)) == 0);
  // And they can be taken again, here by the span they came from.
  REQUIRE(heap.extend(a, 32, kAlone256K));
  require_recorded_as(map, a, kAlone256K);
  heap.deallocate(a);
  PageHeapStats st = heap.stats();
  REQUIRE(st.free_bytes == st.system_bytes);
}

TEST_CASE("a growable span has room to grow to the largest class, after the room of a growing span before it") {
  constexpr size_t kRoom = kMaxSmallSize / kPageSize;  // the pages of a 1 MiB block
  const unsigned kLargestClass = kNumClasses - 1;
  REQUIRE(size_class(kLargestClass).pages == kRoom);
  static SpanMap map;
  static PageHeap heap(map);
  REQUIRE(size_class(kAlone128K).objects == 1);
  REQUIRE(size_class(kAlone128K).pages == 16);
  // One free run of exactly two rooms.
  heap.deallocate(heap.allocate(2 * kRoom, kSomeClass));
  REQUIRE(heap.stats().system_bytes == 2 * kRoom * kPageSize);
  // The first takes the run's start; the second leaves the first its room, and gets the rest.
  Span* first = heap.allocate_growable(16, kAlone128K);
  REQUIRE(first != nullptr);
  require_recorded_as(map, first, kAlone128K);
  Span* second = heap.allocate_growable(16, kAlone128K);
  REQUIRE(second != nullptr);
  REQUIRE(second->start == first->start + kRoom * kPageSize);
  REQUIRE(heap.stats().grows == 1);
  // A third finds no run with room for it after the second's: it gets fresh pages.
  Span* fresh = heap.allocate_growable(16, kAlone128K);
  REQUIRE(fresh != nullptr);
  REQUIRE(heap.stats().grows == 2);
  REQUIRE((fresh->end() <= second->start || fresh->start >= second->start + kRoom * kPageSize));
  for (Span* s : {first, second, fresh}) {
    REQUIRE(heap.extend(s, kRoom, kLargestClass));
    require_recorded_as(map, s, kLargestClass);
  }
  uintptr_t first_start = first->start;
  heap.deallocate(first);
  heap.deallocate(second);
  // The lowest resident run with room is used again, so a program that grows one buffer after
  // another stays on the same pages.
  Span* d = heap.allocate_growable(16, kAlone128K);
  REQUIRE(d->start == first_start);
  REQUIRE(heap.stats().grows == 2);
  heap.deallocate(d);
  heap.deallocate(fresh);

  // A span of several blocks does not grow: a growable span after it takes the run's start.
  static SpanMap other_map;
  static PageHeap other_heap(other_map);
  other_heap.deallocate(other_heap.allocate(2 * kRoom, kSomeClass));
  Span* small = other_heap.allocate(2, kSomeClass);
  Span* c = other_heap.allocate_growable(16, kAlone128K);
  REQUIRE(c->start == small->end());
  other_heap.deallocate(c);
  other_heap.deallocate(small);
}

TEST_CASE("growable spans stop mapping fresh room once free pages outnumber used ones by 64 MiB") {
  static SpanMap map;
  static PageHeap heap(map);
  const unsigned kAlone48K = size_to_class(48 << 10);
  REQUIRE(size_class(kAlone48K).objects == 1);
  // Each block held, each with 1 MiB of room after it: without a bound, 200 of them would map
  // 200 MiB for 9.4 MiB of blocks.
  std::vector<Span*> held;
  for (int i = 0; i < 200; ++i) {
    Span* s = heap.allocate_growable(size_class(kAlone48K).pages, kAlone48K);
    REQUIRE(s != nullptr);
    held.push_back(s);
  }
  PageHeapStats st = heap.stats();
  size_t in_use = st.system_bytes - st.free_bytes;
  INFO("mapped " << st.system_bytes << " in use " << in_use);
  REQUIRE(st.system_bytes <= 2 * in_use + PageHeap::kRoomSlackBytes + kMaxSmallSize);
  for (Span* s : held) heap.deallocate(s);
}
