// libFuzzer target: the fuzz input is a program of allocation calls (malloc, calloc, realloc,
// the aligned calls, free, malloc_usable_size) on 32 slots, run against libfastmalloc.so, with
// every contract checked after each call:
//   - a block is aligned as asked (16 bytes for 16 and more, else 8), and its usable size
//     covers the request;
//   - live blocks never overlap;
//   - a block keeps its contents until it is freed, across realloc up to the smaller size;
//   - calloc's memory is zero;
//   - the allocator reports nothing and does not crash (a report aborts, which libFuzzer counts
//     as a crash and saves the input).
// Built and run by scripts/fuzz.sh, which keeps the corpus in tests/fuzz/corpus.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <malloc.h>

namespace {

constexpr int kSlots = 32;

struct Slot {
  unsigned char* p = nullptr;
  size_t size = 0;      // as requested
  unsigned char fill = 0;
};

Slot slots[kSlots];

[[noreturn]] void fail(const char* what, const Slot& s) {
  fprintf(stderr, "alloc_fuzz: %s (block %p, size %zu)\n", what, static_cast<void*>(s.p), s.size);
  abort();
}

// The input, read a field at a time; zeros once it runs out.
struct Reader {
  const uint8_t* data;
  size_t left;
  uint8_t byte() {
    if (left == 0) return 0;
    --left;
    return *data++;
  }
  // Mostly small sizes, sometimes medium, now and then large (up to 4 MiB), and the edges.
  size_t size() {
    uint8_t kind = byte();
    size_t low = byte() | size_t{byte()} << 8;
    switch (kind & 7) {
      case 0: return low & 0xff;
      case 1: case 2: case 3: return low & 0x3ff;
      case 4: case 5: return low;
      case 6: return low << 6;  // to 4 MiB
      default: {
        static const size_t kEdges[] = {0, 1, 8, 16, 17, 128, 129, 4096, 65536, 65537, 262144, 262145};
        return kEdges[low % (sizeof kEdges / sizeof kEdges[0])];
      }
    }
  }
};

void fill(Slot& s, unsigned char value) {
  s.fill = value;
  if (s.size > 0) memset(s.p, value, s.size);
}

void check_contents(const Slot& s, size_t upto) {
  for (size_t i = 0; i < upto; ++i)
    if (s.p[i] != s.fill) fail("contents changed", s);
}

// A fresh (or moved) block: its alignment, usable size, and no overlap with the others.
void check_new(const Slot& s, size_t align, int self) {
  if (reinterpret_cast<uintptr_t>(s.p) % align != 0) fail("misaligned", s);
  if (malloc_usable_size(s.p) < s.size) fail("usable size below the request", s);
  uintptr_t begin = reinterpret_cast<uintptr_t>(s.p), end = begin + (s.size > 0 ? s.size : 1);
  for (int i = 0; i < kSlots; ++i) {
    const Slot& o = slots[i];
    if (i == self || o.p == nullptr) continue;
    uintptr_t ob = reinterpret_cast<uintptr_t>(o.p), oe = ob + (o.size > 0 ? o.size : 1);
    if (begin < oe && ob < end) fail("overlaps another live block", s);
  }
}

size_t natural_alignment(size_t size) { return size >= 16 ? 16 : 8; }

void release(Slot& s) {
  if (s.p == nullptr) return;
  check_contents(s, s.size);
  free(s.p);
  s = Slot{};
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The whole point is to test fastmalloc: refuse to run on anything else.
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&malloc), &info) == 0 || info.dli_fname == nullptr ||
      strstr(info.dli_fname, "libfastmalloc") == nullptr) {
    void* resolved = dlsym(RTLD_DEFAULT, "malloc");
    if (resolved == nullptr || dladdr(resolved, &info) == 0 || strstr(info.dli_fname, "libfastmalloc") == nullptr) {
      fprintf(stderr, "alloc_fuzz: malloc is not fastmalloc's\n");
      abort();
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in{data, size};
  while (in.left > 0) {
    uint8_t op = in.byte();
    Slot& s = slots[(op >> 3) % kSlots];
    int self = static_cast<int>(&s - slots);
    unsigned char value = in.byte();
    switch (op & 7) {
      case 0: case 1: {  // malloc
        release(s);
        s.size = in.size();
        s.p = static_cast<unsigned char*>(malloc(s.size));
        if (s.p == nullptr) fail("malloc failed", s);
        check_new(s, natural_alignment(s.size), self);
        fill(s, value);
        break;
      }
      case 2: {  // calloc, sometimes with a product that overflows
        release(s);
        size_t count = in.byte() + 1u, each = in.size() / count + (in.byte() == 0xff ? SIZE_MAX / 2 : 0);
        errno = 0;
        void* p = calloc(count, each);
        size_t total;
        // Above 2^48 bytes no address space can hold it.
        if (__builtin_mul_overflow(count, each, &total) || total >> 48 != 0) {
          if (p != nullptr || errno != ENOMEM) fail("calloc of an impossible size did not fail with ENOMEM", s);
          break;
        }
        s.p = static_cast<unsigned char*>(p);
        s.size = total;
        if (s.p == nullptr) fail("calloc failed", s);
        for (size_t i = 0; i < total; ++i)
          if (s.p[i] != 0) fail("calloc memory not zero", s);
        check_new(s, natural_alignment(total), self);
        fill(s, value);
        break;
      }
      case 3: {  // realloc, including from null and to zero
        size_t new_size = in.size();
        if (s.p != nullptr && new_size == 0 && (value & 1)) {
          check_contents(s, s.size);
          if (realloc(s.p, 0) != nullptr) fail("realloc(p, 0) returned a block", s);
          s = Slot{};
          break;
        }
        if (new_size == 0) new_size = 1;
        unsigned char* q = static_cast<unsigned char*>(realloc(s.p, new_size));
        if (q == nullptr) fail("realloc failed", s);
        Slot moved{q, new_size, s.fill};
        check_contents(moved, s.size < new_size ? s.size : new_size);
        s = moved;
        check_new(s, natural_alignment(new_size), self);
        fill(s, value);
        break;
      }
      case 4: {  // the aligned calls, powers of two from 8 to 1 MiB
        release(s);
        size_t align = size_t{8} << (in.byte() % 18);
        s.size = in.size();
        void* p = nullptr;
        switch (value % 3) {
          case 0:
            if (posix_memalign(&p, align, s.size) != 0) p = nullptr;
            break;
          case 1: p = aligned_alloc(align, s.size); break;
          default: p = memalign(align, s.size); break;
        }
        s.p = static_cast<unsigned char*>(p);
        if (s.p == nullptr) fail("aligned allocation failed", s);
        check_new(s, align, self);
        fill(s, value);
        break;
      }
      case 5: case 6:  // free
        release(s);
        break;
      default:  // usable size, and writing all of it
        if (s.p != nullptr) {
          check_contents(s, s.size);
          size_t usable = malloc_usable_size(s.p);
          if (usable < s.size) fail("usable size below the request", s);
          s.size = usable;
          fill(s, value);
        }
        break;
    }
  }
  for (Slot& s : slots) release(s);
  return 0;
}
