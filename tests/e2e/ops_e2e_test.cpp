// Operating the daemon, through the real binary: the command line and its exit codes, signals
// (SIGTERM under load, SIGHUP), log files and the summary line, the metrics and health endpoint,
// and the systemd notify protocol against a fake NOTIFY_SOCKET.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <ctime>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "e2e/e2e_fixture.h"
#include "support/http_sink.h"
#include "support/loopback_http.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

// ---- helpers ------------------------------------------------------------------------------------

// The value of one sample line ("name{labels} value") of a Prometheus text, if present.
std::optional<double> metric(const std::string& text, const std::string& sample) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > sample.size() && line.compare(0, sample.size(), sample) == 0 &&
        line[sample.size()] == ' ') {
      return std::stod(line.substr(sample.size() + 1));
    }
  }
  return std::nullopt;
}

// A fake systemd: the Unix datagram socket NOTIFY_SOCKET names, collecting what sd_notify sends.
class NotifySocket {
 public:
  explicit NotifySocket(std::filesystem::path path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("socket: " + std::string(std::strerror(errno)));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const std::string p = path_.string();
    if (p.size() >= sizeof a.sun_path) throw std::runtime_error("socket path too long: " + p);
    std::memcpy(a.sun_path, p.c_str(), p.size() + 1);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      throw std::runtime_error("bind " + p + ": " + std::strerror(errno));
    }
  }
  ~NotifySocket() { ::close(fd_); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  const std::filesystem::path& path() const { return path_; }

  // Receives until a datagram contains the line `assignment` (e.g. "READY=1"); false at timeout.
  bool wait_for(const std::string& assignment, std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (index_of(assignment)) return true;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left <= 0ms) return false;
      receive(left);
    }
  }
  // Collects whatever arrives within `d`.
  void drain(std::chrono::milliseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    for (auto now = std::chrono::steady_clock::now(); now < until;
         now = std::chrono::steady_clock::now()) {
      receive(std::chrono::duration_cast<std::chrono::milliseconds>(until - now));
    }
  }
  // Index of the first datagram at or after `from` containing the line `assignment`.
  std::optional<std::size_t> index_of(const std::string& assignment, std::size_t from = 0) const {
    for (std::size_t i = from; i < messages_.size(); ++i) {
      std::istringstream lines(messages_[i]);
      std::string line;
      while (std::getline(lines, line)) {
        if (line == assignment) return i;
      }
    }
    return std::nullopt;
  }
  std::size_t count_of(const std::string& assignment) const {
    std::size_t n = 0;
    for (std::size_t i = 0; i < messages_.size(); ++i) {
      if (index_of(assignment, i) == i) ++n;
    }
    return n;
  }
  std::string all() const {
    std::string out;
    for (const auto& m : messages_) out += m + " | ";
    return out;
  }

 private:
  void receive(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return;
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) messages_.emplace_back(buf, static_cast<std::size_t>(n));
  }

  std::filesystem::path path_;
  int fd_ = -1;
  std::vector<std::string> messages_;
};

// Starts the test database server again if a test stopped it and then failed half-way.
class DatabaseRestarter {
 public:
  void stop() {
    run_services_command("stop-db");
    stopped_ = true;
  }
  void start() {
    run_services_command("start-db");
    stopped_ = false;
  }
  ~DatabaseRestarter() {
    if (!stopped_) return;
    try {
      run_services_command("start-db");
    } catch (const std::exception& e) {
      ADD_FAILURE() << "could not restart the database: " << e.what();
    }
  }

 private:
  bool stopped_ = false;
};

// ---- the command line
// ----------------------------------------------------------------------------

class OpsCommandLine : public GatewayE2eTest {};

TEST_F(OpsCommandLine, HelpListsEveryOptionAndExitsZero) {
  const Outcome o = run_gateway({"--help"}, {});
  EXPECT_EQ(o.code, 0) << o.output;
  for (const char* option : {"--help", "--version", "--env-file", "--check", "--init-db"}) {
    EXPECT_NE(o.output.find(option), std::string::npos) << option << " missing in:\n" << o.output;
  }
  EXPECT_NE(o.output.find("Exit status"), std::string::npos) << o.output;
}

