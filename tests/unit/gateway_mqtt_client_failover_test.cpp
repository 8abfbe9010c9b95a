// Broker failover in GatewayMqttClient (issue 15) against fake brokers: the first reachable
// candidate at start-up, a move after MQTT_FAILOVER_SECONDS without the current one, a move back
// when the first answers a probe again, subscriptions restored on each; and the cached copy of
// brokers and flows that a start during a database outage uses.
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "fakes/fake_mqtt_connection.h"
#include "gateway/errors.h"
#include "gateway/flow_cache.h"
#include "gateway/gateway_mqtt_client.h"
#include "support/eventually.h"
#include "support/mqtt_client_fixture.h"

namespace gateway {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::FakeMqttConnection;
using testing::MqttClientFixture;

// A broker the fake connections reach: up or down, and the last session's connection.
struct FakeBroker {
  bool up = true;
  // The gateway's (not a probe's) latest connection while it exists: the client destroys a
  // connection when it moves away, so read it only while the gateway is on this broker.
  FakeMqttConnection* last = nullptr;
  int connects = 0;
  int probes = 0;
  int disconnects = 0;  // clean DISCONNECTs the gateway sent
};

// A FakeMqttConnection whose connect() fails while its broker is down.
class BrokerConnection final : public MqttConnection {
 public:
  BrokerConnection(std::mutex& mu, FakeBroker& broker, MqttHandlers h)
      : mu_(mu), broker_(broker), fake_(std::move(h)) {}
  ~BrokerConnection() override {
    std::lock_guard lock(mu_);
    if (broker_.last == &fake_) broker_.last = nullptr;
  }
  FakeMqttConnection& fake() { return fake_; }
  bool connect() override {
    {
      std::lock_guard lock(mu_);
      if (!broker_.up) throw Error("fake broker down");
    }
    return fake_.connect();
  }
  std::vector<SubscribeRefusal> subscribe(const std::vector<std::string>& f, bool w) override {
    return fake_.subscribe(f, w);
  }
  void unsubscribe(const std::vector<std::string>& f) override { fake_.unsubscribe(f); }
  void publish(std::string_view t, std::string_view p, int q, bool r) override {
    fake_.publish(t, p, q, r);
  }
  void force_reconnect(const std::string& why) override { fake_.force_reconnect(why); }
  bool connected() const override { return fake_.connected(); }
  void disconnect(std::chrono::milliseconds t) override {
    {
      std::lock_guard lock(mu_);
      ++broker_.disconnects;
    }
    fake_.disconnect(t);
  }

 private:
  std::mutex& mu_;
  FakeBroker& broker_;
  FakeMqttConnection fake_;
};

class FailoverTest : public MqttClientFixture {
 protected:
  FailoverTest() : MqttClientFixture("gw_failover_") {
    settings_.mqtt_failover_seconds = 1;
    for (int id : {1, 2}) {
      MqttServer s;
      s.id = id;
      s.host = "broker" + std::to_string(id);
      s.port = 1883;
      s.password = Secret("pw" + std::to_string(id));
      repo_.servers.push_back(s);
    }
    add_flow(1, "a/#");
  }

  void start_client() {
    client_ = make_client(
        flows_,
        [this](const MqttConnectOptions& o, MqttHandlers h) -> std::unique_ptr<MqttConnection> {
          std::lock_guard lock(mu_);
          FakeBroker& b = brokers_[o.host];
          auto c = std::make_unique<BrokerConnection>(mu_, b, std::move(h));
          if (o.client_id.find("-probe-") != std::string::npos) {
            ++b.probes;
          } else {
            ++b.connects;
            b.last = &c->fake();
          }
          return c;
        },
        log_, ClientIdCheck{10000ms, 30000ms, 300ms, 100ms, 50ms});
    client_->start();
  }

  void set_up(const std::string& host, bool up) {
    std::lock_guard lock(mu_);
    brokers_[host].up = up;
  }
  FakeBroker broker(const std::string& host) {
    std::lock_guard lock(mu_);
    return brokers_[host];
  }
  // The broker drops the gateway's connection.
  void drop(const std::string& host) {
    FakeMqttConnection* c = broker(host).last;
    c->disconnect(0ms);
    c->handlers.connection_lost("fake: broker stopped");
  }

