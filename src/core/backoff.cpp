#include "gateway/backoff.h"

#include <climits>
#include <stdexcept>

namespace gateway {

namespace {

std::uint64_t random_seed() {
  std::random_device device;
  return (std::uint64_t{device()} << 32) ^ device();
}

}  // namespace

Backoff::Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max)
    : Backoff(initial, max, random_seed()) {}

Backoff::Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max,
                 std::uint64_t seed)
    : initial_(initial), max_(max), rng_(seed) {
  if (initial.count() <= 0 || max < initial) {
    throw std::invalid_argument("Backoff: requires 0 < initial <= max");
  }
}

std::chrono::milliseconds Backoff::next() {
  using Rep = std::chrono::milliseconds::rep;
  // initial * 2^n <= max  <=>  initial <= max >> n; shifting max down never overflows.
  Rep ceiling = max_.count();
  if (attempts_ < 62 && initial_.count() <= (max_.count() >> attempts_)) {
    ceiling = initial_.count() << attempts_;
  }
  if (attempts_ < INT_MAX) ++attempts_;
  std::uniform_int_distribution<Rep> jitter(ceiling / 2, ceiling);
  return std::chrono::milliseconds(jitter(rng_));
}

}  // namespace gateway
