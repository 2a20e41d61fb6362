// One-line messages on stderr, and the misuse report that ends the process.
#include "os/message.h"

#include <cstdlib>

#include "os/os.h"

namespace fastmalloc::os {

Message& Message::text(const char* s) {
  while (*s != '\0' && len_ < sizeof buf_) buf_[len_++] = *s++;
  return *this;
}

Message& Message::dec(uint64_t v) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0 && len_ < sizeof buf_) buf_[len_++] = digits[--n];
  return *this;
}

Message& Message::hex(uint64_t v) {
  text("0x");
  char digits[16];
  int n = 0;
  do {
    digits[n++] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v != 0);
  while (n > 0 && len_ < sizeof buf_) buf_[len_++] = digits[--n];
  return *this;
}

void Message::flush() {
  write_stderr(buf_, len_);
  len_ = 0;
}

void fatal_misuse(const char* call, const void* address, const char* why) noexcept {
  Message m;
  m.text("fastmalloc: ").text(call).text("(): ").text(why).text(": ").pointer(address).text("\n");
  m.flush();
  abort();
}

}  // namespace fastmalloc::os
