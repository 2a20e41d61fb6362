// The Catch2 runner shared by every test program, with a crash report that says where.
//
// Catch2's own handler for SIGSEGV and the like names the test case and nothing more, and a
// crash that shows once in many CI runs cannot be rerun under a debugger. So, except under the
// sanitizers (whose reports are better), these programs print the fault address, the thread,
// the test case and a backtrace (module+offset, for addr2line on the same build) to stderr, and
// then die of the signal as before, so a test that expects the death still sees it.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#else
#define CATCH_CONFIG_RUNNER
#define CATCH_CONFIG_NO_POSIX_SIGNALS
#include <catch2/catch.hpp>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <execinfo.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

namespace {

// The running test case, copied where a signal handler can read it without allocating.
char g_test_name[512] = "(none yet)";

struct TestNameRecorder : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo& info) override {
    snprintf(g_test_name, sizeof g_test_name, "%s", info.name.c_str());
  }
};

void write_text(const char* text) {
  for (size_t left = strlen(text); left > 0;) {
    ssize_t n = write(STDERR_FILENO, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<size_t>(n);
  }
}

// Only async-signal-safe calls, and none into malloc: backtrace() was called once in main, so
// libgcc's unwinder is loaded already, and backtrace_symbols_fd writes without allocating.
void report_crash(int sig, siginfo_t* info, void* context) {
  char line[1024];
#if defined(__x86_64__)
  const greg_t* r = static_cast<ucontext_t*>(context)->uc_mcontext.gregs;
  const unsigned long long ip = static_cast<unsigned long long>(r[REG_RIP]);
#else
  (void)context;
  const unsigned long long ip = 0;
#endif
  snprintf(line, sizeof line, "\nCRASH: signal %d (SIG%s) at address %p, instruction %#llx, thread %ld, in test case \"%s\"\n",
           sig, sigabbrev_np(sig), info->si_addr, ip, static_cast<long>(syscall(SYS_gettid)), g_test_name);
  write_text(line);
#if defined(__x86_64__)
  static constexpr struct {
    const char* name;
    int index;
  } kRegisters[] = {{"rax", REG_RAX}, {"rbx", REG_RBX}, {"rcx", REG_RCX}, {"rdx", REG_RDX}, {"rsi", REG_RSI},
                    {"rdi", REG_RDI}, {"rbp", REG_RBP}, {"rsp", REG_RSP}, {"r8", REG_R8},   {"r9", REG_R9},
                    {"r10", REG_R10}, {"r11", REG_R11}, {"r12", REG_R12}, {"r13", REG_R13}, {"r14", REG_R14},
                    {"r15", REG_R15}};
  size_t used = 0;
  for (const auto& reg : kRegisters)
    used += static_cast<size_t>(snprintf(line + used, sizeof line - used, "%s%s=%llx", used == 0 ? "registers: " : " ",
                                         reg.name, static_cast<unsigned long long>(r[reg.index])));
  snprintf(line + used, sizeof line - used, "\n");
  write_text(line);
#endif
  void* frames[64];
  int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, STDERR_FILENO);
  // The handler was reset (SA_RESETHAND): a fault runs its instruction again and dies of it
  // (with a core where they are on); a signal sent by kill() is sent again.
  if (info->si_code <= 0) raise(sig);
}

}  // namespace

CATCH_REGISTER_LISTENER(TestNameRecorder)

int main(int argc, char** argv) {
  void* warm_up[1];
  backtrace(warm_up, 1);
  static char alternate_stack[64 * 1024];  // the main thread's: a stack overflow there is reported too
  stack_t stack{};
  stack.ss_sp = alternate_stack;
  stack.ss_size = sizeof alternate_stack;
  sigaltstack(&stack, nullptr);
  struct sigaction action {};
  action.sa_sigaction = report_crash;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE}) sigaction(sig, &action, nullptr);
  return Catch::Session().run(argc, argv);
}
#endif