TEST_F(OpsCommandLine, VersionPrintsOneLineAndExitsZero) {
  const Outcome o = run_gateway({"--version"}, {});
  EXPECT_EQ(o.code, 0) << o.output;
  EXPECT_EQ(o.output, std::string("mqtt-gateway ") + GATEWAY_VERSION + "\n");
}

TEST_F(OpsCommandLine, UsageErrorsAreOneLineAndExitCodeTwo) {
  const std::vector<std::vector<std::string>> cases = {
      {"--bogus"},
      {"surplus-argument"},
      {"--env-file"},
      {"--env-file", "/nonexistent/mqtt-gateway.env"},
      {"--check", "--init-db"},
  };
  for (const auto& args : cases) {
    const Outcome o = run_gateway(args, env());
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(o.code, 2) << joined << ": " << o.output;
    EXPECT_EQ(line_count(o.output), 1u) << joined << ": " << o.output;
    EXPECT_EQ(o.output.rfind("mqtt-gateway: ", 0), 0u) << joined << ": " << o.output;
  }
}

TEST_F(OpsCommandLine, BadSettingIsOneLineNamingItAndExitCodeTwo) {
  auto e = env();
  e["DB_PORT"] = "33o6";
  const Outcome o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 2) << o.output;
  EXPECT_EQ(line_count(o.output), 1u) << o.output;
  EXPECT_NE(o.output.find("DB_PORT"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("33o6"), std::string::npos) << o.output;

  // The daemon itself says the same, before it touches the database or the broker.
  const Outcome daemon = run_gateway({}, e);
  EXPECT_EQ(daemon.code, 2) << daemon.output;
  EXPECT_NE(daemon.output.find("DB_PORT"), std::string::npos) << daemon.output;
}

