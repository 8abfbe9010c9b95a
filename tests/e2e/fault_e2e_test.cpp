// Store-and-forward under faults, with real processes: the gateway SIGKILLed at random moments,
// the broker restarted, the database stopped, the spool full, the spool damaged on disk; plus TLS
// verification and keeping passwords out of the logs.
// The helpers and the exactly-once bookkeeping are in fault_helpers.h.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "e2e/fault_helpers.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

class FaultE2e : public FaultFixture {};

TEST_F(FaultE2e, Kill9RandomMomentsExactlyOnce) {
  constexpr int kTotal = 20000;
  // Small segments: the kills also land around segment rolls and deletions.
  extra_env_["SPOOL_SEGMENT_BYTES"] = "64K";
  add_flow("kill9");
  TempDir dir("gw_fault_kill9_");
  start_gateway(dir.path());
  ASSERT_TRUE(gateway_->running());

  const unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> delay_ms(300, 2000);
  std::cout << "[fault] kill9: random seed " << seed << "\n";

  // About 10 s of publishing, so that the kills land while messages arrive.
  ChunkedPublisher pub(topic_, kTotal, 500, 200ms);
  int kills = 0;
  int kills_under_load = 0;  // while messages were still arriving
  const auto until = Clock::now() + 60s;
  while ((kills < 5 || !pub.done()) && kills < 15 && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(random)));
    ASSERT_TRUE(gateway_->running()) << gateway_->output();
    if (!pub.done()) ++kills_under_load;
    ASSERT_TRUE(gateway_->kill(SIGKILL));
    ASSERT_EQ(gateway_->wait_exit(10s), -SIGKILL);
    ++kills;
    start_gateway(dir.path());
    ASSERT_TRUE(gateway_->running()) << gateway_->output();
  }
  ASSERT_TRUE(pub.wait_done(60s));
  ASSERT_EQ(pub.error(), "");
  ASSERT_GE(kills, 5);

  const Tally t =
      drain_and_tally("kill9", pub.published(), kTotal, 90s,
                      " kills " + std::to_string(kills) + " (" + std::to_string(kills_under_load) +
                          " while publishing)" + log_evidence(everything_logged(dir.path())));
  expect_exactly_once(t, kTotal);
  EXPECT_GE(kills_under_load, 1);
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

