// The passive reader-writer lock's slow paths: a reader that met a writer, and the writer side.
#include "sync/prwlock.h"

namespace fastmalloc::sync {

void PrwlockCore::enter_outermost(std::atomic<uint64_t>& status) {
  const uint64_t flag = status.load(std::memory_order_relaxed) & kFenceFlag;
  for (;;) {
    uint64_t version = version_word_.load(std::memory_order_acquire);
    if ((version & kWriterInside) != 0) {
      // Step out, so the writer stops waiting for us, and wait for it to finish.
      status.store(status.load(std::memory_order_relaxed) & ~kDepthMask, std::memory_order_release);
      for (unsigned round = 0; ((version = version_word_.load(std::memory_order_acquire)) & kWriterInside) != 0; ++round)
        backoff(round);
    }
    status.store(version | flag | 1, std::memory_order_relaxed);
    if (flag != 0) std::atomic_thread_fence(std::memory_order_seq_cst);
    else std::atomic_signal_fence(std::memory_order_seq_cst);
    if (version_word_.load(std::memory_order_relaxed) == version) return;
  }
}

PrwlockCore::ReadSection PrwlockCore::read_lock_slow() {
  std::atomic<uint64_t>& status = current_record()->prw[slot_];
  uint64_t word = status.load(std::memory_order_relaxed);
  if ((word & kDepthMask) != 0) {
    status.store(word + 1, std::memory_order_relaxed);  // nested: already in
    return {&status, word};
  }
  enter_outermost(status);
  return {&status, status.load(std::memory_order_relaxed) - 1};
}

void PrwlockCore::write_lock() {
  writer_.lock();
  uint64_t version = version_word_.load(std::memory_order_relaxed) + kVersionStep;  // odd: a writer is inside
  version_word_.store(version, std::memory_order_seq_cst);
  writer_fence();
  for_each_record([&](ThreadRecord& r) {
    std::atomic<uint64_t>& status = r.prw[slot_];
    for (unsigned round = 0;; ++round) {
      uint64_t word = status.load(std::memory_order_acquire);
      if ((word & kDepthMask) == 0 || (word & ~kNestMask) == version) break;
      backoff(round);
    }
  });
}

void PrwlockCore::write_unlock() {
  version_word_.store(version_word_.load(std::memory_order_relaxed) + kVersionStep, std::memory_order_release);
  writer_.unlock();
}

}  // namespace fastmalloc::sync
