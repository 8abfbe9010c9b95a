// GatewayMqttClient's subscriptions against a fake broker session: subscribe only what the broker
// does not have (retained messages are re-sent on every SUBSCRIBE), follow reloads, and never
// call the broker from the caller's thread (a blocked message handler blocks Paho's calls).
#include "gateway/gateway_mqtt_client.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <future>
#include <thread>

#include "fakes/fake_mqtt_connection.h"
#include "gateway/clock.h"
#include "gateway/errors.h"
#include "support/eventually.h"
#include "support/mqtt_client_fixture.h"

namespace gateway {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::FakeMqttConnection;
using testing::MqttClientFixture;

class GatewayMqttClientTest : public MqttClientFixture {
 protected:
  GatewayMqttClientTest() : MqttClientFixture("gw_client_") {
    settings_.flows_reload_interval_seconds = 3600;
    MqttServer server;
    server.host = "127.0.0.1";
    server.port = 1;
    repo_.server = server;
    add_flow(1, "a/#");
    add_flow(2, "b/+");
  }

  // A new client (a gateway start) on the same spool directory and broker session.
  void start_client(bool session_present) {
    client_.reset();
    flows_ = std::make_unique<FlowTable>();
    client_ = make_client(
        *flows_,
        [this, session_present](const MqttConnectOptions& o, MqttHandlers h) {
          auto c = std::make_unique<FakeMqttConnection>(std::move(h));
          if (o.client_id.find("-probe-") != std::string::npos) {
            ++probes_;
            // The broker's retained presence, as the other gateway (or this one) left it.
            if (!presence_.empty()) c->set_retained("mqtt-gateway/presence/gw-test", presence_);
            if (echo_probe_) c->echo_publishes();
            if (late_retained_) c->send_retained_late();
            return c;
          }
          c->set_session_present(session_present);
          if (!refuse_on_connect_.empty()) c->refuse(refuse_on_connect_);
          // The broker keeps the session's subscriptions across our restarts when it says so.
          if (session_present) {
            for (const auto& s : broker_) c->subscribe({s}, true);
          }
          connection_ = c.get();
          return c;
        },
        log_, check_);
    client_->start();
    broker_ = connection_->subscriptions();
  }

