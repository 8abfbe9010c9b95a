// Supervisor against a GatewayMqttClient on fakes: the flows reload on the timer (and not before
// one interval), a failed reload keeps the flows, SIGHUP reloads at once, SIGTERM/SIGINT end the
// signal loop, on_tick keeps its cadence, and the database probe keeps the health metrics current
// through an outage and the recovery.
#include "gateway/supervisor.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "fakes/fake_flow_repository.h"
#include "fakes/fake_mqtt_connection.h"
#include "gateway/errors.h"
#include "gateway/gateway_mqtt_client.h"
#include "gateway/signal_mask.h"
#include "support/eventually.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::eventually;
using testing::FakeFlowRepository;
using testing::FakeMqttConnection;

// What the database does when the control connection asks.
enum class Db { kUp, kDown, kThrows };

// The test's database: the fake's tables, a switch for outages, and a count of the connections
// opened. The supervisor's timer thread reads it while the test changes it: one mutex.
struct Database {
  std::mutex mu;
  FakeFlowRepository repo;  // guarded by mu
  Db state = Db::kUp;       // guarded by mu
  int opened = 0;           // guarded by mu
  int flow_loads = 0;       // guarded by mu
};

// The client's control connection: a view of the test's database.
class RepositoryView final : public FlowRepository {
 public:
  explicit RepositoryView(Database& db) : db_(db) {}
  std::optional<MqttServer> load_mqtt_server() override {
    std::lock_guard lock(db_.mu);
    fail_if_down();
    return db_.repo.load_mqtt_server();
  }
  std::vector<Flow> load_flows() override {
    std::lock_guard lock(db_.mu);
    fail_if_down();
    ++db_.flow_loads;
    return db_.repo.load_flows();
  }
  TableInfo describe_table(std::string_view table) override {
    std::lock_guard lock(db_.mu);
    fail_if_down();
    return db_.repo.describe_table(table);
  }
  // The control connection never opens a flow transaction.
  std::unique_ptr<FlowTransaction> lock_flow(std::int64_t, std::string_view) override {
    return nullptr;
  }
  std::unique_ptr<FlowTransaction> begin_unrouted(std::string_view) override { return nullptr; }
  std::unique_ptr<FlowGroupTransaction> lock_flows(std::span<const std::int64_t>,
                                                   std::string_view) override {
    return nullptr;
  }
  bool ping() override {
    std::lock_guard lock(db_.mu);
    if (db_.state == Db::kThrows) throw DbUnavailable("fake: connection lost");
    return db_.state == Db::kUp;
  }
  std::uint64_t last_committed_seq(std::string_view) override { return 0; }

 private:
  void fail_if_down() {
    if (db_.state != Db::kUp) throw DbUnavailable("fake: database down");
  }
  Database& db_;
};

class SupervisorTest : public ::testing::Test {
 protected:
  SupervisorTest() {
    std::string pattern = (fs::temp_directory_path() / "gw_supervisor_XXXXXX").string();
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    settings_.spool_dir = (dir_ / "spool").string();
    settings_.mqtt_client_id = "gw-test";
    settings_.mqtt_heartbeat_seconds = 0;
    SpoolOptions so;
    so.dir = settings_.spool_dir;
    so.fsync = SpoolFsync::kNever;
    spool_ = std::make_unique<Spool>(so, nullptr);
    MqttServer server;
    server.host = "127.0.0.1";
    server.port = 1;
    db_.repo.server = server;
    add_flow(1, "a/#");
    add_flow(2, "b/+");
    metrics_.db_connected = true;  // as main sets it after the first load
  }
  ~SupervisorTest() override {
    supervisor_.reset();
    client_.reset();
    spool_.reset();
    fs::remove_all(dir_);
  }

