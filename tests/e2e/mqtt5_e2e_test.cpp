// The daemon over MQTT 5 (MQTT_VERSION=5) and over TLS with a client certificate, end to end:
// messages and a retained message stored exactly once across restarts (a clean stop, a kill -9,
// a re-subscription on a kept session that retain handling keeps from re-sending); a broker that
// requires a client certificate accepts the gateway's and refuses one of another CA with one
// clear line; the broker's certificate checked against MQTT_TLS_SERVER_NAME.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "e2e/e2e_fixture.h"
#include "support/mqtt5_test_support.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

class Mqtt5E2e : public GatewayE2eTest {
 protected:
  ~Mqtt5E2e() override {
    // A retained message outlives the test in the broker: clear it, also after a failure.
    if (retained_topic_.empty()) return;
    try {
      MqttTestClient client(test_services().mqtt_host, test_services().mqtt_port);
      client.publish(retained_topic_, "", 1, true);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "clearing the retained message failed: " << e.what();
    }
  }

  // Stops the gateway with `sig` and, for SIGTERM, expects a clean exit; returns its output.
  std::string stop_gateway(int sig) {
    gateway_->kill(sig);
    const auto code = gateway_->wait_exit(20s);
    if (sig == SIGTERM) {
      EXPECT_EQ(code, 0) << gateway_->output();
    }
    return gateway_->output();
  }

  std::string retained_topic_;
};

TEST_F(Mqtt5E2e, StoresMessagesAndARetainedMessageOnceAcrossRestarts) {
  extra_env_["MQTT_VERSION"] = "5";
  extra_env_["MQTT_SESSION_EXPIRY_SECONDS"] = "600";
  const auto flow = db_.insert_flow("v5", prefix_ + "/+/m", "STORE_DB", std::nullopt);
  const std::string msg_id = "SELECT last_msg_id FROM flows WHERE id = " + std::to_string(flow);
  retained_topic_ = prefix_ + "/retained/m";
  Mqtt5TestPublisher publisher(test_services().mqtt_host, test_services().mqtt_port);
  publisher.publish(retained_topic_, R"({"state": "on"})",
                    {{{"site", "north"}}, "application/json"},
                    /*retained=*/true);

  TempDir dir("gw_v5_");
  start_gateway(dir.path());
  EXPECT_NE(gateway_->output().find("(MQTT 5, CONNACK 0x00 SUCCESS, session new, expiry 600 s)"),
            std::string::npos)
      << gateway_->output();
  ASSERT_TRUE(wait_for_count(msg_id, 1)) << gateway_->output();
  for (int i = 1; i <= 3; ++i) {
    publisher.publish(prefix_ + "/live/m", R"({"n": )" + std::to_string(i) + "}",
                      {{{"seq", std::to_string(i)}}, "application/json", 3600});
  }
  ASSERT_TRUE(wait_for_count(msg_id, 4)) << gateway_->output();

  // 1. A clean stop; what arrives meanwhile waits in the session (its expiry is 600 s).
  stop_gateway(SIGTERM);
  publisher.publish(prefix_ + "/live/m", R"({"n": 4})");
  publisher.publish(prefix_ + "/live/m", R"({"n": 5})");
  start_gateway(dir.path());
  EXPECT_NE(gateway_->output().find("session present"), std::string::npos) << gateway_->output();
  ASSERT_TRUE(wait_for_count(msg_id, 6)) << gateway_->output();

  // 2. kill -9, and the gateway forgets what it subscribed to: it subscribes again on the kept
  // session, and retain handling 1 keeps the broker from sending the retained message again.
  publisher.publish(prefix_ + "/live/m", R"({"n": 6})");
  ASSERT_TRUE(wait_for_count(msg_id, 7)) << gateway_->output();
  stop_gateway(SIGKILL);
  fs::remove(dir.path() / "spool" / "mqtt-subscriptions");
  publisher.publish(prefix_ + "/live/m", R"({"n": 7})");
  start_gateway(dir.path());
  ASSERT_TRUE(gateway_->wait_for_output("subscribed to " + prefix_ + "/+/m", 10s))
      << gateway_->output();
  ASSERT_TRUE(wait_for_count(msg_id, 8)) << gateway_->output();
  std::this_thread::sleep_for(2s);  // room for a re-sent retained message to show up
  const std::string output = stop_gateway(SIGTERM);
  EXPECT_NE(output.find("summary: received 1,"), std::string::npos)
      << "only the message published while it was down, no retained re-send\n"
      << output;

  EXPECT_EQ(count(msg_id), 8);
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE flow_id = " + std::to_string(flow) +
                  " AND topic = '" + retained_topic_ + "'"),
            1);
  // Every n once: 8 messages, one field each, msg_ids 1..8 without gaps.
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE flow_id = " + std::to_string(flow)), 8);
  EXPECT_EQ(count("SELECT COUNT(DISTINCT field_value) FROM data_records WHERE field_name = 'n' "
                  "AND flow_id = " +
                  std::to_string(flow)),
            7);
  EXPECT_EQ(count("SELECT MAX(msg_id) - MIN(msg_id) + 1 FROM data_records WHERE flow_id = " +
                  std::to_string(flow)),
            8);
}