  std::unique_ptr<FlowTable> flows_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  FakeMqttConnection* connection_ = nullptr;
  std::set<std::string> broker_;   // the session's subscriptions as the broker keeps them
  std::string presence_;           // the retained presence a probe finds
  std::string refuse_on_connect_;  // a filter the broker refuses
  int probes_ = 0;
  bool echo_probe_ = false;     // the probe's publishes come back to it, as from a real broker
  bool late_retained_ = false;  // ... and the retained presence only after them
  ClientIdCheck check_{10000ms, 30000ms, 300ms, 100ms, 200ms};
  std::unique_ptr<GatewayMqttClient> client_;  // last: destroyed before what its callbacks use
};

TEST_F(GatewayMqttClientTest, FirstStartSubscribesToEveryFlowFilterInOnePacket) {
  start_client(false);
  EXPECT_EQ(connection_->subscriptions(), (std::set<std::string>{"a/#", "b/+"}));
  EXPECT_EQ(connection_->subscribe_packets().size(), 1u);
}

// Issue 17: with thousands of flows, a reload that changes one flow's topic sends one
// SUBSCRIBE and one UNSUBSCRIBE with one filter each, not thousands.
TEST_F(GatewayMqttClientTest, ReloadOfThousandsOfFlowsSendsOnlyTheChange) {
  for (int i = 3; i < 5003; ++i) add_flow(i, "many/" + std::to_string(i) + "/+");
  start_client(false);
  ASSERT_EQ(connection_->subscriptions().size(), 5002u);
  const std::size_t first = connection_->subscribe_packets().size();
  EXPECT_EQ(first, 20u) << "the first start: 256 filters per SUBSCRIBE";
  repo_.flows[7].topic = "many/7/moved/+";
  client_->reload_flows();
  ASSERT_TRUE(eventually([&] { return connection_->subscriptions().count("many/7/moved/+"); }));
  ASSERT_TRUE(eventually([&] { return !connection_->subscriptions().count("many/7/+"); }));
  const auto subscribes = connection_->subscribe_packets();
  ASSERT_EQ(subscribes.size(), first + 1);
  EXPECT_EQ(subscribes.back(), (std::vector<std::string>{"many/7/moved/+"}));
  EXPECT_EQ(connection_->unsubscribe_packets(),
            (std::vector<std::vector<std::string>>{{"many/7/+"}}));
}

// STORE_TABLE (issue 13): a flow whose mapped column its table lacks is not activated (no route,
// no subscription) until a reload finds the column.
TEST_F(GatewayMqttClientTest, StoreTableFlowIsActiveOnlyWhileItsMappingFitsTheTable) {
  Flow f;
  f.id = 9;
  f.code = "tbl";
  f.topic = "t/+";
  f.action = "STORE_TABLE";
  f.target_table = "readings";
  f.column_map = R"({"device": "$topic[1]", "temp": "/t"})";
  repo_.flows[9] = f;
  ColumnInfo device;
  device.name = "device";
  device.data_type = "varchar";
  device.column_type = "varchar(16)";
  repo_.tables["readings"] = TableInfo{"readings", {device}};
  start_client(false);
  EXPECT_FALSE(connection_->subscriptions().count("t/+"));
  std::vector<std::int64_t> routed;
  flows_->snapshot()->match("t/x", routed);
  EXPECT_TRUE(routed.empty());

  ColumnInfo temp = device;
  temp.name = "temp";
  temp.data_type = "double";
  temp.column_type = "double";
  repo_.tables["readings"].columns.push_back(temp);
  const FlowDiff diff = client_->reload_flows();
  ASSERT_EQ(diff.added.size(), 1u);
  EXPECT_EQ(diff.added[0].code, "tbl");
  ASSERT_TRUE(eventually([&] { return connection_->subscriptions().count("t/+") > 0; }));
  flows_->snapshot()->match("t/x", routed);
  EXPECT_EQ(routed, std::vector<std::int64_t>{9});
}

// A STORE_TABLE flow whose table stopped fitting while the gateway was stopped: the last run had
// it active, so its messages may wait in the spool. The next start holds it (subscribed, routed)
// instead of dropping it, which would make those messages dead letters.
TEST_F(GatewayMqttClientTest, StoreTableFlowOfTheLastRunIsHeldWhenItsTableNoLongerFits) {
  Flow f;
  f.id = 9;
  f.code = "tbl";
  f.topic = "t/+";
  f.action = "STORE_TABLE";
  f.target_table = "readings";
  f.column_map = R"({"temp": "/t"})";
  repo_.flows[9] = f;
  ColumnInfo temp;
  temp.name = "temp";
  temp.data_type = "double";
  temp.column_type = "double";
  repo_.tables["readings"] = TableInfo{"readings", {temp}};
  start_client(false);
  ASSERT_TRUE(connection_->subscriptions().count("t/+"));

  repo_.tables["readings"].columns.clear();  // the column is gone before the next start
  start_client(false);
  std::vector<std::int64_t> routed;
  flows_->snapshot()->match("t/x", routed);
  EXPECT_EQ(routed, std::vector<std::int64_t>{9});
  EXPECT_TRUE(connection_->subscriptions().count("t/+"));
}

// A restart with the session present must not SUBSCRIBE again: the broker would re-send every
// retained message, and they would be stored again.
TEST_F(GatewayMqttClientTest, RestartWithSessionPresentDoesNotSubscribeAgain) {
  start_client(false);
  start_client(true);
  EXPECT_EQ(connection_->subscribe_packets().size(), broker_.size())
      << "only the fake's own replay of the kept session";
  EXPECT_EQ(connection_->subscriptions(), (std::set<std::string>{"a/#", "b/+"}));
}

TEST_F(GatewayMqttClientTest, RestartWithSessionPresentSubscribesOnlyToNewFilters) {
  start_client(false);
  add_flow(3, "c/#");
  start_client(true);
  const auto packets = connection_->subscribe_packets();
  ASSERT_FALSE(packets.empty());
  EXPECT_EQ(packets.back(), (std::vector<std::string>{"c/#"}));
  EXPECT_EQ(connection_->subscriptions(), (std::set<std::string>{"a/#", "b/+", "c/#"}));
}

TEST_F(GatewayMqttClientTest, ReconnectWithoutTheSessionSubscribesToEverythingAgain) {
  start_client(false);
  connection_->forget_session();
  client_->on_reconnected(false);
  ASSERT_TRUE(eventually([&] { return connection_->subscriptions().size() == 2; }));
  EXPECT_EQ(connection_->subscriptions(), (std::set<std::string>{"a/#", "b/+"}));
}

TEST_F(GatewayMqttClientTest, ReconnectWithTheSessionSubscribesToNothing) {
  start_client(false);
  client_->on_reconnected(true);
  std::this_thread::sleep_for(300ms);  // a sync round of the MQTT thread
  EXPECT_EQ(connection_->subscribe_packets().size(), 1u);
}

// SIGHUP while the message handler is blocked (full spool): Paho's calls block, but the reload
// returns at once, and the subscriptions follow once the calls go through.
TEST_F(GatewayMqttClientTest, ReloadNeverWaitsForABlockedBroker) {
  start_client(false);
  connection_->block_calls(true);
  add_flow(3, "c/#");
  repo_.flows.erase(2);
  auto reload = std::async(std::launch::async, [&] { return client_->reload_flows(); });
  ASSERT_EQ(reload.wait_for(2s), std::future_status::ready) << "reload_flows() blocked";
  connection_->block_calls(false);
  ASSERT_TRUE(eventually([&] {
    return connection_->subscriptions() == std::set<std::string>{"a/#", "c/#"};
  }));
}

// A reload that lands between a reconnect and its resubscription: the result follows the newest
// flows, not the snapshot taken at the reconnect.
TEST_F(GatewayMqttClientTest, SubscriptionsFollowAReloadDuringAReconnect) {
  start_client(false);
  connection_->block_calls(true);
  connection_->forget_session();
  client_->on_reconnected(false);
  add_flow(3, "c/#");
  repo_.flows.erase(1);
  client_->reload_flows();
  connection_->block_calls(false);
  ASSERT_TRUE(eventually([&] {
    return connection_->subscriptions() == std::set<std::string>{"b/+", "c/#"};
  }));
}

TEST_F(GatewayMqttClientTest, FailedSubscribeIsRetried) {
  start_client(false);
  connection_->fail_calls(true);
  add_flow(3, "c/#");
  client_->reload_flows();
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(connection_->subscriptions().count("c/#"), 0u);
  connection_->fail_calls(false);
  ASSERT_TRUE(eventually([&] { return connection_->subscriptions().count("c/#") == 1; }));
}

// Another live gateway (another spool) holds the client id: start-up does not take its session
// over; it waits a while, then stops with one line naming MQTT_CLIENT_ID.
TEST_F(GatewayMqttClientTest, ClientIdInUseByAnotherLiveGatewayStopsStartUp) {
  presence_ = "0123456789abcdef0123456789abcdef " + std::to_string(unix_now_ms());
  try {
    start_client(false);
    FAIL() << "started although another gateway holds the client id";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("MQTT_CLIENT_ID 'gw-test'"), std::string::npos)
        << e.what();
  }
  EXPECT_GE(probes_, 2) << "it waited and probed again before giving up";
  EXPECT_EQ(connection_, nullptr) << "never connected with the shared client id";
}

