// gw-bench: the load generator and the measuring probes of the gateway benchmark. bench/run.sh
// starts the services and the gateway and calls these subcommands; each measuring one prints one
// JSON result line on stdout (human-readable progress goes to stderr), and `report` turns a file
// of those lines into the table.
//
//   publish    Paho QoS 1 publisher: N messages over K flows (topics PREFIX/1..K), as fast as
//              possible with at most 1000 unacknowledged, or at a fixed rate. Payload:
//              {"seq":N,"sent_us":T,"temperature":x,"humidity":y}, seq 1..N over all flows.
//   subscribe  the do-nothing Paho subscriber (the ceiling): counts in the message callback;
//              rate, latency (receive time - sent_us), lost/duplicated by seq.
//   collect    watches a gateway's database until N messages are stored (or progress stalls);
//              rate (first publish, or --t0-us, to the last created_at), latency (created_at -
//              sent_us), lost/duplicated by seq, and the gateway's CPU time and peak RSS (/proc);
//              with --metrics-port, its committed transactions (gateway_transactions_total).
//   dbceiling  the database ceiling (issue 11): the rows the gateway writes for N messages,
//              inserted by a plain client (one connection, multi-row INSERTs, one transaction
//              per large batch); rate, its CPU and mariadbd's.
//   startup    start-up and reload times (issue 17) from a gateway's log lines, with its VmRSS.
//   sink       a counting HTTP receiver for POST_ENDPOINT flows (issue 5): answers 200 at once,
//              records X-Gateway-Flow / X-Gateway-Msg-Id / Idempotency-Key and the payload's seq
//              and sent_us until N messages arrived (or progress stalls); rate (first publish to
//              the last POST received), latency (receive time - sent_us), lost/duplicated by seq,
//              order violations per flow, and the gateway's CPU time and peak RSS (/proc).
//   postceiling  the POST ceiling (issue 11): N POSTs like the gateway's, one after the other on
//              one kept-alive libcurl connection, to a sink; what one ordered flow can get through
//              one connection when nothing else is done. The sink measures it.
//   idle       the CPU time a process uses over a few seconds.
//   report     prints the tables and checks the targets of issues 4, 5, 11 and 17.
//
// Single-threaded except for Paho's callback thread in `subscribe` (see Receiver) and httplib's
// worker threads in `sink` (see PostLog).
#include <cppconn/connection.h>
#include <cppconn/driver.h>
#include <cppconn/exception.h>
#include <cppconn/resultset.h>
#include <cppconn/statement.h>
#include <curl/curl.h>
// The feature macros Debian's libcpp-httplib was built with (CMake passes them from its .pc
// Cflags; repeated for standalone builds), so the library's and our httplib::Server agree.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#ifndef CPPHTTPLIB_ZLIB_SUPPORT
#define CPPHTTPLIB_ZLIB_SUPPORT
#endif
#ifndef CPPHTTPLIB_BROTLI_SUPPORT
#define CPPHTTPLIB_BROTLI_SUPPORT
#endif
#include <httplib.h>
#include <mqtt/async_client.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// Wall clock in µs since the epoch: the same clock MariaDB's CURRENT_TIMESTAMP(6) reads.
std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void touch(const std::string& path) {
  if (!path.empty()) std::ofstream(path) << "ready\n";
}

// ---------------------------------------------------------------------------------------- /proc

// utime + stime of a process in µs, or nullopt if it is gone.
std::optional<std::int64_t> process_cpu_us(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(stat.substr(paren + 2));
  std::string f;
  std::int64_t utime = 0, stime = 0;
  // After "(comm) " comes field 3 (state); utime and stime are fields 14 and 15.
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14) utime = std::stoll(f);
    if (i == 15) stime = std::stoll(f);
  }
  return (utime + stime) * 1000000 / sysconf(_SC_CLK_TCK);
}

// Busy CPU time of the whole machine (all cores) in µs, from the first line of /proc/stat.
std::int64_t machine_busy_us() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  std::int64_t user = 0, nice = 0, system = 0, idle_t = 0, iowait = 0, irq = 0, softirq = 0,
               steal = 0;
  in >> cpu >> user >> nice >> system >> idle_t >> iowait >> irq >> softirq >> steal;
  return (user + nice + system + irq + softirq + steal) * 1000000 / sysconf(_SC_CLK_TCK);
}

// VmHWM (peak resident set) in KiB, or nullopt.
std::optional<std::int64_t> process_peak_rss_kib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));
  }
  return std::nullopt;
}

// ------------------------------------------------------------------------------------ statistics

double percentile_ms(std::vector<std::int64_t>& us, double p) {
  if (us.empty()) return NAN;
  const auto k = static_cast<std::size_t>(std::ceil(p * static_cast<double>(us.size()))) - 1;
  std::nth_element(us.begin(), us.begin() + static_cast<std::ptrdiff_t>(k), us.end());
  return static_cast<double>(us[k]) / 1000.0;
}

// What a consumer (subscriber or gateway) did with the messages seq 1..expected.
struct Tally {
  std::int64_t expected = 0;
  std::int64_t unique = 0;  // distinct seqs in 1..expected
  std::int64_t dup = 0;     // deliveries beyond the first of a seq
  std::int64_t lost = 0;
  std::int64_t first_sent_us = 0;  // smallest sent_us seen
  std::int64_t last_done_us = 0;   // latest receive / commit time
  std::vector<std::int64_t> latency_us;
};

struct Delivery {
  std::int64_t seq;
  std::int64_t sent_us;
  std::int64_t done_us;
};

Tally tally(const std::vector<Delivery>& deliveries, std::int64_t expected) {
  Tally t;
  t.expected = expected;
  std::vector<bool> seen(static_cast<std::size_t>(expected) + 1, false);
  t.first_sent_us = INT64_MAX;
  t.latency_us.reserve(deliveries.size());
  for (const Delivery& d : deliveries) {
    if (d.seq >= 1 && d.seq <= expected) {
      if (seen[static_cast<std::size_t>(d.seq)]) {
        ++t.dup;
      } else {
        seen[static_cast<std::size_t>(d.seq)] = true;
        ++t.unique;
      }
    }
    t.first_sent_us = std::min(t.first_sent_us, d.sent_us);
    t.last_done_us = std::max(t.last_done_us, d.done_us);
    t.latency_us.push_back(d.done_us - d.sent_us);
  }
  if (deliveries.empty()) t.first_sent_us = 0;
  t.lost = expected - t.unique;
  return t;
}

// The common part of a result line. t0_us: start of the measured interval (0 = first publish).
json result_json(const std::string& name, const std::string& kind, const std::string& mode,
                 Tally& t, std::int64_t t0_us) {
  const std::int64_t start = t0_us ? t0_us : t.first_sent_us;
  const double seconds = static_cast<double>(t.last_done_us - start) / 1e6;
  json r;
  r["case"] = name;
  r["kind"] = kind;
  r["mode"] = mode;
  r["messages"] = t.expected;
  r["stored"] = t.unique;
  r["lost"] = t.lost;
  r["dup"] = t.dup;
  r["seconds"] = seconds;
  r["rate"] = seconds > 0 ? static_cast<double>(t.unique) / seconds : 0.0;
  r["p50_ms"] = percentile_ms(t.latency_us, 0.50);
  r["p99_ms"] = percentile_ms(t.latency_us, 0.99);
  return r;
}

// Reads `"key":<integer>` from a flat JSON payload without a full parse (the ceiling subscriber
// must do as little as possible). -1 if absent.
std::int64_t int_field(std::string_view payload, std::string_view key) {
  std::string pattern = "\"";
  pattern.append(key).append("\":");
  const auto at = payload.find(pattern);
  if (at == std::string_view::npos) return -1;
  return std::strtoll(payload.data() + at + pattern.size(), nullptr, 10);
}

std::string uri(const std::string& host, int port) {
  return "tcp://" + host + ":" + std::to_string(port);
}

// --------------------------------------------------------------------------------------- publish

struct PublishArgs {
  std::string host = "127.0.0.1";
  int port = 1883;
  std::string prefix = "bench";
  int flows = 1;
  std::int64_t count = 100000;
  double rate = 0;  // messages/s; 0 = as fast as possible
  int qos = 1;
  std::size_t outstanding = 1000;
  std::string client_id;
};

