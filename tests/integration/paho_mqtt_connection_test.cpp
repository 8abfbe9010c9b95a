// PahoMqttConnection against the test mosquitto (GW_TEST_MQTT_*): the installed Paho C passes
// the start-up version check, and a received QoS 1 message carries the packet id the spool uses
// to recognise broker redeliveries (read from Paho C++'s private C struct; see the comment in
// src/adapters/paho_mqtt_connection.cpp). MQTT 5: the session outlives the connection by its
// expiry, retain handling keeps a re-subscription from re-sending retained messages, shared
// subscriptions work, properties reach the handler, a broker's DISCONNECT names its reason code.
// TLS: the listener that requires a client certificate accepts the test CA's and refuses another
// CA's, or none, with one error naming the broker and the certificate; the certificate can be
// checked against a name other than the host (MQTT_TLS_SERVER_NAME).
#include "gateway/adapters/paho_mqtt_connection.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gateway/errors.h"
#include "support/mqtt5_test_support.h"
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
  bool retained = false;
  std::optional<std::uint32_t> expiry_seconds;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> user_properties;
};

class PahoMqttConnectionTest : public ::testing::Test {
 protected:
  PahoMqttConnectionTest()
      : topic_("it/paho/" + std::to_string(::getpid()) + "/" +
               ::testing::UnitTest::GetInstance()->current_test_info()->name()),
        client_id_("paho-it-" + std::to_string(::getpid())) {
    log_->set_level(spdlog::level::debug);
  }

  // Plain TCP to the test broker, one client id per test process.
  MqttConnectOptions options(int version = kMqtt311, bool clean_session = true) const {
    const auto& svc = test_services();
    MqttConnectOptions o;
    o.host = svc.mqtt_host;
    o.port = svc.mqtt_port;
    o.client_id = client_id_;
    o.clean_session = clean_session;
    o.mqtt_version = version;
    o.session_expiry_seconds = 60;
    o.connect_timeout = 5s;
    return o;
  }
  // The listener that requires a client certificate; `cert` and `key` may be empty.
  MqttConnectOptions cert_options(const std::string& cert, const std::string& key,
                                  int version = kMqtt311) const {
    MqttConnectOptions o = options(version);
    o.port = cert_broker().port;
    o.use_tls = true;
    o.ca_file = test_services().mqtt_ca_file;
    o.client_cert_file = cert;
    o.client_key_file = key;
    return o;
  }

  // A connection (not yet connected) whose messages and losses this fixture records.
  std::unique_ptr<PahoMqttConnection> make(MqttConnectOptions o) {
    MqttHandlers h;
    h.message = [this](const MqttMessage& m) {
      Received r{std::string(m.topic), std::string(m.payload),      m.packet_id, m.qos, m.retained,
                 m.expiry_seconds,     std::string(m.content_type), {}};
      for (const auto& [name, value] : m.user_properties) {
        r.user_properties.emplace_back(name, value);
      }
      std::lock_guard lock(mu_);
      received_.push_back(std::move(r));
      cv_.notify_all();
    };
    h.connection_lost = [this](const std::string& cause) {
      std::lock_guard lock(mu_);
      losses_.push_back(cause);
      cv_.notify_all();
    };
    return std::make_unique<PahoMqttConnection>(std::move(o), std::move(h), log_);
  }

  std::unique_ptr<PahoMqttConnection> connect(int version = kMqtt311) {
    auto c = make(options(version));
    c->connect();
    EXPECT_TRUE(c->subscribe({topic_}, /*wait=*/true).empty());
    return c;
  }

  // The message of the Error that connect() throws ("" if it connects).
  std::string connect_error(MqttConnectOptions o) {
    auto c = make(std::move(o));
    try {
      c->connect();
    } catch (const Error& e) {
      return e.what();
    }
    c->disconnect(2s);
    return "";
  }

  std::vector<Received> wait_for(std::size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return received_.size() >= n; });
    return received_;
  }
  std::vector<Received> received() {
    std::lock_guard lock(mu_);
    return received_;
  }
  std::string log_text() {
    log_->flush();
    return log_stream_.str();
  }

  const std::string topic_;
  const std::string client_id_;
  std::ostringstream log_stream_;
  std::shared_ptr<spdlog::logger> log_ = std::make_shared<spdlog::logger>(
      "paho-it", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_stream_));
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Received> received_;   // guarded by mu_
  std::vector<std::string> losses_;  // guarded by mu_
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

