// A passive reader-writer lock, after Liu, Zhang and Chen, "Scalable read-mostly
// synchronization using passive reader-writer locks" (USENIX ATC 2014): for data that nearly
// every call reads and almost nothing changes.
//
// The lock is a version word: even while no writer is inside, odd while one is. A reader
// publishes, with one plain store into its own thread record, the version it has seen and that
// it is inside; then it checks that no writer is there (the word is unchanged). No atomic
// read-modify-write, no fence (on x86-TSO; see thread_registry.h for kernels without
// membarrier). A writer takes the writer mutex, makes the version odd, runs writer_fence()
// (membarrier: the user-space stand-in for the paper's IPI, which forces every reader's
// publishing store out, so a reader the writer misses is one that will see the odd version),
// then waits until every reader has seen the new version or is outside its section. Readers
// that are not reading at all cost the writer nothing, so its latency is bounded by the longest
// read section in progress, not by readers coming back. A reader that blocks inside its section
// (a page fault, preemption) only delays the writer.
//
// A reader that finds a writer inside steps out (publishes that it is outside) and waits for
// the writer to finish. Readers nest (the record keeps a depth), so a signal handler may read
// in the middle of a read section; a writer must not read-lock the same lock, and should block
// signals whose handlers would.
//
// Each live lock owns a slot (0 to kMaxPrwlocks - 1) in every thread record; the allocator's
// span map uses slot 0.
#pragma once

#include <atomic>
#include <cstdint>

#include "base.h"
#include "sync/mutex.h"
#include "sync/thread_registry.h"

namespace fastmalloc::sync {

class Prwlock {
 public:
  // What read_lock() hands to read_unlock(): the reader's status word for this lock.
  using ReadSection = std::atomic<uint64_t>*;

  explicit constexpr Prwlock(unsigned slot) : slot_(slot) {}
  Prwlock(const Prwlock&) = delete;
  Prwlock& operator=(const Prwlock&) = delete;

  FM_ALWAYS_INLINE ReadSection read_lock() {
    std::atomic<uint64_t>& status = current_record()->prw[slot_];
    uint64_t word = status.load(std::memory_order_relaxed);
    // Nested, or this thread must fence (kPrwFenceFlag): both off the fast path.
    if (FM_UNLIKELY((word & kNestMask) != 0)) return read_lock_nested_or_fenced(status);
    // Acquire: pairs with write_unlock, so the last writer's changes are seen.
    uint64_t version = version_.load(std::memory_order_acquire);
    status.store(version << kPrwNestBits | 1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // writers fence for us (membarrier)
    if (FM_UNLIKELY((version & 1) != 0 || version_.load(std::memory_order_relaxed) != version)) read_lock_slow(status);
    return &status;
  }

  FM_ALWAYS_INLINE void read_unlock(ReadSection status) {
    // Release: the section's loads happen before a writer can see it ended.
    status->store(status->load(std::memory_order_relaxed) - 1, std::memory_order_release);
  }

  void write_lock();
  void write_unlock();

  // For tests: whether the calling thread's read sides fence (see kPrwFenceFlag).
  bool caller_fences() const { return (current_record()->prw[slot_].load(std::memory_order_relaxed) & kPrwFenceFlag) != 0; }

  // Fork: prepare takes the writer mutex; the child finds it free.
  Mutex& writer_mutex() { return writer_; }

 private:
  // Publishes the current version (with the thread's fence flag), fencing if the flag says so,
  // and waits out any writer.
  FM_NOINLINE void read_lock_slow(std::atomic<uint64_t>& status);
  FM_NOINLINE ReadSection read_lock_nested_or_fenced(std::atomic<uint64_t>& status);

  // Zero at start, like everything else in the lock, so a lock inside a large object (the span
  // map) leaves that object in .bss.
  std::atomic<uint64_t> version_{0};
  Mutex writer_;
  const unsigned slot_;
};

}  // namespace fastmalloc::sync
