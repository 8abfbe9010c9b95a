#include "gateway/signal_mask.h"

#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <string>
#include <system_error>

#include "gateway/errors.h"

namespace gateway {
namespace {

[[noreturn]] void throw_errno(const char* what, int error) {
  throw Error(std::string(what) + ": " + std::system_category().message(error));
}

}  // namespace

SignalMask::SignalMask(std::initializer_list<int> signals) {
  sigemptyset(&signals_);
  sigemptyset(&previous_);
  for (int signal : signals) {
    if (signal == SIGKILL || signal == SIGSTOP) {
      throw Error("SignalMask: signal " + std::to_string(signal) + " cannot be blocked");
    }
    if (sigaddset(&signals_, signal) != 0) {
      throw Error("SignalMask: invalid signal number " + std::to_string(signal));
    }
  }
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  if (sigaction(SIGPIPE, &ignore, nullptr) != 0) throw_errno("sigaction(SIGPIPE)", errno);
  // A file-size limit (systemd LimitFSIZE=) then fails the spool's write with EFBIG, which it
  // handles (the message is held), instead of killing the process.
  if (sigaction(SIGXFSZ, &ignore, nullptr) != 0) throw_errno("sigaction(SIGXFSZ)", errno);
  if (int rc = pthread_sigmask(SIG_BLOCK, &signals_, &previous_); rc != 0) {
    throw_errno("pthread_sigmask", rc);
  }
}

SignalMask::~SignalMask() {
  sigset_t to_discard;
  sigemptyset(&to_discard);
  bool any = false;
  for (int signal = 1; signal < NSIG; ++signal) {
    if (sigismember(&signals_, signal) == 1 && sigismember(&previous_, signal) == 0) {
      sigaddset(&to_discard, signal);
      any = true;
    }
  }
  if (any) {
    const timespec zero{};
    while (sigtimedwait(&to_discard, nullptr, &zero) > 0) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
}

std::optional<int> SignalMask::wait(std::chrono::milliseconds timeout) const {
  using Clock = std::chrono::steady_clock;
  constexpr std::chrono::milliseconds kMaxWait = std::chrono::hours(24);
  const auto deadline =
      Clock::now() + std::clamp(timeout, std::chrono::milliseconds::zero(), kMaxWait);
  for (;;) {
    const auto left = std::max(Clock::duration::zero(), deadline - Clock::now());
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(left);
    const auto nanoseconds = std::chrono::duration_cast<std::chrono::nanoseconds>(left - seconds);
    const timespec ts{static_cast<std::time_t>(seconds.count()),
                      static_cast<long>(nanoseconds.count())};
    const int signal = sigtimedwait(&signals_, nullptr, &ts);
    if (signal > 0) return signal;
    if (errno == EAGAIN) return std::nullopt;
    // EINTR: a signal outside our set with a handler ran; wait for the rest of the time.
    if (errno != EINTR) throw_errno("sigtimedwait", errno);
  }
}

}  // namespace gateway
