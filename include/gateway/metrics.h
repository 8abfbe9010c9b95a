// Counters and gauges the daemon keeps about itself, read by the summary log line and the
// Prometheus endpoint. Thread-safe: plain atomics (and one mutex for the per-flow map), written on
// the hot path with relaxed ordering.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace gateway {

struct FlowCounters {
  std::uint64_t received = 0;
  std::uint64_t stored = 0;
  std::uint64_t posted = 0;
  std::uint64_t rejected = 0;
};

class Metrics {
 public:
  std::atomic<std::uint64_t> received{0};      // spooled messages
  std::atomic<std::uint64_t> redeliveries{0};  // broker redeliveries recognised and dropped
  std::atomic<std::uint64_t> unrouted{0};      // messages no flow matched
  std::atomic<std::uint64_t> stored{0};        // messages stored (STORE_DB)
  std::atomic<std::uint64_t> posted{0};        // messages delivered (POST_ENDPOINT)
  std::atomic<std::uint64_t> rejected{0};      // dead letters
  std::atomic<std::uint64_t> transactions{0};  // committed flow transactions
  std::atomic<std::uint64_t> db_errors{0};     // failed attempts (retried)
  std::atomic<std::uint64_t> backlog{0};       // spooled messages not yet fully processed
  std::atomic<std::uint64_t> spool_bytes{0};
  std::atomic<bool> broker_connected{false};
  std::atomic<bool> db_connected{false};
  std::atomic<std::int64_t> broker_down_since_ms{0};  // steady clock, 0 while up
  std::atomic<std::int64_t> db_down_since_ms{0};      // steady clock, 0 while up
  std::atomic<std::int64_t> last_reload_unix{0};
  std::atomic<std::int64_t> last_progress_ms{0};  // steady clock of the last dispatcher/worker step
  std::atomic<std::uint64_t> flows_held{0};       // flows waiting for the database to take writes
  std::atomic<std::uint64_t> held_messages{0};    // messages that arrived for them while held
  std::atomic<bool> spool_failing{false};         // the last spool append failed (disk full, EIO)
  std::atomic<std::int64_t> spool_failing_since_ms{0};  // steady clock, 0 while writable

  // Transaction latency histogram (seconds), Prometheus-style cumulative buckets.
  static constexpr double kLatencyBuckets[] = {0.001, 0.002, 0.005, 0.01, 0.02,
                                               0.05,  0.1,   0.25,  0.5,  1.0};
  void observe_transaction(double seconds);

  void add_flow(const std::string& code, const FlowCounters& delta);
  std::map<std::string, FlowCounters> flows() const;

  // Held flows by code, with the reason (the pipeline sets and clears them; /healthz and the
  // summary read them).
  void set_held(const std::string& code, const std::string& reason);
  void clear_held(const std::string& code);
  std::map<std::string, std::string> held() const;

  // The Prometheus text exposition of everything above.
  std::string prometheus_text() const;

 private:
  std::atomic<std::uint64_t> latency_counts_[std::size(kLatencyBuckets) + 1] = {};
  std::atomic<std::uint64_t> latency_sum_us_{0};
  mutable std::mutex mu_;
  std::map<std::string, FlowCounters> flows_;  // guarded by mu_
  std::map<std::string, std::string> held_;    // guarded by mu_
};

// Milliseconds on the steady clock, for the *_ms fields above.
std::int64_t steady_now_ms();
// Wall-clock time since the Unix epoch (spool arrival times, outbox due times).
std::int64_t unix_now_us();
inline std::int64_t unix_now_ms() { return unix_now_us() / 1000; }

}  // namespace gateway