// ---- MQTT 5 ----

TEST_F(PahoMqttConnectionTest, V5SessionOutlivesTheConnectionAndKeepsWhatArrivedMeanwhile) {
  {
    auto c = make(options(kMqtt5, /*clean_session=*/false));
    c->connect();  // whatever an earlier run left: the session is set up now
    ASSERT_TRUE(c->subscribe({topic_}, true).empty());
    c->disconnect(2s);
  }
  EXPECT_NE(log_text().find("(MQTT 5, CONNACK 0x00 SUCCESS"), std::string::npos) << log_text();
  EXPECT_NE(log_text().find("expiry 60 s"), std::string::npos) << log_text();
  MqttTestClient publisher(test_services().mqtt_host, test_services().mqtt_port);
  publisher.publish(topic_, "while away", 1);

  auto c = make(options(kMqtt5, /*clean_session=*/false));
  EXPECT_TRUE(c->connect()) << "the broker kept the session for its expiry";
  const auto got = wait_for(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, "while away");
  EXPECT_EQ(got[0].qos, 1);
  EXPECT_NE(got[0].packet_id, 0);
  c->disconnect(2s);
  // Leave no session behind.
  auto clean = make(options(kMqtt5, /*clean_session=*/true));
  EXPECT_FALSE(clean->connect());
  clean->disconnect(2s);
}

TEST_F(PahoMqttConnectionTest, V5PropertiesReachTheHandler) {
  auto c = connect(kMqtt5);
  Mqtt5TestPublisher publisher(test_services().mqtt_host, test_services().mqtt_port);
  publisher.publish(
      topic_, R"({"n": 1})",
      {{{"site", "north"}, {"site", "south"}, {"unit", ""}}, "application/json", 3600});
  publisher.publish(topic_, R"({"n": 2})");

  const auto got = wait_for(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].content_type, "application/json");
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"site", "north"}, {"site", "south"}, {"unit", ""}};
  EXPECT_EQ(got[0].user_properties, expected);
  ASSERT_TRUE(got[0].expiry_seconds.has_value());
  EXPECT_GT(*got[0].expiry_seconds, 3590u);  // what is left of it when the broker forwards it
  EXPECT_LE(*got[0].expiry_seconds, 3600u);
  EXPECT_EQ(got[1].content_type, "");
  EXPECT_TRUE(got[1].user_properties.empty());
  EXPECT_FALSE(got[1].expiry_seconds.has_value());
  c->disconnect(2s);
}

TEST_F(PahoMqttConnectionTest, V311MessagesCarryNoProperties) {
  auto c = connect(kMqtt311);
  Mqtt5TestPublisher publisher(test_services().mqtt_host, test_services().mqtt_port);
  publisher.publish(topic_, "{}", {{{"k", "v"}}, "text/plain", 60});
  const auto got = wait_for(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].content_type, "");
  EXPECT_TRUE(got[0].user_properties.empty());
  EXPECT_FALSE(got[0].expiry_seconds.has_value());
  c->disconnect(2s);
}

// The retained re-send that 3.1.1 cannot avoid (every SUBSCRIBE re-sends), and that MQTT 5's
// retain handling 1 removes: subscribing again, also after a reconnect to the kept session.
TEST_F(PahoMqttConnectionTest, V5ResubscribingDoesNotResendTheRetainedMessage) {
  MqttTestClient publisher(test_services().mqtt_host, test_services().mqtt_port);
  publisher.publish(topic_, "kept", 1, /*retained=*/true);
  {
    auto c = make(options(kMqtt5, /*clean_session=*/false));
    c->connect();
    ASSERT_TRUE(c->subscribe({topic_}, true).empty());
    ASSERT_EQ(wait_for(1).size(), 1u);
    EXPECT_TRUE(received()[0].retained);
    EXPECT_EQ(received()[0].payload, "kept");
    ASSERT_TRUE(c->subscribe({topic_}, true).empty());
    c->disconnect(2s);
  }
  {
    auto c = make(options(kMqtt5, /*clean_session=*/false));
    EXPECT_TRUE(c->connect());
    ASSERT_TRUE(c->subscribe({topic_}, true).empty());
    // A live message after the subscription proves the path works; the retained one did not come.
    publisher.publish(topic_, "live", 1);
    const auto got = wait_for(2);
    ASSERT_EQ(got.size(), 2u);
    EXPECT_EQ(got[1].payload, "live");
    EXPECT_FALSE(got[1].retained);
    c->disconnect(2s);
  }
  // 3.1.1 on the same broker does re-send: the test above would notice a broker that ignored it.
  {
    auto c = make(options(kMqtt311, /*clean_session=*/true));
    c->connect();
    ASSERT_TRUE(c->subscribe({topic_}, true).empty());
    ASSERT_TRUE(c->subscribe({topic_}, true).empty());
    const auto got = wait_for(4);
    ASSERT_EQ(got.size(), 4u);
    EXPECT_TRUE(got[2].retained);
    EXPECT_TRUE(got[3].retained);
    c->disconnect(2s);
  }
  publisher.publish(topic_, "", 1, /*retained=*/true);  // clear it
  auto clean = make(options(kMqtt5, /*clean_session=*/true));
  clean->connect();
  clean->disconnect(2s);
}

