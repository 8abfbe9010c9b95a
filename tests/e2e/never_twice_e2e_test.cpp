// Never twice (issue 10), with real processes: retained messages across gateway and broker
// restarts, two instances sharing a POST_ENDPOINT flow (delivery lease) or a STORE_DB flow
// (shared subscription) when one of them is killed, and two instances that by mistake share one
// MQTT_CLIENT_ID.
//
// Load scales with GW_FAULT_SCALE (default 1). Every test prints one line
// "[never-twice] <name>: published P stored/POSTed S lost L duplicated D ...". Helpers:
// fault_helpers.h (the STORE_DB tallies), support/http_sink.h (the POST receiver).
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "e2e/fault_helpers.h"
#include "support/http_sink.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::int64_t ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

std::string yes_no(bool b) { return b ? "yes" : "no"; }

class NeverTwiceE2e : public FaultFixture {
 protected:
  NeverTwiceE2e() { summary_tag_ = "never-twice"; }

  // Retained messages outlive the test in the broker: clear them (an empty retained payload),
  // also when the test failed half-way, so that no later subscriber gets them.
  ~NeverTwiceE2e() override {
    if (retained_topics_.empty()) return;
    try {
      MqttTestClient client(test_services().mqtt_host, test_services().mqtt_port);
      for (const std::string& topic : retained_topics_) client.publish(topic, "", 1, true);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "clearing the retained messages failed: " << e.what();
    }
  }

  // Another gateway instance in `dir` (its own spool and logs) with this client id, and the
  // fixture's environment otherwise; waits until it is ready.
  std::unique_ptr<GatewayProcess> start_instance(const fs::path& dir, const std::string& client_id,
                                                 std::chrono::milliseconds timeout = 20s) {
    auto e = env();
    e["MQTT_CLIENT_ID"] = client_id;
    auto gw = std::make_unique<GatewayProcess>(GATEWAY_BINARY, std::vector<std::string>{}, e, dir);
    EXPECT_TRUE(gw->wait_for_output("[main] ready", timeout)) << gw->output();
    return gw;
  }

  // SIGTERM, and the exit code (std::nullopt: still running after 30 s, then SIGKILLed).
  static std::optional<int> stop(GatewayProcess& gw) {
    if (!gw.running()) return gw.wait_exit(0ms);
    gw.kill(SIGTERM);
    auto code = gw.wait_exit(30s);
    if (!code) {
      gw.kill(SIGKILL);
      gw.wait_exit(10s);
    }
    return code;
  }

  std::int64_t rejected_count() { return count("SELECT COUNT(*) FROM rejected_messages"); }

  std::vector<std::string> retained_topics_;
};

