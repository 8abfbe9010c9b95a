// Issue 15, high availability, with real processes: broker failover between two mosquitto
// brokers started by the test (the first stopped under load, then back), and a gateway started
// while the database is down (from its cached copy of the flows), or not at all without a copy.
//
// Each test prints "[ha] <test>: published P stored S lost L duplicated D ..." and asserts that
// every message a broker acknowledged (PUBACK received) is stored exactly once. GW_FAULT_SCALE
// scales the load (default 1: about 2,000 messages in the failover test, 600 in the outage test).
#include <signal.h>

#include <fstream>
#include <map>
#include <set>

#include "e2e/fault_helpers.h"

namespace gateway::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A mosquitto of the test's own on a free loopback port, with persistence (SIGTERM writes it, so
// a queued message survives a stop) and room for every queued message.
class TestBroker {
 public:
  explicit TestBroker(const std::string& name)
      : dir_("gw_broker_" + name + "_"), port_(free_port()) {
    std::ofstream(dir_.path() / "mosquitto.conf")
        << "listener " << port_ << " 127.0.0.1\n"
        << "allow_anonymous true\n"
        << "user root\n"  // as root, mosquitto would switch to user mosquitto otherwise
        << "persistence true\n"
        << "persistence_location " << (dir_.path() / "data").string() << "/\n"
        << "max_queued_messages 1000000\n"
        << "max_inflight_messages 20\n"
        << "log_dest file " << (dir_.path() / "mosquitto.log").string() << "\n";
    fs::create_directories(dir_.path() / "data");
    start();
  }
  ~TestBroker() { stop(); }

  int port() const { return port_; }
  std::string uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

  void start() {
    process_ = std::make_unique<GatewayProcess>(
        "/usr/sbin/mosquitto",
        std::vector<std::string>{"-c", (dir_.path() / "mosquitto.conf").string()},
        std::map<std::string, std::string>{}, dir_.path());
    // Ready when a client can connect.
    const bool up = wait_until(
        [&] {
          try {
            MqttTestClient probe("127.0.0.1", port_);
            return true;
          } catch (const std::exception&) {
            return false;
          }
        },
        20s);
    if (!up) throw std::runtime_error("mosquitto on " + uri() + " did not start");
  }
  // SIGTERM: mosquitto saves its persistence file (the queued messages) before it exits.
  void stop() {
    if (!process_) return;
    process_->kill(SIGTERM);
    process_->wait_exit(20s);
    process_.reset();
  }

 private:
  TempDir dir_;
  int port_;
  std::unique_ptr<GatewayProcess> process_;
};

class HighAvailabilityE2e : public FaultFixture {
 protected:
  HighAvailabilityE2e() { summary_tag_ = "ha"; }

  // seq -> stored rows of it, for flow_id_.
  std::map<int, int> stored_counts() {
    std::map<int, int> out;
    for (const auto& row :
         db_.query("SELECT CAST(field_value AS SIGNED), COUNT(*) FROM data_records WHERE "
                   "field_name = 'seq' AND flow_id = " +
                   std::to_string(flow_id_) + " GROUP BY 1")) {
      out[std::stoi(row.at(0).value_or("0"))] = std::stoi(row.at(1).value_or("0"));
    }
    return out;
  }
};

// Publishes numbered messages to whichever broker the test points it at, in chunks of
// kChunk (acknowledged before the next chunk). A chunk that fails is "in doubt" (the broker may
// have taken some of it before it went) and never published again, so any duplicate in the
// database is the gateway's; the next chunk goes on with new numbers.
class SwitchingPublisher {
 public:
  static constexpr int kChunk = 10;

