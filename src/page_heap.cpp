// Page runs: first fit by exact-size bins, best fit among the long ones, split and coalesce.
#include "page_heap.h"

#include <cerrno>

#include "block_check.h"
#include "options.h"
#include "os/os.h"
#include "size_classes.h"
#include "sync/rcu.h"

namespace fastmalloc {

constinit PageHeap g_page_heap(g_span_map);
constinit MetaPool<Span> g_span_pool;

void PageHeap::insert_free(Span* span) {
  span->state = SpanState::kFree;
  map_.set_pinned(span->start, span);
  map_.set_pinned(span->end() - kPageSize, span);
  // Resident spans first, so requests reuse them before faulting in released pages.
  if (span->released) bin_for(span->pages()).push_back(span);
  else bin_for(span->pages()).push_front(span);
  free_bytes_ += span->bytes;
  if (span->released) released_bytes_ += span->bytes;
}

void PageHeap::remove_free(Span* span) {
  bin_for(span->pages()).remove(span);
  free_bytes_ -= span->bytes;
  if (span->released) released_bytes_ -= span->bytes;
}

Span* PageHeap::take_free(size_t pages) {
  for (size_t n = pages; n < kBins; ++n)
    if (!bins_[n].empty()) return bins_[n].first();
  // Best fit among the resident long spans, else among the released ones.
  Span* best = nullptr;
  for (Span* s = bins_[0].first(); s != nullptr; s = s->next)
    if (s->pages() >= pages && (best == nullptr || s->released < best->released ||
                                (s->released == best->released && s->bytes < best->bytes)))
      best = s;
  return best;
}

Span* PageHeap::longest_free() {
  Span* longest = nullptr;
  for (Span* s = bins_[0].first(); s != nullptr; s = s->next)
    if (longest == nullptr || s->bytes > longest->bytes) longest = s;
  for (size_t n = kBins - 1; longest == nullptr && n > 0; --n) longest = bins_[n].first();
  return longest;
}

Span* PageHeap::map_fresh(size_t pages, uintptr_t below) {
  size_t bytes = (pages > kGrowPages ? pages : kGrowPages) * kPageSize;
  void* memory = below > bytes ? os::map_at(reinterpret_cast<void*>(below - bytes), bytes) : nullptr;
  if (memory == nullptr) memory = os::map(bytes, kPageSize);
  if (memory == nullptr) return nullptr;
  uintptr_t start = reinterpret_cast<uintptr_t>(memory);
  Span* span = g_span_pool.create();
  if (span == nullptr || !map_.ensure(start, bytes)) {
    if (span != nullptr) g_span_pool.destroy(span);
    os::unmap(memory, bytes);
    return nullptr;
  }
  map_.pin(start, bytes);  // released spans clear their entries; their leaves must stay
  span->start = start;
  span->bytes = bytes;
  span->state = SpanState::kFree;
  span->released = true;  // never touched: not resident
  span->free_since_ms = os::now_ms();
  return span;
}

// A growth maps an eighth of the heap (1 to 32 MiB), not 1 MiB each time. Every mmap takes the
// process's mmap lock for writing, and while it waits for the lock, the threads that fault pages
// in (carving's MADV_POPULATE_WRITE) queue behind it asleep: at 16 threads on 2 CPUs, workingset
// grew its heap 88 times in 0.15 s, and half its context switches were threads asleep on that
// lock. Fresh pages cost address space only, until carving touches them. One thread grows at a
// time (grow_lock_), and the others then take from what it mapped: with 64 threads running
// dry together, each mapping its own growth took the heap to 250-800 MB of address space for a
// peak RSS of 100 MB.
size_t PageHeap::growth_pages_locked(size_t pages) const {
  size_t scaled = round_up(system_bytes_ / kPageSize / 8, kGrowPages);
  if (scaled > kMaxGrowPages) scaled = kMaxGrowPages;
  return pages > scaled ? pages : scaled;
}

Span* PageHeap::add_fresh_locked(Span* span) {
  system_bytes_ += span->bytes;
  last_grow_ = span->start;
  span = coalesce(span);
  insert_free(span);
  return span;
}

Span* PageHeap::grow(size_t pages) {
  Span* span = map_fresh(pages, last_grow_);
  return span != nullptr ? add_fresh_locked(span) : nullptr;
}

// Mapping more memory (a system call that waits for the process's mmap lock) happens outside
// lock_, so that a thread preempted there holds up no other thread's span; only threads that
// need more memory too wait for it, on grow_lock_.
Span* PageHeap::allocate(size_t pages, unsigned size_class) {
  uintptr_t below;
  size_t grow_pages;
  {
    LockGuard guard(lock_);
    uint64_t now = start_hand_out_locked();
    if (Span* run = take_free(pages); run != nullptr) return carve_locked(run, 0, pages, size_class, now);
  }
  LockGuard growing(grow_lock_);
  {
    LockGuard guard(lock_);
    uint64_t now = os::now_ms();
    if (Span* run = take_free(pages); run != nullptr) return carve_locked(run, 0, pages, size_class, now);
    below = last_grow_;
    grow_pages = growth_pages_locked(pages);
  }
  Span* fresh = map_fresh(grow_pages, below);
  // Near an address-space limit the eighth may not fit where what is asked still does.
  if (fresh == nullptr && grow_pages > pages) fresh = map_fresh(pages, below);
  if (fresh == nullptr) return nullptr;
  LockGuard guard(lock_);
  ++grows_;
  add_fresh_locked(fresh);
  return carve_locked(take_free(pages), 0, pages, size_class, os::now_ms());
}

size_t PageHeap::neighbour_reserve(const Span* run) {
  Span* before = map_.lookup(run->start - 1);
  if (before == nullptr || before->end() != run->start || before->state != SpanState::kSmall ||
      !one_block_per_span(before->size_class))
    return 0;
  return before->pages() < kGrowableRoomPages ? kGrowableRoomPages - before->pages() : 0;
}

Span* PageHeap::growable_run(size_t* skip_pages) {
  Span* best = nullptr;
  for (Span* s = bins_[0].first(); s != nullptr; s = s->next) {
    size_t skip = neighbour_reserve(s);
    if (s->pages() < skip + kGrowableRoomPages) continue;
    if (best == nullptr || s->released < best->released || (s->released == best->released && s->start < best->start)) {
      best = s;
      *skip_pages = skip;
    }
  }
  return best;
}

Span* PageHeap::allocate_growable(size_t pages, unsigned size_class) {
  LockGuard guard(lock_);
  uint64_t now = start_hand_out_locked();
  size_t skip = 0;
  Span* run = growable_run(&skip);
  // Fresh room costs address space only, but a program that keeps many grown blocks would keep
  // most of it in the gaps between them (other spans fill them in time): room is mapped only
  // while the heap's free pages do not outnumber its used ones by more than kRoomSlackBytes.
  if (run == nullptr && free_bytes_ <= in_use() + kRoomSlackBytes && grow(kGrowableRoomPages) != nullptr) {
    ++grows_;
    run = growable_run(&skip);
  }
  if (run == nullptr) {
    // No address space for that much room: the longest run, leaving half of what this span does
    // not need to a growing neighbour.
    run = longest_free();
    if (run == nullptr || run->pages() < pages) return carve_locked(nullptr, 0, pages, size_class, now);
    skip = neighbour_reserve(run) > 0 ? (run->pages() - pages) / 2 : 0;
  }
  return carve_locked(run, skip, pages, size_class, now);
}

uint64_t PageHeap::start_hand_out_locked() {
  uint64_t now = os::now_ms();
  last_handed_out_ms_ = now;
  decay_locked(now);
  return now;
}

Span* PageHeap::split_head(Span* span, size_t bytes) {
  Span* head = g_span_pool.create();
  if (head == nullptr) return nullptr;
  head->start = span->start;
  head->bytes = bytes;
  head->released = span->released;
  head->free_since_ms = span->free_since_ms;
  span->start += bytes;
  span->bytes -= bytes;
  return head;
}

Span* PageHeap::carve_locked(Span* run, size_t skip_pages, size_t pages, unsigned size_class, uint64_t now) {
  if (run == nullptr) {
    run = grow(pages);
    if (run == nullptr) return nullptr;
    ++grows_;
    skip_pages = 0;
  }
  ++allocations_;
  remove_free(run);
  // The split-off parts get new descriptors and the last part keeps the run's, whose name its
  // pages already carry; the span's pages are all renamed below.
  if (skip_pages > 0) {
    if (Span* skipped = split_head(run, skip_pages * kPageSize); skipped != nullptr) {
      if (!skipped->released) map_.set_range(skipped->start, skipped->bytes, skipped);
      insert_free(skipped);
    }
  }
  Span* span = run;
  if (run->pages() > pages) {
    span = split_head(run, pages * kPageSize);
    insert_free(run);
    if (span == nullptr) return nullptr;
  }
  note_handed_out_locked(now);
  span->size_class = static_cast<uint8_t>(size_class);
  map_.set_small_span(span, size_class);
  span->state = SpanState::kSmall;
  // span->released stays the run's (split_head copies it): the central list reads it.
  span->on_list = false;
  return span;
}

bool PageHeap::extend(Span* span, size_t pages, unsigned size_class) {
  LockGuard guard(lock_);
  size_t extra = (pages - span->pages()) * kPageSize;
  Span* right = map_.lookup(span->end());
  // A free span on no list is waiting in release_list_locked().
  if (right == nullptr || right->state != SpanState::kFree || !right->on_list || right->start != span->end() ||
      right->bytes < extra)
    return false;
  uint64_t now = os::now_ms();
  last_handed_out_ms_ = now;
  remove_free(right);
  if (right->bytes > extra) {
    // The rest stays free under its descriptor, with its age; insert_free() names its new first
    // page.
    right->start += extra;
    right->bytes -= extra;
    insert_free(right);
  } else {
    retire(right);
  }
  span->bytes += extra;
  span->size_class = static_cast<uint8_t>(size_class);
  map_.set_small_span(span, size_class);
  note_handed_out_locked(now);
  return true;
}

void PageHeap::retire(Span* span) {
  sync::call_rcu(&span->rcu, [](sync::RcuHead* head) {
    Span* retired = reinterpret_cast<Span*>(reinterpret_cast<char*>(head) - offsetof(Span, rcu));
    g_span_pool.destroy(retired);
  });
}

Span* PageHeap::merge(Span* survivor, Span* other) {
  if (other->bytes > survivor->bytes) {
    Span* t = survivor;
    survivor = other;
    other = t;
  }
  uintptr_t junction = other->start < survivor->start ? survivor->start : other->start;
  if (other->start < survivor->start) survivor->start = other->start;
  survivor->bytes += other->bytes;
  if (survivor->released != other->released) {
    // Only where madvise is refused (coalesce()): the span is resident, named on every page.
    survivor->released = false;
    map_.set_range(survivor->start, survivor->bytes, survivor);
  } else if (!survivor->released) {
    map_.set_range(other->start, other->bytes, survivor);
  } else {
    // A released span is named at its ends only (release_pages): the merged span's new end
    // gets its name, and the two pages either side of the junction, now inside, lose theirs.
    map_.set_pinned(other->start == survivor->start ? survivor->start : survivor->end() - kPageSize, survivor);
    forget_interior(survivor, junction - kPageSize, 2 * kPageSize);
  }
  retire(other);
  return survivor;
}

void PageHeap::forget_interior(Span* span, uintptr_t start, size_t bytes) {
  uintptr_t inside_start = span->start + kPageSize, inside_end = span->end() - kPageSize;
  uintptr_t from = start > inside_start ? start : inside_start;
  uintptr_t to = start + bytes < inside_end ? start + bytes : inside_end;
  if (from < to) map_.forget_range(from, to - from, inside_start, inside_end);
}

Span* PageHeap::coalesce(Span* span) {
  // A neighbour on no list is waiting in release_list_locked(), which merges it in its turn.
  auto joins = [this, span](const Span* neighbour) {
    return neighbour != nullptr && neighbour != span && neighbour->state == SpanState::kFree && neighbour->on_list &&
           (neighbour->released == span->released || release_refused_);
  };
  if (Span* left = map_.lookup(span->start - 1); joins(left) && left->end() == span->start) {
    remove_free(left);
    span = merge(span, left);
  }
  if (Span* right = map_.lookup(span->end()); joins(right) && right->start == span->end()) {
    remove_free(right);
    span = merge(span, right);
  }
  return span;
}

void PageHeap::deallocate(Span* span) {
  LockGuard guard(lock_);
  deallocate_locked(span);
}

bool PageHeap::shrink(Span* span, size_t pages, unsigned size_class) {
  LockGuard guard(lock_);
  Span* rest = g_span_pool.create();
  if (rest == nullptr) return false;
  size_t keep = pages * kPageSize;
  rest->start = span->start + keep;
  rest->bytes = span->bytes - keep;
  span->bytes = keep;
  span->size_class = static_cast<uint8_t>(size_class);
  map_.set_small_span(span, size_class);
  deallocate_locked(rest);
  return true;
}

void PageHeap::deallocate_locked(Span* span) {
  // Every page loses its class first: free() trusts a class it finds in the span map.
  map_.set_range(span->start, span->bytes, span);
  span->size_class = 0;
  span->free_objects = nullptr;
  span->live = 0;
  span->state = SpanState::kFree;
  span->released = false;
  uint64_t now = os::now_ms();
  span->free_since_ms = now;
  uint64_t decay = decay_ms();
  if (decay == 0) release_pages(span);
  // A merged span keeps the age of the larger part: the age of most of its bytes. Taking the
  // newest would keep a long-free neighbour resident for as long as small spans join it.
  span = coalesce(span);
  note_shrinking_locked(now);
  // While the heap shrinks, whatever would take the resident free pages over the cap goes back
  // now: the last frees of a program giving up most of its heap may be the last slow-path calls
  // for a long time, and no scan would come by to release them.
  if (decay != 0 && shrinking() && free_bytes_ - released_bytes_ + span->bytes > retain_limit()) {
    span->next = nullptr;
    release_list_locked(span);
  } else {
    insert_free(span);
  }
  if (decay != 0 && free_bytes_ - released_bytes_ > retain_limit() && now >= next_cap_release_ms_)
    release_over_cap_locked(now);
  decay_locked(now);
}

void PageHeap::note_handed_out_locked(uint64_t now) {
  if (in_use() > recent_peak_in_use_) recent_peak_in_use_ = in_use();
  note_shrinking_locked(now);
}

void PageHeap::note_shrinking_locked(uint64_t now) {
  size_t in_use_now = in_use();
  bool shrinking = in_use_now * 2 < recent_peak_in_use_ && recent_peak_in_use_ - in_use_now >= kShrinkMinDrop &&
                   now >= last_handed_out_ms_ + kCapIntervalMs;
  // When a shrink starts, the free pages it finds resident go back at the next check, whenever
  // the last cap release was.
  if (shrinking && !shrinking_.load(std::memory_order_relaxed)) next_cap_release_ms_ = 0;
  shrinking_.store(shrinking, std::memory_order_relaxed);
}

bool PageHeap::release_pages(Span* span) {
  if (span->released) return true;
  if (!os::release(reinterpret_cast<void*>(span->start), span->bytes)) {
    release_refused_ = true;
    return false;
  }
  span->released = true;
  // Its entries inside describe pages nobody may use now: after a peak they would hold a
  // megabyte of span map per gigabyte of address space resident.
  forget_interior(span, span->start, span->bytes);
  return true;
}

void PageHeap::release_list_locked(Span* list) {
  bool refused = false;  // a refused madvise would be refused again: the rest stay resident
  while (list != nullptr) {
    Span* span = list;
    list = list->next;
    if (!refused) refused = !release_pages(span);
    insert_free(coalesce(span));
  }
}

void PageHeap::release_over_cap_locked(uint64_t now) {
  // Spans freed less than a quarter of the decay time ago are left, unless the heap is
  // shrinking: a program that churns through more free pages than the cap (many threads, large
  // classes) reuses them at once, and releasing them would only turn into page faults, while
  // one that has just freed most of its heap will not reuse them. At most once per
  // kCapIntervalMs, so a heap whose free pages are all young is not walked on every free.
  uint64_t decay = decay_ms();
  uint64_t min_age = shrinking() ? 0 : decay / 4 > kCapIntervalMs ? decay / 4 : kCapIntervalMs;
  next_cap_release_ms_ = now + kCapIntervalMs;
  size_t resident = free_bytes_ - released_bytes_, target = retain_limit() / 2;
  if (resident > target) release_list_locked(take_resident_locked(now, min_age, resident - target));
}

uint64_t PageHeap::decay_ms() {
  uint64_t ms = decay_ms_.load(std::memory_order_relaxed);
  if (FM_UNLIKELY(ms == kDecayUnset)) {
    ms = options().decay.value;  // every thread that gets here stores the same value
    decay_ms_.store(ms, std::memory_order_relaxed);
  }
  return ms;
}

void PageHeap::decay_locked(uint64_t now) {
  uint64_t decay = decay_ms();
  if (now < next_decay_scan_ms_.load(std::memory_order_relaxed)) return;
  uint64_t period = decay / 4 > 10 ? decay / 4 : 10;
  next_decay_scan_ms_.store(now + period, std::memory_order_relaxed);
  size_t faded_peak = recent_peak_in_use_ - recent_peak_in_use_ / 8;
  recent_peak_in_use_ = in_use() > faded_peak ? in_use() : faded_peak;
  note_shrinking_locked(now);
  if (free_bytes_ == released_bytes_) return;
  release_list_locked(take_resident_locked(now, decay, kAllBytes));
}

Span* PageHeap::take_resident_locked(uint64_t now, uint64_t min_age, size_t bytes) {
  Span* taken = nullptr;
  size_t taken_bytes = 0;
  // bins_[0] holds the longest spans, then the exact bins from long to short: fewest system
  // calls per byte.
  for (size_t n = 0; n < kBins && taken_bytes < bytes; ++n) {
    SpanList& bin = bins_[n == 0 ? 0 : kBins - n];
    for (Span *s = bin.first(), *next; s != nullptr && taken_bytes < bytes; s = next) {
      next = s->next;
      if (s->released || now - s->free_since_ms < min_age) continue;
      taken_bytes += s->bytes;
      remove_free(s);
      s->next = taken;
      taken = s;
    }
  }
  return taken;
}

void PageHeap::decay_tick(uint64_t now) {
  if (now < next_decay_scan_ms_.load(std::memory_order_relaxed) || !lock_.try_lock()) return;
  decay_locked(now);
  lock_.unlock();
}

size_t PageHeap::release_free_pages() {
  LockGuard guard(lock_);
  size_t before = released_bytes_;
  release_list_locked(take_resident_locked(os::now_ms(), 0, kAllBytes));
  // Leaves emptied by large blocks that went away; the page heap's own leaves never empty.
  map_.release_unused_leaves();
  return released_bytes_ - before;
}

Span* PageHeap::map_large(size_t bytes, size_t align) {
  size_t hw_page = os::hardware_page_size();
  size_t mapped = round_up(bytes, hw_page);
  if (mapped < bytes) {
    errno = ENOMEM;
    return nullptr;
  }
  // The span map names a block at its first page of kPageSize. A mapping of one OS page (a
  // small block with a large alignment) could share that page with a block mapped right after
  // it, and their entries would be one; at kPageSize or more, no two blocks start in one page.
  if (mapped < kPageSize) mapped = kPageSize;
  void* memory = os::map(mapped, align > hw_page ? align : hw_page);
  if (memory == nullptr) return nullptr;
  uintptr_t start = reinterpret_cast<uintptr_t>(memory);
  Span* span = g_span_pool.create();
  bool recorded = false;
  if (span != nullptr) {
    span->start = start;
    span->bytes = mapped;
    span->state = SpanState::kLarge;
    // Under the map's lock: a leaf that holds no entry yet could be released in between.
    LockGuard map_guard(map_.lock());
    recorded = map_.ensure_locked(start, kPageSize);
    if (recorded) map_.set(start, span);
  }
  if (!recorded) {
    if (span != nullptr) g_span_pool.destroy(span);
    os::unmap(memory, mapped);
    errno = ENOMEM;
    return nullptr;
  }
  LockGuard guard(lock_);
  ++large_count_;
  large_bytes_ += mapped;
  return span;
}

void PageHeap::unmap_large(Span* span) {
  {
    LockGuard guard(lock_);
    --large_count_;
    large_bytes_ -= span->bytes;
    // Clear the entry before the address can be mapped again by someone else. With both locks
    // held no entry of the page of entries around it changes while that page may go back.
    LockGuard map_guard(map_.lock());
    map_.forget_entry(span->start);
  }
  span->state = SpanState::kFree;
  os::unmap(reinterpret_cast<void*>(span->start), span->bytes);
  retire(span);
}

bool PageHeap::remap_large(Span* span, size_t new_bytes) {
  size_t mapped = round_up(new_bytes, os::hardware_page_size());
  if (mapped < new_bytes) return false;
  {
    // The block may move anywhere, and once moved it must be recorded there: hold the map's
    // lock with a spare leaf in hand, so recording cannot fail after the move. The old entry is
    // cleared first: once the block has left, another thread may map a block at that address.
    LockGuard map_guard(map_.lock());
    if (!map_.reserve_spare_locked()) return false;
    map_.set(span->start, nullptr);
    void* moved = os::remap(reinterpret_cast<void*>(span->start), span->bytes, mapped);
    if (moved != nullptr) {
      span->start = reinterpret_cast<uintptr_t>(moved);
      map_.ensure_locked(span->start, kPageSize);
    }
    map_.set(span->start, span);
    if (moved == nullptr) return false;
  }
  LockGuard guard(lock_);
  large_bytes_ += mapped - span->bytes;
  span->bytes = mapped;
  return true;
}

PageHeapStats PageHeap::stats() {
  LockGuard guard(lock_);
  size_t free_spans = 0;
  for (SpanList& bin : bins_) free_spans += bin.length();
  return PageHeapStats{system_bytes_, free_bytes_, released_bytes_, free_spans,
                       large_count_, large_bytes_, allocations_, grows_};
}

}  // namespace fastmalloc