  FlowTable flows_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  std::mutex mu_;
  std::map<std::string, FakeBroker> brokers_;  // guarded by mu_
  std::unique_ptr<GatewayMqttClient> client_;  // last: destroyed before what its callbacks use
};

TEST_F(FailoverTest, StartsOnTheFirstCandidate) {
  start_client();
  EXPECT_EQ(broker("broker1").connects, 1);
  EXPECT_EQ(broker("broker2").connects, 0);
  EXPECT_NE(
      metrics_.prometheus_text().find(
          R"(gateway_broker_info{broker="tcp://broker1:1883",server_id="1",candidate="0"} 1)"),
      std::string::npos);
}

TEST_F(FailoverTest, StartsOnTheNextCandidateWhenTheFirstIsDown) {
  set_up("broker1", false);
  start_client();
  EXPECT_EQ(broker("broker2").connects, 1);
  EXPECT_EQ(broker("broker2").last->subscriptions(), (std::set<std::string>{"a/#"}));
}

TEST_F(FailoverTest, WithoutFailoverOnlyTheFirstIsTried) {
  settings_.mqtt_failover_seconds = 0;
  set_up("broker1", false);
  EXPECT_THROW(start_client(), Error);
  EXPECT_EQ(broker("broker2").connects, 0);
}

TEST_F(FailoverTest, MovesAfterTheIntervalAndBackWhenTheFirstAnswers) {
  start_client();
  set_up("broker1", false);
  const auto lost_at = std::chrono::steady_clock::now();
  drop("broker1");
  ASSERT_TRUE(eventually([&] { return broker("broker2").connects == 1; }));
  // Not before MQTT_FAILOVER_SECONDS without the broker.
  EXPECT_GE(std::chrono::steady_clock::now() - lost_at, 900ms);
  ASSERT_TRUE(eventually(
      [&] { return broker("broker2").last->subscriptions() == std::set<std::string>{"a/#"}; }));
  EXPECT_EQ(metrics_.broker_failovers.load(), 1u);
  EXPECT_NE(metrics_.prometheus_text().find(R"(server_id="2",candidate="1")"), std::string::npos);

  // Back as soon as a probe of the first succeeds; the second is left cleanly.
  set_up("broker1", true);
  ASSERT_TRUE(eventually([&] { return broker("broker1").connects == 2; }));
  EXPECT_GE(broker("broker1").probes, 1);
  EXPECT_TRUE(eventually([&] { return broker("broker2").disconnects >= 1; }));
  ASSERT_TRUE(eventually(
      [&] { return broker("broker1").last->subscriptions() == std::set<std::string>{"a/#"}; }));
  EXPECT_EQ(metrics_.broker_failovers.load(), 2u);
}

TEST_F(FailoverTest, ReloadSavesTheCopyAndAStartFromItNeedsNoDatabase) {
  start_client();
  client_.reset();
  const auto copy = FlowCache(settings_.spool_dir).load();
  ASSERT_TRUE(copy.has_value());
  ASSERT_EQ(copy->servers.size(), 2u);
  EXPECT_EQ(copy->servers[1].password->reveal(), "pw2");
  ASSERT_EQ(copy->flows.size(), 1u);
  EXPECT_EQ(copy->spool_id, spool_->id());

  // The database is gone: every call throws. The copy is enough to connect and subscribe.
  repo_.servers.clear();
  repo_.flows.clear();
  client_ = std::make_unique<GatewayMqttClient>(
      settings_,
      []() -> std::unique_ptr<FlowRepository> { throw DbUnavailable("fake: database down"); },
      flows_, *spool_, metrics_,
      [this](const MqttConnectOptions& o, MqttHandlers h) -> std::unique_ptr<MqttConnection> {
        std::lock_guard lock(mu_);
        FakeBroker& b = brokers_[o.host];
        auto c = std::make_unique<BrokerConnection>(mu_, b, std::move(h));
        if (o.client_id.find("-probe-") == std::string::npos) b.last = &c->fake();
        return c;
      },
      log_, ClientIdCheck{10000ms, 30000ms, 300ms, 100ms, 50ms});
  client_->use_cached(*copy);
  EXPECT_TRUE(metrics_.flows_from_cache.load());
  client_->start();
  EXPECT_EQ(broker("broker1").last->subscriptions(), (std::set<std::string>{"a/#"}));
  EXPECT_FALSE(client_->ping_database());
  EXPECT_TRUE(metrics_.flows_from_cache.load());
}

}  // namespace
}  // namespace gateway