// With the heartbeat on, the probe does not wait out ClientIdCheck::answer when nobody holds the
// client id: the marker it publishes on the heartbeat topic after its SUBACK comes back, and the
// check ends `grace` later. With a minute-long `answer`, the start would otherwise take a minute.
TEST_F(GatewayMqttClientTest, ProbeEndsSoonAfterItsMarkerComesBack) {
  settings_.mqtt_heartbeat_seconds = 15;
  echo_probe_ = true;
  check_.answer = 60s;
  auto started = std::async(std::launch::async, [this] { start_client(false); });
  ASSERT_EQ(started.wait_for(10s), std::future_status::ready) << "the probe waited for `answer`";
  started.get();
  EXPECT_EQ(probes_, 1);
  EXPECT_NE(connection_, nullptr);
}

// A live gateway's retained presence stops the start whether it comes before the marker ...
TEST_F(GatewayMqttClientTest, ProbeWithMarkerStillFindsALivePresence) {
  settings_.mqtt_heartbeat_seconds = 15;
  echo_probe_ = true;
  check_.answer = 60s;
  presence_ = "0123456789abcdef0123456789abcdef " + std::to_string(unix_now_ms());
  auto started = std::async(std::launch::async, [this] { start_client(false); });
  ASSERT_EQ(started.wait_for(10s), std::future_status::ready) << "the probe waited for `answer`";
  EXPECT_THROW(started.get(), ConfigError);
  EXPECT_EQ(connection_, nullptr) << "never connected with the shared client id";
}

