// The metadata arena's bump allocator, and the pools' free runs.
#include "meta_arena.h"

#include "os/os.h"

namespace fastmalloc {

namespace {
constexpr size_t kChunk = 256 * 1024;

uintptr_t address(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// Sorts a list linked through `next` by address: a bottom-up merge sort, whose pass k merges
// neighbouring sorted stretches of 2^k nodes. No recursion, no memory beyond a few pointers.
template <class Node>
Node* sort_by_address(Node* list) {
  for (size_t width = 1;; width *= 2) {
    Node* sorted = nullptr;
    Node** tail = &sorted;
    size_t merges = 0;
    Node* rest = list;
    while (rest != nullptr) {
      ++merges;
      Node* a = rest;
      Node* b = rest;
      size_t a_left = 0;
      while (b != nullptr && a_left < width) {
        b = b->next;
        ++a_left;
      }
      size_t b_left = width;
      while (a_left > 0 || (b_left > 0 && b != nullptr)) {
        bool take_a = a_left > 0 && (b_left == 0 || b == nullptr || address(a) < address(b));
        Node* taken = take_a ? a : b;
        if (take_a) {
          a = a->next;
          --a_left;
        } else {
          b = b->next;
          --b_left;
        }
        *tail = taken;
        tail = &taken->next;
      }
      rest = b;
    }
    *tail = nullptr;
    if (merges <= 1) return sorted;
    list = sorted;
  }
}
}  // namespace

MetaArena g_meta_arena;

void* MetaArena::allocate(size_t bytes) {
  bytes = round_up(bytes, kAlign);
  if (static_cast<size_t>(limit_ - cursor_) < bytes) {
    size_t chunk = bytes > kChunk ? round_up(bytes, os::hardware_page_size()) : kChunk;
    void* fresh = os::map(chunk, os::hardware_page_size());
    if (fresh == nullptr) return nullptr;
    cursor_ = static_cast<char*>(fresh);
    limit_ = cursor_ + chunk;
    mapped_ += chunk;
  }
  void* p = cursor_;
  cursor_ += bytes;
  return p;
}

void* MetaFreeRuns::pop() {
  Run* run = head_;
  if (run == nullptr) return nullptr;
  if (--count_ < low_water_) low_water_ = count_;
  if (run->count == 1) {
    head_ = run->next;
  } else {
    // The run's second object becomes its header; on a released page, this write faults in a
    // zero page that the next pop hands out anyway.
    auto* rest = reinterpret_cast<Run*>(address(run) + stride_);
    rest->next = run->next;
    rest->count = run->count - 1;
    rest->released = run->released;
    head_ = rest;
  }
  return run;
}

void MetaFreeRuns::push(void* object) {
  auto* run = static_cast<Run*>(object);
  run->next = head_;
  run->count = 1;
  run->released = false;
  head_ = run;
  ++count_;
}

size_t MetaFreeRuns::release(size_t min_growth) {
  if (count_ - low_water_ < (min_growth > 1 ? min_growth : 1)) return 0;
  low_water_ = count_;
  head_ = sort_by_address(head_);
  size_t page = os::hardware_page_size(), released = 0;
  for (Run* run = head_; run != nullptr; run = run->next) {
    while (run->next != nullptr && address(run) + run->count * stride_ == address(run->next)) {
      run->released = run->released && run->next->released;
      run->count += run->next->count;
      run->next = run->next->next;
    }
    if (run->released) continue;
    // A run merged from released and new parts is released, and counted, whole again.
    uintptr_t begin = round_up(address(run) + sizeof(Run), page);
    uintptr_t end = (address(run) + run->count * stride_) & ~(page - 1);
    if (end <= begin) continue;
    run->released = os::release(reinterpret_cast<void*>(begin), end - begin);
    if (run->released) released += end - begin;
  }
  return released;
}

}  // namespace fastmalloc
