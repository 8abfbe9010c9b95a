// Capped exponential backoff with jitter, for reconnect and retry loops (DB, MQTT, HTTP).
// Not thread-safe: each retry loop owns its own Backoff.
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

namespace gateway {

class Backoff {
 public:
  // Requires 0 < initial <= max; throws std::invalid_argument otherwise (a programming error:
  // the settings that feed these are range-checked). The seed makes the jitter reproducible in
  // tests; the two-argument form seeds from std::random_device so that many gateways restarting
  // together do not retry in lockstep.
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max);
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max, std::uint64_t seed);

  // Returns the delay before the next attempt and counts the attempt. With n = attempts() before
  // the call, d = min(max, initial * 2^n) and the result is uniform in [d/2, d]. Saturates at
  // max instead of overflowing, however many attempts have been made.
  std::chrono::milliseconds next();

  // Starts again from `initial`; call after a success.
  void reset() { attempts_ = 0; }

  // Number of next() calls since construction or the last reset() (saturates at INT_MAX).
  int attempts() const { return attempts_; }

 private:
  std::chrono::milliseconds initial_;
  std::chrono::milliseconds max_;
  int attempts_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace gateway
