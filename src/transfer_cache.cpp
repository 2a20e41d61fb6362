// The transfer cache's stock: a stack of objects under the class's transfer lock.
#include "transfer_cache.h"

#include <array>
#include <cstring>

#include "page_heap.h"

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

int TransferCache::remove(void** out, int n, unsigned cpu) {
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
  if (got < n) got += central_list(size_class()).allocate_batch(out + got, n - got, cpu);
  return got;
}

void TransferCache::insert(void* const* objects, int n) {
  // While the page heap shrinks, the stock keeps one batch: objects held here keep their spans
  // from going back, and the program is freeing, not about to allocate them again.
  void* oldest[kCapacity];
  int spilled = 0, kept;
  {
    LockGuard guard(lock_);
    int limit = g_page_heap.shrinking() ? batch_size(size_class()) : kLimits[size_class()];
    if (count_ > limit) spilled = take_oldest_locked(count_ - limit, oldest);
    kept = limit - count_ < n ? limit - count_ : n;
    memcpy(stock() + count_, objects, sizeof(void*) * static_cast<size_t>(kept));
    count_ += kept;
    add(hits_, static_cast<uint64_t>(kept));
    add(misses_, static_cast<uint64_t>(n - kept));
    stocked_.store(static_cast<uint64_t>(count_), std::memory_order_relaxed);
  }
  if (kept < n) central_list(size_class()).deallocate_batch(objects + kept, n - kept);
  to_central(oldest, spilled);
}

void TransferCache::drain() {
  void* all[kCapacity];
  int n;
  {
    LockGuard guard(lock_);
    n = take_oldest_locked(count_, all);
  }
  to_central(all, n);
}

void TransferCache::release_idle() {
  void* idle[kCapacity];
  int n;
  {
    LockGuard guard(lock_);
    uint64_t hits = hits_.load(std::memory_order_relaxed);
    n = take_oldest_locked(hits - hits_at_idle_check_ < kQuietTraffic ? count_ : low_water_, idle);
    hits_at_idle_check_ = hits;
    low_water_ = count_;
  }
  to_central(idle, n);
}

int TransferCache::take_oldest_locked(int n, void** out) {
  // The bottom of the stack holds the objects that have been here longest.
  memcpy(out, stock(), sizeof(void*) * static_cast<size_t>(n));
  memmove(stock(), stock() + n, sizeof(void*) * static_cast<size_t>(count_ - n));
  count_ -= n;
  if (count_ < low_water_) low_water_ = count_;
  stocked_.store(static_cast<uint64_t>(count_), std::memory_order_relaxed);
  return n;
}

void TransferCache::to_central(void* const* objects, int n) {
  for (int done = 0; done < n; done += kMaxBatch)
    central_list(size_class()).deallocate_batch(objects + done, n - done < kMaxBatch ? n - done : kMaxBatch);
}

TransferStats TransferCache::stats() const {
  return TransferStats{hits_.load(std::memory_order_relaxed), misses_.load(std::memory_order_relaxed),
                       stocked_.load(std::memory_order_relaxed)};
}

}  // namespace fastmalloc
