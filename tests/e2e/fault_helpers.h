// Shared by the fault e2e tests (fault_e2e_test.cpp, durability_e2e_test.cpp): numbered payloads
// and a background publisher, reading the spool and the gateway's logs from the outside, a plain
// HTTP GET for /healthz and /metrics, and FaultFixture, which counts what a flow stored.
//
// Every exactly-once test publishes payloads {"seq": N, "v": ...} with N = 1..total to a STORE_DB
// flow and checks at the end, in data_records, that each seq is stored exactly once and that the
// flow's msg_ids are 1..total without a gap. Each test prints a one-line summary:
//   [fault] <test>: published P stored S lost L duplicated D ...
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "e2e/e2e_fixture.h"
#include "gateway/spool.h"
#include "support/loopback_http.h"

namespace gateway::testing {

// Unacknowledged publishes at a time. Paho C 1.3.12 refuses a publish with "No more messages can
// be buffered" (-12) once more than 100 are pending (the default maxBufferedMessages), and drops
// the connection, so publish_many's default of 200 fails under load.
inline constexpr std::size_t kPublishWindow = 64;

// GW_FAULT_SCALE (default 1, e.g. 3.3 for the issue's 20,000 messages): how much load the fault
// tests put on the gateway. A bad value counts as 1.
inline double fault_scale() {
  const char* text = std::getenv("GW_FAULT_SCALE");
  if (text == nullptr || text[0] == '\0') return 1.0;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(value > 0.0) || value > 1000.0) return 1.0;
  return value;
}
// `base` messages times GW_FAULT_SCALE, at least 1.
inline int scaled(int base) {
  return std::max(1, static_cast<int>(std::lround(base * fault_scale())));
}

inline std::string seq_payload(int seq, std::size_t pad) {
  return R"({"seq": )" + std::to_string(seq) + R"(, "v": ")" + std::string(pad, 'x') + "-" +
         std::to_string(seq * 7) + R"("})";
}

inline std::vector<std::pair<std::string, std::string>> seq_messages(const std::string& topic,
                                                                     int first, int last,
                                                                     std::size_t pad) {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(static_cast<std::size_t>(std::max(0, last - first + 1)));
  for (int seq = first; seq <= last; ++seq) out.emplace_back(topic, seq_payload(seq, pad));
  return out;
}

// Publishes seq 1..total to one topic from a background thread, in chunks acknowledged by the
// broker one after the other: `gap` after each chunk or, with a rate (messages per second), chunks
// spaced so that the average rate holds. pause() parks it between two chunks (all earlier ones
// acked), so a test can restart the broker without the publisher having anything in doubt; after
// resume() it reconnects with a new client. Publishing never repeats a seq, so any duplicate in
// the database is the gateway's.
class ChunkedPublisher {
 public:
  ChunkedPublisher(std::string topic, int total, int chunk, std::chrono::milliseconds gap,
                   std::size_t pad = 16, double rate = 0)
      : topic_(std::move(topic)), total_(total), chunk_(chunk), gap_(gap), pad_(pad), rate_(rate) {
    thread_ = std::thread([this] { run(); });
  }
  ~ChunkedPublisher() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      pause_requested_ = false;
    }
    cv_.notify_all();
    thread_.join();
  }
  ChunkedPublisher(const ChunkedPublisher&) = delete;
  ChunkedPublisher& operator=(const ChunkedPublisher&) = delete;

  // Waits until the publisher stands between two chunks; false at the timeout or once done.
  bool pause(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    pause_requested_ = true;
    return cv_.wait_for(lock, timeout, [this] { return paused_ || done_; }) && paused_;
  }
  void resume() {
    {
      std::lock_guard lock(mu_);
      pause_requested_ = false;
    }
    cv_.notify_all();
  }
  bool wait_done(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [this] { return done_; });
  }
  bool done() {
    std::lock_guard lock(mu_);
    return done_;
  }
  // Messages the broker acknowledged.
  int published() const { return published_.load(); }
  std::string error() {
    std::lock_guard lock(mu_);
    return error_;
  }

 private:
  void run() {
    using Clock = std::chrono::steady_clock;
    std::unique_ptr<MqttTestClient> client;
    int next = 1;
    const auto started = Clock::now();
    while (next <= total_) {
      {
        std::unique_lock lock(mu_);
        if (pause_requested_) {
          paused_ = true;
          cv_.notify_all();
          cv_.wait(lock, [this] { return !pause_requested_ || stop_; });
          paused_ = false;
          client.reset();  // its broker may be gone
        }
        if (stop_) break;
      }
      try {
        if (!client) client = connect_with_retries();
        const int last = std::min(total_, next + chunk_ - 1);
        client->publish_many(seq_messages(topic_, next, last, pad_), 1, kPublishWindow);
        next = last + 1;
        published_ = last;
      } catch (const std::exception& e) {
        std::lock_guard lock(mu_);
        error_ = e.what();
        break;
      }
      std::unique_lock lock(mu_);
      const auto until = rate_ > 0 ? started + std::chrono::microseconds(static_cast<std::int64_t>(
                                                   (next - 1) * 1e6 / rate_))
                                   : Clock::now() + gap_;
      cv_.wait_until(lock, until, [this] { return stop_; });
    }
    std::lock_guard lock(mu_);
    done_ = true;
    cv_.notify_all();
  }

  static std::unique_ptr<MqttTestClient> connect_with_retries() {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      try {
        return std::make_unique<MqttTestClient>(test_services().mqtt_host,
                                                test_services().mqtt_port);
      } catch (const std::exception&) {
        if (std::chrono::steady_clock::now() > until) throw;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    }
  }

  const std::string topic_;
  const int total_;
  const int chunk_;
  const std::chrono::milliseconds gap_;
  const std::size_t pad_;
  const double rate_;
  std::atomic<int> published_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool pause_requested_ = false;  // guarded by mu_
  bool paused_ = false;           // guarded by mu_
  bool done_ = false;             // guarded by mu_
  bool stop_ = false;             // guarded by mu_
  std::string error_;             // guarded by mu_
  std::thread thread_;            // last: starts after everything above exists
};

