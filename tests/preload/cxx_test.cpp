// C++ operators new and delete: every form, over-aligned types, the new-handler, bad_alloc.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <malloc.h>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "preload_support.h"

namespace {
bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

struct alignas(256) Wide {
  unsigned char bytes[300];
};
struct alignas(4096) PageAligned {
  int x;
};

int handler_calls = 0;
void failing_handler() {
  ++handler_calls;
  std::set_new_handler(nullptr);  // the next failure throws
}
}  // namespace

TEST_CASE("alignas(256) and alignas(4096) objects are aligned, alone and in arrays") {
  for (int i = 0; i < 100; ++i) {
    auto* w = new Wide;
    REQUIRE(aligned(w, 256));
    memset(w->bytes, 1, sizeof w->bytes);
    auto* arr = new Wide[7];
    REQUIRE(aligned(arr, 256));
    auto* pg = new PageAligned[3];
    REQUIRE(aligned(pg, 4096));
    delete w;
    delete[] arr;
    delete[] pg;
  }
  std::vector<Wide> v(33);
  REQUIRE(aligned(v.data(), 256));
  auto u = std::make_unique<PageAligned>();
  REQUIRE(aligned(u.get(), 4096));
}

TEST_CASE("every operator new and delete form works and comes from fastmalloc") {
  void* p = ::operator new(10);
  REQUIRE(malloc_usable_size(p) >= 10);
  ::operator delete(p);
  p = ::operator new[](20);
  ::operator delete[](p);
  p = ::operator new(30, std::nothrow);
  ::operator delete(p, std::nothrow);
  p = ::operator new[](40, std::nothrow);
  ::operator delete[](p, std::nothrow);
  p = ::operator new(50);
  ::operator delete(p, size_t{50});
  p = ::operator new[](60);
  ::operator delete[](p, size_t{60});
  for (size_t a : {size_t{16}, size_t{64}, size_t{1} << 12, size_t{1} << 20}) {
    INFO(a);
    std::align_val_t al{a};
    p = ::operator new(70, al);
    REQUIRE(aligned(p, a));
    ::operator delete(p, al);
    p = ::operator new[](80, al);
    REQUIRE(aligned(p, a));
    ::operator delete[](p, al);
    p = ::operator new(90, al, std::nothrow);
    REQUIRE(aligned(p, a));
    ::operator delete(p, al, std::nothrow);
    p = ::operator new[](100, al, std::nothrow);
    REQUIRE(aligned(p, a));
    ::operator delete[](p, al, std::nothrow);
    p = ::operator new(110, al);
    ::operator delete(p, size_t{110}, al);
    p = ::operator new[](120, al);
    ::operator delete[](p, size_t{120}, al);
  }
  REQUIRE(resolves_to_fastmalloc("_Znwm"));
  REQUIRE(resolves_to_fastmalloc("_ZdlPvmSt11align_val_t"));
}

TEST_CASE("operator new throws bad_alloc, and the nothrow forms return null") {
  size_t impossible = SIZE_MAX / 2;
  REQUIRE_THROWS_AS(::operator new(impossible), std::bad_alloc);
  REQUIRE_THROWS_AS(::operator new[](impossible), std::bad_alloc);
  REQUIRE_THROWS_AS(::operator new(impossible, std::align_val_t{64}), std::bad_alloc);
  REQUIRE(::operator new(impossible, std::nothrow) == nullptr);
  REQUIRE(::operator new[](impossible, std::nothrow) == nullptr);
  REQUIRE(::operator new(impossible, std::align_val_t{1 << 20}, std::nothrow) == nullptr);
}

TEST_CASE("operator new calls the new-handler before throwing") {
  handler_calls = 0;
  std::set_new_handler(failing_handler);
  REQUIRE_THROWS_AS(::operator new(SIZE_MAX / 2), std::bad_alloc);
  REQUIRE(handler_calls == 1);
  handler_calls = 0;
  std::set_new_handler(failing_handler);
  REQUIRE(::operator new(SIZE_MAX / 2, std::nothrow) == nullptr);
  REQUIRE(handler_calls == 1);
  std::set_new_handler(nullptr);
}

TEST_CASE("standard containers run on fastmalloc") {
  std::vector<std::string> strings;
  for (int i = 0; i < 20000; ++i) strings.push_back(std::string(static_cast<size_t>(i % 300), 'a' + i % 26));
  size_t total = 0;
  for (auto& s : strings) total += s.size();
  REQUIRE(total == 2980000);
}