TEST_F(FaultE2e, BrokerRestartUnderLoadLosesNothing) {
  constexpr int kTotal = 10000;
  // One fdatasync per message slows the gateway's intake, so that the broker still holds a queue
  // for the gateway's session (and has messages in flight to it) when it restarts.
  extra_env_["SPOOL_FSYNC"] = "always";
  add_flow("broker");
  start_gateway();

  ChunkedPublisher pub(topic_, kTotal, 1000, 0ms);
  ASSERT_TRUE(wait_until([&] { return pub.published() >= kTotal / 2; }, 60s)) << pub.error();
  ASSERT_TRUE(pub.pause(20s)) << pub.error();
  const int before = pub.published();
  const std::int64_t stored_before = count(seq_rows_sql());
  mqtt_stopped_ = true;
  run_services_command("restart-mqtt");
  mqtt_stopped_ = false;
  pub.resume();
  ASSERT_TRUE(pub.wait_done(90s));
  ASSERT_EQ(pub.error(), "");
  ASSERT_TRUE(gateway_->wait_for_output("reconnected to the broker", 20s)) << gateway_->output();

  const Tally t = drain_and_tally("broker-restart", pub.published(), kTotal, 100s,
                                  " (restart after " + std::to_string(before) + " acked, " +
                                      std::to_string(stored_before) + " stored)" +
                                      log_evidence(gateway_->output()));
  expect_exactly_once(t, kTotal);
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

TEST_F(FaultE2e, DatabaseOutageUnderLoad) {
  constexpr int kTotal = 10000;
  constexpr std::int64_t kMaxRssKb = 200 * 1024;
  extra_env_["SPOOL_SEGMENT_BYTES"] = "64K";
  add_flow("dbout");
  start_gateway();
  const pid_t pid = gateway_->pid();
  const fs::path spool = gateway_->work_dir() / "spool";

  // About 8 s of publishing; the database goes away a second in and stays away for 15 s.
  ChunkedPublisher pub(topic_, kTotal, 250, 200ms);
  std::this_thread::sleep_for(1s);
  stop_db();
  const auto down_at = Clock::now();
  std::int64_t peak_rss_kb = 0;
  while (Clock::now() - down_at < 15s) {
    ASSERT_TRUE(gateway_->running()) << gateway_->output();
    peak_rss_kb = std::max(peak_rss_kb, proc_status_kb(pid, "VmRSS"));
    std::this_thread::sleep_for(250ms);
  }
  EXPECT_TRUE(gateway_->output().find("database unavailable") != std::string::npos)
      << gateway_->output();
  start_db();
  ASSERT_TRUE(pub.wait_done(60s));
  ASSERT_EQ(pub.error(), "");

  const Tally t =
      drain_and_tally("db-outage", pub.published(), kTotal, 60s, log_evidence(gateway_->output()));
  const std::int64_t hwm_kb = proc_status_kb(pid, "VmHWM");
  std::cout << "[fault] db-outage: peak RSS during the outage " << peak_rss_kb / 1024
            << " MiB, VmHWM " << hwm_kb / 1024 << " MiB\n";
  expect_exactly_once(t, kTotal);
  // Drained: processed segments are deleted; the one being written (64K at most) stays.
  EXPECT_TRUE(wait_until([&] { return spool_bytes(spool) <= 128 * 1024; }, 10s))
      << spool_bytes(spool) << " bytes left in the spool";
  EXPECT_GT(hwm_kb, 0);
  EXPECT_LT(hwm_kb, kMaxRssKb);
  EXPECT_TRUE(gateway_->output().find("database connection restored") != std::string::npos);
  stop_gateway_cleanly();
}

TEST_F(FaultE2e, SpoolCapAppliesBackPressure) {
  constexpr int kTotal = 6000;
  constexpr std::uint64_t kCap = 1 << 20;
  extra_env_["SPOOL_MAX_BYTES"] = "1M";
  extra_env_["SPOOL_SEGMENT_BYTES"] = "64K";
  // A heartbeat every second: while the message thread is blocked the gateway must neither stall
  // its timer (flow reloads go on, failing with the database) nor reconnect afterwards.
  extra_env_["MQTT_HEARTBEAT_SECONDS"] = "1";
  add_flow("cap");
  start_gateway();
  const fs::path spool = gateway_->work_dir() / "spool";

  stop_db();
  // ~460 bytes a message: about 2.7 MiB in all, well past the cap; the broker keeps the rest.
  ChunkedPublisher pub(topic_, kTotal, 1000, 0ms, 400);
  ASSERT_TRUE(pub.wait_done(60s));
  ASSERT_EQ(pub.error(), "");
  ASSERT_TRUE(gateway_->wait_for_output("spool: full", 30s)) << gateway_->output();
  const std::size_t full_log_at = gateway_->output().size();
  // Held full for longer than the keep-alive (5 s here): the broker may drop the blocked session.
  std::uint64_t peak = 0;
  const auto full_since = Clock::now();
  while (Clock::now() - full_since < 10s) {
    ASSERT_TRUE(gateway_->running()) << gateway_->output();
    peak = std::max(peak, spool_bytes(spool));
    std::this_thread::sleep_for(100ms);
  }
  const std::string during = gateway_->output().substr(full_log_at);
  EXPECT_GE(occurrences(during, "flow reload failed"), 5u)
      << "the timer thread stalled while the spool was full:\n"
      << during;
  EXPECT_GE(peak, kCap - 64 * 1024);
  EXPECT_LE(peak, kCap + 64 * 1024) << "the spool outgrew SPOOL_MAX_BYTES";
  start_db();

  const Tally t =
      drain_and_tally("spool-cap", pub.published(), kTotal, 90s,
                      " (spool peak " + std::to_string(peak) + " bytes, cap " +
                          std::to_string(kCap) + ")" + log_evidence(gateway_->output()));
  expect_exactly_once(t, kTotal);
  EXPECT_TRUE(wait_until([&] { return spool_bytes(spool) <= 128 * 1024; }, 10s))
      << spool_bytes(spool) << " bytes left in the spool";
  EXPECT_TRUE(gateway_->output().find("spool: room again") != std::string::npos);
  EXPECT_EQ(gateway_->output().find("stalled session"), std::string::npos) << gateway_->output();
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

// SIGTERM while the message thread is blocked on a full spool: the gateway exits promptly, and
// the message it was holding (never acknowledged) comes back from the broker after a restart.
TEST_F(FaultE2e, SigtermWhileSpoolIsFullExitsAndLosesNothing) {
  constexpr int kTotal = 4000;
  extra_env_["SPOOL_MAX_BYTES"] = "1M";
  extra_env_["SPOOL_SEGMENT_BYTES"] = "64K";
  add_flow("fullterm");
  TempDir dir("gw_fault_fullterm_");
  start_gateway(dir.path());

  stop_db();
  ChunkedPublisher pub(topic_, kTotal, 1000, 0ms, 400);
  ASSERT_TRUE(pub.wait_done(60s));
  ASSERT_EQ(pub.error(), "");
  ASSERT_TRUE(gateway_->wait_for_output("spool: full", 30s)) << gateway_->output();
  const auto term_at = Clock::now();
  gateway_->kill(SIGTERM);
  const auto code = gateway_->wait_exit(40s);
  const auto exit_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - term_at).count();
  ASSERT_TRUE(code.has_value()) << "no exit within 40 s of SIGTERM with a full spool:\n"
                                << gateway_->output();
  EXPECT_EQ(*code, 0) << gateway_->output();
  EXPECT_LT(exit_ms, 20000) << gateway_->output();
  EXPECT_NE(gateway_->output().find("appends no longer wait for space"), std::string::npos)
      << gateway_->output();

  start_db();
  start_gateway(dir.path());
  const Tally t = drain_and_tally("sigterm-full", pub.published(), kTotal, 60s,
                                  " (exit " + std::to_string(exit_ms) + " ms after SIGTERM)");
  expect_exactly_once(t, kTotal);
  stop_gateway_cleanly();
}

TEST_F(FaultE2e, TornSpoolTailIsRecovered) {
  constexpr int kTotal = 200;
  add_flow("torn");
  TempDir dir("gw_fault_torn_");
  start_gateway(dir.path());
  const fs::path spool = dir.path() / "spool";

  stop_db();
  {
    MqttTestClient client(test_services().mqtt_host, test_services().mqtt_port);
    client.publish_many(seq_messages(topic_, 1, kTotal, 16), 1, kPublishWindow);
  }
  ASSERT_TRUE(wait_until([&] { return spool_records(spool).size() >= kTotal; }, 20s));
  std::this_thread::sleep_for(300ms);  // let the last acknowledgement reach the broker
  gateway_->kill(SIGKILL);
  ASSERT_EQ(gateway_->wait_exit(10s), -SIGKILL);

  auto records = spool_records(spool);
  ASSERT_EQ(records.size(), static_cast<std::size_t>(kTotal));
  const auto seq_of = [](const SpoolRecord& r) {
    return nlohmann::json::parse(r.payload).at("seq").get<int>();
  };
  // Flip a byte in the payload of a record in the middle ...
  const RecordAt& flipped = records.at(kTotal / 2);
  const int flipped_seq = seq_of(flipped.record);
  {
    std::fstream f(flipped.file, std::ios::in | std::ios::out | std::ios::binary);
    const auto at = static_cast<std::streamoff>(flipped.offset + flipped.size - 3);
    f.seekg(at);
    char c = 0;
    f.get(c);
    f.seekp(at);
    f.put(static_cast<char>(c ^ 0x20));
    ASSERT_TRUE(f.good());
  }
  // ... and cut the last record in half, as a crash in the middle of a write would.
  const RecordAt& torn = records.back();
  const int torn_seq = seq_of(torn.record);
  fs::resize_file(torn.file, torn.offset + torn.size / 2);

  start_db();
  start_gateway(dir.path());
  const Tally t = drain_and_tally("torn-spool", kTotal, kTotal - 2, 30s,
                                  " (damaged on purpose: seq " + std::to_string(flipped_seq) +
                                      " flipped, seq " + std::to_string(torn_seq) + " torn)");
  const std::string log = gateway_->output();
  EXPECT_NE(log.find("torn record"), std::string::npos) << log;
  EXPECT_NE(log.find("fails its checksum"), std::string::npos) << log;
  EXPECT_NE(log.find("1 corrupt records skipped"), std::string::npos) << log;
  EXPECT_EQ(t.rows, kTotal - 2);
  EXPECT_EQ(t.distinct, kTotal - 2);
  EXPECT_EQ(t.msg_ids, kTotal - 2);
  EXPECT_EQ(t.max_msg_id, kTotal - 2);
  EXPECT_EQ(t.last_msg_id, kTotal - 2);
  for (const int lost : {flipped_seq, torn_seq}) {
    EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE field_name = 'seq' AND flow_id = " +
                    std::to_string(flow_id_) +
                    " AND CAST(field_value AS SIGNED) = " + std::to_string(lost)),
              0)
        << "seq " << lost;
  }

  // The gateway goes on appending after the damage, to a new segment.
  publisher().publish(topic_, seq_payload(kTotal + 1, 16));
  ASSERT_TRUE(wait_for_count(seq_rows_sql(), kTotal - 1));
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