TEST_F(PahoMqttConnectionTest, V5SharedSubscriptionReceives) {
  auto c = make(options(kMqtt5));
  c->connect();
  ASSERT_TRUE(c->subscribe({"$share/it-group/" + topic_, topic_ + "/other"}, true).empty());
  MqttTestClient publisher(test_services().mqtt_host, test_services().mqtt_port);
  publisher.publish(topic_, "shared", 1);
  publisher.publish(topic_ + "/other", "plain", 1);
  const auto got = wait_for(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].topic, topic_);
  EXPECT_EQ(got[0].payload, "shared");
  c->unsubscribe({"$share/it-group/" + topic_, topic_ + "/other"});
  c->disconnect(2s);
}

// mosquitto 2.0 closes a connection it takes over or shuts down without an MQTT 5 DISCONNECT,
// so a broker of a few bytes stands in: it answers CONNECT with a CONNACK, then sends DISCONNECT
// 0x8E (session taken over) and closes. Paho reports that DISCONNECT only to its disconnected
// handler, not as a lost connection: the gateway must still see the loss and reconnect.
TEST_F(PahoMqttConnectionTest, V5BrokerDisconnectIsReportedWithItsReasonCodeAndReconnects) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::atomic<int> connections{0};
  std::thread broker([&] {
    for (int i = 0; i < 2; ++i) {
      const int fd = ::accept(listener, nullptr, nullptr);
      if (fd < 0) return;
      ++connections;
      char buffer[512];
      [[maybe_unused]] const ssize_t in = ::recv(fd, buffer, sizeof buffer, 0);  // the CONNECT
      const char connack[] = {'\x20', '\x03', '\x00', '\x00', '\x00'};
      const char disconnect[] = {'\xE0', '\x02', '\x8E', '\x00'};
      ::send(fd, connack, sizeof connack, MSG_NOSIGNAL);
      std::this_thread::sleep_for(300ms);
      ::send(fd, disconnect, sizeof disconnect, MSG_NOSIGNAL);
      std::this_thread::sleep_for(300ms);
      ::close(fd);
    }
  });
  MqttConnectOptions o = options(kMqtt5, /*clean_session=*/false);
  o.port = ntohs(addr.sin_port);
  o.reconnect_max = 1s;
  auto c = make(o);
  EXPECT_FALSE(c->connect());
  {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(cv_.wait_for(lock, 10s, [&] { return !losses_.empty(); }));
    EXPECT_EQ(losses_[0], "the broker sent DISCONNECT 0x8E Session taken over");
  }
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (connections < 2 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(connections, 2) << "no reconnect after the broker's DISCONNECT";
  c->disconnect(2s);
  ::shutdown(listener, SHUT_RDWR);
  ::close(listener);
  broker.join();
}

// ---- TLS: client certificates, the pinned name ----

TEST_F(PahoMqttConnectionTest, CertificateBrokerAcceptsTheTestClientCertificate) {
  const CertBroker b = cert_broker();
  for (const int version : {kMqtt311, kMqtt5}) {
    auto c = make(cert_options(b.client_cert, b.client_key, version));
    c->connect();
    ASSERT_TRUE(c->subscribe({topic_}, true).empty());
    MqttTestClient publisher(test_services().mqtt_host, test_services().mqtt_port);
    publisher.publish(topic_, "over mutual TLS", 1);
    ASSERT_EQ(wait_for(1).size(), 1u) << version;
    c->disconnect(2s);
    std::lock_guard lock(mu_);
    received_.clear();
  }
}