// Native MQTT 5 shared subscriptions: two gateways in one MQTT_SHARED_GROUP split the messages,
// each stored once, msg_ids gap-free.
TEST_F(Mqtt5E2e, TwoInstancesInOneSharedGroupStoreEveryMessageOnce) {
  constexpr int kMessages = 1000;
  extra_env_["MQTT_VERSION"] = "5";
  extra_env_["MQTT_SHARED_GROUP"] = "g5";
  const auto flow =
      std::to_string(db_.insert_flow("shared5", prefix_ + "/+/m", "STORE_DB", R"({"seq": "int"})"));
  start_gateway();
  auto e = env();
  e["MQTT_CLIENT_ID"] = client_id_ + "-b";
  GatewayProcess second(GATEWAY_BINARY, {}, e);
  ASSERT_TRUE(second.wait_for_output("ready", 20s)) << second.output();
  EXPECT_NE(second.output().find("subscribed to $share/g5/" + prefix_ + "/+/m"), std::string::npos)
      << second.output();

  std::vector<std::pair<std::string, std::string>> messages;
  for (int seq = 1; seq <= kMessages; ++seq) {
    messages.emplace_back(prefix_ + "/dev" + std::to_string(seq % 2) + "/m",
                          R"({"seq": )" + std::to_string(seq) + "}");
  }
  publisher().publish_many(messages);
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE id = " + flow, kMessages, 60s))
      << gateway_->output() << second.output();
  std::this_thread::sleep_for(1s);  // room for a duplicate to arrive
  const std::string seqs = "FROM data_records WHERE flow_id = " + flow + " AND field_name = 'seq'";
  EXPECT_EQ(count("SELECT last_msg_id FROM flows WHERE id = " + flow), kMessages);
  EXPECT_EQ(count("SELECT COUNT(DISTINCT CAST(field_value AS UNSIGNED)) " + seqs), kMessages);
  EXPECT_EQ(count("SELECT COUNT(*) " + seqs), kMessages);
  // Both instances got a share: each spool has its own offset row.
  EXPECT_EQ(count("SELECT COUNT(*) FROM spool_offsets WHERE flow_id = " + flow), 2);
}

// The broker row points at the listener that requires a client certificate. Needs the
// client_cert_file and client_key_file columns read by load_mqtt_server().
class CertificateE2e : public GatewayE2eTest {
 protected:
  void use_certificate_broker(const std::string& cert, const std::string& key) {
    db_.execute("UPDATE mqtt_servers SET port = " + std::to_string(cert_broker().port) +
                ", use_tls = 1, ca_file = '" + test_services().mqtt_ca_file +
                "', client_cert_file = '" + cert + "', client_key_file = '" + key +
                "' WHERE id = " + std::to_string(server_id_));
  }
};