TEST_F(OpsCommandLine, CheckListsTheBrokerAndTheEnabledFlowsAndExitsZero) {
  db_.insert_flow("stored", prefix_ + "/s/+", "STORE_DB", std::nullopt);
  db_.insert_flow("posted", prefix_ + "/p/#", "POST_ENDPOINT", std::nullopt,
                  "http://127.0.0.1:9/x");
  db_.insert_flow("off", prefix_ + "/off", "STORE_DB", std::nullopt, std::nullopt, false);
  const Outcome o = run_gateway({"--check"}, env());
  EXPECT_EQ(o.code, 0) << o.output;
  const auto& svc = test_services();
  EXPECT_NE(o.output.find("schema: ok"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("broker: tcp://" + svc.mqtt_host + ":" + std::to_string(svc.mqtt_port)),
            std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("flows: 2 enabled"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("stored  " + prefix_ + "/s/+  STORE_DB"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("posted  " + prefix_ + "/p/#  POST_ENDPOINT  http://127.0.0.1:9/x"),
            std::string::npos)
      << o.output;
  EXPECT_EQ(o.output.find("off  "), std::string::npos) << o.output;
  // Neither the password nor the broker: --check needs neither to be shown or reachable.
  EXPECT_EQ(o.output.find(db_.gateway_env().at("DB_PASSWORD") + "@"), std::string::npos);
}

TEST_F(OpsCommandLine, CheckFailsNamingAFlowThatCannotWork) {
  db_.insert_flow("good", prefix_ + "/good", "STORE_DB", std::nullopt);
  db_.insert_flow("badfilter", prefix_ + "/#/x", "STORE_DB", std::nullopt);
  db_.insert_flow("nourl", prefix_ + "/n", "POST_ENDPOINT", std::nullopt);
  const Outcome o = run_gateway({"--check"}, env());
  EXPECT_EQ(o.code, 1) << o.output;
  EXPECT_NE(o.output.find("problem: invalid topic filter"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("problem: POST_ENDPOINT without endpoint_url"), std::string::npos)
      << o.output;
  EXPECT_NE(o.output.find("2 flow(s) with problems"), std::string::npos) << o.output;
}

TEST_F(OpsCommandLine, CheckFailsWithTheReasonWhenTheDatabaseIsUnreachable) {
  auto e = env();
  e["DB_PORT"] = std::to_string(free_port());
  e["DB_CONNECT_TIMEOUT_SECONDS"] = "2";
  const auto started = std::chrono::steady_clock::now();
  const Outcome o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 1) << o.output;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 20s);
  EXPECT_EQ(o.output.rfind("mqtt-gateway: ", 0), 0u) << o.output;
  EXPECT_NE(o.output.find(e["DB_PORT"]), std::string::npos) << o.output;
}

// A port in use or a log directory that cannot be created is a fault of the moment (exit 1, so
// that systemd restarts it), not a bad setting (exit 2 stops the restarts for good).
TEST_F(OpsCommandLine, RuntimeIoFailuresExitOneNotTwo) {
  db_.insert_flow("s", prefix_ + "/s", "STORE_DB", std::nullopt);
  // Something else listens on the metrics port.
  const int busy = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(busy, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(busy, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(busy, 1), 0);
  ASSERT_EQ(::getsockname(busy, reinterpret_cast<sockaddr*>(&a), &len), 0);
  auto e = env();
  e["METRICS_ADDRESS"] = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  const Outcome in_use = run_gateway({}, e);
  ::close(busy);
  EXPECT_EQ(in_use.code, 1) << in_use.output;
  EXPECT_NE(in_use.output.find("METRICS_ADDRESS"), std::string::npos) << in_use.output;

  // LOG_DIR below a regular file: it can never be created.
  TempDir dir;
  std::ofstream(dir.path() / "file") << "x";
  e = env();
  e["LOG_DIR"] = (dir.path() / "file" / "log").string();
  const Outcome no_log = run_gateway({}, e);
  EXPECT_EQ(no_log.code, 1) << no_log.output;
  EXPECT_NE(no_log.output.find("LOG_DIR"), std::string::npos) << no_log.output;
}

TEST_F(OpsCommandLine, InitDbCreatesTheSchemaOnAnEmptyDatabaseAndIsIdempotent) {
  TempDir dir;
  const auto empty_schema = dir.path() / "empty.sql";
  std::ofstream(empty_schema) << "-- no tables\n";
  TestDatabase empty(empty_schema);
  auto e = empty.gateway_env();

  Outcome o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 1) << o.output;
  EXPECT_NE(o.output.find("schema: missing tables"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("--init-db"), std::string::npos) << o.output;

  for (int round = 0; round < 2; ++round) {
    o = run_gateway({"--init-db"}, e);
    EXPECT_EQ(o.code, 0) << "round " << round << ": " << o.output;
    EXPECT_NE(o.output.find("schema applied"), std::string::npos) << o.output;
  }
  EXPECT_EQ(
      empty.query_int("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '" +
                      empty.name() +
                      "' AND table_name IN ('flows', 'mqtt_servers', "
                      "'data_records', 'rejected_messages')"),
      4);

  // The schema is there now; what is missing is a broker row.
  o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 1) << o.output;
  EXPECT_NE(o.output.find("schema: ok"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("no enabled MQTT server"), std::string::npos) << o.output;

  empty.insert_mqtt_server("127.0.0.1", 1883);
  o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 0) << o.output;
  EXPECT_NE(o.output.find("flows: 0 enabled"), std::string::npos) << o.output;
}

TEST_F(OpsCommandLine, EnvFileSuppliesTheSettingsAndTheEnvironmentWins) {
  TempDir dir;
  const auto file = dir.path() / "gw.env";
  {
    std::ofstream out(file);
    out << "# settings for the test\n";
    for (const auto& [k, v] : db_.gateway_env()) out << k << "=" << v << "\n";
    out << "DB_PORT=1\n";  // overridden by the environment below
  }
  const Outcome o = run_gateway({"--env-file", file.string(), "--check"},
                                {{"DB_PORT", db_.gateway_env().at("DB_PORT")}});
  EXPECT_EQ(o.code, 0) << o.output;
  EXPECT_NE(o.output.find("schema: ok"), std::string::npos) << o.output;

  // Without the environment's DB_PORT, the file's unreachable port is used and named.
  const Outcome bad =
      run_gateway({"--env-file", file.string(), "--check"}, {{"DB_CONNECT_TIMEOUT_SECONDS", "2"}});
  EXPECT_EQ(bad.code, 1) << bad.output;
}

// ---- the daemon
// ----------------------------------------------------------------------------------

class OpsDaemon : public GatewayE2eTest {
 protected:
  std::filesystem::path log_dir() const { return gateway_->work_dir() / "log"; }
};

TEST_F(OpsDaemon, StartUpLogsVersionAndSettingsWithoutThePasswordThenSummaryLines) {
  db_.insert_flow("s", prefix_ + "/s", "STORE_DB", std::nullopt);
  extra_env_["SUMMARY_INTERVAL_SECONDS"] = "1";
  start_gateway();
  publisher().publish(prefix_ + "/s", R"({"v": 1})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 's'", 1));
  ASSERT_TRUE(gateway_->wait_for_output("summary: received 1, stored 1, posted 0, rejected 0", 10s))
      << gateway_->output();
  // One line a second: a few more within a few seconds.
  std::this_thread::sleep_for(3s);
  const std::string out = gateway_->output();
  std::size_t summaries = 0;
  for (auto at = out.find("summary: "); at != std::string::npos;
       at = out.find("summary: ", at + 1)) {
    ++summaries;
  }
  EXPECT_GE(summaries, 3u) << out;
  EXPECT_NE(out.find("backlog 0"), std::string::npos) << out;
  EXPECT_NE(out.find("broker up, database up"), std::string::npos) << out;

  // The log file has the start-up: version, effective settings, password hidden; connect line.
  const std::string log = read_file(log_dir() / "mqtt-gateway.log");
  EXPECT_NE(log.find(std::string("mqtt-gateway ") + GATEWAY_VERSION + " starting"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("setting SUMMARY_INTERVAL_SECONDS=1"), std::string::npos) << log;
  EXPECT_NE(log.find("setting DB_PASSWORD=***"), std::string::npos) << log;
  EXPECT_NE(log.find("connected to the broker"), std::string::npos) << log;
  const std::string password = db_.gateway_env().at("DB_PASSWORD");
  ASSERT_FALSE(password.empty());
  EXPECT_EQ(log.find(password), std::string::npos) << "password in the log";
  EXPECT_EQ(out.find(password), std::string::npos) << "password on stderr";
}

TEST_F(OpsDaemon, SigtermDuringLoadExitsZeroAndLosesNothing) {
  // Enough that publishing outlasts the gateway's start of work (3,000 were sometimes all stored
  // before the SIGTERM landed).
  constexpr int kMessages = 10000;
  const auto flow = db_.insert_flow("load", prefix_ + "/load", "STORE_DB", std::nullopt);
  extra_env_["MAX_BATCH"] = "50";
  extra_env_["SHUTDOWN_TIMEOUT_SECONDS"] = "15";
  TempDir dir;
  start_gateway(dir.path());

  std::vector<std::pair<std::string, std::string>> messages;
  for (int i = 0; i < kMessages; ++i) {
    messages.emplace_back(prefix_ + "/load", R"({"n": )" + std::to_string(i) + "}");
  }
  std::atomic<bool> published{false};
  std::string publish_error;
  std::thread load([&] {
    try {
      MqttTestClient client(test_services().mqtt_host, test_services().mqtt_port);
      client.publish_many(messages, 1, 64);  // Paho buffers at most 100 unacknowledged
      published = true;
    } catch (const std::exception& e) {
      publish_error = e.what();
    }
  });

  // In the middle of it: some transactions committed, many messages still to come.
  const std::string stored_sql =
      "SELECT COUNT(*) FROM data_records WHERE flow_id = " + std::to_string(flow);
  const bool started = wait_for_count(stored_sql, 1, 20s);
  const auto signalled = std::chrono::steady_clock::now();
  gateway_->kill(SIGTERM);
  const auto code = gateway_->wait_exit(25s);
  const auto took = std::chrono::steady_clock::now() - signalled;
  const std::int64_t at_exit = count(stored_sql);
  load.join();
  RecordProperty("stored_at_first_exit", std::to_string(at_exit));
  ASSERT_TRUE(started) << gateway_->output();
  ASSERT_TRUE(published) << publish_error;
  EXPECT_EQ(code, 0) << gateway_->output();
  EXPECT_LT(took, 16s);
  EXPECT_LT(at_exit, kMessages) << "the load was over before SIGTERM; the test proves nothing";
  const std::string first_run = gateway_->output();
  EXPECT_NE(first_run.find("SIGTERM: shutting down"), std::string::npos) << first_run;
  EXPECT_NE(first_run.find("disconnected from the broker"), std::string::npos) << first_run;
  EXPECT_NE(first_run.find("stopped"), std::string::npos) << first_run;

  // The rest comes from the spool and from the broker's session on the next start.
  start_gateway(dir.path());
  EXPECT_TRUE(
      wait_for_count("SELECT COUNT(DISTINCT field_value) FROM data_records WHERE flow_id = " +
                         std::to_string(flow),
                     kMessages, 40s))
      << at_exit << " at the first exit, now " << count(stored_sql);
  EXPECT_EQ(count("SELECT COUNT(DISTINCT field_value) FROM data_records WHERE flow_id = " +
                  std::to_string(flow)),
            kMessages);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0);
}

TEST_F(OpsDaemon, ShutdownIsBoundedByShutdownTimeoutEvenWhenAPostHangs) {
  HttpSink sink;
  sink.set_delay(25s);  // answers long after the shutdown deadline
  db_.insert_flow("slow", prefix_ + "/slow", "POST_ENDPOINT", std::nullopt, sink.url("/slow"));
  extra_env_["SHUTDOWN_TIMEOUT_SECONDS"] = "2";
  extra_env_["HTTP_TIMEOUT_SECONDS"] = "60";
  start_gateway();
  publisher().publish(prefix_ + "/slow", R"({"v": 1})");
  ASSERT_TRUE(sink.wait_for_count(1, 10s)) << gateway_->output();

  const auto signalled = std::chrono::steady_clock::now();
  gateway_->kill(SIGTERM);
  const auto code = gateway_->wait_exit(15s);
  ASSERT_TRUE(code.has_value()) << "still running 15 s after SIGTERM";
  EXPECT_LT(std::chrono::steady_clock::now() - signalled, 6s);
  // Either the POST was abandoned cleanly, or the deadline ended the process and said so.
  if (*code != 0) {
    EXPECT_EQ(*code, 1);
    EXPECT_NE(gateway_->output().find("shutdown did not finish within SHUTDOWN_TIMEOUT_SECONDS=2"),
              std::string::npos)
        << gateway_->output();
  }
}

TEST_F(OpsDaemon, SighupLoadsANewFlowAtOnceAndReopensTheLogFile) {
  db_.insert_flow("a", prefix_ + "/a", "STORE_DB", std::nullopt);
  extra_env_["FLOWS_RELOAD_INTERVAL_SECONDS"] = "600";  // the timer cannot be what reloads
  start_gateway();
  db_.insert_flow("b", prefix_ + "/b", "STORE_DB", std::nullopt);
  // logrotate's way: move the file away, then SIGHUP.
  const auto log = log_dir() / "mqtt-gateway.log";
  const auto moved = log_dir() / "mqtt-gateway.log.moved";
  std::filesystem::rename(log, moved);

  const auto signalled = std::chrono::steady_clock::now();
  ASSERT_TRUE(gateway_->kill(SIGHUP));
  ASSERT_TRUE(gateway_->wait_for_output("added [b]", 5s)) << gateway_->output();
  EXPECT_LT(std::chrono::steady_clock::now() - signalled, 5s);
  // Subscribed by the MQTT thread right after the reload (a publish before would be dropped).
  ASSERT_TRUE(gateway_->wait_for_output("subscribed to " + prefix_ + "/b", 5s))
      << gateway_->output();
  publisher().publish(prefix_ + "/b", R"({"v": 2})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'b'", 1, 10s))
      << gateway_->output();

  ASSERT_TRUE(std::filesystem::exists(log));
  EXPECT_NE(read_file(log).find("added [b]"), std::string::npos) << read_file(log);
  const std::string old = read_file(moved);
  EXPECT_NE(old.find("SIGHUP"), std::string::npos) << old;
  EXPECT_EQ(old.find("added [b]"), std::string::npos) << old;
  EXPECT_TRUE(gateway_->running());
}