TEST_F(PahoMqttConnectionTest, CertificateBrokerAcceptsAnEncryptedKeyWithItsPasswordFile) {
  const CertBroker b = cert_broker();
  MqttConnectOptions o = cert_options(b.client_cert, b.client_key_encrypted);
  o.client_key_password_file = b.client_key_password_file;
  EXPECT_EQ(connect_error(o), "");

  // A wrong password: one line naming the broker and OpenSSL's reason, never the password.
  const std::string wrong = ::testing::TempDir() + "/wrong-key-password";
  std::ofstream(wrong) << "not-the-password\n";
  o.client_key_password_file = wrong;
  const std::string error = connect_error(o);
  EXPECT_NE(error.find("ssl://127.0.0.1:" + std::to_string(b.port)), std::string::npos) << error;
  EXPECT_NE(error.find("TLS: "), std::string::npos) << error;
  EXPECT_NE(error.find(b.client_cert), std::string::npos) << error;
  EXPECT_EQ(error.find("not-the-password"), std::string::npos) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;
}

TEST_F(PahoMqttConnectionTest, CertificateBrokerRefusesACertificateOfAnotherCaInOneClearLine) {
  const CertBroker b = cert_broker();
  for (const int version : {kMqtt311, kMqtt5}) {
    const std::string error =
        connect_error(cert_options(b.wrong_client_cert, b.wrong_client_key, version));
    ASSERT_FALSE(error.empty()) << "the broker took a certificate of another CA";
    EXPECT_NE(error.find("MQTT broker ssl://127.0.0.1:" + std::to_string(b.port)),
              std::string::npos)
        << error;
    EXPECT_NE(error.find("client certificate " + b.wrong_client_cert), std::string::npos) << error;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
    std::cout << "wrong CA, MQTT " << (version == kMqtt5 ? "5" : "3.1.1") << ": " << error << "\n";
  }
}

TEST_F(PahoMqttConnectionTest, CertificateBrokerRefusesAClientWithoutCertificate) {
  const std::string error = connect_error(cert_options("", ""));
  ASSERT_FALSE(error.empty());
  EXPECT_NE(error.find("no client certificate"), std::string::npos) << error;
  std::cout << "no certificate: " << error << "\n";
}

TEST_F(PahoMqttConnectionTest, MissingCertificateFileIsNamedBeforeConnecting) {
  const CertBroker b = cert_broker();
  const std::string error = connect_error(cert_options("/nonexistent/client.pem", b.client_key));
  EXPECT_NE(error.find("cannot read client_cert_file '/nonexistent/client.pem': No such file"),
            std::string::npos)
      << error;
}

TEST_F(PahoMqttConnectionTest, BrokerCertificateIsVerifiedAgainstThePinnedName) {
  // The test broker's certificate names 127.0.0.1 and localhost.
  MqttConnectOptions o = options();
  o.port = test_services().mqtt_tls_port;
  o.use_tls = true;
  o.ca_file = test_services().mqtt_ca_file;
  o.tls_server_name = "localhost";
  {
    auto c = make(o);
    c->connect();
    ASSERT_TRUE(c->subscribe({topic_}, true).empty());
    MqttTestClient publisher(test_services().mqtt_host, test_services().mqtt_port);
    publisher.publish(topic_, "through the relay", 1);
    ASSERT_EQ(wait_for(1).size(), 1u);
    // A reconnect goes through the relay again.
    c->force_reconnect("test");
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (!c->connected() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(50ms);
    }
    EXPECT_TRUE(c->connected());
    c->disconnect(2s);
  }
  // The host (127.0.0.1) is on the certificate, but the pinned name is what counts.
  o.tls_server_name = "broker.wrong.example";
  const std::string error = connect_error(o);
  ASSERT_FALSE(error.empty()) << "a certificate without the pinned name was accepted";
  EXPECT_NE(error.find("certificate name broker.wrong.example"), std::string::npos) << error;
  std::cout << "wrong name: " << error << "\n";
  // And a host the relay cannot reach is named as such.
  o.tls_server_name = "localhost";
  o.port = 1;
  const std::string unreachable = connect_error(o);
  EXPECT_NE(unreachable.find("cannot connect to 127.0.0.1:1"), std::string::npos) << unreachable;
}

}  // namespace
}  // namespace gateway::testing