  SwitchingPublisher(std::string topic, int port) : topic_(std::move(topic)), port_(port) {
    thread_ = std::thread([this] { run(); });
  }
  ~SwitchingPublisher() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    thread_.join();
  }
  // Publishes to this broker from the next chunk on; 0 pauses.
  void point_at(int port) {
    std::lock_guard lock(mu_);
    port_ = port;
  }
  // Waits until the publisher stands between chunks with nothing in flight (after point_at(0)).
  bool idle(std::chrono::milliseconds timeout) {
    return wait_until(
        [&] {
          std::lock_guard lock(mu_);
          return idle_;
        },
        timeout);
  }
  int next_seq() {
    std::lock_guard lock(mu_);
    return next_;
  }
  std::set<int> acked() {
    std::lock_guard lock(mu_);
    return acked_;
  }
  std::set<int> in_doubt() {
    std::lock_guard lock(mu_);
    return in_doubt_;
  }

 private:
  void run() {
    std::unique_ptr<MqttTestClient> client;
    int client_port = 0;
    for (;;) {
      int port = 0;
      int first = 0;
      {
        std::lock_guard lock(mu_);
        if (stop_) return;
        port = port_;
        first = next_;
        idle_ = port == 0;
      }
      if (port == 0) {
        client.reset();
        std::this_thread::sleep_for(20ms);
        continue;
      }
      try {
        if (!client || client_port != port) {
          client.reset();
          client = std::make_unique<MqttTestClient>("127.0.0.1", port);
          client_port = port;
        }
      } catch (const std::exception&) {
        std::this_thread::sleep_for(100ms);  // the broker is down: wait for the test to switch
        continue;
      }
      const int last = first + kChunk - 1;
      bool ok = true;
      try {
        client->publish_many(seq_messages(topic_, first, last, 16), 1, kChunk);
      } catch (const std::exception&) {
        ok = false;
        client.reset();
      }
      std::lock_guard lock(mu_);
      for (int s = first; s <= last; ++s) (ok ? acked_ : in_doubt_).insert(s);
      next_ = last + 1;
    }
  }

  const std::string topic_;
  std::mutex mu_;
  int port_;                // guarded by mu_
  int next_ = 1;            // guarded by mu_
  bool idle_ = false;       // guarded by mu_
  bool stop_ = false;       // guarded by mu_
  std::set<int> acked_;     // guarded by mu_
  std::set<int> in_doubt_;  // guarded by mu_
  std::thread thread_;
};

