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
    if (FM_UNLIKELY((word & kNestMask) != 0)) {
      status.store(word + 1, std::memory_order_relaxed);  // nested: already in
      return &status;
    }
    // Acquire: pairs with write_unlock, so the last writer's changes are seen.
    uint64_t version = version_.load(std::memory_order_acquire);
    status.store(version << kPrwNestBits | 1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);  // readers that must fence take the slow path
    if (FM_UNLIKELY((version & kSlowBits) != 0 || version_.load(std::memory_order_relaxed) != version))
      read_lock_slow(status);
    return &status;
  }

  FM_ALWAYS_INLINE void read_unlock(ReadSection status) {
    // Release: the section's loads happen before a writer can see it ended.
    status->store(status->load(std::memory_order_relaxed) - 1, std::memory_order_release);
  }

  void write_lock();
  void write_unlock();

  // For tests: whether readers are sent to the slow path to fence (see kFenceBit).
  bool readers_sent_to_fence() const { return (version_.load(std::memory_order_relaxed) & kFenceBit) != 0; }

  // Fork: prepare takes the writer mutex; the child finds it free.
  Mutex& writer_mutex() { return writer_; }

 private:
  // The version word: bit 0 is set while a writer is inside; bit 1 sends readers to the slow
  // path, which fences where readers must (g_readers_fence) and otherwise clears the bit for
  // good. It starts set because whether readers fence is decided at run time, and testing the
  // version's low bits keeps that decision off the fast path. Writers count in steps of 4.
  static constexpr uint64_t kWriterBit = 1, kFenceBit = 2, kSlowBits = kWriterBit | kFenceBit;
  static constexpr uint64_t kVersionStep = 4;

  FM_NOINLINE void read_lock_slow(std::atomic<uint64_t>& status);

  std::atomic<uint64_t> version_{kFenceBit};
  Mutex writer_;
  const unsigned slot_;
};

}  // namespace fastmalloc::sync
