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
#include <thread>

#include "gateway/backoff.h"
#include "gateway/errors.h"
#include "gateway/loss_ledger.h"

namespace gateway {

namespace {

// A connection that drops this soon after it was made, several times in a row, is being taken
// over: another client connects with the same client id, the broker closes the older connection,
// and the two take turns. MQTT 3.1.1 gives no reason code for it.
constexpr auto kQuickLoss = std::chrono::seconds(5);
constexpr int kQuickLossesForTakeover = 3;

}  // namespace

struct PahoMqttConnection::Impl {
  MqttConnectOptions options;
  MqttHandlers handlers;
  std::shared_ptr<spdlog::logger> log;
  mqtt::async_client client;
  mqtt::connect_options connect_options;
  std::atomic<bool> is_connected{false};
  std::atomic<std::int64_t> connected_at_ms{0};  // steady clock of the last successful connect
  std::atomic<int> quick_losses{0};              // consecutive losses soon after connecting
  LossLedger losses;
  std::thread reconnector;
  std::atomic<bool> stopped{false};

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
      MqttMessage m{msg->get_topic(),
                    std::string_view(payload.data(), payload.size()),
                    static_cast<std::uint16_t>(msg->c_struct().msgid),
                    msg->is_duplicate(),
                    msg->is_retained(),
                    msg->get_qos()};
      handlers.message(m);
    });
    client.set_connection_lost_handler([this](const std::string& cause) {
      is_connected = false;
      const bool quick = steady_ms() - connected_at_ms.load() < ms(kQuickLoss);
      const int streak = quick ? quick_losses.fetch_add(1) + 1 : (quick_losses = 0, 0);
      if (streak == kQuickLossesForTakeover) {
        log->error(
            "mqtt: the connection to {} dropped {} times right after connecting: another client "
            "is probably connected with the same MQTT_CLIENT_ID '{}' (every gateway instance "
            "needs its own); backing off instead of taking its session over",
            uri(options), streak, options.client_id);
      }
      if (handlers.connection_lost)
        handlers.connection_lost(cause.empty() ? "connection lost" : cause);
      losses.report_loss();
    });
    reconnector = std::thread([this] { reconnect_loop(); });
  }

  static std::int64_t ms(std::chrono::milliseconds d) { return d.count(); }
  static std::int64_t steady_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  static std::string uri(const MqttConnectOptions& o) {
    return std::string(o.use_tls ? "ssl://" : "tcp://") + o.host + ":" + std::to_string(o.port);
  }

  std::string where() const { return uri(options) + " as " + options.client_id; }

  // Connects and waits; returns the session-present flag. Throws mqtt::exception or Error.
  bool connect_and_wait() {
    auto tok = client.connect(connect_options);
    if (!tok->wait_for(options.connect_timeout + std::chrono::seconds(1)) ||
        !client.is_connected()) {
      throw Error("MQTT broker " + where() + ": connect timed out");
    }
    connected_at_ms = steady_ms();
    is_connected = true;
    return tok->get_connect_response().is_session_present();
  }

  void reconnect_loop() {
    Backoff backoff(std::chrono::milliseconds(500), options.reconnect_max);
    while (losses.wait_for_loss()) {
      auto delay = backoff.next();
      // Taken over: wait the longest backoff, so that the other client keeps its session.
      if (quick_losses.load() >= kQuickLossesForTakeover) delay = options.reconnect_max;
      log->info("mqtt: reconnecting to {} in {} ms (attempt {})", uri(options), delay.count(),
                backoff.attempts());
      if (!losses.sleep(delay)) return;
      const std::uint64_t ticket = losses.begin_attempt();
      bool session_present = false;
      try {
        session_present = connect_and_wait();
      } catch (const std::exception& e) {
        log->warn("mqtt: reconnect to {} failed: {}", uri(options), e.what());
        continue;
      }
      backoff.reset();
      // From this thread, not Paho's: the handler may subscribe and wait for the answer.
      if (handlers.reconnected) handlers.reconnected(session_present);
      losses.settle(ticket);  // a loss since the attempt began keeps the loop going
    }
  }
};

PahoMqttConnection::PahoMqttConnection(MqttConnectOptions options, MqttHandlers handlers,
                                       std::shared_ptr<spdlog::logger> log)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handlers), std::move(log))) {}

PahoMqttConnection::~PahoMqttConnection() { disconnect(std::chrono::seconds(2)); }

bool PahoMqttConnection::connect() {
  try {
    return impl_->connect_and_wait();
  } catch (const mqtt::exception& e) {
    throw Error("MQTT broker " + impl_->where() + ": " + e.what());
  }
}

void PahoMqttConnection::subscribe(const std::vector<std::string>& filters, bool wait) {
  if (filters.empty()) return;
  if (!impl_->client.is_connected()) {
    if (wait) throw Error("MQTT subscribe: not connected");
    return;
  }
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
  if (filters.empty()) return;
  if (!impl_->client.is_connected()) throw Error("MQTT unsubscribe: not connected");
  try {
    auto tok = impl_->client.unsubscribe(mqtt::string_collection::create(filters));
    if (!tok->wait_for(std::chrono::seconds(10))) throw Error("MQTT unsubscribe timed out");
  } catch (const mqtt::exception& e) {
    throw Error(std::string("MQTT unsubscribe failed: ") + e.what());
  }
}

void PahoMqttConnection::publish(std::string_view topic, std::string_view payload, int qos,
                                 bool retain) {
  if (!impl_->client.is_connected()) return;
  try {
    impl_->client.publish(std::string(topic), payload.data(), payload.size(), qos, retain);
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
  impl_->losses.report_loss();
}

bool PahoMqttConnection::connected() const { return impl_->is_connected; }

void PahoMqttConnection::disconnect(std::chrono::milliseconds timeout) {
  if (impl_->stopped.exchange(true)) return;
  impl_->losses.stop();
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