TEST_F(OpsDaemon, LogRotationKeepsTheConfiguredNumberOfFiles) {
  constexpr std::uintmax_t kMaxBytes = 64 * 1024;  // the smallest LOG_MAX_BYTES
  extra_env_["LOG_MAX_BYTES"] = "64K";
  extra_env_["LOG_MAX_FILES"] = "2";
  db_.insert_flow("r", prefix_ + "/#", "STORE_DB", R"({"n": "number"})");
  start_gateway();
  // Every rejection is a warning line with the topic in it: ~1 KiB each, 6 files' worth.
  const std::string topic = prefix_ + "/" + std::string(900, 'x');
  constexpr int kMessages = 400;
  std::vector<std::pair<std::string, std::string>> messages(kMessages, {topic, "not json"});
  publisher().publish_many(messages);
  ASSERT_TRUE(wait_for_count("SELECT COUNT(*) FROM rejected_messages", kMessages, 30s))
      << gateway_->output().substr(0, 4000);
  // The rows are visible a moment before the lines are written.
  ASSERT_TRUE(wait_until([&] { return gateway_->output().size() > 5 * kMaxBytes; }, 10s))
      << "not enough logged to rotate: " << gateway_->output().size() << " bytes";

  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(log_dir())) {
    names.insert(entry.path().filename().string());
    EXPECT_LE(entry.file_size(), kMaxBytes) << entry.path();
  }
  EXPECT_EQ(names, (std::set<std::string>{"mqtt-gateway.log", "mqtt-gateway.1.log",
                                          "mqtt-gateway.2.log"}));
  EXPECT_NE(read_file(log_dir() / "mqtt-gateway.log").find("rejected: flow r topic"),
            std::string::npos);
}

