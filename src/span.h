// Span: a run of contiguous pages and the descriptor that says what they hold. A span is in one
// of three states:
//   kFree   - owned by the page heap, waiting to be reused (or coalesced with its neighbours);
//   kSmall  - carved into objects of one size class, owned by that class's central free list;
//   kLarge  - one block bigger than kMaxSmallSize, mapped from the OS for it alone.
// SpanList is the intrusive doubly-linked list both the page heap and the central lists use.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base.h"
#include "sync/rcu.h"

namespace fastmalloc {

enum class SpanState : uint8_t { kFree = 0, kSmall = 1, kLarge = 2 };

struct Span {
  uintptr_t start;  // first byte; page-aligned (kLarge: 4 KiB aligned, the mapping's start)
  size_t bytes;     // length; kLarge: the whole mapping, which is also the usable size
  Span* next;
  Span* prev;

  // kSmall only.
  void* free_objects;       // objects handed back, linked through their first word (encoded: block_check.h)
  uintptr_t never_used;     // objects at and above this address were never handed out
  uint32_t live;            // objects handed out and not yet returned
  uint8_t size_class;       // 0 unless kSmall
  SpanState state;
  bool on_list;             // linked into a SpanList
  bool released;            // kFree: its pages were given back to the OS (madvise), or never touched;
                            // kSmall: it was carved from such pages, so those from never_used up
                            // hold zeros: not resident yet, or faulted in by carve's populate and
                            // not written since (calloc relies on it: CentralFreeList::allocate_one)
  union {
    uint64_t free_since_ms;      // kFree: when it was last freed or merged (os::now_ms)
    bool objects_came_back;      // kSmall: objects came back since the central list last gave
  };                             // back the pages inside free ones (release_object_pages_locked)
  sync::RcuHead rcu;        // for retiring the descriptor (PageHeap::retire)

  size_t pages() const { return bytes >> kPageShift; }
  uintptr_t end() const { return start + bytes; }
  bool contains(uintptr_t p) const { return p - start < bytes; }
};

class SpanList {
 public:
  bool empty() const { return head_ == nullptr; }
  Span* first() const { return head_; }
  size_t length() const { return length_; }

  void push_front(Span* s) {
    s->prev = nullptr;
    s->next = head_;
    if (head_ != nullptr) head_->prev = s;
    else tail_ = s;
    head_ = s;
    s->on_list = true;
    ++length_;
  }

  void push_back(Span* s) {
    s->next = nullptr;
    s->prev = tail_;
    if (tail_ != nullptr) tail_->next = s;
    else head_ = s;
    tail_ = s;
    s->on_list = true;
    ++length_;
  }

  void remove(Span* s) {
    if (s->prev != nullptr) s->prev->next = s->next;
    else head_ = s->next;
    if (s->next != nullptr) s->next->prev = s->prev;
    else tail_ = s->prev;
    s->next = s->prev = nullptr;
    s->on_list = false;
    --length_;
  }

 private:
  Span* head_ = nullptr;
  Span* tail_ = nullptr;
  size_t length_ = 0;
};

}  // namespace fastmalloc
