#include "gateway/adapters/systemd_notifier.h"

#include <systemd/sd-daemon.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

namespace gateway {
namespace {

constexpr std::size_t kMaxStatusBytes = 1024;

// Best effort by design (see the header); sd_notify returns 0 when NOTIFY_SOCKET is unset.
void notify(const std::string& state) { static_cast<void>(sd_notify(0, state.c_str())); }

}  // namespace

void SystemdNotifier::ready() { notify("READY=1"); }

void SystemdNotifier::stopping() { notify("STOPPING=1"); }

void SystemdNotifier::watchdog() { notify("WATCHDOG=1"); }

void SystemdNotifier::status(std::string_view s) {
  std::string state = "STATUS=";
  state.append(s.substr(0, kMaxStatusBytes));
  std::replace_if(
      state.begin(), state.end(),
      [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == '\x7f'; }, ' ');
  notify(state);
}

std::optional<std::chrono::microseconds> SystemdNotifier::watchdog_interval() const {
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    return std::chrono::microseconds(static_cast<std::chrono::microseconds::rep>(usec));
  }
  return std::nullopt;
}

void WatchdogFeeder::tick(bool healthy) {
  if (!interval_ || !healthy) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ < *interval_ / 2) return;
  last_ = now;
  notifier_.watchdog();
}

}  // namespace gateway
