// GatewayMqttClient's MQTT 5 and client-certificate side against a fake broker session: which
// connect options the settings and the mqtt_servers row make, which rows are refused before
// connecting, what a message's MQTT 5 properties become in the spool, and the SUBACK reason code
// in the refusal line.
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <sstream>

#include "fakes/fake_mqtt_connection.h"
#include "gateway/clock.h"
#include "gateway/errors.h"
#include "gateway/gateway_mqtt_client.h"
#include "support/mqtt_client_fixture.h"

namespace gateway {
namespace {

using namespace std::chrono_literals;
using testing::FakeMqttConnection;
using testing::MqttClientFixture;

class GatewayMqttClientV5Test : public MqttClientFixture {
 protected:
  GatewayMqttClientV5Test() : MqttClientFixture("gw_client_v5_") {
    server_.id = 7;
    server_.host = "broker.example";
    server_.port = 8883;
    add_flow(1, "a/#");
    log_->set_level(spdlog::level::debug);
  }

  // Starts a client; the options of its (non-probe) connection land in options_.
  void start_client() {
    repo_.server = server_;
    client_ = make_client(
        flows_,
        [this](const MqttConnectOptions& o, MqttHandlers h) {
          auto c = std::make_unique<FakeMqttConnection>(std::move(h));
          if (o.client_id.find("-probe-") != std::string::npos) return c;
          options_ = o;
          if (!refuse_.empty()) c->refuse(refuse_);
          connection_ = c.get();
          return c;
        },
        log_, ClientIdCheck{10000ms, 30000ms, 300ms, 100ms, 50ms});
    client_->start();
  }

  std::string log_text() {
    log_->flush();
    return log_stream_.str();
  }