  void add_flow(std::int64_t id, const std::string& topic) {
    Flow f;
    f.id = id;
    f.code = "f" + std::to_string(id);
    f.topic = topic;
    f.action = "STORE_DB";
    std::lock_guard lock(db_.mu);
    db_.repo.flows[id] = f;
  }
  void set_db(Db state) {
    std::lock_guard lock(db_.mu);
    db_.state = state;
  }
  int db_count(int Database::*what) {
    std::lock_guard lock(db_.mu);
    return db_.*what;
  }

  // The gateway's start-up order: the client connects and subscribes, then the supervisor runs.
  void start(SupervisorOptions options) {
    client_ = std::make_unique<GatewayMqttClient>(
        settings_,
        [this]() -> std::unique_ptr<FlowRepository> {
          std::lock_guard lock(db_.mu);
          ++db_.opened;
          return std::make_unique<RepositoryView>(db_);
        },
        flows_, *spool_, metrics_,
        [this](const MqttConnectOptions& o, MqttHandlers h) {
          auto c = std::make_unique<FakeMqttConnection>(std::move(h));
          if (o.client_id.find("-probe-") == std::string::npos) connection_ = c.get();
          return c;
        },
        log_, ClientIdCheck{10000ms, 30000ms, 100ms, 50ms, 20ms});
    client_->start();
    supervisor_ = std::make_unique<Supervisor>(*client_, metrics_, std::move(options), log_);
    supervisor_->start();
  }

  // The log so far, one line each.
  std::string logged() const {
    std::string out;
    for (const std::string& line : log_lines_->last_formatted()) out += line;
    return out;
  }

  fs::path dir_;
  Settings settings_;
  Database db_;
  std::unique_ptr<Spool> spool_;
  FlowTable flows_;
  Metrics metrics_;
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> log_lines_ =
      std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(10000);
  std::shared_ptr<spdlog::logger> log_ = std::make_shared<spdlog::logger>("test", log_lines_);
  FakeMqttConnection* connection_ = nullptr;
  std::unique_ptr<GatewayMqttClient> client_;
  std::unique_ptr<Supervisor> supervisor_;
};

SupervisorOptions every(std::chrono::milliseconds reload, std::chrono::milliseconds probe = 1h) {
  SupervisorOptions o;
  o.reload_every = reload;
  o.db_probe_every = probe;
  return o;
}

TEST_F(SupervisorTest, ReloadsTheFlowsOnTheTimerAndTheSubscriptionsFollow) {
  start(every(300ms));
  ASSERT_EQ(flows_.snapshot()->flows().size(), 2u);
  add_flow(3, "c/#");
  ASSERT_TRUE(eventually([&] { return flows_.snapshot()->flows().size() == 3; }));
  ASSERT_TRUE(eventually([&] { return connection_->subscriptions().count("c/#") == 1; }));
  EXPECT_GT(metrics_.last_reload_unix.load(), 0);
}

// FLOWS_RELOAD_INTERVAL_SECONDS: start-up has just loaded the flows, so the first timed reload
// comes one interval later, not at once.
TEST_F(SupervisorTest, FirstTimedReloadComesOneIntervalAfterStart) {
  start(every(1h));
  const int loads = db_count(&Database::flow_loads);
  std::this_thread::sleep_for(600ms);  // three rounds of the timer
  EXPECT_EQ(db_count(&Database::flow_loads), loads);
}

TEST_F(SupervisorTest, FailedReloadKeepsTheFlowsAndTheNextIntervalTriesAgain) {
  start(every(200ms));
  set_db(Db::kDown);
  add_flow(3, "c/#");
  std::this_thread::sleep_for(600ms);
  EXPECT_EQ(flows_.snapshot()->flows().size(), 2u) << "the flows of the last good load stay";
  set_db(Db::kUp);
  ASSERT_TRUE(eventually([&] { return flows_.snapshot()->flows().size() == 3; }));
  supervisor_->stop();
  EXPECT_NE(logged().find("flow reload failed (keeping the current flows)"), std::string::npos)
      << logged();
}

