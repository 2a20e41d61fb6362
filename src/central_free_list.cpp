// Carving spans into objects and taking them back.
#include "central_free_list.h"

#include "block_check.h"
#include "os/message.h"
#include "os/os.h"
#include "span_map.h"

namespace fastmalloc {

constinit PerClass<CentralFreeList> g_central = make_per_class<CentralFreeList>();

namespace {
void add(std::atomic<uint64_t>& counter, uint64_t delta) { counter.fetch_add(delta, std::memory_order_relaxed); }
void subtract(std::atomic<uint64_t>& counter, uint64_t delta) { counter.fetch_sub(delta, std::memory_order_relaxed); }
uint64_t load(const std::atomic<uint64_t>& counter) { return counter.load(std::memory_order_relaxed); }
}  // namespace

// Outside lock_: the page heap's lock (and any mmap it makes) is not held under ours, so a
// thread preempted there does not hold up every other thread of the class. The span is nobody
// else's until add_span_locked() puts it on the list.
Span* CentralFreeList::new_span() {
  const SizeClass& sc = size_class(size_class_);
  Span* span = g_page_heap.allocate(sc.pages, size_class_);
  if (span == nullptr) return nullptr;
  span->free_objects = nullptr;
  span->never_used = span->start;
  span->live = 0;
  span->objects_came_back = false;
  add(spans_, 1);
  add(span_misses_, 1);
  return span;
}

void CentralFreeList::add_span_locked(Span* span) { nonempty_.push_front(span); }

// An object the span's free list holds, with the free signature in its first word, as every
// free object has (block_check.h).
void* CentralFreeList::pop(Span* span) {
  const SizeClass& sc = size_class(size_class_);
  void* object = span->free_objects;
  void* next;
  if (!decode_link(object, span->start, size_class_, &next)) {
    lock_.unlock();
    os::fatal_misuse("malloc", object, "a free block was overwritten (use after free?): its free-list link is corrupt");
  }
  span->free_objects = next;
  mark_free(object);
  ++span->live;
  if (next == nullptr && span->never_used == span->start + sc.used_bytes()) unlist_locked(span);
  return object;
}

// Memory never handed out is carved lazily, so a span's untouched pages cost no RSS. Carving
// only moves never_used; the new objects are the caller's alone from then on, and it writes
// their first words (free signatures) after dropping the lock (finish_carving), since that is
// where their pages fault in.
int CentralFreeList::carve(Span* span, void** out, int n, Carving* carving) {
  const SizeClass& sc = size_class(size_class_);
  uintptr_t objects_end = span->start + sc.used_bytes();
  size_t left = (objects_end - span->never_used) / sc.size;
  if (left < static_cast<size_t>(n)) n = static_cast<int>(left);
  uintptr_t first = span->never_used;
  for (int i = 0; i < n; ++i) out[i] = reinterpret_cast<void*>(first + uintptr_t(i) * sc.size);
  span->never_used = first + uintptr_t(n) * sc.size;
  span->live += static_cast<uint32_t>(n);
  if (span->free_objects == nullptr && span->never_used == objects_end) unlist_locked(span);
  carving->runs[carving->count++] = Carving::Run{out, n, span->released};
  return n;
}

// Where the span came from pages that are not resident and every page of the run holds an
// object's first word (objects no bigger than a page), one system call faults them in instead
// of one fault per page.
void CentralFreeList::finish_carving(const Carving& carving) const {
  const size_t object_bytes = size_class(size_class_).size;
  const uintptr_t os_page = os::hardware_page_size();
  for (int r = 0; r < carving.count; ++r) {
    const Carving::Run& run = carving.runs[r];
    if (run.released && object_bytes <= os_page) {
      uintptr_t first = reinterpret_cast<uintptr_t>(run.objects[0]);
      uintptr_t last_word_end = reinterpret_cast<uintptr_t>(run.objects[run.n - 1]) + sizeof(void*);
      uintptr_t from = first & ~(os_page - 1), to = (last_word_end + os_page - 1) & ~(os_page - 1);
      os::populate_for_write(reinterpret_cast<void*>(from), to - from);
    }
    for (int i = 0; i < run.n; ++i) mark_free(run.objects[i]);
  }
}

void CentralFreeList::unlist_locked(Span* span) {
  nonempty_.remove(span);
  for (Affine& a : affine_)
    if (a.span == span) a.span = nullptr;
}

Span* CentralFreeList::span_to_take_locked(unsigned cpu, bool share) {
  if (cpu == kNoCpu) return nonempty_.first();
  Affine& mine = affine_[cpu % kAffineSlots];
  const uint64_t now = allocations_.load(std::memory_order_relaxed);
  if (mine.span == nullptr) {
    // A span is in one slot at most: adopting one takes it from the slot that held it.
    for (Span* span = nonempty_.first(); span != nullptr; span = span->next) {
      Affine* holder = nullptr;
      for (Affine& other : affine_)
        if (other.span == span) holder = &other;
      if (holder != nullptr && now - holder->last_taken < kAffinityLapse) continue;
      if (holder != nullptr) holder->span = nullptr;
      mine.span = span;
      break;
    }
    if (mine.span == nullptr) return share ? nonempty_.first() : nullptr;
  }
  mine.last_taken = now;
  return mine.span;
}

// A batch carves at most a page's worth of new objects beyond its first one, so the objects of
// large classes that wait in a cache do not each hold a page the program has not used yet. The
// class's first batch carves at most one OS page's worth: most programs use most classes only a
// little, and each such class then holds one OS page of objects, not two. Where the list runs
// dry, the lock is dropped to take a span from the page heap, and the batch goes on there. A
// batch for a CPU cache comes from that CPU's own span (span_to_take_locked): where every
// listed span is another CPU's, it takes a fresh one, and shares only when the page heap has
// none to give.
int CentralFreeList::take(void** out, int n, bool* untouched, unsigned cpu) {
  const size_t object_bytes = size_class(size_class_).size;
  const size_t carve_limit = allocations_.load(std::memory_order_relaxed) == 0 ? os::hardware_page_size() : kPageSize;
  size_t carved_bytes = 0;
  int got = 0;
  Span* fresh = nullptr;
  bool share = false;  // out of memory for a span of our own: any will do
  for (;;) {
    Carving carving;
    bool dry = false;
    {
      LockGuard guard(lock_);
      if (fresh != nullptr) add_span_locked(fresh);
      const int got_before = got;
      while (got < n) {
        Span* span = span_to_take_locked(cpu, share);
        if (span == nullptr) {
          dry = true;
          break;
        }
        if (span->free_objects != nullptr) {
          out[got++] = pop(span);
          continue;
        }
        if ((got > 0 && carved_bytes >= carve_limit) || carving.count == Carving::kMaxRuns) break;
        size_t wanted = (carve_limit - carved_bytes + object_bytes - 1) / object_bytes;  // at least 1
        int carved = carve(span, out + got, wanted < static_cast<size_t>(n - got) ? static_cast<int>(wanted) : n - got,
                           &carving);
        got += carved;
        carved_bytes += carved * object_bytes;
      }
      add(live_, static_cast<uint64_t>(got - got_before));
      add(allocations_, static_cast<uint64_t>(got - got_before));
    }
    finish_carving(carving);
    if (untouched != nullptr) *untouched = carving.count > 0 && carving.runs[0].released;
    if (!dry || (got > 0 && carved_bytes >= carve_limit)) return got;
    if ((fresh = new_span()) == nullptr) {
      if (share || cpu == kNoCpu) return got;
      share = true;
    }
  }
}

int CentralFreeList::allocate_batch(void** out, int n, unsigned cpu) { return take(out, n, nullptr, cpu); }

void* CentralFreeList::allocate_one(bool* untouched) {
  void* object;
  return take(&object, 1, untouched, kNoCpu) == 1 ? object : nullptr;
}

void CentralFreeList::push(Span* span, void* p) {
  // Checked under the lock: the span cannot change class while we hold it. A block already
  // linked into the list is a second copy of a double free.
  if (span == nullptr || span->state != SpanState::kSmall || span->size_class != size_class_ || span->live == 0 ||
      is_link(p)) {
    lock_.unlock();
    os::fatal_misuse("free", p, "double free (the block is already free)");
  }
  encode_link(p, span->start, span->free_objects);
  span->free_objects = p;
  span->objects_came_back = true;
  --span->live;
  if (!span->on_list) nonempty_.push_front(span);
  // An empty span goes back to the page heap, unless it is the class's only one: a program that
  // allocates and frees one object in a loop should not take a span each time.
  if (span->live == 0 && nonempty_.length() > 1) give_back(span);
}

void CentralFreeList::give_back(Span* span) {
  unlist_locked(span);
  subtract(spans_, 1);
  g_page_heap.deallocate(span);
}

void CentralFreeList::deallocate_batch(void* const* objects, int n) {
  LockGuard guard(lock_);
  for (int i = 0; i < n; ++i) push(g_span_map.lookup(reinterpret_cast<uintptr_t>(objects[i])), objects[i]);
  subtract(live_, static_cast<uint64_t>(n));
}

void CentralFreeList::hand_live_span_to(Span* span, unsigned to) {
  // Where the class's spans end: pop() and carve() take a span off the list once it is reached.
  span->never_used = span->start + size_class(to).size;
  // The span is on no list (its one object is out): only the counts change hands.
  subtract(live_, 1);
  subtract(spans_, 1);
  CentralFreeList& other = central_list(to);
  add(other.live_, 1);
  add(other.spans_, 1);
}

bool CentralFreeList::grow_live_span(Span* span, unsigned to) {
  if (!g_page_heap.extend(span, size_class(to).pages, to)) return false;
  hand_live_span_to(span, to);
  return true;
}

bool CentralFreeList::shrink_live_span(Span* span, unsigned to) {
  if (!g_page_heap.shrink(span, size_class(to).pages, to)) return false;
  hand_live_span_to(span, to);
  return true;
}

void* CentralFreeList::allocate_growable() {
  const SizeClass& sc = size_class(size_class_);
  Span* span = g_page_heap.allocate_growable(sc.pages, size_class_);
  if (span == nullptr) return nullptr;
  // Nobody else can reach the span before its object is handed out: it is on no list.
  span->free_objects = nullptr;
  span->never_used = span->start + sc.size;
  span->live = 1;
  span->objects_came_back = false;
  add(spans_, 1);
  add(span_misses_, 1);
  add(live_, 1);
  add(allocations_, 1);
  return reinterpret_cast<void*>(span->start);
}

size_t CentralFreeList::release_empty_spans() {
  LockGuard guard(lock_);
  release_object_pages_locked();
  return release_empty_spans_locked();
}

void CentralFreeList::release_idle() {
  LockGuard guard(lock_);
  uint64_t allocations = load(allocations_);
  if (allocations == allocations_at_idle_check_) release_empty_spans_locked();
  allocations_at_idle_check_ = allocations;
  release_object_pages_locked();
}

// An object of two OS pages or more that sits in a span's free list keeps its pages resident
// as long as the span has a live object, and a size class that a program uses a little keeps a
// span of 40-64 KiB for each block it holds (memory_return's little allocation: about a
// megabyte over some twenty classes). The whole OS pages inside such objects go back; the
// first, which holds the link, stays. Under the lock, so that no object is handed out and
// written while its pages go; only spans that got objects back since the last look are walked,
// so a span that sits unchanged costs no system call.
void CentralFreeList::release_object_pages_locked() {
  const size_t object_bytes = size_class(size_class_).size;
  const uintptr_t os_page = os::hardware_page_size();
  if (object_bytes < 2 * os_page) return;
  for (Span* span = nonempty_.first(); span != nullptr; span = span->next) {
    if (!span->objects_came_back) continue;
    span->objects_came_back = false;
    void* object = span->free_objects;
    while (object != nullptr) {
      uintptr_t start = reinterpret_cast<uintptr_t>(object);
      uintptr_t from = round_up(start + sizeof(void*), os_page), to = (start + object_bytes) & ~(os_page - 1);
      if (from < to) os::release(reinterpret_cast<void*>(from), to - from);
      void* next;
      if (!decode_link(object, span->start, size_class_, &next)) break;  // pop() reports it
      object = next;
    }
  }
}

size_t CentralFreeList::release_empty_spans_locked() {
  size_t released = 0;
  for (Span *span = nonempty_.first(), *next; span != nullptr; span = next) {
    next = span->next;
    if (span->live != 0) continue;
    give_back(span);
    ++released;
  }
  return released;
}

CentralStats CentralFreeList::stats() const {
  return CentralStats{load(live_), load(spans_), load(allocations_), load(span_misses_)};
}

}  // namespace fastmalloc