  MqttServer server_;
  FlowTable flows_;
  std::ostringstream log_stream_;
  std::shared_ptr<spdlog::logger> log_ = std::make_shared<spdlog::logger>(
      "test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_stream_));
  std::optional<MqttConnectOptions> options_;
  std::string refuse_;
  FakeMqttConnection* connection_ = nullptr;
  std::unique_ptr<GatewayMqttClient> client_;  // last: destroyed before what its callbacks use
};

TEST_F(GatewayMqttClientV5Test, DefaultsConnectWithMqtt311AndNoClientCertificate) {
  start_client();
  ASSERT_TRUE(options_);
  EXPECT_EQ(options_->mqtt_version, kMqtt311);
  EXPECT_FALSE(options_->clean_session);
  EXPECT_EQ(options_->client_cert_file, "");
  EXPECT_EQ(options_->tls_server_name, "");
}

TEST_F(GatewayMqttClientV5Test, SettingsAndServerRowMakeTheConnectOptions) {
  settings_.mqtt_version = 5;
  settings_.mqtt_session_expiry_seconds = 7200;
  settings_.mqtt_tls_server_name = "broker.internal";
  server_.use_tls = true;
  server_.ca_file = "/etc/gw/ca.pem";
  server_.client_cert_file = "/etc/gw/client.pem";
  server_.client_key_file = "/etc/gw/client.key";
  server_.client_key_password_file = "/etc/gw/client.key.password";
  start_client();
  ASSERT_TRUE(options_);
  EXPECT_EQ(options_->mqtt_version, kMqtt5);
  EXPECT_EQ(options_->session_expiry_seconds, 7200u);
  EXPECT_FALSE(options_->clean_session);
  EXPECT_TRUE(options_->use_tls);
  EXPECT_EQ(options_->ca_file, "/etc/gw/ca.pem");
  EXPECT_EQ(options_->client_cert_file, "/etc/gw/client.pem");
  EXPECT_EQ(options_->client_key_file, "/etc/gw/client.key");
  EXPECT_EQ(options_->client_key_password_file, "/etc/gw/client.key.password");
  EXPECT_EQ(options_->tls_server_name, "broker.internal");
  EXPECT_NE(log_text().find(", MQTT 5, client certificate /etc/gw/client.pem, certificate name "
                            "broker.internal)"),
            std::string::npos)
      << log_text();
}

TEST_F(GatewayMqttClientV5Test, TlsServerNameWithoutTlsIsIgnoredWithAWarning) {
  settings_.mqtt_tls_server_name = "broker.internal";
  start_client();
  ASSERT_TRUE(options_);
  EXPECT_EQ(options_->tls_server_name, "");
  EXPECT_NE(log_text().find("MQTT_TLS_SERVER_NAME is set but mqtt_servers id 7 has use_tls 0"),
            std::string::npos)
      << log_text();
}

TEST_F(GatewayMqttClientV5Test, ClientCertificateWithoutTlsIsAConfigError) {
  server_.client_cert_file = "/etc/gw/client.pem";
  try {
    start_client();
    FAIL() << "started";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "mqtt_servers id 7: client_cert_file/client_key_file are set but use_tls is 0 (a "
                 "client certificate needs TLS)");
  }
  EXPECT_FALSE(options_) << "nothing was connected";
}

TEST_F(GatewayMqttClientV5Test, KeyWithoutCertificateIsAConfigError) {
  server_.use_tls = true;
  server_.client_key_file = "/etc/gw/client.key";
  EXPECT_THROW(start_client(), ConfigError);
  EXPECT_FALSE(options_);
}

TEST_F(GatewayMqttClientV5Test, PropertiesAreSpooledWithTheExpiryAsADeadline) {
  settings_.mqtt_version = 5;
  start_client();
  const std::vector<std::pair<std::string_view, std::string_view>> user = {{"site", "north"},
                                                                           {"site", "south"}};
  MqttMessage m{.topic = "a/1", .payload = R"({"v":1})", .packet_id = 3, .qos = 1};
  m.expiry_seconds = 30;
  m.content_type = "application/json";
  m.user_properties = user;
  const std::int64_t before = unix_now_us();
  client_->on_message(m);
  const std::int64_t after = unix_now_us();
  client_->on_message(MqttMessage{.topic = "a/2", .payload = "{}", .packet_id = 4, .qos = 1});

  auto first = spool_->read_next(1s);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->content_type, "application/json");
  const std::vector<std::pair<std::string, std::string>> expected = {{"site", "north"},
                                                                     {"site", "south"}};
  EXPECT_EQ(first->user_properties, expected);
  EXPECT_EQ(first->expiry_deadline_us, first->arrival_us + 30'000'000);
  EXPECT_GE(first->arrival_us, before);
  EXPECT_LE(first->arrival_us, after);
  auto second = spool_->read_next(1s);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->expiry_deadline_us, 0) << "no Message Expiry Interval: never expires";
  EXPECT_EQ(second->content_type, "");
  EXPECT_TRUE(second->user_properties.empty());
}

TEST_F(GatewayMqttClientV5Test, UserPropertiesBeyondTheSpoolLimitAreDroppedNotTheMessage) {
  settings_.mqtt_version = 5;
  start_client();
  const std::string value(60000, 'v');
  const std::vector<std::pair<std::string_view, std::string_view>> user(20, {"n", value});
  MqttMessage m{.topic = "a/big", .payload = "{}", .packet_id = 5, .qos = 1};
  m.content_type = "text/plain";
  m.user_properties = user;
  client_->on_message(m);
  auto record = spool_->read_next(1s);
  ASSERT_TRUE(record);
  EXPECT_EQ(record->payload, "{}");
  EXPECT_EQ(record->content_type, "text/plain");
  EXPECT_TRUE(record->user_properties.empty());
  EXPECT_EQ(metrics_.received.load(), 1u);
  EXPECT_NE(log_text().find("message on a/big carries 1200124 bytes of user properties"),
            std::string::npos)
      << log_text();
}

TEST_F(GatewayMqttClientV5Test, RefusedSubscriptionNamesTheSubackReasonCode) {
  refuse_ = "a/#";
  start_client();
  EXPECT_NE(log_text().find("the broker refused the subscription to a/# (SUBACK 0x87 Not "
                            "authorized; its flow receives nothing"),
            std::string::npos)
      << log_text();
}

}  // namespace
}  // namespace gateway