// What data_records holds for one flow's seq field.
struct Tally {
  std::int64_t rows = 0;      // seq rows
  std::int64_t distinct = 0;  // distinct seq values
  std::int64_t min_seq = 0;
  std::int64_t max_seq = 0;
  std::int64_t msg_ids = 0;  // distinct msg_ids of the seq rows
  std::int64_t min_msg_id = 0;
  std::int64_t max_msg_id = 0;
  std::int64_t last_msg_id = 0;  // flows.last_msg_id
};

// Sum of the sizes of the spool's segment files.
inline std::uint64_t spool_bytes(const std::filesystem::path& dir) {
  std::uint64_t total = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->path().extension() == ".seg") total += std::filesystem::file_size(it->path(), ec);
  }
  return total;
}

// A field of /proc/<pid>/status in kB ("VmHWM", "VmRSS"); 0 when unreadable.
inline std::int64_t proc_status_kb(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return 0;
}

// Everything the gateway wrote under `dir`: its log files and captured stdout/stderr.
inline std::string everything_logged(const std::filesystem::path& dir) {
  std::string all;
  std::error_code ec;
  for (std::filesystem::recursive_directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (it->is_regular_file() &&
        (name.find(".log") != std::string::npos || name.find(".out") != std::string::npos)) {
      all += read_file(it->path());
    }
  }
  return all;
}

inline std::size_t occurrences(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// The lines of `text` that contain every one of `needles`.
inline std::vector<std::string> lines_with(const std::string& text,
                                           const std::vector<std::string>& needles) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (std::all_of(needles.begin(), needles.end(),
                    [&](const std::string& n) { return line.find(n) != std::string::npos; })) {
      out.push_back(line);
    }
  }
  return out;
}

// What the gateway's own log says about the paths a fault test is meant to exercise.
inline std::string log_evidence(const std::string& log) {
  return " [log: " + std::to_string(occurrences(log, "committed before a restart")) +
         " batches with replay skips, " + std::to_string(occurrences(log, "broker redelivered")) +
         " redeliveries dropped, " +
         std::to_string(occurrences(log, "lost the broker connection")) + " broker losses]";
}

// One spool record as found in a segment file.
struct RecordAt {
  std::filesystem::path file;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  SpoolRecord record;
};