TEST_F(FaultE2e, TlsBrokerIsVerified) {
  const auto& svc = test_services();
  db_.execute("UPDATE mqtt_servers SET use_tls = 1, port = " + std::to_string(svc.mqtt_tls_port) +
              ", ca_file = '" + svc.mqtt_ca_file + "' WHERE id = " + std::to_string(server_id_));
  add_flow("tls");
  start_gateway();
  ASSERT_TRUE(gateway_->running()) << gateway_->output();
  EXPECT_NE(gateway_->output().find("tls on"), std::string::npos) << gateway_->output();
  {
    MqttTestClient tls_client(svc.mqtt_host, svc.mqtt_tls_port, svc.mqtt_ca_file);
    tls_client.publish(topic_, seq_payload(1, 4));
  }
  publisher().publish(topic_, seq_payload(2, 4));
  const Tally t = drain_and_tally("tls", 2, 2, 20s);
  expect_exactly_once(t, 2);
  stop_gateway_cleanly();

  // A broker certificate the configured CA did not sign: no connection, a non-zero exit.
  db_.execute("UPDATE mqtt_servers SET ca_file = '" + svc.mqtt_wrong_ca_file +
              "' WHERE id = " + std::to_string(server_id_));
  GatewayProcess wrong(GATEWAY_BINARY, {}, env());
  const auto code = wrong.wait_exit(40s);
  const std::string out = wrong.output();
  ASSERT_TRUE(code.has_value()) << "still running with an unverifiable broker:\n" << out;
  EXPECT_NE(*code, 0);
  EXPECT_EQ(out.find("ready"), std::string::npos) << out;
  EXPECT_NE(out.find("ssl://" + svc.mqtt_host + ":" + std::to_string(svc.mqtt_tls_port)),
            std::string::npos)
      << out;
  std::cout << "[fault] tls: verified CA stored 2 of 2; wrong CA exit code " << *code << "\n";
}

