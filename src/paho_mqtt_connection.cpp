#include "gateway/paho_mqtt_connection.h"

// Paho C++ 1.2 exposes a message's packet id (needed to recognise broker redeliveries) only
// through message::c_struct(), which its headers compile in under UNIT_TESTS. Under that macro the
// 1.2 headers add nothing but such inline accessors (checked: message, *_options), so the class
// layouts match the installed library.
#define UNIT_TESTS 1
#include <mqtt/async_client.h>
#undef UNIT_TESTS
#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "gateway/backoff.h"
#include "gateway/errors.h"

namespace gateway {

struct PahoMqttConnection::Impl {
  MqttConnectOptions options;
  MqttHandlers handlers;
  std::shared_ptr<spdlog::logger> log;
  mqtt::async_client client;
  mqtt::connect_options connect_options;
  std::atomic<bool> is_connected{false};
  std::atomic<bool> ever_connected{false};

  std::mutex mu;
  std::condition_variable cv;
  bool lost = false;      // guarded by mu; the reconnect thread has work
  bool stopping = false;  // guarded by mu
  std::thread reconnector;

  Impl(MqttConnectOptions o, MqttHandlers h, std::shared_ptr<spdlog::logger> l)
      : options(std::move(o)),
        handlers(std::move(h)),
        log(std::move(l)),
        client(uri(options), options.client_id) {
    auto b = mqtt::connect_options_builder()
                 .mqtt_version(MQTTVERSION_3_1_1)
                 .clean_session(options.clean_session)
                 .keep_alive_interval(std::chrono::seconds(options.keepalive_seconds))
                 .connect_timeout(options.connect_timeout)
                 .automatic_reconnect(false);
    if (options.username && !options.username->empty()) b.user_name(*options.username);
    if (options.password) b.password(options.password->reveal());
    if (options.use_tls) {
      auto ssl = mqtt::ssl_options_builder().enable_server_cert_auth(true).verify(true);
      if (!options.ca_file.empty()) ssl.trust_store(options.ca_file);
      b.ssl(ssl.finalize());
    }
    connect_options = b.finalize();

    client.set_message_callback([this](const mqtt::const_message_ptr& msg) {
      const auto& payload = msg->get_payload_ref();
      MqttMessage m{msg->get_topic(), std::string_view(payload.data(), payload.size()),
                    static_cast<std::uint16_t>(msg->c_struct().msgid), msg->is_duplicate(),
                    msg->get_qos()};
      handlers.message(m);
    });
    client.set_connected_handler([this](const std::string&) {
      const bool again = ever_connected.exchange(true);
      is_connected = true;
      if (handlers.connected) handlers.connected(again);
    });
    client.set_connection_lost_handler([this](const std::string& cause) {
      is_connected = false;
      if (handlers.connection_lost)
        handlers.connection_lost(cause.empty() ? "connection lost" : cause);
      schedule_reconnect();
    });
    reconnector = std::thread([this] { reconnect_loop(); });
  }

  static std::string uri(const MqttConnectOptions& o) {
    return std::string(o.use_tls ? "ssl://" : "tcp://") + o.host + ":" + std::to_string(o.port);
  }

  std::string where() const { return uri(options) + " as " + options.client_id; }

  void schedule_reconnect() {
    std::lock_guard lock(mu);
    lost = true;
    cv.notify_all();
  }

  void reconnect_loop() {
    Backoff backoff(std::chrono::milliseconds(500), options.reconnect_max);
    std::unique_lock lock(mu);
    for (;;) {
      cv.wait(lock, [this] { return stopping || lost; });
      if (stopping) return;
      const auto delay = backoff.next();
      log->info("mqtt: reconnecting to {} in {} ms (attempt {})", uri(options), delay.count(),
                backoff.attempts());
      if (cv.wait_for(lock, delay, [this] { return stopping; })) return;
      lock.unlock();
      bool ok = false;
      try {
        client.connect(connect_options)
            ->wait_for(options.connect_timeout + std::chrono::seconds(1));
        ok = client.is_connected();
      } catch (const mqtt::exception& e) {
        log->warn("mqtt: reconnect to {} failed: {}", uri(options), e.what());
      }
      lock.lock();
      if (ok) {
        lost = false;
        backoff.reset();
      }
    }
  }
};

PahoMqttConnection::PahoMqttConnection(MqttConnectOptions options, MqttHandlers handlers,
                                       std::shared_ptr<spdlog::logger> log)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handlers), std::move(log))) {}