TEST_F(HighAvailabilityE2e, BrokerFailoverAndBackStoresEveryAcceptedMessageOnce) {
  const int per_phase = scaled(700);
  TestBroker first("first");
  TestBroker second("second");
  // The fixture's row becomes the first broker (is_default); the second is another row.
  db_.execute("UPDATE mqtt_servers SET port = " + std::to_string(first.port()) +
              " WHERE id = " + std::to_string(server_id_));
  const std::int64_t second_id = db_.insert_mqtt_server("127.0.0.1", second.port());
  extra_env_["MQTT_FAILOVER_SECONDS"] = "2";
  // Slower intake, so that the first broker has messages queued and in flight when it stops.
  extra_env_["SPOOL_FSYNC"] = "always";
  const int metrics_port = free_port();
  extra_env_["METRICS_ADDRESS"] = "127.0.0.1:" + std::to_string(metrics_port);
  add_flow("failover");
  start_gateway();

  // Phase 1: publishing to the first broker; it is stopped (SIGTERM) while messages flow.
  SwitchingPublisher pub(topic_, first.port());
  ASSERT_TRUE(wait_until([&] { return pub.next_seq() > per_phase; }, 60s));
  const auto stopped_at = Clock::now();  // the gateway loses it after this
  first.stop();
  pub.point_at(0);
  ASSERT_TRUE(pub.idle(20s));
  const int phase1_end = pub.next_seq() - 1;

  // The gateway moves to the second broker after MQTT_FAILOVER_SECONDS.
  const std::string to_second = "broker failover: " + first.uri() + " -> " + second.uri();
  ASSERT_TRUE(gateway_->wait_for_output(to_second, 30s)) << gateway_->output();
  const auto moved_after = Clock::now() - stopped_at;
  EXPECT_GE(moved_after, 2s);
  ASSERT_TRUE(wait_until(
      [&] {
        return http_get(metrics_port, "/metrics")
                   .body.find("server_id=\"" + std::to_string(second_id) + "\",candidate=\"1\"") !=
               std::string::npos;
      },
      10s));
  // A broker queues only for a session it has: the devices move once the gateway is subscribed.
  const std::string subscribed = "subscribed to " + topic_;
  ASSERT_TRUE(wait_until([&] { return occurrences(gateway_->output(), subscribed) >= 2; }, 20s))
      << gateway_->output();

  // Phase 2: the devices follow to the second broker.
  pub.point_at(second.port());
  ASSERT_TRUE(wait_until([&] { return pub.next_seq() > phase1_end + per_phase; }, 60s));
  pub.point_at(0);
  ASSERT_TRUE(pub.idle(20s));
  const int phase2_end = pub.next_seq() - 1;
  // What the second broker took is stored before the first returns (see README: what the
  // second queues after the gateway left waits there until the gateway comes back to it).
  {
    const std::set<int> acked = pub.acked();
    const auto on_second = static_cast<std::int64_t>(
        std::distance(acked.upper_bound(phase1_end), acked.upper_bound(phase2_end)));
    ASSERT_TRUE(wait_for_count(
        seq_rows_sql() + " AND CAST(field_value AS SIGNED) > " + std::to_string(phase1_end),
        on_second, 60s));
  }

  // The first broker returns (with what it had queued for the gateway); the gateway moves back.
  first.start();
  const std::string back = "broker failover: " + second.uri() + " -> " + first.uri();
  ASSERT_TRUE(gateway_->wait_for_output(back, 30s)) << gateway_->output();
  // Back on the first broker's kept session: the subscriptions file was the second's, so the
  // gateway subscribes again (or, had the first lost the session, for the first time).
  ASSERT_TRUE(wait_until([&] { return occurrences(gateway_->output(), subscribed) >= 3; }, 20s))
      << gateway_->output();

  // Phase 3: on the first broker again.
  pub.point_at(first.port());
  ASSERT_TRUE(wait_until([&] { return pub.next_seq() > phase2_end + per_phase; }, 60s));
  pub.point_at(0);
  ASSERT_TRUE(pub.idle(20s));

  const std::set<int> acked = pub.acked();
  const std::set<int> doubt = pub.in_doubt();
  const auto expected = static_cast<std::int64_t>(acked.size());
  wait_for_count(seq_rows_sql(), expected, 60s);
  std::this_thread::sleep_for(1500ms);  // stragglers that would be duplicates
  const std::map<int, int> stored = stored_counts();
  int lost = 0, duplicated = 0, unexpected = 0, doubt_stored = 0;
  for (int s : acked) {
    const auto it = stored.find(s);
    if (it == stored.end()) ++lost;
  }
  for (const auto& [s, n] : stored) {
    duplicated += n - 1;
    if (doubt.count(s)) {
      ++doubt_stored;
    } else if (!acked.count(s)) {
      ++unexpected;
    }
  }
  const Tally t = tally();
  std::cout << "[ha] broker-failover: published " << acked.size() << " (acked; " << doubt.size()
            << " in doubt when the first broker stopped, " << doubt_stored << " of them stored)"
            << " stored " << stored.size() << " lost " << lost << " duplicated " << duplicated
            << " msg_ids " << t.msg_ids << " (" << t.min_msg_id << ".." << t.max_msg_id << ")"
            << "; moved after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(moved_after).count() << " ms"
            << log_evidence(gateway_->output()) << "\n";
  EXPECT_EQ(lost, 0);
  EXPECT_EQ(duplicated, 0);
  EXPECT_EQ(unexpected, 0);
  EXPECT_LE(doubt.size(), static_cast<std::size_t>(SwitchingPublisher::kChunk));
  // msg_ids consecutive: one per stored message, no gap.
  EXPECT_EQ(t.msg_ids, static_cast<std::int64_t>(stored.size()));
  EXPECT_EQ(t.min_msg_id, 1);
  EXPECT_EQ(t.max_msg_id, static_cast<std::int64_t>(stored.size()));
  EXPECT_EQ(occurrences(gateway_->output(), "broker failover: "), 2u) << gateway_->output();
  EXPECT_EQ(metric_sum(http_get(metrics_port, "/metrics").body, "gateway_broker_failovers_total"),
            2.0);
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

TEST_F(HighAvailabilityE2e, DatabaseDownAtStartUpStartsFromTheCachedFlows) {
  const int total = scaled(600);
  add_flow("cached");
  db_.execute("UPDATE mqtt_servers SET username = 'gw', password = 'broker-secret-15' WHERE id = " +
              std::to_string(server_id_));
  start_gateway();
  const fs::path dir = gateway_->work_dir();
  const fs::path copy = dir / "spool" / "flow-cache.json";
  ASSERT_TRUE(fs::exists(copy));
  EXPECT_EQ(fs::status(copy).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  stop_gateway_cleanly();

  stop_db();
  // Starts (READY) without the database, and spools.
  start_gateway(dir);
  EXPECT_TRUE(gateway_->wait_for_output("starting from the cached copy", 1s)) << gateway_->output();
  publisher().publish_many(seq_messages(topic_, 1, total / 2, 16), 1, kPublishWindow);
  // Killed during the outage, and started again from the copy: nothing of the spool is lost.
  std::this_thread::sleep_for(500ms);
  gateway_->kill(SIGKILL);
  gateway_->wait_exit(10s);
  start_gateway(dir);
  publisher().publish_many(seq_messages(topic_, total / 2 + 1, total, 16), 1, kPublishWindow);
  std::this_thread::sleep_for(1s);
  start_db();

  const Tally t =
      drain_and_tally("db-down-at-start", total, total, 60s, " (one kill -9 during the outage)");
  expect_exactly_once(t, total);
  EXPECT_TRUE(gateway_->wait_for_output("flows loaded from the database again", 20s))
      << gateway_->output();
  EXPECT_EQ(everything_logged(dir).find("broker-secret-15"), std::string::npos)
      << "the broker password from the copy showed up in a log";
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

// A power loss takes the last records the database committed from the spool (SPOOL_FSYNC=batch)
// and the database is still down when the gateway starts again: the cached copy's offset is the
// one of its last reload, older than what the database has. New messages must not be numbered
// with the seqs committed since: once the database is back they would be skipped as committed.
TEST_F(HighAvailabilityE2e, PowerLossWithTheDatabaseDownAtRestartLosesNothing) {
  const int before = scaled(600);
  const int after = scaled(300);
  const int cut = std::min(100, before / 2);  // committed records the "disk" forgets
  const int total = before + after;
  extra_env_["SPOOL_FSYNC"] = "batch";
  // The copy is written at start-up only: its offset stays below what the database commits.
  extra_env_["FLOWS_RELOAD_INTERVAL_SECONDS"] = "3600";
  add_flow("powerdown");
  start_gateway();
  const fs::path dir = gateway_->work_dir();
  publisher().publish_many(seq_messages(topic_, 1, before, 16), 1, kPublishWindow);
  ASSERT_TRUE(wait_for_count(seq_rows_sql(), before, 60s));
  ASSERT_TRUE(gateway_->kill(SIGKILL));
  ASSERT_EQ(gateway_->wait_exit(10s), -SIGKILL);

  // The newest segment, cut back to the start of a record `cut` records before its end.
  const auto records = spool_records(dir / "spool");
  ASSERT_GE(records.size(), static_cast<std::size_t>(cut) + 1);
  const RecordAt& first_lost = records.at(records.size() - static_cast<std::size_t>(cut));
  ASSERT_EQ(first_lost.file, records.back().file) << "the last records span segments";
  fs::resize_file(first_lost.file, first_lost.offset);
  // Not synced, so a power loss may take it too; it would also keep appends above the records
  // released before the kill, and this test is about the seqs the copy cannot know.
  fs::remove(dir / "spool" / "released-below");
  const std::int64_t offset_in_db = count("SELECT MAX(last_seq) FROM spool_offsets");

  stop_db();
  start_gateway(dir);
  EXPECT_TRUE(gateway_->wait_for_output("starting from the cached copy", 1s)) << gateway_->output();
  publisher().publish_many(seq_messages(topic_, before + 1, total, 16), 1, kPublishWindow);
  std::this_thread::sleep_for(1s);
  start_db();

  const Tally t = drain_and_tally(
      "power-loss-db-down", total, total, 60s,
      " (spool cut back by " + std::to_string(cut) + " committed records, database offset " +
          std::to_string(offset_in_db) + ", database down at the restart)");
  expect_exactly_once(t, total);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0);
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

TEST_F(HighAvailabilityE2e, NoCachedCopyAndNoDatabaseExitsWithOneLine) {
  add_flow("nocopy");
  stop_db();
  GatewayProcess gw(GATEWAY_BINARY, {}, env());
  const auto status = gw.wait_exit(60s);
  ASSERT_TRUE(status.has_value()) << gw.output();
  EXPECT_EQ(*status, 1) << gw.output();
  const std::string out = gw.output();
  EXPECT_NE(out.find("no cached copy of the flows to start from"), std::string::npos) << out;
  std::size_t errors = 0;
  for (const auto& line : lines_with(out, {})) errors += is_error_line(line) ? 1 : 0;
  EXPECT_EQ(errors, 1u) << out;
  start_db();
}

}  // namespace
}  // namespace gateway::testing