TEST_F(FaultE2e, NoPasswordInLogs) {
  const std::string mqtt_password = "Mq77-pw-" + db_.name();
  const std::string& db_password = test_services().db_password;
  ASSERT_FALSE(db_password.empty());
  db_.execute("UPDATE mqtt_servers SET username = 'gw-user', password = '" + mqtt_password +
              "' WHERE id = " + std::to_string(server_id_));
  extra_env_["LOG_LEVEL"] = "debug";
  add_flow("secret");
  TempDir dir("gw_fault_secret_");
  start_gateway(dir.path());
  publisher().publish(topic_, seq_payload(1, 4));
  ASSERT_TRUE(wait_for_count(seq_rows_sql(), 1));
  gateway_->kill(SIGHUP);
  ASSERT_TRUE(gateway_->wait_for_output("SIGHUP", 10s));
  stop_gateway_cleanly();

  // A wrong database password: the failure is logged, the password is not.
  const std::string wrong_db_password = "Wr0ng-db-pw-" + db_.name();
  auto e = env();
  e["DB_PASSWORD"] = wrong_db_password;
  {
    GatewayProcess bad(GATEWAY_BINARY, {}, e, dir.path());
    const auto code = bad.wait_exit(30s);
    ASSERT_TRUE(code.has_value());
    EXPECT_NE(*code, 0);
  }

  const std::string all = everything_logged(dir.path());
  EXPECT_NE(all.find("gw-user"), std::string::npos) << "the log should name the MQTT user";
  EXPECT_NE(all.find("ready"), std::string::npos);
  for (const std::string& secret : {db_password, mqtt_password, wrong_db_password}) {
    const auto at = all.find(secret);
    EXPECT_EQ(at, std::string::npos)
        << "password '" << secret << "' logged: ..."
        << all.substr(at == std::string::npos ? 0 : (at > 200 ? at - 200 : 0), 400);
  }
  std::cout << "[fault] no-password: " << all.size() << " bytes of logs checked for 3 passwords\n";
}

}  // namespace
}  // namespace gateway::testing
