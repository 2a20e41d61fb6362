// Threads: blocks freed by other threads, randomized work with pattern checks that catch any
// overlap, thread exit, and allocation from thread-local destructors.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <malloc.h>
#include <mutex>
#include <pthread.h>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "preload_support.h"

namespace {

size_t random_size(std::mt19937_64& rng) {
  uint64_t r = rng();
  if (r % 100 < 80) return r % 512;
  if (r % 100 < 98) return r % 32768;
  return r % (600 * 1024);
}

}  // namespace

TEST_CASE("randomized malloc/free/realloc on several threads never hands out a block twice") {
  constexpr int kThreads = 4, kSlots = 2000, kOps = 60000;
  std::atomic<bool> ok{true};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &ok] {
      std::mt19937_64 rng(1234 + t);
      std::vector<void*> slots(kSlots, nullptr);
      std::vector<uint32_t> tags(kSlots, 0);
      for (int op = 0; op < kOps; ++op) {
        int i = static_cast<int>(rng() % kSlots);
        if (slots[i] != nullptr && !Checked::check(slots[i], tags[i])) ok = false;
        uint32_t tag = static_cast<uint32_t>(rng());
        if (slots[i] == nullptr) {
          slots[i] = Checked::make(random_size(rng), tag);
        } else if (rng() % 3 == 0) {
          size_t size = random_size(rng) + 16;
          auto* p = static_cast<unsigned char*>(realloc(slots[i], size));
          if (p == nullptr) ok = false;
          else Checked::fill(p, size, tag);
          slots[i] = p;
        } else {
          free(slots[i]);
          slots[i] = nullptr;
          continue;
        }
        tags[i] = tag;
      }
      for (int i = 0; i < kSlots; ++i) {
        if (slots[i] != nullptr && !Checked::check(slots[i], tags[i])) ok = false;
        free(slots[i]);
      }
    });
  }
  for (auto& th : threads) th.join();
  REQUIRE(ok);
}

TEST_CASE("blocks allocated on one thread are freed on another") {
  constexpr int kProducers = 3, kPerProducer = 50000;
  std::mutex lock;
  std::vector<std::pair<void*, uint32_t>> queue;
  std::atomic<int> producers_done{0};
  std::atomic<bool> ok{true};
  std::vector<std::thread> threads;
  for (int t = 0; t < kProducers; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < kPerProducer; ++i) {
        uint32_t tag = static_cast<uint32_t>(rng());
        void* p = Checked::make(rng() % 2000, tag);
        std::lock_guard<std::mutex> g(lock);
        queue.emplace_back(p, tag);
      }
      ++producers_done;
    });
  }
  // Two consumers free everything.
  for (int c = 0; c < 2; ++c) {
    threads.emplace_back([&] {
      std::vector<std::pair<void*, uint32_t>> mine;
      for (;;) {
        bool done = producers_done == kProducers;
        {
          std::lock_guard<std::mutex> g(lock);
          mine.swap(queue);
        }
        for (auto& [p, tag] : mine) {
          if (!Checked::check(p, tag)) ok = false;
          free(p);
        }
        if (mine.empty() && done) break;
        mine.clear();
      }
    });
  }
  for (auto& th : threads) th.join();
  REQUIRE(ok);
}

TEST_CASE("blocks outlive the thread that allocated them") {
  std::vector<void*> blocks(64);
  for (int round = 0; round < 50; ++round) {
    std::thread([&] {
      for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = Checked::make(i * 100, static_cast<uint32_t>(i));
    }).join();
    for (size_t i = 0; i < blocks.size(); ++i) {
      REQUIRE(Checked::check(blocks[i], static_cast<uint32_t>(i)));
      free(blocks[i]);
    }
  }
}

namespace {
std::atomic<int> destructor_ran{0};
struct AllocatesInDestructor {
  void* held = malloc(100);
  ~AllocatesInDestructor() {
    void* p = malloc(5000);
    memset(p, 1, 5000);
    free(p);
    free(held);
    ++destructor_ran;
  }
};
thread_local AllocatesInDestructor tls_object;

pthread_key_t key;
void key_destructor(void* value) {
  free(value);
  void* p = calloc(10, 10);
  free(p);
  ++destructor_ran;
}
}  // namespace

TEST_CASE("malloc and free inside thread_local and pthread-key destructors at thread exit") {
  REQUIRE(pthread_key_create(&key, key_destructor) == 0);
  destructor_ran = 0;
  std::vector<std::thread> threads;
  for (int i = 0; i < 20; ++i) {
    threads.emplace_back([] {
      memset(tls_object.held, 3, 100);
      pthread_setspecific(key, malloc(64));
    });
  }
  for (auto& th : threads) th.join();
  REQUIRE(destructor_ran == 40);
  pthread_key_delete(key);
}