TEST_F(OpsDaemon, UnderJournaldStderrLinesCarrySyslogPrioritiesInsteadOfTimestamps) {
  db_.insert_flow("j", prefix_ + "/j", "STORE_DB", R"({"n": "number"})");
  // systemd sets JOURNAL_STREAM to stderr's device:inode; a shell does the same here.
  GatewayProcess gw(
      "/bin/sh",
      {"-c", "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$0\"", GATEWAY_BINARY},
      env());
  ASSERT_TRUE(gw.wait_for_output("ready", 20s)) << gw.output();
  publisher().publish(prefix_ + "/j", "not json");
  ASSERT_TRUE(gw.wait_for_output("rejected: flow j", 10s)) << gw.output();
  const std::string out = gw.output();
  EXPECT_NE(out.find(std::string("<6>[main] mqtt-gateway ") + GATEWAY_VERSION + " starting"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("<4>[pipeline] rejected: flow j"), std::string::npos) << out;
  // The file keeps its timestamps.
  const std::string log = read_file(gw.work_dir() / "log" / "mqtt-gateway.log");
  EXPECT_NE(log.find(" info  [main] mqtt-gateway "), std::string::npos) << log;
  EXPECT_EQ(log.find("<6>"), std::string::npos) << log;
}

TEST_F(OpsDaemon, MetricsCountersMatchWhatWasPublished) {
  HttpSink sink;
  db_.insert_flow("m", prefix_ + "/m", "STORE_DB", R"({"n": "number"})");
  db_.insert_flow("p", prefix_ + "/p", "POST_ENDPOINT", std::nullopt, sink.url("/in"));
  const int port = free_port();
  extra_env_["METRICS_ADDRESS"] = "127.0.0.1:" + std::to_string(port);
  start_gateway();
  ASSERT_TRUE(gateway_->wait_for_output("metrics and health on", 5s)) << gateway_->output();

  for (int i = 0; i < 5; ++i)
    publisher().publish(prefix_ + "/m", R"({"n": )" + std::to_string(i) + "}");
  publisher().publish(prefix_ + "/m", "not json");
  publisher().publish(prefix_ + "/m", R"({"n": "seven"})");
  for (int i = 0; i < 3; ++i)
    publisher().publish(prefix_ + "/p", R"({"k": )" + std::to_string(i) + "}");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'm'", 5));
  ASSERT_TRUE(wait_for_count("SELECT COUNT(*) FROM rejected_messages", 2));
  ASSERT_TRUE(sink.wait_for_count(3, 10s));

  std::string text;
  ASSERT_TRUE(wait_until(
      [&] {
        const HttpAnswer a = http_get(port, "/metrics");
        text = a.body;
        return a.status == 200 &&
               metric(text, R"(gateway_flow_messages_posted_total{flow="p"})") == 3.0 &&
               metric(text, R"(gateway_flow_messages_rejected_total{flow="m"})") == 2.0;
      },
      10s))
      << text;
  EXPECT_EQ(metric(text, R"(gateway_flow_messages_received_total{flow="m"})"), 7.0) << text;
  EXPECT_EQ(metric(text, R"(gateway_flow_messages_stored_total{flow="m"})"), 5.0) << text;
  EXPECT_EQ(metric(text, R"(gateway_flow_messages_posted_total{flow="m"})"), 0.0) << text;
  EXPECT_EQ(metric(text, R"(gateway_flow_messages_received_total{flow="p"})"), 3.0) << text;
  EXPECT_EQ(metric(text, "gateway_messages_received_total"), 10.0) << text;
  EXPECT_EQ(metric(text, "gateway_messages_stored_total"), 5.0) << text;
  EXPECT_EQ(metric(text, R"(gateway_flow_messages_stored_total{flow="p"})").value_or(0), 0.0)
      << text;
  EXPECT_EQ(metric(text, "gateway_messages_posted_total"), 3.0) << text;
  EXPECT_EQ(metric(text, "gateway_messages_rejected_total"), 2.0) << text;
  EXPECT_EQ(metric(text, "gateway_backlog_messages"), 0.0) << text;
  EXPECT_EQ(metric(text, "gateway_broker_connected"), 1.0) << text;
  EXPECT_EQ(metric(text, "gateway_db_connected"), 1.0) << text;
  EXPECT_GE(metric(text, "gateway_transaction_seconds_count").value_or(0), 1.0) << text;
  EXPECT_EQ(metric(text, R"(gateway_transaction_seconds_bucket{le="+Inf"})"),
            metric(text, "gateway_transaction_seconds_count"))
      << text;
  const auto reload = metric(text, "gateway_last_reload_timestamp_seconds");
  ASSERT_TRUE(reload.has_value()) << text;
  EXPECT_NEAR(*reload, static_cast<double>(std::time(nullptr)), 120.0) << text;
  EXPECT_NE(text.find("# TYPE gateway_transaction_seconds histogram"), std::string::npos);

  const HttpAnswer health = http_get(port, "/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "ok\n");
  EXPECT_EQ(http_get(port, "/nothing-here").status, 404);
}

TEST_F(OpsDaemon, NoMetricsEndpointWithoutMetricsAddress) {
  const int port = free_port();
  start_gateway();
  EXPECT_EQ(gateway_->output().find("metrics and health on"), std::string::npos);
  EXPECT_EQ(http_get(port, "/metrics").status, 0);
}

TEST_F(OpsDaemon, HealthzTurnsUnhealthyWhileTheDatabaseIsDownAndHealthyWhenItIsBack) {
  db_.insert_flow("h", prefix_ + "/h", "STORE_DB", std::nullopt);
  const int port = free_port();
  extra_env_["METRICS_ADDRESS"] = "127.0.0.1:" + std::to_string(port);
  extra_env_["HEALTH_UNREACHABLE_SECONDS"] = "2";
  start_gateway();
  ASSERT_EQ(http_get(port, "/healthz").status, 200);

  DatabaseRestarter database;
  database.stop();
  HttpAnswer a;
  // The probe runs every 5 s; then 2 s of grace.
  EXPECT_TRUE(wait_until(
      [&] {
        a = http_get(port, "/healthz");
        return a.status == 503;
      },
      20s))
      << a.status << " " << a.body;
  EXPECT_NE(a.body.find("database unreachable"), std::string::npos) << a.body;
  EXPECT_EQ(metric(http_get(port, "/metrics").body, "gateway_db_connected"), 0.0);

  database.start();
  EXPECT_TRUE(wait_until(
      [&] {
        a = http_get(port, "/healthz");
        return a.status == 200;
      },
      20s))
      << a.status << " " << a.body;
  EXPECT_TRUE(gateway_->running());
  // And it works again.
  publisher().publish(prefix_ + "/h", R"({"v": 1})");
  EXPECT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'h'", 1));
}

TEST_F(OpsDaemon, NotifiesReadyThenWatchdogThenStoppingWhenWatchdogUsecIsSet) {
  TempDir dir;
  NotifySocket systemd(dir.path() / "notify.sock");
  extra_env_["NOTIFY_SOCKET"] = systemd.path().string();
  extra_env_["WATCHDOG_USEC"] = "2000000";
  start_gateway();
  ASSERT_TRUE(systemd.wait_for("READY=1", 10s)) << systemd.all();
  const std::size_t ready = *systemd.index_of("READY=1");
  // Every half interval: at least two within 3 s.
  systemd.drain(3s);
  EXPECT_GE(systemd.count_of("WATCHDOG=1"), 2u) << systemd.all();
  const auto first_watchdog = systemd.index_of("WATCHDOG=1");
  ASSERT_TRUE(first_watchdog.has_value()) << systemd.all();
  EXPECT_GT(*first_watchdog, ready) << systemd.all();
  EXPECT_FALSE(systemd.index_of("STOPPING=1").has_value()) << systemd.all();

  gateway_->kill(SIGTERM);
  EXPECT_TRUE(systemd.wait_for("STOPPING=1", 10s)) << systemd.all();
  EXPECT_EQ(gateway_->wait_exit(20s), 0) << gateway_->output();
  EXPECT_EQ(systemd.count_of("READY=1"), 1u) << systemd.all();
}

TEST_F(OpsDaemon, NotifiesReadyAndStoppingButNoWatchdogWithoutWatchdogUsec) {
  TempDir dir;
  NotifySocket systemd(dir.path() / "notify.sock");
  extra_env_["NOTIFY_SOCKET"] = systemd.path().string();
  start_gateway();
  ASSERT_TRUE(systemd.wait_for("READY=1", 10s)) << systemd.all();
  systemd.drain(3s);
  gateway_->kill(SIGTERM);
  EXPECT_TRUE(systemd.wait_for("STOPPING=1", 10s)) << systemd.all();
  EXPECT_EQ(gateway_->wait_exit(20s), 0) << gateway_->output();
  EXPECT_EQ(systemd.count_of("WATCHDOG=1"), 0u) << systemd.all();
  EXPECT_GT(*systemd.index_of("STOPPING=1"), *systemd.index_of("READY=1")) << systemd.all();
}

}  // namespace
}  // namespace gateway::testing