// Decodes every record of every segment in `dir`, in file order.
inline std::vector<RecordAt> spool_records(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> segments;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".seg") segments.push_back(entry.path());
  }
  std::sort(segments.begin(), segments.end());
  std::vector<RecordAt> out;
  for (const std::filesystem::path& seg : segments) {
    const std::string bytes = read_file(seg);
    std::size_t offset = 0;
    while (offset < bytes.size()) {
      DecodeResult r = decode_record(std::string_view(bytes).substr(offset));
      if (r.status != DecodeStatus::kOk) break;
      out.push_back(RecordAt{seg, offset, r.consumed, std::move(r.record)});
      offset += r.consumed;
    }
  }
  return out;
}

// ---- the metrics and health endpoint (METRICS_ADDRESS) ------------------------------------------

// free_port() and http_get(): tests/support/loopback_http.h.

// The sum of the samples of metric `name` (every label set) in a Prometheus text; std::nullopt
// when it has none.
inline std::optional<double> metric_sum(const std::string& text, const std::string& name) {
  std::istringstream lines(text);
  std::string line;
  std::optional<double> sum;
  while (std::getline(lines, line)) {
    if (line.rfind(name, 0) != 0 || line.size() <= name.size()) continue;
    const char after = line[name.size()];
    if (after != ' ' && after != '{') continue;
    const auto space = line.find_last_of(' ');
    if (space == std::string::npos) continue;
    try {
      sum = sum.value_or(0.0) + std::stod(line.substr(space + 1));
    } catch (const std::exception&) {
    }
  }
  return sum;
}

// ---- who is on the other end of a loopback connection
// --------------------------------------------

// The inode of the IPv4 TCP socket whose local end is 127.0.0.1:local_port and remote end
// 127.0.0.1:remote_port (from /proc/net/tcp, which lists both ends of a loopback connection);
// 0 when there is none.
inline std::uint64_t loopback_socket_inode(int local_port, int remote_port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // the header
  const auto port_of = [](const std::string& address) {
    const auto colon = address.find(':');
    return colon == std::string::npos
               ? -1
               : static_cast<int>(std::strtol(address.c_str() + colon + 1, nullptr, 16));
  };
  while (std::getline(in, line)) {
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    std::istringstream fields(line);
    std::string sl, local, remote, state, queues, timer, retransmits, uid, timeout;
    std::uint64_t inode = 0;
    if (!(fields >> sl >> local >> remote >> state >> queues >> timer >> retransmits >> uid >>
          timeout >> inode)) {
      continue;
    }
    if (local.rfind("0100007F:", 0) == 0 && remote.rfind("0100007F:", 0) == 0 &&
        port_of(local) == local_port && port_of(remote) == remote_port) {
      return inode;
    }
  }
  return 0;
}