TEST_CASE("thousands of short-lived threads") {
  std::atomic<bool> ok{true};
  for (int round = 0; round < 500; ++round) {
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i) {
      threads.emplace_back([&ok, i] {
        void* p = Checked::make(100 + i, 7);
        if (!Checked::check(p, 7)) ok = false;
        free(p);
      });
    }
    for (auto& th : threads) th.join();
  }
  REQUIRE(ok);
}

// glibc frees a thread's strerror buffer (made for an errno it has no text for) in its last
// cleanup, after every pthread-key destructor, the allocator's exit hook among them: each such
// thread used to leave its registry record behind for good, 64 bytes that every grace period
// and prwlock writer then scanned, until a million of them stopped the process.
TEST_CASE("threads whose last cleanup frees memory leave no registry records behind") {
  std::atomic<int> texts_made{0};
  auto run_threads = [&texts_made](int count) {
    for (int i = 0; i < count; ++i) {
      std::thread([&texts_made, i] {
        // Made for this thread in a buffer of its own: the number is in the text.
        if (strstr(strerror(100000 + i), std::to_string(100000 + i).c_str()) != nullptr) ++texts_made;
      }).join();
    }
  };
  run_threads(8);
  size_t before = property("thread_records");
  run_threads(2000);
  REQUIRE(texts_made == 2008);
  // The late record of the last thread is taken back when another thread registers (and one or
  // two more may linger: a joined thread can still be known to the kernel for a moment).
  REQUIRE(property("thread_records") <= before + 3);
}

TEST_CASE("oversubscribed span churn: spans move between the page heap and the classes") {
  // Many more threads than CPUs, each taking and returning whole spans (large classes, few
  // objects per span), so threads are preempted inside page-heap and central-list work.
  constexpr int kThreads = 32, kRounds = 300;
  std::atomic<bool> ok{true};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &ok] {
      std::mt19937_64 rng(99 + t);
      void* held[6] = {};
      uint32_t tags[6] = {};
      for (int round = 0; round < kRounds; ++round) {
        for (int i = 0; i < 6; ++i) {
          if (held[i] != nullptr && !Checked::check(held[i], tags[i])) ok = false;
          free(held[i]);
          tags[i] = static_cast<uint32_t>(rng());
          held[i] = Checked::make(16384 + rng() % 200000, tags[i]);
        }
      }
      for (int i = 0; i < 6; ++i) {
        if (!Checked::check(held[i], tags[i])) ok = false;
        free(held[i]);
      }
    });
  }
  for (auto& th : threads) th.join();
  REQUIRE(ok);
}

TEST_CASE("blocks that realloc grows and shrinks in place on many threads never overlap") {
  // Each thread grows two blocks at a time from 64 KiB to 1 MiB, one doubling each in turn, so
  // blocks of several threads are carved next to each other and grow into the same free runs;
  // then shrinks them back, which frees the pages other threads' blocks grow into.
  constexpr int kThreads = 16, kRounds = 40;
  std::atomic<bool> ok{true};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &ok] {
      std::mt19937_64 rng(7 + t);
      for (int round = 0; round < kRounds; ++round) {
        void* held[2];
        uint32_t tags[2];
        for (int i = 0; i < 2; ++i) held[i] = Checked::make(64 << 10, tags[i] = static_cast<uint32_t>(rng()));
        for (size_t size = 128 << 10; size <= (1 << 20); size *= 2) {
          for (int i = 0; i < 2; ++i) {
            void* grown = realloc(held[i], size);
            if (grown == nullptr || !Checked::check(grown, tags[i])) ok = false;
            if (grown == nullptr) abort();
            tags[i] = static_cast<uint32_t>(rng());
            Checked::fill(static_cast<unsigned char*>(grown), size, tags[i]);
            held[i] = grown;
          }
        }
        for (size_t size = 256 << 10; size >= (64 << 10); size /= 4) {
          for (int i = 0; i < 2; ++i) {
            void* shrunk = realloc(held[i], size);
            if (shrunk == nullptr) abort();
            if (!Checked::check_first(shrunk, tags[i], size)) ok = false;
            tags[i] = static_cast<uint32_t>(rng());
            Checked::fill(static_cast<unsigned char*>(shrunk), size, tags[i]);
            held[i] = shrunk;
          }
        }
        for (int i = 0; i < 2; ++i) {
          if (!Checked::check(held[i], tags[i])) ok = false;
          free(held[i]);
        }
        // Grown and shrunk spans now belong to other classes, and plain mallocs of those sizes
        // take their blocks again, more than the per-CPU caches hold: they must be whole
        // blocks of those classes.
        constexpr int kAgain = 12;
        void* again[kAgain];
        uint32_t again_tags[kAgain];
        for (int i = 0; i < kAgain; ++i) {
          size_t size = i < 4 ? (size_t{128} << 10) << i : size_t{64} << 10;
          again[i] = Checked::make(size, again_tags[i] = static_cast<uint32_t>(rng()));
        }
        for (int i = 0; i < kAgain; ++i) {
          if (!Checked::check(again[i], again_tags[i])) ok = false;
          free(again[i]);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  REQUIRE(ok);
}