int publish(const PublishArgs& a) {
  const std::string id =
      a.client_id.empty() ? "gw-bench-pub-" + std::to_string(getpid()) : a.client_id;
  // Paho queues publishes it has not sent yet as "buffered" (default limit 100); the window of
  // unacknowledged messages is what bounds them here.
  mqtt::async_client client(
      uri(a.host, a.port), id,
      mqtt::create_options(MQTTVERSION_3_1_1, static_cast<int>(a.outstanding) + 1));
  auto opts = mqtt::connect_options_builder()
                  .mqtt_version(MQTTVERSION_3_1_1)
                  .clean_session(true)
                  .keep_alive_interval(30s)
                  .max_inflight(static_cast<int>(a.outstanding))
                  .finalize();
  client.connect(opts)->wait_for(10s);
  if (!client.is_connected())
    throw std::runtime_error("publish: cannot connect to " + uri(a.host, a.port));

  std::vector<std::string> topics;
  for (int k = 1; k <= a.flows; ++k) topics.push_back(a.prefix + "/" + std::to_string(k));
  std::deque<mqtt::delivery_token_ptr> pending;
  const auto started = std::chrono::steady_clock::now();
  const std::int64_t first_us = now_us();
  char payload[160];
  for (std::int64_t seq = 1; seq <= a.count; ++seq) {
    if (a.rate > 0) {
      std::this_thread::sleep_until(started + std::chrono::microseconds(static_cast<std::int64_t>(
                                                  static_cast<double>(seq - 1) * 1e6 / a.rate)));
    }
    while (pending.size() >= a.outstanding) {
      if (!pending.front()->wait_for(30s)) throw std::runtime_error("publish: no PUBACK for 30 s");
      pending.pop_front();
    }
    // Values vary a little so that the payloads are not all the same size.
    const int n = std::snprintf(payload, sizeof payload,
                                "{\"seq\":%" PRId64 ",\"sent_us\":%" PRId64
                                ",\"temperature\":%.1f,\"humidity\":%.1f}",
                                seq, now_us(), 18.0 + static_cast<double>(seq % 97) / 10.0,
                                35.0 + static_cast<double>(seq % 251) / 10.0);
    const auto& topic = topics[static_cast<std::size_t>((seq - 1) % a.flows)];
    pending.push_back(client.publish(topic, payload, static_cast<std::size_t>(n), a.qos, false));
  }
  for (auto& t : pending) {
    if (!t->wait_for(30s)) throw std::runtime_error("publish: no PUBACK for 30 s");
  }
  const double seconds = static_cast<double>(now_us() - first_us) / 1e6;
  client.disconnect()->wait_for(10s);
  std::fprintf(stderr, "publish: %" PRId64 " messages to %s/1..%d in %.2f s (%.0f msg/s, qos %d)\n",
               a.count, a.prefix.c_str(), a.flows, seconds, static_cast<double>(a.count) / seconds,
               a.qos);
  return 0;
}

// ------------------------------------------------------------------------------------- subscribe

struct SubscribeArgs {
  std::string host = "127.0.0.1";
  int port = 1883;
  std::string filter;
  std::string client_id;
  std::int64_t count = 100000;
  int qos = 1;
  bool persistent = false;    // clean_session=false, like the gateway
  bool session_only = false;  // connect, subscribe, disconnect: leaves the session to queue
  bool from_connect = false;  // measure from the connect (a backlog) instead of the first publish
  double stall_seconds = 20;
  std::string ready_file;
  std::string name = "ceiling", kind = "ceiling", mode = "burst";
};

// Records deliveries from Paho's callback thread; the main thread polls count().
class Receiver {
 public:
  explicit Receiver(std::size_t capacity) : slots_(capacity) {}
  void on_message(std::string_view payload) {
    const std::int64_t done = now_us();
    const std::size_t i = n_.load(std::memory_order_relaxed);
    if (i < slots_.size())
      slots_[i] = {int_field(payload, "seq"), int_field(payload, "sent_us"), done};
    n_.store(i + 1, std::memory_order_release);  // only this thread writes n_
  }
  std::size_t count() const { return n_.load(std::memory_order_acquire); }
  std::vector<Delivery> deliveries() const {
    return {slots_.begin(),
            slots_.begin() + static_cast<std::ptrdiff_t>(std::min(count(), slots_.size()))};
  }

 private:
  std::vector<Delivery> slots_;
  std::atomic<std::size_t> n_{0};
};

std::int64_t own_cpu_us() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000LL + ru.ru_utime.tv_usec +
         ru.ru_stime.tv_usec;
}

int subscribe(const SubscribeArgs& a) {
  Receiver receiver(static_cast<std::size_t>(a.count) * 2);
  mqtt::async_client client(uri(a.host, a.port), a.client_id,
                            mqtt::create_options(MQTTVERSION_3_1_1));
  client.set_message_callback([&receiver](mqtt::const_message_ptr m) {
    const auto& p = m->get_payload_ref();
    receiver.on_message(std::string_view(p.data(), p.size()));
  });
  auto opts = mqtt::connect_options_builder()
                  .mqtt_version(MQTTVERSION_3_1_1)
                  .clean_session(!a.persistent)
                  .keep_alive_interval(30s)
                  .finalize();
  const std::int64_t cpu0 = own_cpu_us();
  const std::int64_t t0 = now_us();
  client.connect(opts)->wait_for(10s);
  if (!client.is_connected())
    throw std::runtime_error("subscribe: cannot connect to " + uri(a.host, a.port));
  client.subscribe(a.filter, a.qos)->wait_for(10s);
  touch(a.ready_file);
  if (a.session_only) {
    client.disconnect()->wait_for(10s);
    std::fprintf(stderr, "subscribe: session %s on %s created\n", a.client_id.c_str(),
                 a.filter.c_str());
    return 0;
  }

  std::size_t last = 0;
  auto last_progress = std::chrono::steady_clock::now();
  while (receiver.count() < static_cast<std::size_t>(a.count)) {
    std::this_thread::sleep_for(20ms);
    if (receiver.count() != last) {
      last = receiver.count();
      last_progress = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - last_progress >
               std::chrono::duration<double>(a.stall_seconds)) {
      std::fprintf(stderr, "subscribe: stalled at %zu of %" PRId64 " messages\n", last, a.count);
      break;
    }
  }
  const std::int64_t cpu = own_cpu_us() - cpu0;
  client.disconnect()->wait_for(10s);

  Tally t = tally(receiver.deliveries(), a.count);
  json r = result_json(a.name, a.kind, a.mode, t, a.from_connect ? t0 : 0);
  r["cpu_us_per_msg"] = t.unique ? static_cast<double>(cpu) / static_cast<double>(t.unique) : 0.0;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  r["peak_rss_mb"] = static_cast<double>(ru.ru_maxrss) / 1024.0;
  std::cout << r.dump() << std::endl;
  std::fprintf(stderr, "subscribe: %s\n", r.dump().c_str());
  return 0;
}

// --------------------------------------------------------------------------------------- collect

struct CollectArgs {
  std::string db_host = "127.0.0.1";
  int db_port = 3306;
  std::string db_user = "gw";
  std::string db_password;
  std::string db;
  std::int64_t count = 100000;
  int pid = 0;                  // the gateway: CPU and peak RSS
  int db_pid = 0;               // mariadbd: its CPU over the same interval
  bool cpu_from_start = false;  // count the gateway's CPU since it started (backlog runs)
  std::int64_t t0_us = 0;       // start of the interval; 0 = the first publish
  double stall_seconds = 20;
  std::string ready_file;
  std::string name = "gateway", kind = "gateway", mode = "burst";
  int flows = 0;         // recorded in the result (the many-flows table); 0 = not recorded
  int metrics_port = 0;  // the gateway's METRICS_ADDRESS port on 127.0.0.1: transactions
  std::string table;     // STORE_TABLE: the rows are in this table (seq, sent_us, created_at)
};

// A counter of the gateway's /metrics (Prometheus text), or nullopt if it cannot be read.
std::optional<std::int64_t> gateway_counter(int port, const std::string& name) {
  httplib::Client http("127.0.0.1", port);
  http.set_connection_timeout(2);
  http.set_read_timeout(5);
  const auto res = http.Get("/metrics");
  if (!res || res->status != 200) return std::nullopt;
  std::istringstream in(res->body);
  for (std::string line; std::getline(in, line);) {
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 &&
        line[name.size()] == ' ') {
      return std::strtoll(line.c_str() + name.size() + 1, nullptr, 10);
    }
  }
  return std::nullopt;
}

// "1712345678.123456" -> µs.
std::int64_t decimal_seconds_to_us(const std::string& s) {
  const auto dot = s.find('.');
  std::int64_t us = std::stoll(s.substr(0, dot)) * 1000000;
  if (dot != std::string::npos) {
    std::string frac = s.substr(dot + 1, 6);
    frac.resize(6, '0');
    us += std::stoll(frac);
  }
  return us;
}

