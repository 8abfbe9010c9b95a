#include "gateway/metrics.h"

#include <chrono>
#include <sstream>

#include "gateway/redact.h"

namespace gateway {

void Metrics::observe_transaction(double seconds) {
  std::size_t i = 0;
  while (i < std::size(kLatencyBuckets) && seconds > kLatencyBuckets[i]) ++i;
  latency_counts_[i].fetch_add(1, std::memory_order_relaxed);
  latency_sum_us_.fetch_add(static_cast<std::uint64_t>(seconds * 1e6), std::memory_order_relaxed);
}

void Metrics::add_flow(const std::string& code, const FlowCounters& d) {
  std::lock_guard lock(mu_);
  FlowCounters& c = flows_[code];
  c.received += d.received;
  c.stored += d.stored;
  c.posted += d.posted;
  c.rejected += d.rejected;
}

std::map<std::string, FlowCounters> Metrics::flows() const {
  std::lock_guard lock(mu_);
  return flows_;
}

void Metrics::set_held(const std::string& code, const std::string& reason) {
  std::lock_guard lock(mu_);
  held_[code] = reason;
}

void Metrics::clear_held(const std::string& code) {
  std::lock_guard lock(mu_);
  held_.erase(code);
}

std::map<std::string, std::string> Metrics::held() const {
  std::lock_guard lock(mu_);
  return held_;
}

namespace {

void counter(std::ostringstream& o, const char* name, const char* help, std::uint64_t v,
             const char* type = "counter") {
  o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n'
    << name << ' ' << v << '\n';
}

// A label value: escaped, and without URL passwords (a held flow's reason may quote a URL).
std::string label(const std::string& value) {
  const std::string v = redact_url_credentials(value);
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

void Metrics::set_broker(const std::string& uri, std::int64_t server_id, std::size_t candidate) {
  std::lock_guard lock(mu_);
  broker_uri_ = uri;
  broker_server_id_ = server_id;
  broker_candidate_ = candidate;
}

std::string Metrics::prometheus_text() const {
  std::ostringstream o;
  counter(o, "gateway_messages_received_total", "Messages spooled from the broker.", received);
  counter(o, "gateway_redeliveries_dropped_total", "Broker redeliveries of spooled messages.",
          redeliveries);
  counter(o, "gateway_messages_unrouted_total", "Messages no flow matched.", unrouted);
  counter(o, "gateway_messages_stored_total", "Messages stored in data_records.", stored);
  counter(o, "gateway_messages_posted_total", "Messages delivered to endpoints.", posted);
  counter(o, "gateway_messages_rejected_total", "Messages written to rejected_messages.", rejected);
  counter(o, "gateway_messages_expired_total",
          "MQTT 5 messages past their expiry when processed (dead letters, not data).", expired);
  counter(o, "gateway_transactions_total", "Committed flow transactions.", transactions);
  counter(o, "gateway_db_errors_total", "Failed database attempts (retried).", db_errors);
  counter(o, "gateway_db_conflicts_total",
          "Transactions the database rolled back (deadlock, or a Galera certification conflict at "
          "COMMIT) and that were retried whole.",
          db_conflicts);
  counter(o, "gateway_backlog_messages", "Spooled messages not yet processed.", backlog, "gauge");
  counter(o, "gateway_spool_bytes", "Bytes in the spool.", spool_bytes, "gauge");
  counter(o, "gateway_broker_connected", "1 while connected to the broker.",
          broker_connected ? 1 : 0, "gauge");
  counter(o, "gateway_db_connected", "1 while the database answers.", db_connected ? 1 : 0,
          "gauge");
  counter(o, "gateway_flows_held", "Flows held: the database does not take their writes.",
          flows_held, "gauge");
  counter(o, "gateway_held_messages", "Messages that arrived for held flows and wait in the spool.",
          held_messages, "gauge");
  counter(o, "gateway_spool_writable", "0 while appends to the spool fail (disk full, I/O error).",
          spool_failing ? 0 : 1, "gauge");
  counter(o, "gateway_last_reload_timestamp_seconds", "Unix time of the last flow reload.",
          static_cast<std::uint64_t>(last_reload_unix.load()), "gauge");
  counter(o, "gateway_flow_reloads_total", "Successful flow reloads.", flow_reloads);

  o << "# HELP gateway_transaction_seconds Flow transaction latency.\n"
       "# TYPE gateway_transaction_seconds histogram\n";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < std::size(kLatencyBuckets); ++i) {
    cumulative += latency_counts_[i].load();
    o << "gateway_transaction_seconds_bucket{le=\"" << kLatencyBuckets[i] << "\"} " << cumulative
      << '\n';
  }
  cumulative += latency_counts_[std::size(kLatencyBuckets)].load();
  o << "gateway_transaction_seconds_bucket{le=\"+Inf\"} " << cumulative << '\n'
    << "gateway_transaction_seconds_sum " << static_cast<double>(latency_sum_us_.load()) / 1e6
    << '\n'
    << "gateway_transaction_seconds_count " << cumulative << '\n';

  const auto per_flow = flows();
  const std::pair<const char*, std::uint64_t FlowCounters::*> fields[] = {
      {"received", &FlowCounters::received},
      {"stored", &FlowCounters::stored},
      {"posted", &FlowCounters::posted},
      {"rejected", &FlowCounters::rejected}};
  for (const auto& [what, member] : fields) {
    o << "# HELP gateway_flow_messages_" << what << "_total Per-flow messages " << what << ".\n"
      << "# TYPE gateway_flow_messages_" << what << "_total counter\n";
    for (const auto& [code, c] : per_flow) {
      o << "gateway_flow_messages_" << what << "_total{flow=\"" << label(code) << "\"} "
        << c.*member << '\n';
    }
  }
  o << "# HELP gateway_flow_held 1 for each flow held, with the reason.\n"
       "# TYPE gateway_flow_held gauge\n";
  for (const auto& [code, reason] : held()) {
    o << "gateway_flow_held{flow=\"" << label(code) << "\",reason=\"" << label(reason) << "\"} 1\n";
  }
  counter(o, "gateway_broker_failovers_total",
          "Moves from one mqtt_servers broker to another (MQTT_FAILOVER_SECONDS).",
          broker_failovers);
  counter(o, "gateway_flows_from_cache",
          "1 while the flows come from the cached copy (the database was down at start-up).",
          flows_from_cache ? 1 : 0, "gauge");
  {
    std::lock_guard lock(mu_);
    o << "# HELP gateway_broker_info The broker the gateway is connected or connecting to.\n"
         "# TYPE gateway_broker_info gauge\n";
    if (!broker_uri_.empty()) {
      o << "gateway_broker_info{broker=\"" << label(broker_uri_) << "\",server_id=\""
        << broker_server_id_ << "\",candidate=\"" << broker_candidate_ << "\"} 1\n";
    }
  }
  // The database node the connections reach (DB_HOST may list several); absent before the first.
  o << "# HELP gateway_db_node_info The database node the gateway's connections reach.\n"
       "# TYPE gateway_db_node_info gauge\n";
  const DatabaseNode& node = *database_node;
  if (const std::string address = node.address(); !address.empty()) {
    o << "gateway_db_node_info{node=\"" << label(address) << "\",name=\"" << label(node.name())
      << "\"} 1\n";
  }
  return o.str();
}

}  // namespace gateway
