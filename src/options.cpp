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

bool parse_value(bool* field, const char* value) { return parse_bool(value, field); }

// Matches one FASTMALLOC_NAME=value entry against the option list.
void apply(const char* entry, void*) {
  if (strncmp(entry, kPrefix, kPrefixLen) != 0) return;
  const char* name = entry + kPrefixLen;
  const char* eq = strchr(name, '=');
  if (eq == nullptr) return;
  size_t name_len = static_cast<size_t>(eq - name);
#define FASTMALLOC_OPTION_MATCH(type, field, NAME, def, desc)                                   \
  if (name_len == sizeof(NAME) - 1 && strncasecmp(name, NAME, name_len) == 0) {                \
    if (!parse_value(&g_options.field, eq + 1))                                                 \
      warn(entry, "expected 1/0, true/false, yes/no or on/off; keeping the default");          \
    return;                                                                                      \
  }
  FASTMALLOC_OPTION_LIST(FASTMALLOC_OPTION_MATCH)
#undef FASTMALLOC_OPTION_MATCH
  warn(entry, "unknown option; FASTMALLOC_HELP=1 lists them");
}

void print_help() {
  os::Message m;
#define FASTMALLOC_OPTION_HELP(type, field, NAME, def, desc) \
  m.text("fastmalloc: FASTMALLOC_" NAME " (" #type ", default " #def "): " desc "\n").flush();
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

const Options& options() {
  if (FM_LIKELY(g_state.load(std::memory_order_acquire) == 2)) return g_options;
  int expected = 0;
  if (g_state.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
    os::for_each_env(apply, nullptr);
    if (g_options.help) print_help();
    g_state.store(2, std::memory_order_release);
  } else {
    while (g_state.load(std::memory_order_acquire) != 2) arch::cpu_relax();
  }
  return g_options;
}

}  // namespace fastmalloc
