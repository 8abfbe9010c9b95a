// PahoMqttConnection against the test mosquitto (GW_TEST_MQTT_*): the installed Paho C passes
// the start-up version check, and a received QoS 1 message carries the packet id the spool uses
// to recognise broker redeliveries (read from Paho C++'s private C struct; see the comment in
// src/adapters/paho_mqtt_connection.cpp).
#include "gateway/adapters/paho_mqtt_connection.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "support/mqtt_test_client.h"
#include "support/test_env.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

struct Received {
  std::string topic;
  std::string payload;
  std::uint16_t packet_id = 0;
  int qos = 0;
};

class PahoMqttConnectionTest : public ::testing::Test {
 protected:
  PahoMqttConnectionTest()
      : topic_("it/paho/" + std::to_string(::getpid()) + "/" +
               ::testing::UnitTest::GetInstance()->current_test_info()->name()) {}

  std::unique_ptr<PahoMqttConnection> connect() {
    const auto& svc = test_services();
    MqttConnectOptions o;
    o.host = svc.mqtt_host;
    o.port = svc.mqtt_port;
    o.client_id = "paho-it-" + std::to_string(::getpid());
    o.clean_session = true;
    MqttHandlers h;
    h.message = [this](const MqttMessage& m) {
      std::lock_guard lock(mu_);
      received_.push_back({std::string(m.topic), std::string(m.payload), m.packet_id, m.qos});
      cv_.notify_all();
    };
    auto c = std::make_unique<PahoMqttConnection>(std::move(o), std::move(h),
                                                  std::make_shared<spdlog::logger>("paho-it"));
    c->connect();
    c->subscribe({topic_}, /*wait=*/true);
    return c;
  }

  std::vector<Received> wait_for(std::size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, 10s, [&] { return received_.size() >= n; });
    return received_;
  }

  const std::string topic_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Received> received_;  // guarded by mu_
};

TEST(PahoVersionCheckTest, TheInstalledPahoCLibraryIsRecentEnough) {
  EXPECT_NO_THROW(require_paho_c_version());
}

TEST_F(PahoMqttConnectionTest, QosOneMessageCarriesItsPacketId) {
  auto connection = connect();
  MqttTestClient publisher(test_services().mqtt_host, test_services().mqtt_port);
  publisher.publish(topic_, R"({"n": 1})", 1);
  publisher.publish(topic_, R"({"n": 2})", 1);

  const auto got = wait_for(2);
  ASSERT_EQ(got.size(), 2u);
  for (const Received& r : got) {
    EXPECT_EQ(r.topic, topic_);
    EXPECT_EQ(r.qos, 1);
    EXPECT_NE(r.packet_id, 0) << "a QoS 1 PUBLISH always has a packet id";
  }
  EXPECT_EQ(got[0].payload, R"({"n": 1})");
  // The real ids, not a constant: mosquitto numbers the messages of a session one by one.
  EXPECT_NE(got[0].packet_id, got[1].packet_id);
  connection->disconnect(2s);
}

TEST_F(PahoMqttConnectionTest, QosZeroMessageHasNoPacketId) {
  auto connection = connect();
  MqttTestClient publisher(test_services().mqtt_host, test_services().mqtt_port);
  publisher.publish(topic_, "{}", 0);

  const auto got = wait_for(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].qos, 0);
  EXPECT_EQ(got[0].packet_id, 0);
  connection->disconnect(2s);
}

}  // namespace
}  // namespace gateway::testing
