#include "support/mqtt_test_client.h"

#include <mqtt/async_client.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>

namespace gateway::testing {

namespace {

constexpr auto kOperationTimeout = std::chrono::seconds(10);
constexpr auto kDisconnectTimeout = std::chrono::seconds(5);

std::string unique_client_id(std::string_view role) {
  static std::atomic<unsigned> counter{0};
  std::random_device random;
  std::ostringstream id;
  id << "gwtest-" << role << "-" << ::getpid() << "-" << counter.fetch_add(1) << "-" << std::hex
     << (random() & 0xffffffu);
  return id.str();
}

std::string server_uri(std::string_view scheme, const std::string& host, int port) {
  return std::string(scheme) + "://" + host + ":" + std::to_string(port);
}

// Waits for a token; turns Paho's exceptions and a timeout into std::runtime_error.
void await(const mqtt::token_ptr& token, const std::string& what) {
  try {
    if (!token->wait_for(kOperationTimeout)) {
      throw std::runtime_error(what + ": no answer from the broker within 10 s");
    }
  } catch (const mqtt::exception& e) {
    throw std::runtime_error(what + ": " + e.what());
  }
}

mqtt::connect_options base_connect_options() {
  return mqtt::connect_options_builder()
      .mqtt_version(MQTTVERSION_3_1_1)
      .clean_session(true)
      .keep_alive_interval(std::chrono::seconds(20))
      .connect_timeout(std::chrono::seconds(5))
      .max_inflight(1000)
      .finalize();
}

void connect(mqtt::async_client& client, mqtt::connect_options options) {
  try {
    await(client.connect(std::move(options)), "MQTT connect to " + client.get_server_uri());
  } catch (const mqtt::exception& e) {  // thrown by connect() itself, e.g. a bad URI
    throw std::runtime_error("MQTT connect to " + client.get_server_uri() + ": " + e.what());
  }
}

void disconnect_quietly(mqtt::async_client& client) {
  try {
    if (client.is_connected()) client.disconnect()->wait_for(kDisconnectTimeout);
  } catch (const std::exception&) {
    // Destructor path: the broker may already be gone (fault tests); nothing to do.
  }
}

}  // namespace

struct MqttTestClient::Impl {
  // Paho queues at most 100 unsent commands by default (error -12 beyond): allow the full window.
  Impl(const std::string& uri, std::string id_)
      : id(std::move(id_)), client(uri, id, mqtt::create_options(MQTTVERSION_3_1_1, 10000)) {}
  std::string id;
  mqtt::async_client client;
};

MqttTestClient::MqttTestClient(const std::string& host, int port)
    : impl_(std::make_unique<Impl>(server_uri("tcp", host, port), unique_client_id("pub"))) {
  connect(impl_->client, base_connect_options());
}

MqttTestClient::MqttTestClient(const std::string& host, int port, const std::string& ca_file)
    : impl_(std::make_unique<Impl>(server_uri("ssl", host, port), unique_client_id("pub-tls"))) {
  mqtt::connect_options options = base_connect_options();
  options.set_ssl(mqtt::ssl_options_builder()
                      .trust_store(ca_file)
                      .enable_server_cert_auth(true)
                      .verify(true)  // host name check
                      .finalize());
  connect(impl_->client, std::move(options));
}

MqttTestClient::~MqttTestClient() { disconnect_quietly(impl_->client); }

const std::string& MqttTestClient::client_id() const { return impl_->id; }

void MqttTestClient::publish(const std::string& topic, const std::string& payload, int qos,
                             bool retained) {
  try {
    await(impl_->client.publish(mqtt::make_message(topic, payload, qos, retained)),
          "MQTT publish to " + topic);
  } catch (const mqtt::exception& e) {
    throw std::runtime_error("MQTT publish to " + topic + ": " + e.what());
  }
}

void MqttTestClient::publish_many(const std::vector<std::pair<std::string, std::string>>& messages,
                                  int qos, std::size_t max_in_flight) {
  if (max_in_flight == 0) max_in_flight = 1;
  std::deque<mqtt::delivery_token_ptr> pending;
  try {
    for (const auto& [topic, payload] : messages) {
      if (pending.size() >= max_in_flight) {
        await(pending.front(), "MQTT publish_many");
        pending.pop_front();
      }
      pending.push_back(impl_->client.publish(mqtt::make_message(topic, payload, qos, false)));
    }
    for (const auto& token : pending) await(token, "MQTT publish_many");
  } catch (const mqtt::exception& e) {
    throw std::runtime_error(std::string("MQTT publish_many: ") + e.what());
  }
}

struct MqttTestSubscriber::Impl {
  explicit Impl(const std::string& uri) : client(uri, unique_client_id("sub")) {}

  mutable std::mutex mu;
  mutable std::condition_variable arrived;
  std::vector<ReceivedMessage> messages;  // guarded by mu
  // Last member: destroyed first, so no callback can touch the members above after they died.
  mqtt::async_client client;
};

MqttTestSubscriber::MqttTestSubscriber(const std::string& host, int port, const std::string& filter,
                                       int qos)
    : impl_(std::make_unique<Impl>(server_uri("tcp", host, port))) {
  Impl* impl = impl_.get();
  // Runs on Paho's receive thread.
  impl->client.set_message_callback([impl](mqtt::const_message_ptr message) {
    ReceivedMessage received{message->get_topic(), message->get_payload_str(), message->get_qos(),
                             message->is_retained()};
    std::lock_guard lock(impl->mu);
    impl->messages.push_back(std::move(received));
    impl->arrived.notify_all();
  });
  connect(impl->client, base_connect_options());
  try {
    const mqtt::token_ptr token = impl->client.subscribe(filter, qos);
    await(token, "MQTT subscribe to " + filter);
    const mqtt::subscribe_response response = token->get_subscribe_response();
    for (const auto code : response.get_reason_codes()) {
      if (code >= 0x80) throw std::runtime_error("MQTT subscribe to " + filter + ": refused");
    }
  } catch (const mqtt::exception& e) {
    throw std::runtime_error("MQTT subscribe to " + filter + ": " + e.what());
  }
}

MqttTestSubscriber::~MqttTestSubscriber() { disconnect_quietly(impl_->client); }

bool MqttTestSubscriber::wait_for_count(std::size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(impl_->mu);
  return impl_->arrived.wait_for(lock, timeout, [&] { return impl_->messages.size() >= n; });
}

std::vector<ReceivedMessage> MqttTestSubscriber::messages() const {
  std::lock_guard lock(impl_->mu);
  return impl_->messages;
}

std::size_t MqttTestSubscriber::count() const {
  std::lock_guard lock(impl_->mu);
  return impl_->messages.size();
}

}  // namespace gateway::testing
