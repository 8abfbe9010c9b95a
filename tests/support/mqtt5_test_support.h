// MQTT 5 and client-certificate helpers for the integration and e2e tests (header-only, on Paho
// C++): Mqtt5TestPublisher publishes with MQTT 5 properties (user properties, content type,
// message expiry) and waits for the PUBACK; cert_broker() reads what scripts/services.sh writes
// about the listener that requires a client certificate.
//
// Not thread-safe (one thread per object). Every wait is bounded; failures throw
// std::runtime_error naming what failed.
#pragma once

#include <mqtt/async_client.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace gateway::testing {

// The certificate-only listener and the client certificates of the test CA (GW_TEST_MQTT_*).
struct CertBroker {
  int port = 0;                      // GW_TEST_MQTT_CERT_PORT: require_certificate true
  std::string client_cert;           // GW_TEST_MQTT_CLIENT_CERT: signed by the test CA
  std::string client_key;            // GW_TEST_MQTT_CLIENT_KEY
  std::string client_key_encrypted;  // GW_TEST_MQTT_CLIENT_KEY_ENCRYPTED: the same key, encrypted
  std::string client_key_password_file;  // GW_TEST_MQTT_CLIENT_KEY_PASSWORD_FILE: its password
  std::string wrong_client_cert;         // GW_TEST_MQTT_WRONG_CLIENT_CERT: signed by another CA
  std::string wrong_client_key;          // GW_TEST_MQTT_WRONG_CLIENT_KEY
};

// Throws std::runtime_error naming the first variable that is missing (run scripts/services.sh
// start and source services.env).
inline CertBroker cert_broker() {
  const auto text = [](const char* name) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') {
      throw std::runtime_error(std::string(name) +
                               " is not set (scripts/services.sh start writes it to services.env)");
    }
    return std::string(value);
  };
  CertBroker b;
  b.port = std::stoi(text("GW_TEST_MQTT_CERT_PORT"));
  b.client_cert = text("GW_TEST_MQTT_CLIENT_CERT");
  b.client_key = text("GW_TEST_MQTT_CLIENT_KEY");
  b.client_key_encrypted = text("GW_TEST_MQTT_CLIENT_KEY_ENCRYPTED");
  b.client_key_password_file = text("GW_TEST_MQTT_CLIENT_KEY_PASSWORD_FILE");
  b.wrong_client_cert = text("GW_TEST_MQTT_WRONG_CLIENT_CERT");
  b.wrong_client_key = text("GW_TEST_MQTT_WRONG_CLIENT_KEY");
  return b;
}

// What a publish carries besides topic and payload.
struct Mqtt5Properties {
  std::vector<std::pair<std::string, std::string>> user_properties{};
  std::string content_type{};
  std::optional<std::uint32_t> expiry_seconds{};
};

class Mqtt5TestPublisher {
 public:
  // Connects to tcp://host:port with MQTT 5 and clean start. Throws std::runtime_error.
  Mqtt5TestPublisher(const std::string& host, int port)
      : client_("tcp://" + host + ":" + std::to_string(port), unique_id(),
                mqtt::create_options(MQTTVERSION_5)) {
    const auto options = mqtt::connect_options_builder()
                             .mqtt_version(MQTTVERSION_5)
                             .clean_start(true)
                             .connect_timeout(std::chrono::seconds(5))
                             .finalize();
    await(client_.connect(options), "MQTT 5 connect to " + client_.get_server_uri());
  }
  ~Mqtt5TestPublisher() {
    try {
      if (client_.is_connected()) client_.disconnect()->wait_for(std::chrono::seconds(5));
    } catch (const std::exception&) {
      // Destructor: the broker may be gone already.
    }
  }
  Mqtt5TestPublisher(const Mqtt5TestPublisher&) = delete;
  Mqtt5TestPublisher& operator=(const Mqtt5TestPublisher&) = delete;

  // QoS 1 unless told otherwise; returns once the broker acknowledged it.
  void publish(const std::string& topic, const std::string& payload, const Mqtt5Properties& p = {},
               bool retained = false, int qos = 1) {
    mqtt::properties props;
    for (const auto& [name, value] : p.user_properties) {
      props.add(mqtt::property(mqtt::property::USER_PROPERTY, name, value));
    }
    if (!p.content_type.empty()) {
      props.add(mqtt::property(mqtt::property::CONTENT_TYPE, p.content_type));
    }
    if (p.expiry_seconds) {
      props.add(mqtt::property(mqtt::property::MESSAGE_EXPIRY_INTERVAL,
                               static_cast<std::int32_t>(*p.expiry_seconds)));
    }
    auto message = mqtt::message_ptr_builder()
                       .topic(topic)
                       .payload(payload)
                       .qos(qos)
                       .retained(retained)
                       .properties(props)
                       .finalize();
    await(client_.publish(message), "MQTT 5 publish to " + topic);
  }

 private:
  static std::string unique_id() {
    static std::atomic<unsigned> counter{0};
    return "gwtest-v5pub-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  }
  static void await(const mqtt::token_ptr& token, const std::string& what) {
    try {
      if (!token->wait_for(std::chrono::seconds(10))) {
        throw std::runtime_error(what + ": no answer from the broker within 10 s");
      }
    } catch (const mqtt::exception& e) {
      throw std::runtime_error(what + ": " + e.what());
    }
  }

  mqtt::async_client client_;
};

}  // namespace gateway::testing
