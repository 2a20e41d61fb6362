// Run-time options, read once from FASTMALLOC_<NAME> environment variables. The list below is
// the one place an option is declared: its type, name, default and meaning, from which come the
// parser, the defaults and FASTMALLOC_HELP's text.
#pragma once

#include <cstdint>

namespace fastmalloc {

// The value types besides bool, distinct so each gets its own parser and help text.
struct Bytes {  // a size: digits with an optional K, M or G suffix (powers of 1024)
  uint64_t value;
};
struct Millis {  // a duration in milliseconds: digits with an optional ms or s suffix
  uint64_t value;
};

// X(type, field, NAME, default, description)
#define FASTMALLOC_OPTION_LIST(X) \
  X(bool, stats, "STATS", false, "print allocator statistics to stderr at exit; counts cache hits (slower)") \
  X(bool, rseq, "RSEQ", true, "use restartable sequences for the per-CPU caches (off: locked per-CPU caches)") \
  X(Bytes, cpu_cache_size, "CPU_CACHE_SIZE", Bytes{4 << 20}, \
    "most bytes of free blocks each CPU's cache has room for; classes that miss often grow into it") \
  X(Millis, decay, "DECAY", Millis{1000}, \
    "free pages unused this long go back to the OS (0: at once); beyond 32M plus a quarter of the heap in use, sooner") \
  X(bool, harden, "HARDEN", false, \
    "a canary after each small block, with its state: double frees and overflows reported by free; slower") \
  X(bool, help, "HELP", false, "print every option with its default and meaning, at startup")

struct Options {
#define FASTMALLOC_OPTION_FIELD(type, field, name, def, desc) type field = def;
  FASTMALLOC_OPTION_LIST(FASTMALLOC_OPTION_FIELD)
#undef FASTMALLOC_OPTION_FIELD
};

// The parsed options. The first call parses the environment (without allocating; a bad value or
// an unknown FASTMALLOC_ name gets one line on stderr and the default is kept); later calls are
// one load.
const Options& options();

// The parsers every option uses. Each returns false, leaving *out alone, for anything but:
//   bool    1/0, true/false, yes/no, on/off, in any case
//   Bytes   digits, then optionally K, M or G (any case; 1K = 1024), no overflow
//   Millis  digits, then optionally ms or s
bool parse_bool(const char* text, bool* out);
bool parse_bytes(const char* text, Bytes* out);
bool parse_millis(const char* text, Millis* out);

}  // namespace fastmalloc
