// Counters and gauges the daemon keeps about itself, read by the summary log line and the
// Prometheus endpoint. Thread-safe: plain atomics (and one mutex for the per-flow map), written on
// the hot path with relaxed ordering.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "gateway/database_node.h"

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
  std::atomic<std::uint64_t> expired{0};       // MQTT 5 messages past their expiry when processed
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
  // Successful flow reloads; a change tells STORE_TABLE mappings to read their tables again.
  std::atomic<std::uint64_t> flow_reloads{0};
  std::atomic<std::int64_t> last_progress_ms{0};  // steady clock of the last dispatcher/worker step
  std::atomic<std::uint64_t> flows_held{0};       // flows waiting for the database to take writes
  std::atomic<std::uint64_t> held_messages{0};    // messages that arrived for them while held
  std::atomic<bool> spool_failing{false};         // the last spool append failed (disk full, EIO)
  std::atomic<std::int64_t> spool_failing_since_ms{0};  // steady clock, 0 while writable
  // Transactions rolled back by the server and retried whole (DbRetryable: a deadlock, or a
  // Galera certification conflict at COMMIT when two nodes wrote the same flow row).
  std::atomic<std::uint64_t> db_conflicts{0};
  // Broker failover (issue 15): moves from one mqtt_servers row to another, and whether the flows
  // came from the cached copy (the database was down at start-up and has not answered since).
  std::atomic<std::uint64_t> broker_failovers{0};
  std::atomic<bool> flows_from_cache{false};
  // The database node the gateway's connections reach: main hands it to every MySQL adapter.
  const std::shared_ptr<DatabaseNode> database_node = std::make_shared<DatabaseNode>();

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

  // The broker the gateway is on: its URI (tcp://host:port, never credentials), its mqtt_servers
  // id and its place among the candidates (0: the first).
  void set_broker(const std::string& uri, std::int64_t server_id, std::size_t candidate);

  // The Prometheus text exposition of everything above.
  std::string prometheus_text() const;

 private:
  std::atomic<std::uint64_t> latency_counts_[std::size(kLatencyBuckets) + 1] = {};
  std::atomic<std::uint64_t> latency_sum_us_{0};
  mutable std::mutex mu_;
  std::map<std::string, FlowCounters> flows_;  // guarded by mu_
  std::map<std::string, std::string> held_;    // guarded by mu_
  std::string broker_uri_;                     // guarded by mu_; "" before the first connect
  std::int64_t broker_server_id_ = 0;          // guarded by mu_
  std::size_t broker_candidate_ = 0;           // guarded by mu_
};

}  // namespace gateway