int collect(const CollectArgs& a) {
  sql::Driver* driver = get_driver_instance();
  sql::ConnectOptionsMap props;
  props["hostName"] = "tcp://" + a.db_host + ":" + std::to_string(a.db_port);
  props["userName"] = a.db_user;
  props["password"] = a.db_password;
  props["schema"] = a.db;
  std::unique_ptr<sql::Connection> conn(driver->connect(props));
  std::unique_ptr<sql::Statement> st(conn->createStatement());
  // What is committed; a message counts once, however many fields it has.
  auto stored = [&] {
    std::unique_ptr<sql::ResultSet> rs(
        st->executeQuery("SELECT COALESCE(SUM(last_msg_id), 0) FROM flows"));
    rs->next();
    return rs->getInt64(1);
  };

  std::int64_t cpu0 = 0;
  if (a.pid && !a.cpu_from_start) cpu0 = process_cpu_us(a.pid).value_or(0);
  const std::int64_t db_cpu0 = a.db_pid ? process_cpu_us(a.db_pid).value_or(0) : 0;
  // Committed flow transactions (gateway_transactions_total) over the case: read before the
  // first message and once all are stored.
  const char* kTxCounter = "gateway_transactions_total";
  std::optional<std::int64_t> tx0;
  if (a.metrics_port) {
    tx0 = gateway_counter(a.metrics_port, kTxCounter);
    if (!tx0)
      std::fprintf(stderr, "collect: cannot read %s on port %d\n", kTxCounter, a.metrics_port);
  }
  touch(a.ready_file);

  std::int64_t last = -1;
  auto last_progress = std::chrono::steady_clock::now();
  for (;;) {
    const std::int64_t n = stored();
    if (n >= a.count) break;
    if (n != last) {
      last = n;
      last_progress = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - last_progress >
               std::chrono::duration<double>(a.stall_seconds)) {
      std::fprintf(stderr, "collect: stalled at %" PRId64 " of %" PRId64 " messages\n", n, a.count);
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  // The process figures first, before this probe's own big query below.
  std::optional<std::int64_t> cpu, rss, db_cpu;
  if (a.pid) {
    if (auto c = process_cpu_us(a.pid)) cpu = *c - cpu0;
    rss = process_peak_rss_kib(a.pid);
  }
  if (a.db_pid) {
    if (auto c = process_cpu_us(a.db_pid)) db_cpu = *c - db_cpu0;
  }
  std::optional<std::int64_t> tx;
  if (tx0) {
    // A worker counts its transaction just after the commit that this probe may already have
    // seen: give the last ones a moment (an idle gateway commits nothing more).
    std::this_thread::sleep_for(300ms);
    if (auto c = gateway_counter(a.metrics_port, kTxCounter)) tx = *c - *tx0;
  }

  // created_at is the time of the INSERT, inside the transaction: it precedes the COMMIT by the
  // commit's own duration (one redo-log flush).
  std::unique_ptr<sql::ResultSet> rs(st->executeQuery(
      a.table.empty()
          ? "SELECT s.field_value, t.field_value, UNIX_TIMESTAMP(s.created_at) "
            "FROM data_records s JOIN data_records t ON t.flow_id = s.flow_id AND t.msg_id = "
            "s.msg_id AND t.field_name = 'sent_us' WHERE s.field_name = 'seq'"
          : "SELECT seq, sent_us, UNIX_TIMESTAMP(created_at) FROM " + a.table));
  std::vector<Delivery> deliveries;
  deliveries.reserve(static_cast<std::size_t>(a.count));
  while (rs->next()) {
    deliveries.push_back({std::stoll(std::string(rs->getString(1))),
                          std::stoll(std::string(rs->getString(2))),
                          decimal_seconds_to_us(std::string(rs->getString(3)))});
  }
  Tally t = tally(deliveries, a.count);
  json r = result_json(a.name, a.kind, a.mode, t, a.t0_us);
  r["cpu_us_per_msg"] =
      cpu && t.unique ? json(static_cast<double>(*cpu) / static_cast<double>(t.unique)) : json();
  r["db_cpu_us_per_msg"] = db_cpu && t.unique
                               ? json(static_cast<double>(*db_cpu) / static_cast<double>(t.unique))
                               : json();
  r["peak_rss_mb"] = rss ? json(static_cast<double>(*rss) / 1024.0) : json();
  if (a.flows) r["flows"] = a.flows;
  if (a.metrics_port) {
    const double seconds = r["seconds"].get<double>();
    r["transactions"] = tx ? json(*tx) : json();
    r["tx_per_s"] = tx && seconds > 0 ? json(static_cast<double>(*tx) / seconds) : json();
    r["msgs_per_tx"] =
        tx && *tx > 0 ? json(static_cast<double>(t.unique) / static_cast<double>(*tx)) : json();
  }
  std::cout << r.dump() << std::endl;
  std::fprintf(stderr, "collect: %s\n", r.dump().c_str());
  return 0;
}

// ------------------------------------------------------------------------------------- dbceiling

struct DbCeilingArgs {
  std::string db_host = "127.0.0.1";
  int db_port = 3306;
  std::string db_user = "gw";
  std::string db_password;
  std::string db;
  std::int64_t count = 100000;
  std::int64_t batch = 5000;            // messages per transaction
  std::int64_t rows_per_insert = 4096;  // rows per INSERT statement (~350 KB)
  std::string topic = "bench/1";  // the topic the rows carry (the gateway writes the message's)
  int db_pid = 0;                 // mariadbd: its CPU over the case
  std::string name = "dbceiling", mode = "backlog";
};

// A string literal for SQL text (the values here are ASCII, but a topic could hold a quote).
void append_quoted(std::string& out, std::string_view v) {
  out += '\'';
  for (char c : v) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  out += '\'';
}

// The database ceiling (issue 11): the rows the gateway writes for N messages of the bench
// payload (4 fields each: flow_id, msg_id, topic, field_name and field_value as the gateway
// encodes them), into the case database's first flow, as fast as one plain client can: one
// connection, text-protocol multi-row INSERTs, one transaction per batch that also advances
// flows.last_msg_id, commits as durable as the server is configured. The statements are built
// before the clock starts; the interval runs from the first INSERT to the last COMMIT.
int dbceiling(const DbCeilingArgs& a) {
  sql::Driver* driver = get_driver_instance();
  sql::ConnectOptionsMap props;
  props["hostName"] = "tcp://" + a.db_host + ":" + std::to_string(a.db_port);
  props["userName"] = a.db_user;
  props["password"] = a.db_password;
  props["schema"] = a.db;
  std::unique_ptr<sql::Connection> conn(driver->connect(props));
  std::unique_ptr<sql::Statement> st(conn->createStatement());
  std::int64_t flow_id = 0, last_msg_id = 0;
  {
    std::unique_ptr<sql::ResultSet> rs(
        st->executeQuery("SELECT id, last_msg_id FROM flows ORDER BY id LIMIT 1"));
    if (!rs->next()) throw std::runtime_error("dbceiling: no flow in " + a.db);
    flow_id = rs->getInt64(1);
    last_msg_id = rs->getInt64(2);
  }

  // Per batch: the INSERTs, then the UPDATE of the flow's last_msg_id.
  struct Batch {
    std::vector<std::string> inserts;
    std::string advance;
  };
  std::vector<Batch> batches;
  const std::string prefix =
      "INSERT INTO data_records (flow_id, msg_id, topic, field_name, field_value) VALUES ";
  std::string quoted_topic;
  append_quoted(quoted_topic, a.topic);
  const std::string flow = std::to_string(flow_id);
  std::size_t statements = 0;
  for (std::int64_t first = 1; first <= a.count; first += a.batch) {
    const std::int64_t last = std::min(a.count, first + a.batch - 1);
    Batch b;
    std::string sql;
    std::int64_t rows = 0;
    auto row = [&](std::int64_t msg_id, const char* field, const std::string& value) {
      if (rows == a.rows_per_insert) {
        b.inserts.push_back(std::move(sql));
        sql.clear();
        rows = 0;
      }
      sql += rows == 0 ? prefix : ",";
      sql += '(';
      sql += flow;
      sql += ',';
      sql += std::to_string(last_msg_id + msg_id);
      sql += ',';
      sql += quoted_topic;
      sql += ",'";
      sql += field;
      sql += "','";
      sql += value;
      sql += "')";
      ++rows;
    };
    char v[32];
    for (std::int64_t seq = first; seq <= last; ++seq) {
      // What the gateway stores for the publisher's payload: each field's JSON encoding, the
      // fields in nlohmann::json's (sorted) order. %.1f is what nlohmann writes for these doubles.
      std::snprintf(v, sizeof v, "%.1f", 35.0 + static_cast<double>(seq % 251) / 10.0);
      row(seq, "humidity", v);
      row(seq, "sent_us", std::to_string(now_us()));
      row(seq, "seq", std::to_string(seq));
      std::snprintf(v, sizeof v, "%.1f", 18.0 + static_cast<double>(seq % 97) / 10.0);
      row(seq, "temperature", v);
    }
    if (rows) b.inserts.push_back(std::move(sql));
    statements += b.inserts.size();
    b.advance = "UPDATE flows SET last_msg_id = " + std::to_string(last_msg_id + last) +
                " WHERE id = " + flow;
    batches.push_back(std::move(b));
  }

  conn->setAutoCommit(false);
  const std::int64_t cpu0 = own_cpu_us();
  const std::int64_t db_cpu0 = a.db_pid ? process_cpu_us(a.db_pid).value_or(0) : 0;
  const std::int64_t t0 = now_us();
  for (const Batch& b : batches) {
    for (const std::string& insert : b.inserts) st->execute(insert);
    st->execute(b.advance);
    conn->commit();
  }
  const std::int64_t t1 = now_us();
  const std::int64_t cpu = own_cpu_us() - cpu0;
  std::optional<std::int64_t> db_cpu;
  if (a.db_pid) {
    if (auto c = process_cpu_us(a.db_pid)) db_cpu = *c - db_cpu0;
  }
  conn->setAutoCommit(true);

  std::int64_t rows = 0;
  {
    std::unique_ptr<sql::ResultSet> rs(
        st->executeQuery("SELECT COUNT(*) FROM data_records WHERE flow_id = " + flow +
                         " AND msg_id > " + std::to_string(last_msg_id)));
    rs->next();
    rows = rs->getInt64(1);
  }
  const std::int64_t stored = rows / 4;
  const double seconds = static_cast<double>(t1 - t0) / 1e6;
  json r;
  r["case"] = a.name;
  r["kind"] = "dbceiling";
  r["mode"] = a.mode;
  r["messages"] = a.count;
  r["stored"] = stored;
  r["rows"] = rows;
  r["lost"] = a.count - stored;
  r["dup"] = 0;
  r["seconds"] = seconds;
  r["rate"] = seconds > 0 ? static_cast<double>(stored) / seconds : 0.0;
  r["p50_ms"] = json();
  r["p99_ms"] = json();
  r["batch"] = a.batch;
  r["rows_per_insert"] = a.rows_per_insert;
  r["transactions"] = batches.size();
  r["statements"] = statements + batches.size();
  r["cpu_us_per_msg"] = stored ? static_cast<double>(cpu) / static_cast<double>(stored) : 0.0;
  r["db_cpu_us_per_msg"] =
      db_cpu && stored ? json(static_cast<double>(*db_cpu) / static_cast<double>(stored)) : json();
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  r["peak_rss_mb"] = static_cast<double>(ru.ru_maxrss) / 1024.0;
  std::cout << r.dump() << std::endl;
  std::fprintf(stderr, "dbceiling: %s\n", r.dump().c_str());
  return 0;
}

// --------------------------------------------------------------------------------------- startup

struct StartupArgs {
  std::string log;               // the gateway's stdout/stderr (its log lines)
  std::int64_t launched_us = 0;  // when run.sh launched it
  std::int64_t hup_us = 0;       // when run.sh sent SIGHUP (0: no reload measured)
  std::string moved_filter;      // the changed flow's new topic filter
  int flows = 0;
  std::int64_t rss_kib = 0;  // VmRSS once ready (before the reload)
  int broker_filters = -1;   // filters in mosquitto's subscribe/unsubscribe log lines for the
                             // reload; -1: not logged by the broker
  bool routed = false;       // a message on the new topic was stored after the reload
  int pid = 0;               // the gateway: VmHWM and CPU time so far
  std::string name = "startup";
};

// "2026-12-02 08:01:58.916 info  [main] ready" -> µs since the epoch (local time, as spdlog
// writes it), or nullopt.
std::optional<std::int64_t> log_time_us(const std::string& line) {
  std::tm tm{};
  int ms = 0;
  if (std::sscanf(line.c_str(), "%d-%d-%d %d:%d:%d.%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7) {
    return std::nullopt;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  tm.tm_isdst = -1;
  const std::time_t t = std::mktime(&tm);
  if (t == -1) return std::nullopt;
  return static_cast<std::int64_t>(t) * 1000000 + ms * 1000;
}

// Start-up and reload times (issue 17) from the gateway's log lines (millisecond stamps):
// launch -> flows loaded, connected, the last "subscribed to" before "ready", and "ready";
// SIGHUP -> "flows reloaded" (the reload itself) and -> "subscribed to <new filter>".
int startup(const StartupArgs& a) {
  std::ifstream in(a.log);
  if (!in) throw std::runtime_error("startup: cannot read " + a.log);
  std::optional<std::int64_t> loaded, connected, subscribed, ready, hup, reloaded, resubscribed;
  int start_subscribed = 0;
  auto has = [](const std::string& line, std::string_view what) {
    return line.find(what) != std::string::npos;
  };
  for (std::string line; std::getline(in, line);) {
    const auto t = log_time_us(line);
    if (!t) continue;
    if (!ready) {
      if (!loaded && has(line, "] flows reloaded: ")) loaded = t;
      if (!connected && has(line, "] connected to the broker")) connected = t;
      if (has(line, "] subscribed to ")) {
        subscribed = t;
        ++start_subscribed;
      }
      if (line.ends_with("] ready") || has(line, "] ready (")) ready = t;
    } else if (!hup) {
      if (has(line, "] SIGHUP: ")) hup = t;
    } else {
      if (!reloaded && has(line, "] flows reloaded: ")) reloaded = t;
      if (!resubscribed && !a.moved_filter.empty() &&
          line.ends_with("] subscribed to " + a.moved_filter))
        resubscribed = t;
    }
  }
  auto since = [](const std::optional<std::int64_t>& t, std::int64_t t0) {
    return t && t0 ? json(static_cast<double>(*t - t0) / 1e6) : json();
  };
  json r{{"case", a.name}, {"kind", "startup"}, {"flows", a.flows}};
  r["flows_loaded_s"] = since(loaded, a.launched_us);
  r["connected_s"] = since(connected, a.launched_us);
  r["subscribed_s"] = since(subscribed, a.launched_us);
  r["ready_s"] = since(ready, a.launched_us);
  r["subscribed_at_start"] = start_subscribed;
  r["sighup_logged_s"] = since(hup, a.hup_us);
  r["reload_s"] = since(reloaded, a.hup_us);
  r["resubscribed_s"] = since(resubscribed, a.hup_us);
  r["reload_broker_filters"] = a.broker_filters >= 0 ? json(a.broker_filters) : json();
  r["reload_routed"] = a.routed;
  r["vmrss_mb"] = static_cast<double>(a.rss_kib) / 1024.0;
  if (a.pid) {
    if (auto hwm = process_peak_rss_kib(a.pid)) r["vmhwm_mb"] = static_cast<double>(*hwm) / 1024.0;
    if (auto cpu = process_cpu_us(a.pid)) r["cpu_ms"] = static_cast<double>(*cpu) / 1000.0;
  }
  std::cout << r.dump() << std::endl;
  std::fprintf(stderr, "startup: %s\n", r.dump().c_str());
  return 0;
}

// ------------------------------------------------------------------------------------------ sink

struct SinkArgs {
  std::string host = "127.0.0.1";
  int port = 0;
  std::int64_t count = 20000;
  int pid = 0;  // the gateway: CPU and peak RSS
  // Or a file "PID START_US" written when the gateway is launched (backlog runs): its CPU since
  // it started, and the interval starts at START_US instead of the first publish.
  std::string gateway_file;
  int db_pid = 0, broker_pid = 0;  // MariaDB and mosquitto: where the machine's CPU goes
  int flows = 1;
  double stall_seconds = 20;
  std::string ready_file;
  std::string name = "post", kind = "post", mode = "burst";
};

// One POST as received.
struct Post {
  std::string flow;     // X-Gateway-Flow
  std::int64_t msg_id;  // X-Gateway-Msg-Id, -1 if absent
  std::string key;      // Idempotency-Key
  Delivery d;           // seq and sent_us from the body, receive time
};

// Records POSTs from httplib's worker threads (one per kept-alive connection); the main thread
// polls unique(). The log is in the order the requests took the lock: per connection, the order
// they arrived in, which is what order violations are judged on.
class PostLog {
 public:
  explicit PostLog(std::int64_t expected) : seen_(static_cast<std::size_t>(expected) + 1, false) {
    posts_.reserve(static_cast<std::size_t>(expected) + 1024);
  }
  void add(Post p) {
    std::lock_guard lock(mu_);
    const std::int64_t seq = p.d.seq;
    if (seq >= 1 && seq < static_cast<std::int64_t>(seen_.size()) &&
        !seen_[static_cast<std::size_t>(seq)]) {
      seen_[static_cast<std::size_t>(seq)] = true;
      unique_.fetch_add(1, std::memory_order_relaxed);
    }
    posts_.push_back(std::move(p));
  }
  std::int64_t unique() const { return unique_.load(std::memory_order_relaxed); }
  std::size_t requests() const {
    std::lock_guard lock(mu_);
    return posts_.size();
  }
  std::vector<Post> take() {
    std::lock_guard lock(mu_);
    return std::move(posts_);
  }

 private:
  mutable std::mutex mu_;
  std::vector<Post> posts_;  // guarded by mu_
  std::vector<bool> seen_;   // guarded by mu_
  std::atomic<std::int64_t> unique_{0};
};

// Ordering and numbering of what a sink received, judged per flow in arrival order.
struct PostOrder {
  std::int64_t repeated_keys = 0;  // an Idempotency-Key seen before: a repeated POST
  std::int64_t violations = 0;     // a new message arriving after a later one of its flow
  std::int64_t msg_id_gaps = 0;    // msg_ids 1..max of a flow that never arrived
  std::int64_t missing_headers = 0;
};

PostOrder post_order(const std::vector<Post>& posts) {
  struct FlowState {
    std::int64_t max_msg_id = 0;
    std::int64_t max_seq = 0;
    std::unordered_set<std::int64_t> msg_ids;
  };
  PostOrder o;
  std::unordered_map<std::string, FlowState> flows;
  std::unordered_set<std::string> keys;
  for (const Post& p : posts) {
    if (p.msg_id < 0 || p.key.empty() || p.flow.empty()) ++o.missing_headers;
    if (!p.key.empty() && !keys.insert(p.key).second) {
      ++o.repeated_keys;
      continue;  // the receiver drops it; not an ordering matter
    }
    FlowState& f = flows[p.flow];
    if (p.msg_id < f.max_msg_id || p.d.seq < f.max_seq) ++o.violations;
    f.max_msg_id = std::max(f.max_msg_id, p.msg_id);
    f.max_seq = std::max(f.max_seq, p.d.seq);
    if (p.msg_id > 0) f.msg_ids.insert(p.msg_id);
  }
  for (const auto& [code, f] : flows) {
    o.msg_id_gaps += f.max_msg_id - static_cast<std::int64_t>(f.msg_ids.size());
  }
  return o;
}

int sink(const SinkArgs& a) {
  PostLog log(a.count);
  httplib::Server http;
  // SO_REUSEADDR only (httplib's default adds SO_REUSEPORT, which would let a stale sink share
  // the port and take half of the connections).
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  http.set_tcp_nodelay(true);
  http.set_keep_alive_max_count(100000000);  // httplib 0.11 closes after 5 requests by default
  http.set_keep_alive_timeout(1);            // bounds how long stop() waits for idle connections
  http.new_task_queue = [] { return new httplib::ThreadPool(16); };
  http.Post(".*", [&log](const httplib::Request& req, httplib::Response& res) {
    const std::int64_t done = now_us();
    const std::string id = req.get_header_value("X-Gateway-Msg-Id");
    log.add({req.get_header_value("X-Gateway-Flow"),
             id.empty() ? -1 : std::strtoll(id.c_str(), nullptr, 10),
             req.get_header_value("Idempotency-Key"),
             {int_field(req.body, "seq"), int_field(req.body, "sent_us"), done}});
    res.status = 200;
    res.set_content("{}", "application/json");
  });
  if (!http.bind_to_port(a.host, a.port)) {
    throw std::runtime_error("sink: cannot bind " + a.host + ":" + std::to_string(a.port));
  }
  std::thread server([&http] { http.listen_after_bind(); });
  const auto started = std::chrono::steady_clock::now();
  while (!http.is_running() && std::chrono::steady_clock::now() - started < 5s) {
    std::this_thread::sleep_for(1ms);
  }
  if (!http.is_running()) {
    server.detach();  // cannot be stopped before it runs; the process exits anyway
    throw std::runtime_error("sink: the server did not start within 5 s");
  }

  int pid = a.pid;
  std::int64_t t0_us = 0;
  std::int64_t cpu0 = 0;
  if (pid) cpu0 = process_cpu_us(pid).value_or(0);
  // Where the machine's CPU goes while the case runs (from here, before the first message, to
  // the last): every core's busy time, the sink's own, MariaDB's and mosquitto's.
  const std::int64_t machine0 = machine_busy_us(), own0 = own_cpu_us();
  const std::int64_t db0 = a.db_pid ? process_cpu_us(a.db_pid).value_or(0) : 0;
  const std::int64_t broker0 = a.broker_pid ? process_cpu_us(a.broker_pid).value_or(0) : 0;
  touch(a.ready_file);

  std::size_t last = 0;
  auto last_progress = std::chrono::steady_clock::now();
  while (log.unique() < a.count) {
    std::this_thread::sleep_for(20ms);
    if (!pid && !a.gateway_file.empty()) std::ifstream(a.gateway_file) >> pid >> t0_us;
    const std::size_t n = log.requests();
    if (n != last) {
      last = n;
      last_progress = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - last_progress >
               std::chrono::duration<double>(a.stall_seconds)) {
      std::fprintf(stderr, "sink: stalled at %" PRId64 " of %" PRId64 " messages\n", log.unique(),
                   a.count);
      break;
    }
  }
  std::optional<std::int64_t> cpu, rss;
  if (pid) {
    if (auto c = process_cpu_us(pid)) cpu = *c - cpu0;
    rss = process_peak_rss_kib(pid);
  }
  const std::int64_t machine = machine_busy_us() - machine0, own = own_cpu_us() - own0;
  std::optional<std::int64_t> db, broker;
  if (a.db_pid) {
    if (auto c = process_cpu_us(a.db_pid)) db = *c - db0;
  }
  if (a.broker_pid) {
    if (auto c = process_cpu_us(a.broker_pid)) broker = *c - broker0;
  }
  // A little longer, so that a duplicate sent right after the last message is still counted.
  std::this_thread::sleep_for(200ms);
  http.stop();
  server.join();

  const std::vector<Post> posts = log.take();
  std::vector<Delivery> deliveries;
  deliveries.reserve(posts.size());
  for (const Post& p : posts) deliveries.push_back(p.d);
  Tally t = tally(deliveries, a.count);
  const PostOrder order = post_order(posts);
  if (!a.gateway_file.empty() && !t0_us) throw std::runtime_error("sink: no " + a.gateway_file);
  json r = result_json(a.name, a.kind, a.mode, t, t0_us);
  r["flows"] = a.flows;
  // How long publishing took: a case that ends right after it was paced by the publisher, and
  // its rate is a lower bound of what the gateway can deliver.
  std::int64_t last_sent_us = 0;
  for (const Delivery& d : deliveries) last_sent_us = std::max(last_sent_us, d.sent_us);
  r["publish_seconds"] = static_cast<double>(last_sent_us - t.first_sent_us) / 1e6;
  r["requests"] = posts.size();
  r["order_violations"] = order.violations;
  r["repeated_keys"] = order.repeated_keys;
  r["msg_id_gaps"] = order.msg_id_gaps;
  r["missing_headers"] = order.missing_headers;
  // Not for the POST ceiling: its client exits after the last POST, so /proc may or may not
  // still have it.
  const bool measured = a.kind != "post-ceiling";
  r["cpu_us_per_msg"] = measured && cpu && t.unique
                            ? json(static_cast<double>(*cpu) / static_cast<double>(t.unique))
                            : json();
  r["peak_rss_mb"] = measured && rss ? json(static_cast<double>(*rss) / 1024.0) : json();
  // µs per message received. "rest" is the machine less the gateway, the sink, MariaDB and
  // mosquitto: the publisher (or the ceiling's client), the kernel's threads, anything else.
  // A backlog case's gateway CPU counts from its launch, the rest from the sink's start.
  const auto per_msg = [&](std::optional<std::int64_t> us) {
    return us && t.unique ? json(static_cast<double>(*us) / static_cast<double>(t.unique)) : json();
  };
  const std::int64_t known =
      own + db.value_or(0) + broker.value_or(0) + (measured ? cpu.value_or(0) : 0);
  r["machine_us_per_msg"] = per_msg(machine);
  r["sink_us_per_msg"] = per_msg(own);
  r["db_us_per_msg"] = per_msg(db);
  r["broker_us_per_msg"] = per_msg(broker);
  r["rest_us_per_msg"] = per_msg(std::max<std::int64_t>(0, machine - known));
  r["cores"] = sysconf(_SC_NPROCESSORS_ONLN);
  std::cout << r.dump() << std::endl;
  std::fprintf(stderr, "sink: %s\n", r.dump().c_str());
  return 0;
}

// ----------------------------------------------------------------------------------- postceiling

struct PostCeilingArgs {
  std::string url;
  std::int64_t count = 20000;
  std::string flow = "f1";
  std::string launched_file;  // "PID START_US", read by `sink --gateway-file`
};

// Discards a response body.
std::size_t discard(char*, std::size_t size, std::size_t n, void*) { return size * n; }

// The same requests the gateway's delivery worker sends for one flow (curl_http_poster.cpp:
// headers, no Expect, keep-alive), with the publisher's bodies, one at a time: no database, no
// spool, no MQTT. The sink judges them as it judges the gateway's.
int postceiling(const PostCeilingArgs& a) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    throw std::runtime_error("postceiling: curl_global_init failed");
  }
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> easy(curl_easy_init(), &curl_easy_cleanup);
  if (!easy) throw std::runtime_error("postceiling: curl_easy_init failed");
  {
    std::ofstream out(a.launched_file);
    out << ::getpid() << ' ' << now_us() << '\n';
  }
  std::string body;
  for (std::int64_t seq = 1; seq <= a.count; ++seq) {
    const std::string id = std::to_string(seq);
    body = "{\"seq\":" + id + ",\"sent_us\":" + std::to_string(now_us()) +
           ",\"temperature\":21.5,\"humidity\":40.0}";
    curl_slist* headers = nullptr;
    for (const std::string& h :
         {std::string("Content-Type: application/json"), std::string("Expect:"),
          "X-Gateway-Flow: " + a.flow, "X-Gateway-Msg-Id: " + id,
          std::string("X-Gateway-Topic: bench/1"), "Idempotency-Key: " + a.flow + ":" + id}) {
      headers = curl_slist_append(headers, h.c_str());
    }
    CURL* e = easy.get();
    curl_easy_setopt(e, CURLOPT_URL, a.url.c_str());
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &discard);
    const CURLcode rc = curl_easy_perform(e);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, nullptr);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK || status != 200) {
      throw std::runtime_error("postceiling: POST " + id + " failed: " + curl_easy_strerror(rc) +
                               ", HTTP " + std::to_string(status));
    }
  }
  return 0;
}

