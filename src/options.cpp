// Parsing FASTMALLOC_<NAME> from the startup environment, once.
#include "options.h"

#include <atomic>
#include <cstring>
#include <strings.h>

#include "base.h"
#include "cpu.h"
#include "os/message.h"
#include "os/os.h"

namespace fastmalloc {

namespace {

Options g_options;
std::atomic<int> g_state{0};  // 0: not parsed, 1: parsing, 2: ready

constexpr char kPrefix[] = "FASTMALLOC_";
constexpr size_t kPrefixLen = sizeof kPrefix - 1;

void warn(const char* entry, const char* what) {
  os::Message m;
  m.text("fastmalloc: ignoring ").text(entry).text(": ").text(what).text("\n");
  m.flush();
}

void warn_bad_value(const char* entry, const char* accepted_values) {
  os::Message m;
  m.text("fastmalloc: ignoring ").text(entry).text(": expected ").text(accepted_values).text("; keeping the default\n");
  m.flush();
}

bool parse_value(bool* field, const char* value) { return parse_bool(value, field); }
bool parse_value(Bytes* field, const char* value) { return parse_bytes(value, field); }
bool parse_value(Millis* field, const char* value) { return parse_millis(value, field); }

const char* accepted(const bool*) { return "1/0, true/false, yes/no or on/off"; }
const char* accepted(const Bytes*) { return "a size: digits with an optional K, M or G"; }
const char* accepted(const Millis*) { return "a duration: digits with an optional ms or s"; }

void print_value(os::Message& m, bool v) { m.text(v ? "on" : "off"); }
void print_value(os::Message& m, Bytes v) {
  static const char* const kUnits[] = {"", "K", "M", "G"};
  unsigned unit = 0;
  uint64_t n = v.value;
  while (unit < 3 && n != 0 && n % 1024 == 0) n /= 1024, ++unit;
  m.dec(n).text(kUnits[unit]);
}
void print_value(os::Message& m, Millis v) { m.dec(v.value).text("ms"); }

// Digits into *out; false on none or on overflow. *rest points past them.
bool parse_digits(const char* text, uint64_t* out, const char** rest) {
  uint64_t n = 0;
  const char* p = text;
  for (; *p >= '0' && *p <= '9'; ++p) {
    uint64_t digit = static_cast<uint64_t>(*p - '0');
    if (n > (UINT64_MAX - digit) / 10) return false;
    n = n * 10 + digit;
  }
  if (p == text) return false;
  *out = n;
  *rest = p;
  return true;
}

// Matches one FASTMALLOC_NAME=value entry against the option list.
void apply(const char* entry, void*) {
  if (strncmp(entry, kPrefix, kPrefixLen) != 0) return;
  const char* name = entry + kPrefixLen;
  const char* eq = strchr(name, '=');
  if (eq == nullptr) return;
  size_t name_len = static_cast<size_t>(eq - name);
#define FASTMALLOC_OPTION_MATCH(type, field, NAME, def, desc)                                   \
  if (name_len == sizeof(NAME) - 1 && strncasecmp(name, NAME, name_len) == 0) {                \
    if (!parse_value(&g_options.field, eq + 1)) warn_bad_value(entry, accepted(&g_options.field)); \
    return;                                                                                      \
  }
  FASTMALLOC_OPTION_LIST(FASTMALLOC_OPTION_MATCH)
#undef FASTMALLOC_OPTION_MATCH
  warn(entry, "unknown option; FASTMALLOC_HELP=1 lists them");
}

void print_help() {
  os::Message m;
  const Options defaults;
#define FASTMALLOC_OPTION_HELP(type, field, NAME, def, desc)                    \
  m.text("fastmalloc: FASTMALLOC_" NAME " (default ");                            \
  print_value(m, defaults.field);                                               \
  m.text("; ").text(accepted(&defaults.field)).text("): " desc "\n").flush();
  FASTMALLOC_OPTION_LIST(FASTMALLOC_OPTION_HELP)
#undef FASTMALLOC_OPTION_HELP
}

}  // namespace

bool parse_bool(const char* text, bool* out) {
  static const char* const kTrue[] = {"1", "true", "yes", "on"};
  static const char* const kFalse[] = {"0", "false", "no", "off"};
  for (const char* t : kTrue)
    if (strcasecmp(text, t) == 0) return *out = true, true;
  for (const char* f : kFalse)
    if (strcasecmp(text, f) == 0) return *out = false, true;
  return false;
}

bool parse_bytes(const char* text, Bytes* out) {
  uint64_t n;
  const char* rest;
  if (!parse_digits(text, &n, &rest)) return false;
  unsigned shift = 0;
  switch (*rest) {
    case '\0': break;
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    default: return false;
  }
  if (*rest != '\0' && rest[1] != '\0') return false;
  if (shift != 0 && n > (UINT64_MAX >> shift)) return false;
  out->value = n << shift;
  return true;
}

bool parse_millis(const char* text, Millis* out) {
  uint64_t n;
  const char* rest;
  if (!parse_digits(text, &n, &rest)) return false;
  if (*rest == '\0' || strcasecmp(rest, "ms") == 0) {
    out->value = n;
    return true;
  }
  if (strcasecmp(rest, "s") != 0 || n > UINT64_MAX / 1000) return false;
  out->value = n * 1000;
  return true;
}

const Options& options() {
  if (FM_LIKELY(g_state.load(std::memory_order_acquire) == 2)) return g_options;
  int expected = 0;
  if (g_state.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
    // A setuid or setgid program keeps the defaults, as glibc and jemalloc ignore their own
    // variables there: whoever starts it must not get its statistics printed, or its caches
    // sized, by setting the environment.
    if (!os::secure_execution()) os::for_each_env(apply, nullptr);
    if (g_options.help) print_help();
    g_state.store(2, std::memory_order_release);
  } else {
    while (g_state.load(std::memory_order_acquire) != 2) arch::cpu_relax();
  }
  return g_options;
}

}  // namespace fastmalloc
