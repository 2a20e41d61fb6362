// Helpers for tests that run with libfastmalloc.so preloaded: checking the library is really the
// one answering, running code in a child process and reading how it ended.
#pragma once

#include <dlfcn.h>
#include <string>

// True when `symbol` resolves (for the whole process) to a definition inside libfastmalloc.so.
inline bool resolves_to_fastmalloc(const char* symbol) {
  void* address = dlsym(RTLD_DEFAULT, symbol);
  Dl_info info{};
  return address != nullptr && dladdr(address, &info) != 0 && info.dli_fname != nullptr &&
         std::string(info.dli_fname).find("libfastmalloc.so") != std::string::npos;
}

struct ChildResult {
  bool exited = false;
  int exit_code = -1;
  int signal = 0;
  std::string err;  // what the child wrote to stderr
};

// Runs `body` in a forked child with stderr captured; the child exits 0 if body returns.
template <class F>
ChildResult run_in_child(F body);

#include "preload_support_impl.h"
