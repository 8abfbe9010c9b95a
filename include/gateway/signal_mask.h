// SignalMask: the daemon's way to receive SIGTERM/SIGINT/SIGHUP without signal handlers.
// Construct it first thing in main, before any thread starts (Paho, spdlog and the workers start
// threads): every thread inherits the blocked mask, so the signals stay pending until main picks
// them up with wait(). Also sets SIGPIPE and SIGXFSZ to ignored, so a write to a closed socket or
// past a file-size limit fails with EPIPE or EFBIG instead of killing the process; they stay
// ignored after destruction.
// Not copyable or movable. wait() may be called from any thread that has the mask, one at a time.
#pragma once

#include <signal.h>

#include <chrono>
#include <initializer_list>
#include <optional>

namespace gateway {

class SignalMask {
 public:
  // Blocks `signals` in the calling thread. Throws gateway::Error for an invalid signal number,
  // for SIGKILL/SIGSTOP (they cannot be blocked), or if the mask cannot be changed.
  SignalMask(std::initializer_list<int> signals);
  // Restores the mask the thread had before. Pending signals of our set that the old mask does not
  // block are discarded first: a second Ctrl-C during shutdown must not kill the process right
  // after a clean shutdown (with the default action, the moment it is unblocked).
  ~SignalMask();

  SignalMask(const SignalMask&) = delete;
  SignalMask& operator=(const SignalMask&) = delete;

  // Waits for one of the signals (sigtimedwait); returns its number, or std::nullopt after
  // `timeout` (a negative timeout counts as zero; waits longer than a day are cut to a day).
  // Throws gateway::Error only if sigtimedwait fails for a reason other than a timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout) const;

 private:
  sigset_t signals_;   // the set we block and wait for
  sigset_t previous_;  // the calling thread's mask before the constructor
};

}  // namespace gateway