// 1. Retained messages are delivered again by the broker on every SUBSCRIBE. The gateway keeps its
// session (clean_session=false) and remembers what it subscribed to, so a restart of the gateway
// (SIGTERM) or of the broker (with persistence: the session survives) must not re-subscribe, and
// no retained message may be stored a second time. Half of the retained messages exist before
// the gateway's first SUBSCRIBE (delivered with the retain flag), half are published afterwards
// (delivered live); a re-SUBSCRIBE would bring all of them back.
TEST_F(NeverTwiceE2e, RetainedMessagesStoredOnceAcrossRestarts) {
  const int retained = scaled(100);
  const int ordinary = scaled(200);
  const int after = scaled(50);
  const int total = retained + ordinary + after;
  const std::string base = prefix_ + "/ret";
  const std::string plain = base + "/plain";
  flow_id_ = db_.insert_flow("retained", base + "/#", "STORE_DB", std::nullopt);
  for (int i = 1; i <= retained; ++i) retained_topics_.push_back(base + "/r/" + std::to_string(i));
  const int before_start = retained / 2;
  {
    MqttTestClient client(test_services().mqtt_host, test_services().mqtt_port);
    for (int seq = 1; seq <= before_start; ++seq) {
      client.publish(retained_topics_.at(seq - 1), seq_payload(seq, 16), 1, true);
    }
  }
  TempDir dir("gw_nt_retained_");
  start_gateway(dir.path());
  {
    MqttTestClient client(test_services().mqtt_host, test_services().mqtt_port);
    for (int seq = before_start + 1; seq <= retained; ++seq) {
      client.publish(retained_topics_.at(seq - 1), seq_payload(seq, 16), 1, true);
    }
    client.publish_many(seq_messages(plain, retained + 1, retained + ordinary, 16), 1,
                        kPublishWindow);
  }
  ASSERT_TRUE(wait_for_count(seq_rows_sql(), retained + ordinary, 60s))
      << count(seq_rows_sql()) << " of " << retained + ordinary << "\n"
      << gateway_->output();
  std::string later_runs;  // the output of every run after the first
  const auto first_run = gateway_->output();

  for (int i = 0; i < 2; ++i) {  // two restarts with SIGTERM, as systemctl restart does
    stop_gateway_cleanly();
    if (i > 0) later_runs += gateway_->output();
    start_gateway(dir.path());
    ASSERT_TRUE(gateway_->running()) << gateway_->output();
    std::this_thread::sleep_for(3s);
  }
  // The broker restarts with persistence: the gateway's session, and the retained messages, stay.
  const std::size_t reconnects_before =
      occurrences(gateway_->output(), "reconnected to the broker");
  mqtt_stopped_ = true;
  run_services_command("restart-mqtt");
  mqtt_stopped_ = false;
  ASSERT_TRUE(wait_until(
      [&] {
        return occurrences(gateway_->output(), "reconnected to the broker") > reconnects_before;
      },
      30s))
      << gateway_->output();
  std::this_thread::sleep_for(3s);
  {
    MqttTestClient client(test_services().mqtt_host, test_services().mqtt_port);
    client.publish_many(seq_messages(plain, retained + ordinary + 1, total, 16), 1, kPublishWindow);
  }
  later_runs += gateway_->output();

  const std::string flow = std::to_string(flow_id_);
  const std::string retained_rows =
      "FROM data_records WHERE field_name = 'seq' AND flow_id = " + flow + " AND topic LIKE '" +
      base + "/r/%'";
  const auto reconnect_lines = lines_with(gateway_->output(), {"reconnected to the broker"});
  const Tally t = drain_and_tally(
      "RetainedMessagesStoredOnceAcrossRestarts", total, total, 60s,
      " (" + std::to_string(retained) +
          " retained on distinct topics, 2 gateway restarts, 1 broker "
          "restart; retained stored " +
          std::to_string(count("SELECT COUNT(DISTINCT topic) " + retained_rows)) + " duplicated " +
          std::to_string(count("SELECT COUNT(*) - COUNT(DISTINCT topic) " + retained_rows)) +
          "; subscribes in the first run " +
          std::to_string(lines_with(first_run, {"subscribed to"}).size()) + ", after restarts " +
          std::to_string(lines_with(later_runs, {"subscribed to"}).size()) + "; " +
          (reconnect_lines.empty()
               ? std::string("no reconnect line")
               : reconnect_lines.back().substr(reconnect_lines.back().find("reconnected"))) +
          ")" + log_evidence(later_runs));
  expect_exactly_once(t, total);
  EXPECT_EQ(count("SELECT COUNT(*) " + retained_rows), retained)
      << "rows of retained messages (each once)";
  EXPECT_EQ(count("SELECT COUNT(DISTINCT topic) " + retained_rows), retained);
  EXPECT_EQ(rejected_count(), 0);
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

// What the HTTP receiver got, by Idempotency-Key "<flow code>:<msg_id>".
struct PostTally {
  std::vector<std::int64_t> first_order;         // msg_ids in the order of their first arrival
  std::map<std::int64_t, int> times;             // how often each msg_id arrived
  std::set<int> seqs;                            // the payloads' seq, of 2xx-answered POSTs
  int foreign_keys = 0;                          // keys not of the form "<code>:<n>"
  std::size_t requests = 0;                      // every POST
  std::optional<Clock::time_point> first_after;  // the first POST after `since`
};

PostTally tally_posts(const HttpSink& sink, const std::string& code,
                      std::optional<Clock::time_point> since = std::nullopt) {
  PostTally p;
  const std::string prefix = code + ":";
  for (const RecordedRequest& r : sink.requests()) {
    ++p.requests;
    if (since && !p.first_after && r.received_at > *since) p.first_after = r.received_at;
    if (r.status_sent < 200 || r.status_sent >= 300) continue;
    const std::string key = r.header("Idempotency-Key").value_or("");
    if (key.rfind(prefix, 0) != 0) {
      ++p.foreign_keys;
      continue;
    }
    std::int64_t id = 0;
    try {
      id = std::stoll(key.substr(prefix.size()));
    } catch (const std::exception&) {
      ++p.foreign_keys;
      continue;
    }
    if (p.times[id]++ == 0) p.first_order.push_back(id);
    try {
      p.seqs.insert(nlohmann::json::parse(r.body).at("seq").get<int>());
    } catch (const std::exception&) {
    }
  }
  return p;
}

// Stored records stay in the spool until their segment is released. A flow disabled before a
// restart must not turn them into dead letters then ("no enabled flow matches"): a replay of
// those would store them twice. The restart follows a kill -9, so what counts is what the
// running gateway kept of its progress, not a clean stop.
TEST_F(NeverTwiceE2e, StoredMessagesOfAFlowDisabledBeforeARestartAreNotDeadLettered) {
  const int total = scaled(200);
  add_flow("disabled-later");
  TempDir dir("gw_nt_disabled_");
  start_gateway(dir.path());
  publisher().publish_many(seq_messages(topic_, 1, total, 16), 1, kPublishWindow);
  ASSERT_TRUE(wait_for_count(seq_rows_sql(), total, 60s)) << gateway_->output();
  db_.execute("UPDATE flows SET enabled = 0 WHERE id = " + std::to_string(flow_id_));
  std::this_thread::sleep_for(1s);  // the dispatcher records its progress every 100 ms
  ASSERT_TRUE(gateway_->kill(SIGKILL));
  ASSERT_EQ(gateway_->wait_exit(10s), -SIGKILL);

  start_gateway(dir.path());
  std::this_thread::sleep_for(2s);  // a replay of the spool would be over by now
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0) << gateway_->output();
  EXPECT_EQ(count(seq_rows_sql()), total);
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

// 2. Two instances share a POST_ENDPOINT flow (MQTT_SHARED_GROUP); one worker in the cluster holds
// the flow's delivery lease and POSTs in msg_id order. The lease holder is SIGKILLed halfway
// through the deliveries and not restarted: the other instance must take the outbox over once the
// lease runs out (30 s) and finish, each Idempotency-Key arriving once, except the POSTs made
// since the killed owner last removed delivered rows from the outbox (it does so every 16 POSTs,
// DeliveryOptions::remove_every), and first arrivals in msg_id order. The kill comes after every
// message is committed to the outbox, so that what is checked is the lease, not the killed
// instance's spool (scenario 3 kills an instance during intake).
TEST_F(NeverTwiceE2e, TwoInstancesPostOnceInOrderWhenOneIsKilled) {
  const int total = scaled(5000);
  // DeliveryOptions::remove_every, twice: a kill during a removal commit also repeats the group
  // handed over behind it (max_unremoved is the hard bound).
  constexpr int kMaxRepeatsPerKill = 2 * 16;
  extra_env_["MQTT_SHARED_GROUP"] = "ntpost";
  extra_env_["HTTP_TIMEOUT_SECONDS"] = "5";  // lease: max(30 s, 3 x 5 s + 5 s) = 30 s
  extra_env_["HTTP_RETRY_MAX_SECONDS"] = "1";
  HttpSink sink;
  sink.set_delay(2ms);  // ~2-3 ms a POST: the deliveries take several seconds
  const std::string code = "ntpost";
  const std::string topic = prefix_ + "/post";
  flow_id_ = db_.insert_flow(code, topic, "POST_ENDPOINT", std::nullopt, sink.url("/in"));
  const std::string flow = std::to_string(flow_id_);
  TempDir dir_a("gw_nt_post_a_");
  TempDir dir_b("gw_nt_post_b_");
  start_gateway(dir_a.path());
  auto b = start_instance(dir_b.path(), client_id_ + "-b");
  ASSERT_TRUE(gateway_->running() && b->running()) << gateway_->output() << b->output();

  const auto started = Clock::now();
  {
    ChunkedPublisher pub(topic, total, 500, 0ms);
    ASSERT_TRUE(pub.wait_done(120s));
    ASSERT_EQ(pub.error(), "");
  }
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE id = " + flow, total, 60s))
      << count("SELECT last_msg_id FROM flows WHERE id = " + flow) << " of " << total;
  const auto committed_ms = ms_since(started);
  ASSERT_TRUE(wait_until(
      [&] { return tally_posts(sink, code).first_order.size() >= std::size_t(total / 2); }, 120s))
      << tally_posts(sink, code).first_order.size() << " of " << total << " POSTed";

  // The lease holder is the instance with the connection the latest POST came on.
  const auto before_kill = sink.requests();
  const int client_port = before_kill.empty() ? 0 : before_kill.back().remote_port;
  const std::uint64_t inode = loopback_socket_inode(client_port, sink.port());
  GatewayProcess* victim = nullptr;
  std::string victim_name = "A (owner unknown)";
  if (process_holds_socket(gateway_->pid(), inode)) {
    victim = gateway_.get();
    victim_name = "A";
  } else if (process_holds_socket(b->pid(), inode)) {
    victim = b.get();
    victim_name = "B";
  } else {
    victim = gateway_.get();  // the connection is gone: kill one; the report says so
  }
  GatewayProcess& survivor = victim == gateway_.get() ? *b : *gateway_;
  const std::int64_t outbox_at_kill = count("SELECT COUNT(*) FROM deliveries");
  const std::size_t posted_at_kill = tally_posts(sink, code).first_order.size();
  ASSERT_TRUE(victim->kill(SIGKILL));
  const auto kill_at = Clock::now();
  ASSERT_EQ(victim->wait_exit(10s), -SIGKILL);

  // The lease runs out at most 30 s after its last renewal, before the kill; the survivor's scan
  // (every 100 ms) then takes the flow. Then the rest at the sink's pace.
  const auto bound = 40s + std::chrono::milliseconds(10LL * total);
  const bool finished = wait_until(
      [&] { return tally_posts(sink, code).first_order.size() >= std::size_t(total); }, bound);
  const bool outbox_empty =
      wait_until([&] { return count("SELECT COUNT(*) FROM deliveries") == 0; }, 10s);
  std::this_thread::sleep_for(1500ms);  // repeats that would come late
  const PostTally p = tally_posts(sink, code, kill_at);
  int repeats = 0;
  int repeated_keys = 0;
  std::int64_t first_repeated = 0, last_repeated = 0;
  for (const auto& [id, n] : p.times) {
    repeats += n - 1;
    if (n == 1) continue;
    ++repeated_keys;
    if (first_repeated == 0) first_repeated = id;
    last_repeated = id;
  }
  const bool in_order = std::is_sorted(p.first_order.begin(), p.first_order.end());
  const std::int64_t takeover_ms =
      p.first_after
          ? std::chrono::duration_cast<std::chrono::milliseconds>(*p.first_after - kill_at).count()
          : -1;
  const auto distinct = static_cast<std::int64_t>(p.first_order.size());
  std::cout << "[never-twice] TwoInstancesPostOnceInOrderWhenOneIsKilled: published " << total
            << " POSTed " << distinct << " lost " << (total - distinct) << " duplicated " << repeats
            << " (" << repeated_keys << " keys repeated"
            << (repeated_keys > 0 ? ", msg_ids " + std::to_string(first_repeated) + ".." +
                                        std::to_string(last_repeated)
                                  : std::string())
            << "; killed " << victim_name << ", the lease holder, after " << posted_at_kill
            << " POSTs with " << outbox_at_kill << " in the outbox; survivor's first POST "
            << takeover_ms
            << " ms after the kill; first arrivals in msg_id order: " << yes_no(in_order) << "; "
            << p.requests << " requests; all committed after " << committed_ms << " ms)\n";

  EXPECT_TRUE(finished) << distinct << " of " << total << " keys after " << bound.count() << " ms\n"
                        << survivor.output();
  EXPECT_NE(victim_name, "A (owner unknown)")
      << "no gateway held the connection of the latest POST (port " << client_port << ")";
  EXPECT_GT(outbox_at_kill, 0) << "the kill came after the deliveries";
  EXPECT_EQ(distinct, total) << "distinct Idempotency-Keys";
  if (!p.first_order.empty()) {
    EXPECT_EQ(p.first_order.front(), 1);
    EXPECT_EQ(p.first_order.back(), total);
  }
  EXPECT_TRUE(in_order) << "first arrivals are not in msg_id order";
  EXPECT_LE(repeats, kMaxRepeatsPerKill) << "POSTs repeated after one kill";
  EXPECT_EQ(p.seqs.size(), static_cast<std::size_t>(total)) << "distinct seqs POSTed";
  EXPECT_EQ(p.foreign_keys, 0);
  EXPECT_TRUE(outbox_empty) << count("SELECT COUNT(*) FROM deliveries") << " left in the outbox";
  EXPECT_GE(takeover_ms, 0);
  EXPECT_LE(takeover_ms, 35000) << "the take-over took longer than the lease (30 s) + 5 s";
  EXPECT_EQ(rejected_count(), 0);
  EXPECT_TRUE(survivor.running()) << survivor.output();
  EXPECT_EQ(stop(survivor), 0) << survivor.output();
}

// 3. Two instances share a STORE_DB flow; one is SIGKILLed while messages arrive. It is restarted
// 2 s later in the same directory (spool, client id), as systemd's Restart=on-failure would:
// without the restart, what it had acknowledged to the broker but not committed would wait in its
// spool, and what the broker queued for its persistent session would wait there, until it comes
// back. Every seq must be stored once, with msg_ids 1..N without a gap.
TEST_F(NeverTwiceE2e, TwoInstancesStoreDbOneKilledGapFree) {
  const int total = scaled(6000);
  extra_env_["MQTT_SHARED_GROUP"] = "ntstore";
  extra_env_["SPOOL_SEGMENT_BYTES"] = "64K";
  add_flow("ntstore");
  TempDir dir_a("gw_nt_store_a_");
  TempDir dir_b("gw_nt_store_b_");
  const std::string b_id = client_id_ + "-b";
  start_gateway(dir_a.path());
  auto b = start_instance(dir_b.path(), b_id);
  ASSERT_TRUE(gateway_->running() && b->running()) << gateway_->output() << b->output();

  // About 5 s of publishing.
  ChunkedPublisher pub(topic_, total, 200, 150ms);
  ASSERT_TRUE(wait_until([&] { return pub.published() >= total / 3 || pub.done(); }, 60s));
  const int published_at_kill = pub.published();
  const std::int64_t stored_at_kill = count(seq_rows_sql());
  ASSERT_TRUE(b->kill(SIGKILL));
  ASSERT_EQ(b->wait_exit(10s), -SIGKILL);
  const std::string killed_output = b->output();
  std::this_thread::sleep_for(2s);  // RestartSec
  b = start_instance(dir_b.path(), b_id);
  ASSERT_TRUE(b->running()) << b->output();
  ASSERT_TRUE(pub.wait_done(120s));
  ASSERT_EQ(pub.error(), "");

  const Tally t = drain_and_tally(
      "TwoInstancesStoreDbOneKilledGapFree", pub.published(), total, 90s,
      " (B killed after " + std::to_string(published_at_kill) + " published, " +
          std::to_string(stored_at_kill) + " stored, restarted 2 s later; spool offset rows " +
          std::to_string(count("SELECT COUNT(*) FROM spool_offsets WHERE flow_id = " +
                               std::to_string(flow_id_))) +
          ")" + log_evidence(killed_output + b->output() + gateway_->output()));
  expect_exactly_once(t, total);
  EXPECT_EQ(rejected_count(), 0);
  EXPECT_TRUE(gateway_->running()) << gateway_->output();
  EXPECT_TRUE(b->running()) << b->output();
  EXPECT_EQ(stop(*b), 0) << b->output();
  stop_gateway_cleanly();
}

// 4. A second instance configured with the same MQTT_CLIENT_ID as a running one (its own spool):
// it must not take the running one's broker session over (a takeover hands the messages in flight
// to both). It finds the running one's presence, says so in an error line naming MQTT_CLIENT_ID,
// never connects, and stops with exit status 2 (a setting to fix) after waiting for the other to
// go; the running one stores every message once.
TEST_F(NeverTwiceE2e, SameClientIdTwiceIsReportedAndStoresNothingTwice) {
  const int total = scaled(1000);
  const double rate = 100.0 * fault_scale();  // ~10 s of publishing
  add_flow("sameid");
  TempDir dir_a("gw_nt_sameid_a_");
  TempDir dir_b("gw_nt_sameid_b_");
  start_gateway(dir_a.path());
  const auto b_started = Clock::now();
  auto e = env();
  e["MQTT_CLIENT_ID"] = client_id_;  // the same client id, on purpose
  GatewayProcess b(GATEWAY_BINARY, std::vector<std::string>{}, e, dir_b.path());

  std::vector<std::string> lines;
  std::int64_t reported_ms = -1;
  {
    ChunkedPublisher pub(topic_, total, 20, 0ms, 16, rate);
    if (wait_until(
            [&] {
              lines.clear();
              for (std::string& line : lines_with(b.output(), {"MQTT_CLIENT_ID"})) {
                if (line.find("setting MQTT_CLIENT_ID") == std::string::npos) lines.push_back(line);
              }
              return !lines.empty();
            },
            20s)) {
      reported_ms = ms_since(b_started);
    }
    EXPECT_TRUE(pub.wait_done(60s));
    EXPECT_EQ(pub.error(), "");
  }
  // It gives up once the other has stayed for ClientIdCheck::wait (35 s).
  const auto code_b = b.wait_exit(60s);
  const bool b_was_ready = b.output().find("[main] ready") != std::string::npos;
  const Tally t =
      drain_and_tally("SameClientIdTwiceIsReportedAndStoresNothingTwice", total, total, 30s,
                      " (the second instance: MQTT_CLIENT_ID reported " +
                          (reported_ms < 0 ? std::string("never")
                                           : "after " + std::to_string(reported_ms) + " ms") +
                          ", exit " + (code_b ? std::to_string(*code_b) : std::string("none")) +
                          ", ready " + (b_was_ready ? "yes" : "no") + ")");
  for (const std::string& line : lines) std::cout << "[never-twice]   " << line << "\n";
  EXPECT_GE(reported_ms, 0) << "no line naming MQTT_CLIENT_ID within 20 s:\n" << b.output();
  EXPECT_TRUE(std::any_of(lines.begin(), lines.end(), is_error_line))
      << "not an error line: " << ::testing::PrintToString(lines);
  EXPECT_FALSE(b_was_ready) << b.output();
  EXPECT_EQ(code_b, 2) << b.output();
  expect_exactly_once(t, total);
  EXPECT_EQ(rejected_count(), 0);
  EXPECT_TRUE(gateway_->running()) << gateway_->output();
  stop_gateway_cleanly();
}

}  // namespace
}  // namespace gateway::testing