PahoMqttConnection::~PahoMqttConnection() { disconnect(std::chrono::seconds(2)); }

void PahoMqttConnection::connect() {
  try {
    auto tok = impl_->client.connect(impl_->connect_options);
    if (!tok->wait_for(impl_->options.connect_timeout + std::chrono::seconds(1)) ||
        !impl_->client.is_connected()) {
      throw Error("MQTT broker " + impl_->where() + ": connect timed out");
    }
  } catch (const mqtt::exception& e) {
    throw Error("MQTT broker " + impl_->where() + ": " + e.what());
  }
}

void PahoMqttConnection::subscribe(const std::vector<std::string>& filters, bool wait) {
  if (filters.empty() || !impl_->client.is_connected()) return;
  auto topics = mqtt::string_collection::create(filters);
  std::vector<int> qos(filters.size(), 1);
  try {
    auto tok = impl_->client.subscribe(topics, qos);
    if (!wait) return;
    if (!tok->wait_for(std::chrono::seconds(10))) throw Error("MQTT subscribe timed out");
    const auto codes = tok->get_subscribe_response().get_reason_codes();
    for (std::size_t i = 0; i < codes.size() && i < filters.size(); ++i) {
      if (static_cast<int>(codes[i]) >= 0x80) {
        throw Error("MQTT broker refused the subscription to '" + filters.at(i) + "'");
      }
    }
  } catch (const mqtt::exception& e) {
    if (wait) throw Error(std::string("MQTT subscribe failed: ") + e.what());
    impl_->log->error("mqtt: subscribe failed: {}", e.what());
  }
}

void PahoMqttConnection::unsubscribe(const std::vector<std::string>& filters) {
  if (filters.empty() || !impl_->client.is_connected()) return;
  try {
    impl_->client.unsubscribe(mqtt::string_collection::create(filters));
  } catch (const mqtt::exception& e) {
    impl_->log->error("mqtt: unsubscribe failed: {}", e.what());
  }
}

void PahoMqttConnection::publish(std::string_view topic, std::string_view payload, int qos) {
  if (!impl_->client.is_connected()) return;
  try {
    impl_->client.publish(std::string(topic), payload.data(), payload.size(), qos, false);
  } catch (const mqtt::exception& e) {
    impl_->log->warn("mqtt: publish to {} failed: {}", topic, e.what());
  }
}

void PahoMqttConnection::force_reconnect(const std::string& why) {
  impl_->log->warn("mqtt: {}; reconnecting", why);
  impl_->is_connected = false;
  try {
    impl_->client.disconnect(0)->wait_for(std::chrono::seconds(2));
  } catch (const mqtt::exception&) {
    // Already down: the reconnect below is what matters.
  }
  impl_->schedule_reconnect();
}

bool PahoMqttConnection::connected() const { return impl_->is_connected; }

void PahoMqttConnection::disconnect(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopping) return;
    impl_->stopping = true;
    impl_->cv.notify_all();
  }
  if (impl_->reconnector.joinable()) impl_->reconnector.join();
  try {
    if (impl_->client.is_connected()) {
      impl_->client.disconnect(static_cast<int>(timeout.count()))->wait_for(timeout);
    }
  } catch (const mqtt::exception& e) {
    impl_->log->warn("mqtt: disconnect: {}", e.what());
  }
  impl_->is_connected = false;
}

}  // namespace gateway
