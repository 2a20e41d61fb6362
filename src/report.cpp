// Gathering and printing statistics.
#include "report.h"

#include <cstring>

#include "central_free_list.h"
#include "cpu_cache.h"
#include "meta_arena.h"
#include "os/message.h"
#include "page_heap.h"
#include "sync/thread_registry.h"
#include "transfer_cache.h"

namespace fastmalloc {

namespace {
size_t minus(size_t a, size_t b) { return a > b ? a - b : 0; }  // counters read while threads run
}  // namespace

uint64_t ClassTotals::in_use() const { return minus(central.live_objects, cpu_cached + transfer.stocked); }

uint64_t ClassTotals::free_in_spans(const SizeClass& sc) const {
  return minus(central.spans * sc.objects, central.live_objects);
}

ClassTotals class_totals(unsigned cls, const CacheStats& cache) {
  return ClassTotals{central_list(cls).stats(), transfer_cache(cls).stats(), cache.class_objects[cls]};
}

Totals gather_totals() {
  Totals t{};
  t.cache = cache_stats();
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    ClassTotals c = class_totals(cls, t.cache);
    const SizeClass& sc = size_class(cls);
    t.small_in_use_objects += c.in_use();
    t.small_in_use_bytes += c.central.live_objects * sc.size;
    t.transfer_cache_bytes += c.transfer.stocked * sc.size;
    t.small_span_bytes += c.central.spans * sc.pages * kPageSize;
    t.small_allocations += c.central.allocations;
    t.span_misses += c.central.span_misses;
    t.transfer_hits += c.transfer.hits;
    t.transfer_misses += c.transfer.misses;
  }
  t.mode = cache_mode_name(cache_mode());
  // Objects in the caches count as handed out for the central lists, but the program does not
  // hold them.
  t.small_free_bytes = minus(t.small_span_bytes, t.small_in_use_bytes);
  t.small_in_use_bytes = minus(t.small_in_use_bytes, t.cache.cached_bytes + t.transfer_cache_bytes);
  t.heap = g_page_heap.stats();
  t.metadata_bytes = g_meta_arena.mapped_bytes();
  t.thread_records = sync::records_in_use();
  return t;
}

void print_stats() {
  Totals t = gather_totals();
  os::Message m;
  m.text("fastmalloc: mode=").text(t.mode).text("\n").flush();
  m.text("fastmalloc: in_use_bytes=").dec(t.small_in_use_bytes + t.heap.large_bytes);
  m.text(" small_in_use_bytes=").dec(t.small_in_use_bytes).text(" large_blocks=").dec(t.heap.large_count);
  m.text(" large_bytes=").dec(t.heap.large_bytes).text("\n").flush();
  // Without FASTMALLOC_STATS the fast paths count nothing, so there are no hits to print.
  m.text("fastmalloc: cpu_cache:");
  if (t.cache.hits_counted) m.text(" alloc_hits=").dec(t.cache.alloc_hits);
  m.text(" alloc_misses=").dec(t.cache.alloc_misses);
  if (t.cache.hits_counted) m.text(" free_hits=").dec(t.cache.free_hits);
  m.text(" free_misses=").dec(t.cache.free_misses);
  m.text(" resident_bytes=").dec(t.cache.resident_bytes);
  m.text(" cached_bytes=").dec(t.cache.cached_bytes).text(" caches=").dec(t.cache.slabs_in_use).text("\n").flush();
  m.text("fastmalloc: transfer_cache: hits=").dec(t.transfer_hits).text(" misses=").dec(t.transfer_misses);
  m.text(" cached_bytes=").dec(t.transfer_cache_bytes).text("\n").flush();
  m.text("fastmalloc: central: allocations=").dec(t.small_allocations).text(" span_misses=").dec(t.span_misses);
  m.text(" span_bytes=").dec(t.small_span_bytes).text(" free_object_bytes=").dec(t.small_free_bytes).text("\n").flush();
  m.text("fastmalloc: page_heap: allocations=").dec(t.heap.allocations).text(" grows=").dec(t.heap.grows);
  m.text(" mapped_bytes=").dec(t.heap.system_bytes).text(" free_bytes=").dec(t.heap.free_bytes);
  m.text(" released_bytes=").dec(t.heap.released_bytes).text(" free_spans=").dec(t.heap.free_spans).text("\n").flush();
  m.text("fastmalloc: metadata_bytes=").dec(t.metadata_bytes).text(" thread_records=").dec(t.thread_records);
  m.text("\n").flush();
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    ClassTotals c = class_totals(cls, t.cache);
    if (c.central.spans == 0) continue;
    const SizeClass& sc = size_class(cls);
    m.text("fastmalloc: size_class=").dec(sc.size).text(" spans=").dec(c.central.spans);
    m.text(" in_use=").dec(c.in_use()).text(" cpu_cached=").dec(c.cpu_cached);
    m.text(" transfer_cached=").dec(c.transfer.stocked).text(" free_in_spans=").dec(c.free_in_spans(sc));
    m.text("\n").flush();
  }
}