// ... or right after it (a broker that sends retained messages apart from live ones): the probe
// waits `grace` after its marker.
TEST_F(GatewayMqttClientTest, ProbeWaitsGraceForARetainedPresenceAfterItsMarker) {
  settings_.mqtt_heartbeat_seconds = 15;
  echo_probe_ = true;
  late_retained_ = true;
  check_.answer = 60s;
  presence_ = "0123456789abcdef0123456789abcdef " + std::to_string(unix_now_ms());
  auto started = std::async(std::launch::async, [this] { start_client(false); });
  ASSERT_EQ(started.wait_for(10s), std::future_status::ready) << "the probe waited for `answer`";
  EXPECT_THROW(started.get(), ConfigError);
  EXPECT_EQ(connection_, nullptr) << "never connected with the shared client id";
}

TEST_F(GatewayMqttClientTest, OwnOrStalePresenceDoesNotStopStartUp) {
  presence_ = spool_->id() + " " + std::to_string(unix_now_ms());  // this gateway, restarted
  start_client(false);
  EXPECT_NE(connection_, nullptr);
  presence_ = "0123456789abcdef0123456789abcdef " + std::to_string(unix_now_ms() - 60000);
  start_client(false);  // its owner died a minute ago without clearing it
  EXPECT_EQ(connection_->retained("mqtt-gateway/presence/gw-test").substr(0, 32), spool_->id())
      << "the running gateway announces itself";
}

// A payload over MAX_PAYLOAD_BYTES is spooled cut (never whole), whatever the two limits are:
// here MAX_PAYLOAD_BYTES is below REJECTED_PAYLOAD_MAX_BYTES.
TEST_F(GatewayMqttClientTest, OversizedPayloadIsSpooledCutAndTheCallbackReturns) {
  settings_.max_payload_bytes = 4096;
  settings_.rejected_payload_max_bytes = 65536;
  start_client(false);
  const std::string big(20000, 'x');
  auto done = std::async(std::launch::async, [&] {
    client_->on_message(MqttMessage{"a/b", big, 7, false, false, 1});
  });
  ASSERT_EQ(done.wait_for(2s), std::future_status::ready) << "the callback did not return";
  auto record = spool_->read_next(1s);
  ASSERT_TRUE(record);
  EXPECT_EQ(record->original_size, 20000u);
  EXPECT_EQ(record->payload.size(), 4096u);
}

// A flow on '#' also receives the gateways' heartbeats and presences (this one's and other
// instances'): they are acknowledged and not spooled, so they never become dead letters.
TEST_F(GatewayMqttClientTest, GatewayControlTopicsAreNotSpooled) {
  add_flow(3, "#");
  start_client(false);
  client_->on_message(MqttMessage{"mqtt-gateway/presence/gw-test", "abc 123", 1, false, true, 1});
  client_->on_message(
      MqttMessage{"mqtt-gateway/heartbeat/other-gw", "abc 123", 2, false, false, 1});
  client_->on_message(MqttMessage{"mqtt-gateway/data", "{}", 3, false, false, 1});
  auto record = spool_->read_next(1s);
  ASSERT_TRUE(record);
  EXPECT_EQ(record->topic, "mqtt-gateway/data");
  EXPECT_FALSE(spool_->read_next(100ms));
}

// A flow that names them (to store the gateways' liveness, say) gets them.
TEST_F(GatewayMqttClientTest, GatewayControlTopicsAreSpooledForAFlowThatNamesThem) {
  add_flow(3, "mqtt-gateway/presence/+");
  start_client(false);
  client_->on_message(MqttMessage{"mqtt-gateway/presence/other-gw", "abc 123", 1, false, true, 1});
  auto record = spool_->read_next(1s);
  ASSERT_TRUE(record);
  EXPECT_EQ(record->topic, "mqtt-gateway/presence/other-gw");
}

// One refused filter (a broker ACL) must not fail the others in its SUBSCRIBE, nor start-up,
// nor be asked for again every few seconds.
TEST_F(GatewayMqttClientTest, RefusedFilterDoesNotFailTheOthers) {
  add_flow(3, "c/#");
  presence_.clear();
  // The refusal is set on the connection before start() subscribes: through the factory.
  refuse_on_connect_ = "b/+";
  start_client(false);
  EXPECT_EQ(connection_->subscriptions(), (std::set<std::string>{"a/#", "c/#"}));
  const auto packets = connection_->subscribe_packets().size();
  client_->reload_flows();
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(connection_->subscribe_packets().size(), packets) << "asked again";
}

}  // namespace
}  // namespace gateway