TEST_F(CertificateE2e, CertificateOnlyBrokerAcceptsTheGatewaysCertificate) {
  const CertBroker b = cert_broker();
  use_certificate_broker(b.client_cert, b.client_key_encrypted);
  db_.execute("UPDATE mqtt_servers SET client_key_password_file = '" + b.client_key_password_file +
              "'");
  db_.insert_flow("cert", prefix_ + "/c", "STORE_DB", std::nullopt);
  start_gateway();
  EXPECT_NE(gateway_->output().find("client certificate " + b.client_cert), std::string::npos)
      << gateway_->output();
  publisher().publish(prefix_ + "/c", R"({"over": "mutual TLS"})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'cert'", 1))
      << gateway_->output();
  const std::string password = [&] {
    std::ifstream in(b.client_key_password_file);
    std::string p;
    std::getline(in, p);
    return p;
  }();
  ASSERT_FALSE(password.empty());
  EXPECT_EQ(gateway_->output().find(password), std::string::npos) << "the key's password leaked";
}

// At start-up a refused certificate is one fatal line naming the broker and the problem, and exit
// status 1 (systemd restarts the gateway after RestartSec, so a certificate fixed on disk is
// picked up); never a crash.
TEST_F(CertificateE2e, CertificateOfAnotherCaIsRefusedWithOneClearLineAndExitStatusOne) {
  const CertBroker b = cert_broker();
  use_certificate_broker(b.wrong_client_cert, b.wrong_client_key);
  db_.insert_flow("cert", prefix_ + "/c", "STORE_DB", std::nullopt);
  GatewayProcess gw(GATEWAY_BINARY, {}, env());
  const auto code = gw.wait_exit(30s);
  ASSERT_TRUE(code.has_value()) << gw.output();
  EXPECT_EQ(*code, 1) << gw.output();
  const std::string output = gw.output();
  const std::string line =
      "fatal: MQTT broker ssl://" + test_services().mqtt_host + ":" + std::to_string(b.port);
  const auto at = output.find(line);
  ASSERT_NE(at, std::string::npos) << output;
  const std::string fatal = output.substr(at, output.find('\n', at) - at);
  EXPECT_NE(fatal.find("the broker refused the client certificate (tlsv1 alert unknown ca)"),
            std::string::npos)
      << fatal;
  EXPECT_NE(fatal.find("client certificate " + b.wrong_client_cert), std::string::npos) << fatal;
}

// MQTT_TLS_SERVER_NAME: the broker's certificate names localhost, the row names 127.0.0.1 (the
// certificate also names 127.0.0.1, so a wrong pinned name proves the pinned one is checked).
class TlsServerNameE2e : public GatewayE2eTest {};

TEST_F(TlsServerNameE2e, BrokerCertificateIsCheckedAgainstMqttTlsServerName) {
  db_.execute("UPDATE mqtt_servers SET port = " + std::to_string(test_services().mqtt_tls_port) +
              ", use_tls = 1, ca_file = '" + test_services().mqtt_ca_file + "'");
  db_.insert_flow("pinned", prefix_ + "/p", "STORE_DB", std::nullopt);
  extra_env_["MQTT_TLS_SERVER_NAME"] = "localhost";
  start_gateway();
  publisher().publish(prefix_ + "/p", R"({"name": "localhost"})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'pinned'", 1))
      << gateway_->output();
  gateway_->kill(SIGTERM);
  EXPECT_EQ(gateway_->wait_exit(20s), 0) << gateway_->output();

  extra_env_["MQTT_TLS_SERVER_NAME"] = "broker.wrong.example";
  GatewayProcess gw(GATEWAY_BINARY, {}, env());
  const auto code = gw.wait_exit(30s);
  ASSERT_TRUE(code.has_value()) << gw.output();
  EXPECT_EQ(*code, 1) << gw.output();
  EXPECT_NE(gw.output().find("the broker's certificate failed verification: hostname mismatch"),
            std::string::npos)
      << gw.output();
}

}  // namespace
}  // namespace gateway::testing
