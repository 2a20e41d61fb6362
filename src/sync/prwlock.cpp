// The passive reader-writer lock's slow paths: a reader that met a writer, and the writer side.
#include "sync/prwlock.h"

namespace fastmalloc::sync {

void Prwlock::read_lock_slow(std::atomic<uint64_t>& status) {
  for (;;) {
    uint64_t version = version_.load(std::memory_order_acquire);
    if ((version & kWriterBit) != 0) {
      // Step out, so the writer stops waiting for us, and wait for it to finish.
      status.store(status.load(std::memory_order_relaxed) & ~kNestMask, std::memory_order_release);
      for (unsigned round = 0; ((version = version_.load(std::memory_order_acquire)) & kWriterBit) != 0; ++round)
        backoff(round);
    }
    if ((version & kFenceBit) != 0 && !g_readers_fence) {
      // Writers fence for us: let later readers stay on the fast path. A writer's store may
      // undo this (it only sends a reader or two here again).
      version_.compare_exchange_strong(version, version & ~kFenceBit, std::memory_order_acq_rel);
      continue;
    }
    status.store(version << kPrwNestBits | 1, std::memory_order_relaxed);
    reader_fence();
    if (version_.load(std::memory_order_relaxed) == version) return;
  }
}

void Prwlock::write_lock() {
  writer_.lock();
  uint64_t version = version_.load(std::memory_order_relaxed) | kWriterBit;
  version_.store(version, std::memory_order_seq_cst);
  writer_fence();
  for_each_record([&](ThreadRecord& r) {
    std::atomic<uint64_t>& status = r.prw[slot_];
    for (unsigned round = 0;; ++round) {
      uint64_t word = status.load(std::memory_order_acquire);
      if ((word & kNestMask) == 0 || word >> kPrwNestBits == version) break;
      backoff(round);
    }
  });
}

void Prwlock::write_unlock() {
  uint64_t version = version_.load(std::memory_order_relaxed);
  version_.store((version & ~kWriterBit) + kVersionStep, std::memory_order_release);
  writer_.unlock();
}

}  // namespace fastmalloc::sync