// True if process `pid` has the socket with this inode open (one of /proc/<pid>/fd/* is
// "socket:[inode]").
inline bool process_holds_socket(pid_t pid, std::uint64_t inode) {
  if (inode == 0) return false;
  const std::string wanted = "socket:[" + std::to_string(inode) + "]";
  std::error_code ec;
  const std::filesystem::path fds = "/proc/" + std::to_string(pid) + "/fd";
  for (std::filesystem::directory_iterator it(fds, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code link_ec;
    if (std::filesystem::read_symlink(it->path(), link_ec).string() == wanted) return true;
  }
  return false;
}

// An error (or critical) line of the gateway's output: "<3>..." (journal format) or
// "... error [component] ...".
inline bool is_error_line(const std::string& line) {
  return line.rfind("<3>", 0) == 0 || line.rfind("<2>", 0) == 0 ||
         line.find(" error [") != std::string::npos ||
         line.find(" critical [") != std::string::npos;
}

// ---- the fixture
// ----------------------------------------------------------------------------------

class FaultFixture : public GatewayE2eTest {
 protected:
  using Clock = std::chrono::steady_clock;

  FaultFixture() {
    extra_env_["DB_RETRY_MAX_SECONDS"] = "2";
    extra_env_["MQTT_RECONNECT_MAX_SECONDS"] = "2";
    extra_env_["SUMMARY_INTERVAL_SECONDS"] = "5";
  }

  // A test that stopped a service restores it, even when it fails half-way.
  ~FaultFixture() override {
    try {
      if (db_stopped_) run_services_command("start-db");
      if (mqtt_stopped_) run_services_command("start-mqtt");
    } catch (const std::exception& e) {
      ADD_FAILURE() << "restoring the services failed: " << e.what();
    }
  }

  void stop_db() {
    db_stopped_ = true;
    run_services_command("stop-db");
  }
  void start_db() {
    run_services_command("start-db");
    db_stopped_ = false;
  }

  // Adds a STORE_DB flow on <prefix>/<code> and makes it the one the one-flow helpers look at.
  std::int64_t add_flow(const std::string& code) {
    topic_ = prefix_ + "/" + code;
    return flow_id_ = db_.insert_flow(code, topic_, "STORE_DB", std::nullopt);
  }

  std::string seq_rows_sql(std::int64_t flow) const {
    return "SELECT COUNT(*) FROM data_records WHERE field_name = 'seq' AND flow_id = " +
           std::to_string(flow);
  }
  std::string seq_rows_sql() const { return seq_rows_sql(flow_id_); }

  Tally tally(std::int64_t flow_id) {
    const std::string flow = std::to_string(flow_id);
    const auto rows = db_.query(
        "SELECT COUNT(*), COUNT(DISTINCT field_value), COALESCE(MIN(CAST(field_value AS SIGNED)), "
        "0), COALESCE(MAX(CAST(field_value AS SIGNED)), 0), COUNT(DISTINCT msg_id), "
        "COALESCE(MIN(msg_id), 0), COALESCE(MAX(msg_id), 0) FROM data_records WHERE field_name = "
        "'seq' AND flow_id = " +
        flow);
    const auto& r = rows.at(0);
    const auto num = [&](std::size_t i) { return std::stoll(r.at(i).value_or("0")); };
    Tally t{num(0), num(1), num(2), num(3), num(4), num(5), num(6), 0};
    t.last_msg_id = count("SELECT last_msg_id FROM flows WHERE id = " + flow);
    return t;
  }
  Tally tally() { return tally(flow_id_); }

  // Waits (bounded) until `expected` seq rows of `flow` arrived, lingers a moment for stragglers
  // that would be duplicates, then prints the summary line and returns the tally.
  Tally drain_and_tally(const std::string& name, std::int64_t published, std::int64_t expected,
                        std::chrono::milliseconds timeout, const std::string& extra,
                        std::int64_t flow) {
    const auto started = Clock::now();
    const bool arrived = wait_for_count(seq_rows_sql(flow), expected, timeout);
    const auto drain_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count();
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    Tally t = tally(flow);
    std::cout << "[" << summary_tag_ << "] " << name << ": published " << published << " stored "
              << t.distinct << " lost " << (expected - t.distinct) << " duplicated "
              << (t.rows - t.distinct) << extra << " (drained in " << drain_ms << " ms)\n";
    EXPECT_TRUE(arrived) << "only " << t.rows << " of " << expected << " seq rows after "
                         << timeout.count() << " ms";
    return t;
  }
  Tally drain_and_tally(const std::string& name, std::int64_t published, std::int64_t expected,
                        std::chrono::milliseconds timeout, const std::string& extra = "") {
    return drain_and_tally(name, published, expected, timeout, extra, flow_id_);
  }

  // Every seq 1..n stored exactly once, numbered msg_id 1..n.
  void expect_exactly_once(const Tally& t, std::int64_t n) {
    EXPECT_EQ(t.rows, n) << "seq rows (duplicates or losses)";
    EXPECT_EQ(t.distinct, n) << "distinct seqs";
    EXPECT_EQ(t.min_seq, 1);
    EXPECT_EQ(t.max_seq, n);
    EXPECT_EQ(t.msg_ids, n) << "distinct msg_ids";
    EXPECT_EQ(t.min_msg_id, 1);
    EXPECT_EQ(t.max_msg_id, n);
    EXPECT_EQ(t.last_msg_id, n) << "flows.last_msg_id";
  }

  void stop_gateway_cleanly() {
    ASSERT_TRUE(gateway_);
    gateway_->kill(SIGTERM);
    EXPECT_EQ(gateway_->wait_exit(std::chrono::seconds(30)), 0) << gateway_->output();
  }

  std::string summary_tag_ = "fault";  // the summary line's "[fault]"
  std::string topic_;
  std::int64_t flow_id_ = 0;
  bool db_stopped_ = false;
  bool mqtt_stopped_ = false;
};

}  // namespace gateway::testing
