// Run-time options, read once from FASTMALLOC_<NAME> environment variables. The list below is
// the one place an option is declared: its type, name, default and meaning, from which come the
// parser, the defaults and FASTMALLOC_HELP's text.
#pragma once

namespace fastmalloc {

// X(type, field, NAME, default, description)
#define FASTMALLOC_OPTION_LIST(X) \
  X(bool, stats, "STATS", false, "print allocator statistics to stderr at exit; counts cache hits (slower)") \
  X(bool, rseq, "RSEQ", true, "use restartable sequences for the per-CPU caches (off: locked per-CPU caches)") \
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

// Parses a boolean the way every option does: 1/0, true/false, yes/no, on/off, any case.
// Returns false for anything else.
bool parse_bool(const char* text, bool* out);

}  // namespace fastmalloc