// ------------------------------------------------------------------------------------------ idle

// pid != 0: that process's CPU time over `seconds` (kind "idle"); always: the machine's busy
// cores meanwhile, less what the `exclude` processes (our database and broker catching up) used:
// foreign load when the benchmark itself is idle (kind "load").
int idle(int pid, double seconds, const std::string& name, const std::vector<int>& exclude) {
  const auto before = pid ? process_cpu_us(pid) : std::optional<std::int64_t>(0);
  auto ours = [&] {
    std::int64_t sum = 0;
    for (int p : exclude) sum += process_cpu_us(p).value_or(0);
    return sum;
  };
  const std::int64_t busy0 = machine_busy_us() - ours();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const std::int64_t busy = machine_busy_us() - ours() - busy0;
  const auto after = pid ? process_cpu_us(pid) : std::optional<std::int64_t>(0);
  if (!before || !after)
    throw std::runtime_error("idle: process " + std::to_string(pid) + " is gone");
  json r{{"case", name.empty() ? (pid ? "idle" : "load") : name},
         {"kind", pid ? "idle" : "load"},
         {"seconds", seconds},
         {"machine_busy_cores", static_cast<double>(busy) / 1e6 / seconds}};
  if (pid) r["cpu_ms"] = static_cast<double>(*after - *before) / 1000.0;
  std::cout << r.dump() << std::endl;
  std::fprintf(stderr, "idle: %s\n", r.dump().c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------- report

std::string num(const json& v, const char* fmt) {
  if (!v.is_number()) return "-";
  const double d = v.get<double>();
  if (std::isnan(d)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, d);
  return buf;
}

std::string ratio(double a, const std::optional<double>& b) {
  if (!b || *b <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fx", a / *b);
  return buf;
}

int report(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> rows;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] == '{') rows.push_back(json::parse(line));
  }
  auto rate_of = [&](const std::string& kind, const std::string& mode) -> std::optional<double> {
    for (const json& r : rows) {
      if (r.value("kind", "") == kind && r.value("mode", "") == mode)
        return r["rate"].get<double>();
    }
    return std::nullopt;
  };
  const auto baseline = rate_of("baseline", "burst");
  auto is_post = [](const json& r) { return r.value("kind", "").rfind("post", 0) == 0; };
  // Many-flows bursts (issue 17) have their own table: collect recorded their flow count.
  auto is_many = [](const json& r) {
    return r.value("kind", "") == "gateway" && r.contains("flows");
  };
  auto is_startup = [](const json& r) { return r.value("kind", "") == "startup"; };

  std::optional<double> idle_ms, idle_s;
  std::string load;
  bool store = false;  // any row of the main table (STORE_DB, ceilings)
  bool many = false, starts = false;
  for (const json& r : rows) {
    const std::string kind = r.value("kind", "");
    if (kind == "load") {
      load += " " + r.value("case", "?") + " " + num(r["machine_busy_cores"], "%.2f");
    } else if (kind == "idle") {
      idle_ms = r["cpu_ms"].get<double>();
      idle_s = r["seconds"].get<double>();
    } else if (is_many(r)) {
      many = true;
    } else if (is_startup(r)) {
      starts = true;
    } else if (!is_post(r)) {
      store = true;
    }
  }

  // The bound of a backlog drain (issue 11): the slower of the MQTT ceiling (the do-nothing
  // subscriber draining the same backlog) and the database ceiling (a plain client inserting the
  // same rows).
  const auto ceiling_backlog = rate_of("ceiling", "backlog");
  const auto db_ceiling = rate_of("dbceiling", "backlog");
  std::optional<double> bound;
  if (ceiling_backlog && db_ceiling) bound = std::min(*ceiling_backlog, *db_ceiling);

  if (store) {
    std::printf("%-22s %8s %9s %10s %8s %11s %8s %8s %6s %5s %11s %10s %9s\n", "case", "msgs",
                "msgs/s", "vs ceiling", "vs bound", "vs baseline", "p50 ms", "p99 ms", "lost",
                "dup", "CPU us/msg", "DB us/msg", "peak RSS");
  }
  for (const json& r : rows) {
    const std::string kind = r.value("kind", "");
    if (kind == "load" || kind == "idle" || is_post(r) || is_many(r) || is_startup(r)) continue;
    const std::string mode = r.value("mode", "");
    const double rate = r["rate"].get<double>();
    const bool paced = mode == "paced";  // a fixed offered rate: its msgs/s says nothing
    std::printf("%-22s %8s %9s %10s %8s %11s %8s %8s %6s %5s %11s %10s %9s\n",
                r.value("case", "?").c_str(), num(r["messages"], "%.0f").c_str(),
                num(r["rate"], "%.0f").c_str(),
                kind == "ceiling" || paced ? "-" : ratio(rate, rate_of("ceiling", mode)).c_str(),
                kind == "gateway" && mode == "backlog" ? ratio(rate, bound).c_str() : "-",
                kind != "gateway" || paced ? "-" : ratio(rate, baseline).c_str(),
                num(r["p50_ms"], "%.2f").c_str(), num(r["p99_ms"], "%.2f").c_str(),
                num(r["lost"], "%.0f").c_str(), num(r["dup"], "%.0f").c_str(),
                num(r["cpu_us_per_msg"], "%.1f").c_str(),
                num(r.value("db_cpu_us_per_msg", json()), "%.1f").c_str(),
                (num(r["peak_rss_mb"], "%.1f") + " MB").c_str());
  }
  if (idle_ms) std::printf("gateway idle: %.0f ms CPU over %.0f s\n", *idle_ms, *idle_s);
  const auto gateway_backlog = rate_of("gateway", "backlog");
  if (db_ceiling) {
    for (const json& r : rows) {
      if (r.value("kind", "") != "dbceiling") continue;
      std::printf("dbceiling: %s messages as %s rows, %s msg per transaction, %s rows per INSERT\n",
                  num(r["stored"], "%.0f").c_str(), num(r["rows"], "%.0f").c_str(),
                  num(r["batch"], "%.0f").c_str(), num(r["rows_per_insert"], "%.0f").c_str());
    }
  }
  if (bound) {
    std::printf("backlog bound = min(ceiling-backlog %.0f, dbceiling %.0f) = %.0f msg/s (%s side)",
                *ceiling_backlog, *db_ceiling, *bound,
                *db_ceiling < *ceiling_backlog ? "database" : "MQTT");
    if (gateway_backlog) {
      std::printf("; gateway-backlog %.0f msg/s = %.0f%% of it", *gateway_backlog,
                  *gateway_backlog / *bound * 100);
    }
    std::printf("\n");
  }

  // Many flows (issue 17): one burst over 1, 100, 1,000 flows; transactions from the gateway's
  // gateway_transactions_total; "vs 1 flow" against the one-flow row.
  const json* one_flow = nullptr;
  for (const json& r : rows) {
    if (is_many(r) && r.value("flows", 0) == 1) one_flow = &r;
  }
  auto vs_one = [&](const json& r, const char* key) -> std::string {
    if (!one_flow || !r[key].is_number() || !(*one_flow)[key].is_number()) return "-";
    return ratio(r[key].get<double>(), (*one_flow)[key].get<double>());
  };
  if (many) {
    std::printf("%s%-22s %6s %8s %9s %9s %9s %8s %11s %9s %10s %8s %6s %5s %9s\n",
                store ? "\n" : "", "many-flows case", "flows", "msgs", "msgs/s", "vs 1 flow",
                "tx/s", "msgs/tx", "CPU us/msg", "vs 1 flow", "DB us/msg", "p99 ms", "lost", "dup",
                "peak RSS");
  }
  for (const json& r : rows) {
    if (!is_many(r)) continue;
    std::printf("%-22s %6s %8s %9s %9s %9s %8s %11s %9s %10s %8s %6s %5s %9s\n",
                r.value("case", "?").c_str(), num(r["flows"], "%.0f").c_str(),
                num(r["messages"], "%.0f").c_str(), num(r["rate"], "%.0f").c_str(),
                vs_one(r, "rate").c_str(), num(r.value("tx_per_s", json()), "%.0f").c_str(),
                num(r.value("msgs_per_tx", json()), "%.1f").c_str(),
                num(r["cpu_us_per_msg"], "%.1f").c_str(), vs_one(r, "cpu_us_per_msg").c_str(),
                num(r.value("db_cpu_us_per_msg", json()), "%.1f").c_str(),
                num(r["p99_ms"], "%.2f").c_str(), num(r["lost"], "%.0f").c_str(),
                num(r["dup"], "%.0f").c_str(), (num(r["peak_rss_mb"], "%.1f") + " MB").c_str());
  }

  // Start-up and reload (issue 17): seconds from the launch to the log lines (flows loaded,
  // connected, last subscription, ready), and from SIGHUP to the reload's lines; VmRSS once
  // ready. Memory per flow: the largest case's VmRSS less the one-flow case's, per extra flow.
  const json* start_one = nullptr;
  const json* start_most = nullptr;
  if (starts) {
    std::printf("%s%-22s %6s %8s %9s %11s %8s %8s %8s %9s %6s %9s %9s\n", store || many ? "\n" : "",
                "start-up / reload", "flows", "loaded s", "connect s", "subscribe s", "ready s",
                "reload s", "resub s", "brkr subs", "routed", "VmRSS", "VmHWM");
  }
  for (const json& r : rows) {
    if (!is_startup(r)) continue;
    if (r.value("flows", 0) == 1) start_one = &r;
    if (!start_most || r.value("flows", 0) > start_most->value("flows", 0)) start_most = &r;
    std::printf("%-22s %6s %8s %9s %11s %8s %8s %8s %9s %6s %9s %9s\n",
                r.value("case", "?").c_str(), num(r["flows"], "%.0f").c_str(),
                num(r["flows_loaded_s"], "%.3f").c_str(), num(r["connected_s"], "%.3f").c_str(),
                num(r["subscribed_s"], "%.3f").c_str(), num(r["ready_s"], "%.3f").c_str(),
                num(r["reload_s"], "%.3f").c_str(), num(r["resubscribed_s"], "%.3f").c_str(),
                num(r.value("reload_broker_filters", json()), "%.0f").c_str(),
                r.value("reload_routed", false) ? "yes" : "NO",
                (num(r["vmrss_mb"], "%.1f") + " MB").c_str(),
                (num(r.value("vmhwm_mb", json()), "%.1f") + " MB").c_str());
  }
  std::optional<double> bytes_per_flow;
  if (start_one && start_most && start_most->value("flows", 0) > 1) {
    const double extra = start_most->value("flows", 0) - 1;
    const double one = (*start_one)["vmrss_mb"].get<double>();
    const double most = (*start_most)["vmrss_mb"].get<double>();
    bytes_per_flow = (most - one) * 1024 * 1024 / extra;
    std::printf("memory per flow: (%.1f MB - %.1f MB) / %.0f = %.0f bytes (VmRSS once ready)\n",
                most, one, extra, *bytes_per_flow);
  }

  // POST_ENDPOINT (issue 5): msgs/s is first publish -> last POST received; "vs baseline"
  // compares with the inline baseline of the same number of flows.
  auto post_baseline = [&](const json& r) -> std::optional<double> {
    for (const json& b : rows) {
      if (b.value("kind", "") == "post-baseline" && b.value("flows", 0) == r.value("flows", 0))
        return b["rate"].get<double>();
    }
    return std::nullopt;
  };
  // The POST ceiling (issue 11): one connection's sequential POSTs with nothing else to do.
  auto post_ceiling = [&](const json& r) -> std::optional<double> {
    for (const json& b : rows) {
      if (b.value("kind", "") == "post-ceiling" && b.value("flows", 0) == r.value("flows", 0))
        return b["rate"].get<double>();
    }
    return std::nullopt;
  };
  std::string post_ratios, post_warnings;
  bool post_header = false;
  for (const json& r : rows) {
    if (!is_post(r)) continue;
    if (!post_header) {
      std::printf("%s%-22s %5s %8s %7s %7s %9s %11s %8s %8s %6s %5s %5s %11s %9s\n",
                  store || many || starts ? "\n" : "", "POST_ENDPOINT case", "flows", "msgs",
                  "pub s", "s", "msgs/s", "vs baseline", "p50 ms", "p99 ms", "lost", "dup", "order",
                  "CPU us/msg", "peak RSS");
      post_header = true;
    }
    const bool outbox = r.value("kind", "") == "post";
    const bool ceiling = r.value("kind", "") == "post-ceiling";
    const double rate = r["rate"].get<double>();
    const auto base = post_baseline(r);
    std::printf(
        "%-22s %5s %8s %7s %7s %9s %11s %8s %8s %6s %5s %5s %11s %9s\n",
        r.value("case", "?").c_str(), num(r["flows"], "%.0f").c_str(),
        num(r["messages"], "%.0f").c_str(), num(r["publish_seconds"], "%.2f").c_str(),
        num(r["seconds"], "%.2f").c_str(), num(r["rate"], "%.0f").c_str(),
        outbox || ceiling ? ratio(rate, base).c_str() : "-", num(r["p50_ms"], "%.2f").c_str(),
        num(r["p99_ms"], "%.2f").c_str(), num(r["lost"], "%.0f").c_str(),
        num(r["dup"], "%.0f").c_str(), num(r["order_violations"], "%.0f").c_str(),
        num(r["cpu_us_per_msg"], "%.1f").c_str(),
        r.value("peak_rss_mb", json()).is_null() ? "-"
                                                 : (num(r["peak_rss_mb"], "%.1f") + " MB").c_str());
    if ((outbox || ceiling) && base) {
      post_ratios += "  " + r.value("case", "?") + ": " + ratio(rate, base) +
                     " the inline baseline (" + num(rate, "%.0f") + " / " + num(*base, "%.0f") +
                     " msg/s)\n";
    }
    if (const auto top = post_ceiling(r); outbox && top && *top > 0) {
      post_ratios += "  " + r.value("case", "?") + ": " + num(100 * rate / *top, "%.0f") +
                     "% of the POST ceiling (" + num(rate, "%.0f") + " / " + num(*top, "%.0f") +
                     " msg/s, one connection, POSTs only)\n";
    }
    for (const char* key : {"repeated_keys", "msg_id_gaps", "missing_headers"}) {
      if (r.value(key, 0) != 0) {
        post_warnings +=
            "  " + r.value("case", "?") + ": " + key + " " + std::to_string(r.value(key, 0)) + "\n";
      }
    }
  }
  if (!post_ratios.empty()) std::printf("POST ratios:\n%s", post_ratios.c_str());
  // Where the machine's CPU went, per message: everything shares the same cores, so what the
  // sink, the broker, MariaDB and the publisher use is not the gateway's to use.
  bool cpu_header = false;
  for (const json& r : rows) {
    if (!is_post(r) || !r.value("machine_us_per_msg", json()).is_number()) continue;
    if (!cpu_header) {
      std::printf(
          "POST CPU per message (us; rest = publisher or ceiling client, kernel, other):\n"
          "  %-22s %8s %6s %8s %6s %8s %9s %6s %23s\n",
          "case", "machine", "cores", "gateway", "sink", "MariaDB", "mosquitto", "rest",
          "bound, gateway free");
      cpu_header = true;
    }
    const double machine = r["machine_us_per_msg"].get<double>();
    const double rate = r["rate"].get<double>();
    const json gw = r.value("cpu_us_per_msg", json());
    // What the cores would carry if the gateway itself cost nothing: the other parts' bound.
    std::string bound = "-";
    if (gw.is_number() && machine > gw.get<double>()) {
      const double top = r.value("cores", 1.0) * 1e6 / (machine - gw.get<double>());
      const auto base = post_baseline(r);
      bound = num(top, "%.0f") + " msg/s" + (base ? " = " + ratio(top, base) : "");
    }
    std::printf("  %-22s %8s %6s %8s %6s %8s %9s %6s %23s\n", r.value("case", "?").c_str(),
                num(machine, "%.1f").c_str(), num(machine * rate / 1e6, "%.2f").c_str(),
                num(gw, "%.1f").c_str(), num(r["sink_us_per_msg"], "%.1f").c_str(),
                num(r.value("db_us_per_msg", json()), "%.1f").c_str(),
                num(r.value("broker_us_per_msg", json()), "%.1f").c_str(),
                num(r["rest_us_per_msg"], "%.1f").c_str(), bound.c_str());
  }
  if (!post_warnings.empty()) std::printf("POST anomalies:\n%s", post_warnings.c_str());

  if (!load.empty()) {
    std::printf(
        "foreign load (busy cores of 2 while the benchmark was idle, before each case):%s\n",
        load.c_str());
  }
  if (!store && !many && !starts) return 0;

  // The targets of issues 4, 11 and 17 ("n/a" when the case that decides is not in the file).
  auto find = [&](const std::string& kind, const std::string& mode) -> const json* {
    for (const json& r : rows) {
      if (r.value("kind", "") == kind && r.value("mode", "") == mode && !is_many(r)) return &r;
    }
    return nullptr;
  };
  std::printf("\ntargets:\n");
  auto check = [](const char* what, bool have, bool ok, const std::string& value) {
    std::printf("  %-56s %-5s %s\n", what, !have ? "n/a" : ok ? "ok" : "MISS", value.c_str());
  };
  const json* burst = find("gateway", "burst");
  const json* backlog = find("gateway", "backlog");
  const json* paced = find("gateway", "paced");
  auto d = [](const json* r, const char* key) {
    return r && r->contains(key) && (*r)[key].is_number() ? (*r)[key].get<double>() : NAN;
  };
  check("burst >= 10,750 msg/s, zero lost", burst != nullptr,
        d(burst, "rate") >= 10750 && d(burst, "lost") == 0,
        num(d(burst, "rate"), "%.0f msg/s") + ", lost " + num(d(burst, "lost"), "%.0f"));
  check("backlog drain >= 70% of the do-nothing subscriber", backlog && ceiling_backlog,
        ceiling_backlog && d(backlog, "rate") >= 0.7 * *ceiling_backlog,
        ceiling_backlog ? num(d(backlog, "rate") / *ceiling_backlog * 100, "%.0f%%") : "-");
  check("backlog drain >= 70% of min(MQTT, database ceiling)", backlog && bound,
        bound && d(backlog, "rate") >= 0.7 * *bound,
        bound ? num(d(backlog, "rate") / *bound * 100, "%.0f%%") : "-");
  check("burst >= 10x the batching-off baseline", burst && baseline,
        baseline && d(burst, "rate") >= 10 * *baseline,
        baseline ? num(d(burst, "rate") / *baseline, "%.1fx") : "-");
  check("p99 latency at 1,000 msg/s <= 20 ms", paced != nullptr, d(paced, "p99_ms") <= 20,
        num(d(paced, "p99_ms"), "%.2f ms"));
  check("gateway CPU <= 25 us/message (burst)", burst != nullptr, d(burst, "cpu_us_per_msg") <= 25,
        num(d(burst, "cpu_us_per_msg"), "%.1f us"));
  double rss = 0;
  for (const json& r : rows) {
    const std::string kind = r.value("kind", "");
    if ((kind == "gateway" || kind == "baseline") && r.contains("peak_rss_mb") &&
        r["peak_rss_mb"].is_number()) {
      rss = std::max(rss, r["peak_rss_mb"].get<double>());
    }
  }
  check("gateway peak RSS <= 50 MB (all gateway cases)", rss > 0, rss <= 50, num(rss, "%.1f MB"));
  check("idle CPU ~0 (< 1% of a core)", idle_ms.has_value(),
        idle_ms && *idle_ms < 0.01 * *idle_s * 1000, idle_ms ? num(*idle_ms, "%.0f ms") : "-");
  const json* many_most = nullptr;
  for (const json& r : rows) {
    if (is_many(r) && (!many_most || r.value("flows", 0) > many_most->value("flows", 0)))
      many_most = &r;
  }
  const bool many_pair = one_flow && many_most && many_most != one_flow;
  const std::string most_flows = many_pair ? std::to_string(many_most->value("flows", 0)) : "";
  check("many flows: msgs/s >= 0.66x of 1 flow (most flows)", many_pair,
        d(many_most, "rate") >= 0.66 * d(one_flow, "rate"),
        many_pair ? vs_one(*many_most, "rate") + " (" + most_flows + " flows)" : "-");
  check("many flows: CPU/msg <= 1.5x of 1 flow (most flows)", many_pair,
        d(many_most, "cpu_us_per_msg") <= 1.5 * d(one_flow, "cpu_us_per_msg"),
        many_pair ? vs_one(*many_most, "cpu_us_per_msg") + " (" + most_flows + " flows)" : "-");
  const bool start_many = start_most && start_most->value("flows", 0) > 1;
  const std::string start_flows =
      start_many ? " (" + std::to_string(start_most->value("flows", 0)) + " flows)" : "";
  check("start-up (launch -> ready) < 1 s with the most flows", start_many,
        d(start_most, "ready_s") < 1, num(d(start_most, "ready_s"), "%.3f s") + start_flows);
  check("reload, one flow changed (SIGHUP -> resubscribed) < 1 s", start_many,
        d(start_most, "resubscribed_s") < 1 && start_most->value("reload_routed", false),
        num(d(start_most, "resubscribed_s"), "%.3f s") + start_flows +
            (start_many && !start_most->value("reload_routed", false) ? ", NOT routed" : ""));
  if (bytes_per_flow)
    std::printf("  %-56s %-5s %.0f bytes\n", "memory per flow (reported)", "", *bytes_per_flow);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gw-bench: load generator and probes for the mqtt-gateway benchmark"};
  app.require_subcommand(1);

  PublishArgs pa;
  auto* pub = app.add_subcommand("publish", "publish N messages (QoS 1 by default)");
  pub->add_option("--host", pa.host);
  pub->add_option("--port", pa.port)->required();
  pub->add_option("--topic-prefix", pa.prefix, "topics are PREFIX/1..K")->required();
  pub->add_option("--flows", pa.flows, "K")->check(CLI::Range(1, 10000));
  pub->add_option("--count", pa.count)->check(CLI::PositiveNumber);
  pub->add_option("--rate", pa.rate, "messages/s; 0 = as fast as possible");
  pub->add_option("--qos", pa.qos)->check(CLI::Range(0, 2));
  pub->add_option("--max-outstanding", pa.outstanding)->check(CLI::Range(1, 65535));
  pub->add_option("--client-id", pa.client_id);

  SubscribeArgs sa;
  auto* sub = app.add_subcommand("subscribe", "the do-nothing subscriber (the ceiling)");
  sub->add_option("--host", sa.host);
  sub->add_option("--port", sa.port)->required();
  sub->add_option("--filter", sa.filter)->required();
  sub->add_option("--client-id", sa.client_id)->required();
  sub->add_option("--count", sa.count)->check(CLI::PositiveNumber);
  sub->add_option("--qos", sa.qos)->check(CLI::Range(0, 2));
  sub->add_flag("--persistent", sa.persistent, "clean_session=false");
  sub->add_flag("--session-only", sa.session_only, "create the session and disconnect");
  sub->add_flag("--from-connect", sa.from_connect, "measure from the connect (backlog drain)");
  sub->add_option("--stall-seconds", sa.stall_seconds);
  sub->add_option("--ready-file", sa.ready_file, "written once subscribed");
  sub->add_option("--case", sa.name);
  sub->add_option("--mode", sa.mode, "burst | backlog | paced");

  CollectArgs ca;
  auto* col = app.add_subcommand("collect", "measure what a gateway stored");
  col->add_option("--db-host", ca.db_host);
  col->add_option("--db-port", ca.db_port)->required();
  col->add_option("--db-user", ca.db_user);
  col->add_option("--db", ca.db)->required();
  col->add_option("--count", ca.count)->check(CLI::PositiveNumber);
  col->add_option("--pid", ca.pid, "the gateway process");
  col->add_option("--db-pid", ca.db_pid, "mariadbd: its CPU over the case (DB us/msg)");
  col->add_flag("--cpu-from-start", ca.cpu_from_start, "CPU since the process started");
  col->add_option("--t0-us", ca.t0_us, "start of the interval (µs since the epoch)");
  col->add_option("--stall-seconds", ca.stall_seconds);
  col->add_option("--ready-file", ca.ready_file, "written once the CPU baseline is taken");
  col->add_option("--case", ca.name);
  col->add_option("--kind", ca.kind, "gateway | baseline | table");
  col->add_option("--mode", ca.mode, "burst | backlog | paced");
  col->add_option("--flows", ca.flows, "recorded in the result (many-flows table)");
  col->add_option("--metrics-port", ca.metrics_port,
                  "the gateway's metrics port on 127.0.0.1: transactions per second");
  col->add_option("--table", ca.table, "STORE_TABLE: read seq, sent_us, created_at from it");

  SinkArgs ka;
  auto* snk = app.add_subcommand("sink", "count POSTs of POST_ENDPOINT flows (answers 200)");
  snk->add_option("--host", ka.host, "address to listen on");
  snk->add_option("--port", ka.port)->required()->check(CLI::Range(1, 65535));
  snk->add_option("--count", ka.count)->check(CLI::PositiveNumber);
  snk->add_option("--pid", ka.pid, "the gateway process");
  snk->add_option(
      "--gateway-file", ka.gateway_file,
      "'PID START_US' of a gateway launched later (backlog): interval and CPU from then");
  snk->add_option("--db-pid", ka.db_pid, "MariaDB: its CPU per message");
  snk->add_option("--broker-pid", ka.broker_pid, "mosquitto: its CPU per message");
  snk->add_option("--flows", ka.flows, "recorded in the result")->check(CLI::Range(1, 10000));
  snk->add_option("--stall-seconds", ka.stall_seconds);
  snk->add_option("--ready-file", ka.ready_file, "written once listening");
  snk->add_option("--case", ka.name);
  snk->add_option("--kind", ka.kind, "post | post-baseline");
  snk->add_option("--mode", ka.mode, "burst");

  PostCeilingArgs pc;
  auto* pce = app.add_subcommand("postceiling", "the POST ceiling: N POSTs on one connection");
  pce->add_option("--url", pc.url, "the sink's URL")->required();
  pce->add_option("--count", pc.count)->check(CLI::PositiveNumber);
  pce->add_option("--flow", pc.flow, "X-Gateway-Flow");
  pce->add_option("--launched-file", pc.launched_file, "'PID START_US' for sink --gateway-file")
      ->required();

  DbCeilingArgs da;
  auto* dbc = app.add_subcommand(
      "dbceiling", "the database ceiling: the gateway's rows for N messages, by a plain client");
  dbc->add_option("--db-host", da.db_host);
  dbc->add_option("--db-port", da.db_port)->required();
  dbc->add_option("--db-user", da.db_user);
  dbc->add_option("--db", da.db, "a database with the gateway's schema and a flow")->required();
  dbc->add_option("--count", da.count)->check(CLI::PositiveNumber);
  dbc->add_option("--batch", da.batch, "messages per transaction")->check(CLI::PositiveNumber);
  dbc->add_option("--rows-per-insert", da.rows_per_insert, "rows per INSERT statement")
      ->check(CLI::PositiveNumber);
  dbc->add_option("--topic", da.topic, "the topic column's value");
  dbc->add_option("--db-pid", da.db_pid, "mariadbd: its CPU over the case (DB us/msg)");
  dbc->add_option("--case", da.name);
  dbc->add_option("--mode", da.mode, "the mode whose gateway rows it bounds (backlog)");

  StartupArgs ua;
  auto* stu = app.add_subcommand("startup", "start-up and reload times from a gateway's log");
  stu->add_option("--log", ua.log, "the gateway's output (log lines)")->required();
  stu->add_option("--launched-us", ua.launched_us, "launch time, µs since the epoch")->required();
  stu->add_option("--hup-us", ua.hup_us, "SIGHUP time, µs since the epoch");
  stu->add_option("--moved-filter", ua.moved_filter, "the changed flow's new topic filter");
  stu->add_option("--flows", ua.flows)->required();
  stu->add_option("--rss-kib", ua.rss_kib, "VmRSS once ready");
  stu->add_option(
      "--broker-filters", ua.broker_filters,
      "filters in the broker's (un)subscribe log lines for the reload (-1: not logged)");
  stu->add_flag("--routed", ua.routed, "a message on the new filter was stored");
  stu->add_option("--pid", ua.pid, "the gateway process");
  stu->add_option("--case", ua.name);

  int idle_pid = 0;
  double idle_seconds = 5;
  std::string idle_case;
  auto* idl = app.add_subcommand("idle", "CPU time of a process, and the machine's, over a while");
  idl->add_option("--pid", idle_pid, "the process; without it only the machine's busy cores");
  idl->add_option("--seconds", idle_seconds);
  idl->add_option("--case", idle_case);
  std::vector<int> idle_exclude;
  idl->add_option("--exclude-pid", idle_exclude, "not counted in the machine's busy cores");

  std::string results;
  auto* rep = app.add_subcommand("report", "print the table of a results file");
  rep->add_option("file", results)->required();

  CLI11_PARSE(app, argc, argv);
  // The password comes from the environment, not the command line (ps shows that).
  if (const char* pw = std::getenv("MYSQL_PWD")) ca.db_password = da.db_password = pw;

  try {
    if (*pub) return publish(pa);
    if (*sub) return subscribe(sa);
    if (*col) return collect(ca);
    if (*snk) return sink(ka);
    if (*dbc) return dbceiling(da);
    if (*pce) return postceiling(pc);
    if (*stu) return startup(ua);
    if (*idl) return idle(idle_pid, idle_seconds, idle_case, idle_exclude);
    if (*rep) return report(results);
  } catch (const sql::SQLException& e) {
    std::fprintf(stderr, "gw-bench: database: %s (error %d)\n", e.what(), e.getErrorCode());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gw-bench: %s\n", e.what());
  }
  return 1;
}
