// SystemdNotifier: tells systemd (Type=notify units) how the daemon is doing, through sd_notify(3)
// from libsystemd. Every call is a no-op when NOTIFY_SOCKET is unset (run by hand, in tests).
// Notifications are best effort: a failed send is ignored, because systemd then sees the missing
// READY=1 or WATCHDOG=1 itself (start timeout, watchdog restart), which is the right outcome.
// Thread-safe: it has no state, and each sd_notify call uses its own socket.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace gateway {

class SystemdNotifier {
 public:
  void ready();     // READY=1: start-up is complete (send after the first subscription succeeds)
  void stopping();  // STOPPING=1: shutdown has begun
  void watchdog();  // WATCHDOG=1: still healthy; send every watchdog_interval() / 2
  // STATUS=<s>, shown by `systemctl status`. Control characters (newlines would start new
  // assignments) become spaces; longer than 1024 bytes is cut.
  void status(std::string_view s);

  // The watchdog interval systemd asked for (WatchdogSec=, via sd_watchdog_enabled), or
  // std::nullopt when the watchdog is off or the environment is not meant for this process.
  std::optional<std::chrono::microseconds> watchdog_interval() const;
};

// Feeds the systemd watchdog (WatchdogSec=, seen as WATCHDOG_USEC) every half interval while the
// process is healthy; does nothing when the watchdog is off. Called from the main loop's tick
// (about once a second), so WatchdogSec= should be at least 2 s.
class WatchdogFeeder {
 public:
  explicit WatchdogFeeder(SystemdNotifier& notifier)
      : notifier_(notifier), interval_(notifier.watchdog_interval()) {}

  bool enabled() const { return interval_.has_value(); }
  std::chrono::microseconds interval() const { return interval_.value_or(kZero); }

  // Sends WATCHDOG=1 when healthy and half an interval has passed since the last one.
  void tick(bool healthy);

 private:
  static constexpr std::chrono::microseconds kZero{0};
  SystemdNotifier& notifier_;
  std::optional<std::chrono::microseconds> interval_;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace gateway