bool lookup_property(const Totals& t, const char* name, size_t* value) {
  const struct {
    const char* name;
    size_t value;
  } properties[] = {
      {"allocated_bytes", t.small_in_use_bytes + t.heap.large_bytes},
      {"heap_bytes", t.heap.system_bytes + t.heap.large_bytes},
      {"cpu_cache_bytes", t.cache.cached_bytes},
      {"cpu_cache_resident_bytes", t.cache.resident_bytes},
      {"transfer_cache_bytes", t.transfer_cache_bytes},
      {"central_free_bytes", t.small_free_bytes},
      {"page_heap_free_bytes", t.heap.free_bytes},
      {"released_bytes", t.heap.released_bytes},
      {"large_bytes", t.heap.large_bytes},
      {"metadata_bytes", t.metadata_bytes},
      {"remote_drain", t.cache.can_drain_remote ? 1u : 0u},
      {"thread_records", t.thread_records},
      {"cpu_cache_alloc_hits", t.cache.alloc_hits},
      {"cpu_cache_alloc_misses", t.cache.alloc_misses},
      {"cpu_cache_free_hits", t.cache.free_hits},
      {"cpu_cache_free_misses", t.cache.free_misses},
  };
  for (const auto& p : properties) {
    if (strcmp(p.name, name) == 0) {
      *value = p.value;
      return true;
    }
  }
  return false;
}

// glibc's <sizes> lists its bins of free chunks; here each size class that owns spans: the
// requests it serves (from, to), its free objects wherever they wait (count, and total bytes),
// and, beyond glibc's attributes, the objects in use and the spans.
int write_malloc_info(FILE* out) {
  Totals t = gather_totals();
  if (fprintf(out, "<malloc version=\"fastmalloc-1\">\n<heap nr=\"0\">\n<sizes>\n") < 0) return -1;
  for (unsigned cls = 1; cls < kNumClasses; ++cls) {
    ClassTotals c = class_totals(cls, t.cache);
    if (c.central.spans == 0) continue;
    const SizeClass& sc = size_class(cls);
    uint64_t from = cls == 1 ? 1 : size_class(cls - 1).size + 1;
    uint64_t free_objects = c.cpu_cached + c.transfer.stocked + c.free_in_spans(sc);
    if (fprintf(out, "<size from=\"%llu\" to=\"%u\" total=\"%llu\" count=\"%llu\" in_use=\"%llu\" spans=\"%llu\"/>\n",
                static_cast<unsigned long long>(from), sc.size, static_cast<unsigned long long>(free_objects * sc.size),
                static_cast<unsigned long long>(free_objects), static_cast<unsigned long long>(c.in_use()),
                static_cast<unsigned long long>(c.central.spans)) < 0)
      return -1;
  }
  int n = fprintf(out,
                  "</sizes>\n"
                  "<total type=\"small\" count=\"%zu\" size=\"%zu\"/>\n"
                  "<total type=\"free\" count=\"%zu\" size=\"%zu\"/>\n"
                  "<total type=\"cached\" size=\"%zu\"/>\n"
                  "<total type=\"mmap\" count=\"%zu\" size=\"%zu\"/>\n"
                  "<system type=\"current\" size=\"%zu\"/>\n"
                  "<aspace type=\"released\" size=\"%zu\"/>\n"
                  "</heap>\n"
                  "<system type=\"metadata\" size=\"%zu\"/>\n"
                  "</malloc>\n",
                  t.small_in_use_objects, t.small_in_use_bytes, t.heap.free_spans, t.heap.free_bytes + t.small_free_bytes,
                  t.cache.cached_bytes + t.transfer_cache_bytes, t.heap.large_count, t.heap.large_bytes, t.heap.system_bytes,
                  t.heap.released_bytes, t.metadata_bytes);
  return n < 0 ? -1 : 0;
}

}  // namespace fastmalloc
