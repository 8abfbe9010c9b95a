// The clocks the gateway reads, as plain integers (atomics and database columns hold them).
#pragma once

#include <cstdint>

namespace gateway {

// Milliseconds on the steady clock (metrics' *_ms fields, watchdog and outage timers).
std::int64_t steady_now_ms();
// Wall-clock time since the Unix epoch (spool arrival times, outbox due times).
std::int64_t unix_now_us();
inline std::int64_t unix_now_ms() { return unix_now_us() / 1000; }

}  // namespace gateway
