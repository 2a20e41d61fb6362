// The transfer cache: a stock of free objects per class between the CPU caches and the central
// lists, which keeps a single batch while the page heap shrinks.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "page_heap.h"
#include "transfer_cache.h"

using namespace fastmalloc;

namespace {
std::vector<void*> take_from_central(unsigned cls, int n) {
  std::vector<void*> objects(static_cast<size_t>(n));
  for (int got = 0; got < n;) {
    int k = central_list(cls).allocate_batch(objects.data() + got, std::min(n - got, kMaxBatch));
    REQUIRE(k > 0);
    got += k;
  }
  return objects;
}

void insert_all(TransferCache& cache, unsigned cls, std::vector<void*>& objects) {
  for (size_t i = 0; i < objects.size(); i += static_cast<size_t>(batch_size(cls)))
    cache.insert(objects.data() + i, static_cast<int>(std::min(objects.size() - i, size_t(batch_size(cls)))));
}
}  // namespace

TEST_CASE("while the page heap shrinks, the transfer cache keeps one batch and sends its old stock down") {
  constexpr unsigned kClass = 20;  // 640 bytes: a stock of up to 256 objects
  TransferCache& cache = transfer_cache(kClass);
  const int limit = TransferCache::limit_for(kClass), batch = batch_size(kClass);
  REQUIRE(limit >= 4 * batch);

  std::vector<void*> stock = take_from_central(kClass, limit);
  insert_all(cache, kClass, stock);
  REQUIRE(cache.stats().stocked == static_cast<uint64_t>(limit));
  // Taken now: a central list that needs a new span would end the shrink below.
  std::vector<void*> more = take_from_central(kClass, batch);
  uint64_t live_in_central = central_list(kClass).stats().live_objects;

  // The heap gives up 80 MiB (more than kShrinkMinDrop), half of it and more: it shrinks.
  constexpr size_t kSpans = 160, kPages = 64;
  std::vector<Span*> spans;
  for (size_t i = 0; i < kSpans; ++i) spans.push_back(g_page_heap.allocate(kPages, kClass));
  REQUIRE(std::find(spans.begin(), spans.end(), nullptr) == spans.end());
  std::this_thread::sleep_for(std::chrono::milliseconds(2 * PageHeap::kCapIntervalMs));
  for (Span* s : spans) g_page_heap.deallocate(s);
  REQUIRE(g_page_heap.shrinking());

  cache.insert(more.data(), batch);
  uint64_t stocked = cache.stats().stocked;
  CHECK(stocked <= static_cast<uint64_t>(batch));
  // Everything over one batch went back to the central list, the old stock included: of the
  // objects the test took from it, only those still stocked are out.
  CHECK(central_list(kClass).stats().live_objects ==
        live_in_central - static_cast<uint64_t>(limit + batch) + stocked);

  // The heap in use grows back to its peak (the spans are kept, untouched, for the rest of the
  // run), so the tests after this one find it as before.
  for (Span*& s : spans) s = g_page_heap.allocate(kPages, kClass);
  REQUIRE_FALSE(g_page_heap.shrinking());
  cache.drain();
}
