// The transfer cache's stock: a stack of objects under the class's transfer lock.
#include "transfer_cache.h"

#include <array>
#include <cstring>

namespace fastmalloc {

constinit PerClass<TransferCache> g_transfer{};

namespace {
void* g_stocks[kNumClasses][TransferCache::kCapacity];
}  // namespace

namespace {

constexpr auto kLimits = [] {
  std::array<int, kNumClasses> limits{};
  for (unsigned cls = 0; cls < kNumClasses; ++cls) limits[cls] = TransferCache::limit_for(cls);
  return limits;
}();

void add(std::atomic<uint64_t>& counter, uint64_t n) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}
}  // namespace

unsigned TransferCache::size_class() const { return static_cast<unsigned>(this - g_transfer.of); }
void** TransferCache::stock() const { return g_stocks[size_class()]; }

int TransferCache::remove(void** out, int n) {
  int got;
  {
    LockGuard guard(lock_);
    got = n < count_ ? n : count_;
    count_ -= got;
    if (count_ < low_water_) low_water_ = count_;
    memcpy(out, stock() + count_, sizeof(void*) * static_cast<size_t>(got));
    add(hits_, static_cast<uint64_t>(got));
    add(misses_, static_cast<uint64_t>(n - got));
    stocked_.store(static_cast<uint64_t>(count_), std::memory_order_relaxed);
  }
  if (got < n) got += central_list(size_class()).allocate_batch(out + got, n - got);
  return got;
}

void TransferCache::insert(void* const* objects, int n) {
  int kept;
  {
    LockGuard guard(lock_);
    int limit = kLimits[size_class()];
    kept = limit - count_ < n ? limit - count_ : n;
    memcpy(stock() + count_, objects, sizeof(void*) * static_cast<size_t>(kept));
    count_ += kept;
    add(hits_, static_cast<uint64_t>(kept));
    add(misses_, static_cast<uint64_t>(n - kept));
    stocked_.store(static_cast<uint64_t>(count_), std::memory_order_relaxed);
  }
  if (kept < n) central_list(size_class()).deallocate_batch(objects + kept, n - kept);
}

void TransferCache::drain() {
  void* batch[kMaxBatch];
  for (;;) {
    int n;
    {
      LockGuard guard(lock_);
      n = count_ < kMaxBatch ? count_ : kMaxBatch;
      count_ -= n;
      if (count_ < low_water_) low_water_ = count_;
      memcpy(batch, stock() + count_, sizeof(void*) * static_cast<size_t>(n));
      stocked_.store(static_cast<uint64_t>(count_), std::memory_order_relaxed);
    }
    if (n == 0) return;
    central_list(size_class()).deallocate_batch(batch, n);
  }
}

void TransferCache::release_idle() {
  void* idle[kCapacity];
  int n;
  {
    LockGuard guard(lock_);
    n = low_water_;
    // The bottom of the stack holds the objects that have been here longest.
    memcpy(idle, stock(), sizeof(void*) * static_cast<size_t>(n));
    memmove(stock(), stock() + n, sizeof(void*) * static_cast<size_t>(count_ - n));
    count_ -= n;
    low_water_ = count_;
    stocked_.store(static_cast<uint64_t>(count_), std::memory_order_relaxed);
  }
  for (int done = 0; done < n; done += kMaxBatch)
    central_list(size_class()).deallocate_batch(idle + done, n - done < kMaxBatch ? n - done : kMaxBatch);
}

TransferStats TransferCache::stats() const {
  return TransferStats{hits_.load(std::memory_order_relaxed), misses_.load(std::memory_order_relaxed),
                       stocked_.load(std::memory_order_relaxed)};
}

}  // namespace fastmalloc
