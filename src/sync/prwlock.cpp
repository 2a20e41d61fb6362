// The passive reader-writer lock's slow paths: a reader that met a writer, and the writer side.
#include "sync/prwlock.h"

#include "os/os.h"

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
    // A thread that fences may have been caught between its outermost store and that store's
    // fence: fencing here orders it before this section's loads, as synchronize() needs.
    if ((word & kFenceFlag) != 0) std::atomic_thread_fence(std::memory_order_seq_cst);
    return {&status, word};
  }
  return {&status, enter_outermost(status)};
}

bool PrwlockCore::wait_until_readers_outside(uint64_t patience_ms) {
  const uint64_t start = patience_ms == kWaitForever ? 0 : os::now_ms();
  bool outside = true;
  for_each_record([&](ThreadRecord& r) {
    std::atomic<uint64_t>& status = r.prw[slot_];
    for (unsigned round = 0; outside && (status.load(std::memory_order_acquire) & kDepthMask) != 0; ++round) {
      if (patience_ms != kWaitForever && os::now_ms() - start >= patience_ms) outside = false;
      else backoff(round);
    }
  });
  return outside;
}

bool PrwlockCore::try_write_lock(uint64_t patience_ms) {
  writer_.lock();
  // Odd: a writer is inside.
  version_word_.store(version_word_.load(std::memory_order_relaxed) + kVersionStep, std::memory_order_seq_cst);
  writer_fence();
  if (wait_until_readers_outside(patience_ms)) return true;
  // Readers only ever test whether the version is odd, so leaving one version on is harmless.
  write_unlock();
  return false;
}

bool PrwlockCore::synchronize(uint64_t patience_ms) {
  // After this fence, a section whose store it did not expose loads what the writer stored
  // before it; every other one is found and waited for. Sections that validated before the
  // writer came in are over already, and none validates while it is inside, so the only ones
  // found are readers under the writer and readers about to step out again.
  writer_fence();
  return wait_until_readers_outside(patience_ms);
}

void PrwlockCore::write_unlock() {
  version_word_.store(version_word_.load(std::memory_order_relaxed) + kVersionStep, std::memory_order_release);
  writer_.unlock();
}

}  // namespace fastmalloc::sync
