// The metadata arena: memory for the allocator's own structures (span descriptors, span-map
// leaves), taken from the OS in chunks and never returned. It is how the allocator avoids ever
// calling malloc for itself. Fixed-size objects are recycled through MetaPool's free list.
#pragma once

#include <cstddef>
#include <new>

#include "sync/mutex.h"

namespace fastmalloc {

class MetaArena {
 public:
  // Zeroed, 64-byte aligned memory for the allocator's lifetime; nullptr when the OS refuses.
  // Callers hold lock().
  void* allocate(size_t bytes);
  Mutex& lock() { return lock_; }
  size_t mapped_bytes() const { return mapped_; }

 private:
  Mutex lock_;
  char* cursor_ = nullptr;
  char* limit_ = nullptr;
  size_t mapped_ = 0;
};

extern MetaArena g_meta_arena;

// A free list of T carved from the arena. T must be trivially constructible from zeroes;
// create() hands out value-initialized objects. Thread-safe (the arena's lock).
template <class T>
class MetaPool {
 public:
  T* create() {
    LockGuard guard(g_meta_arena.lock());
    if (free_ != nullptr) {
      FreeNode* node = free_;
      free_ = node->next;
      return new (node) T{};
    }
    void* p = g_meta_arena.allocate(sizeof(T) < sizeof(FreeNode) ? sizeof(FreeNode) : sizeof(T));
    return p ? new (p) T{} : nullptr;
  }

  void destroy(T* object) {
    LockGuard guard(g_meta_arena.lock());
    auto* node = reinterpret_cast<FreeNode*>(object);
    node->next = free_;
    free_ = node;
  }

 private:
  struct FreeNode {
    FreeNode* next;
  };
  FreeNode* free_ = nullptr;
};

}  // namespace fastmalloc
