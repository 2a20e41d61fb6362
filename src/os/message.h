// Building one line of text in a stack buffer and writing it to stderr: the allocator's only way
// to speak (misuse reports, statistics). No stdio, no allocation.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastmalloc::os {

class Message {
 public:
  Message& text(const char* s);
  Message& dec(uint64_t v);
  Message& hex(uint64_t v);  // 0x-prefixed
  Message& pointer(const void* p) { return hex(reinterpret_cast<uintptr_t>(p)); }
  // Writes what has been built (it should end in '\n') to stderr and empties the buffer.
  void flush();

 private:
  char buf_[512];
  size_t len_ = 0;
};

// Reports misuse of the API, "fastmalloc: CALL(): WHY: 0xADDR", and aborts the process.
[[noreturn]] void fatal_misuse(const char* call, const void* address, const char* why) noexcept;

}  // namespace fastmalloc::os