// SIGHUP: on_hangup (log files reopened) first, then the flows reload at once; SIGTERM ends the
// loop. The signals are sent to this thread only, which has them blocked (as main does).
TEST_F(SupervisorTest, HangupReloadsAtOnceAndTermEndsTheLoop) {
  SignalMask signals{SIGTERM, SIGINT, SIGHUP};
  start(every(1h));
  add_flow(3, "c/#");
  int hangups = 0;
  std::size_t flows_at_hangup = 0;
  ASSERT_EQ(::raise(SIGHUP), 0);
  const int sig = supervisor_->run_forever(
      signals,
      [&] {
        ++hangups;
        flows_at_hangup = flows_.snapshot()->flows().size();
        ::raise(SIGTERM);  // taken by the next wait, after the reload
      },
      nullptr);
  EXPECT_EQ(sig, SIGTERM);
  EXPECT_EQ(hangups, 1);
  EXPECT_EQ(flows_at_hangup, 2u) << "on_hangup runs before the reload";
  EXPECT_EQ(flows_.snapshot()->flows().size(), 3u);
  ASSERT_TRUE(eventually([&] { return connection_->subscriptions().count("c/#") == 1; }));
  supervisor_->stop();
  EXPECT_NE(logged().find("SIGHUP: reloading flows and reopening log files"), std::string::npos);
  EXPECT_NE(logged().find("SIGTERM: shutting down"), std::string::npos);
}

// on_tick (the watchdog and the summary line) runs after every wait: about every second, and
// also right after a signal.
TEST_F(SupervisorTest, TickRunsEverySecondAndAfterASignal) {
  SignalMask signals{SIGTERM, SIGINT, SIGHUP};
  start(every(1h));
  int ticks = 0;
  const auto began = std::chrono::steady_clock::now();
  const int sig = supervisor_->run_forever(signals, nullptr, [&] {
    if (++ticks == 1) ::raise(SIGINT);
  });
  const auto took = std::chrono::steady_clock::now() - began;
  EXPECT_EQ(sig, SIGINT);
  EXPECT_EQ(ticks, 2) << "one after the second without signals, one after SIGINT";
  EXPECT_GE(took, 900ms);
  EXPECT_LT(took, 3s);
}

// The probe: an outage turns the health metrics down (once, with the time it began), the
// recovery turns them up again; the dead control connection is dropped and reopened.
TEST_F(SupervisorTest, ProbeFollowsADatabaseOutageAndTheRecovery) {
  start(every(1h, 50ms));
  const int opened = db_count(&Database::opened);
  set_db(Db::kDown);
  ASSERT_TRUE(eventually([&] { return !metrics_.db_connected.load(); }));
  const std::int64_t down_since = metrics_.db_down_since_ms.load();
  EXPECT_GT(down_since, 0);
  std::this_thread::sleep_for(200ms);  // more probes fail
  EXPECT_EQ(metrics_.db_down_since_ms.load(), down_since) << "the outage began at the first";

  set_db(Db::kUp);
  ASSERT_TRUE(eventually([&] { return metrics_.db_connected.load(); }));
  EXPECT_EQ(metrics_.db_down_since_ms.load(), 0);
  EXPECT_GT(db_count(&Database::opened), opened) << "the control connection was reopened";

  set_db(Db::kThrows);  // a connection error rather than a failed SELECT 1
  ASSERT_TRUE(eventually([&] { return !metrics_.db_connected.load(); }));
  set_db(Db::kUp);
  ASSERT_TRUE(eventually([&] { return metrics_.db_connected.load(); }));

  supervisor_->stop();
  const std::string log = logged();
  auto count = [&](const std::string& what) {
    std::size_t n = 0;
    for (auto at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count("database unreachable"), 2u) << log;
  EXPECT_EQ(count("database reachable again"), 2u) << log;
}

TEST_F(SupervisorTest, StopIsPromptAndIdempotent) {
  start(every(1h, 1h));
  const auto began = std::chrono::steady_clock::now();
  supervisor_->stop();
  supervisor_->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - began, 1s);
}

}  // namespace
}  // namespace gateway
