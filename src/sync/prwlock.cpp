// The passive reader-writer lock's slow paths: a reader that met a writer, and the writer side.
#include "sync/prwlock.h"

namespace fastmalloc::sync {

uint64_t PrwlockCore::enter_outermost(std::atomic<uint64_t>& status) {
  uint64_t word = status.load(std::memory_order_relaxed);  // depth 0, perhaps kFenceFlag
  const uint64_t flag = word & kFenceFlag;
  for (;;) {
    status.store(word + 1, std::memory_order_relaxed);
    if (flag != 0) std::atomic_thread_fence(std::memory_order_seq_cst);
    else std::atomic_signal_fence(std::memory_order_seq_cst);
    uint64_t version = version_word_.load(std::memory_order_acquire);
    if ((version & kWriterInside) == 0) return version | flag;
    // Step out, so the writer stops waiting for us, and wait for it to finish.
    status.store(word, std::memory_order_release);
    for (unsigned round = 0; ((version = version_word_.load(std::memory_order_acquire)) & kWriterInside) != 0; ++round)
      backoff(round);
  }
}

PrwlockCore::ReadSection PrwlockCore::read_lock_slow() {
  std::atomic<uint64_t>& status = current_record()->prw[slot_];
  uint64_t word = status.load(std::memory_order_relaxed);
  if ((word & kDepthMask) != 0) {
    status.store(word + 1, std::memory_order_relaxed);  // nested: already in
    return {&status, word};
  }
  return {&status, enter_outermost(status)};
}

void PrwlockCore::write_lock() {
  writer_.lock();
  // Odd: a writer is inside.
  version_word_.store(version_word_.load(std::memory_order_relaxed) + kVersionStep, std::memory_order_seq_cst);
  writer_fence();
  for_each_record([&](ThreadRecord& r) {
    std::atomic<uint64_t>& status = r.prw[slot_];
    for (unsigned round = 0;; ++round) {
      uint64_t word = status.load(std::memory_order_acquire);
      if ((word & kDepthMask) == 0) break;
      backoff(round);
    }
  });
}

void PrwlockCore::write_unlock() {
  version_word_.store(version_word_.load(std::memory_order_relaxed) + kVersionStep, std::memory_order_release);
  writer_.unlock();
}

}  // namespace fastmalloc::sync
