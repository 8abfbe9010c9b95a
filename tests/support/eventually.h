// eventually(): waits (bounded) for a condition that the code under test makes true on its own
// threads, for unit tests of the background parts (client, pipeline, delivery, supervisor).
// Header-only: the unit tests do not link test_support.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

namespace gateway::testing {

// Polls `pred` every 2 ms until it holds or `timeout` passes; returns its last value (checked
// once more at the deadline, so a condition that became true while sleeping still counts).
inline bool eventually(const std::function<bool()>& pred,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace gateway::testing
