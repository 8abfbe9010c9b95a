#include "gateway/adapters/paho_mqtt_connection.h"

#include <MQTTAsync.h>
#include <mqtt/async_client.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "gateway/adapters/paho_version.h"
#include "gateway/backoff.h"
#include "gateway/errors.h"
#include "gateway/loss_ledger.h"

namespace gateway {

namespace {

// ---- The packet id of a received message ----
//
// The spool recognises a broker's redelivery by its packet id, which Paho C++ 1.2 keeps in the
// private member `MQTTAsync_message msg_` of mqtt::message and exposes (message::c_struct()) only
// when UNIT_TESTS is defined before its headers are included. Defining that macro here gave the
// program two definitions of Paho's classes (an ODR violation, however harmless in practice).
// The alternatives: message has no public accessor for it; the C-level MQTTAsync_setCallbacks
// would need the client's private MQTTAsync handle and would replace the callback async_client
// itself depends on; rewriting this adapter on the C API alone is a large change for one field.
//
// So the member is named, not redefined: an explicit template instantiation may name a private
// member (C++20 [temp.spec]/6: access checking does not apply to the names in it), and the
// instantiation below hands the pointer to msg_ out through a friend function. Paho's classes
// are included exactly as installed, every translation unit sees the same definitions, and the
// code stops compiling (rather than misbehaving) if a Paho C++ release renames msg_ or changes
// its type. tests/integration/paho_mqtt_connection_test.cpp checks that the id arrives.
struct MessageCStruct {
  using type = MQTTAsync_message mqtt::message::*;
  friend type member_pointer(MessageCStruct);  // defined by the instantiation below
};

template <typename Tag, typename Tag::type Member>
struct ExposeMember {
  friend typename Tag::type member_pointer(Tag) { return Member; }
};

template struct ExposeMember<MessageCStruct, &mqtt::message::msg_>;

std::uint16_t packet_id_of(const mqtt::message& message) {
  return static_cast<std::uint16_t>((message.*member_pointer(MessageCStruct{})).msgid);
}

// ---- The Paho C version ----

// The "Version" entry of MQTTAsync_getVersionInfo(), "" if there is none. Read once: the
// function fills a static table on every call, so concurrent calls would race.
const std::string& paho_c_runtime_version() {
  static const std::string version = [] {
    for (const MQTTAsync_nameValue* info = MQTTAsync_getVersionInfo();
         info != nullptr && info->name != nullptr; ++info) {
      if (std::strcmp(info->name, "Version") == 0 && info->value != nullptr) {
        return std::string(info->value);
      }
    }
    return std::string();
  }();
  return version;
}

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
      const MqttMessage m{.topic = msg->get_topic(),
                          .payload = std::string_view(payload.data(), payload.size()),
                          .packet_id = packet_id_of(*msg),
                          .dup = msg->is_duplicate(),
                          .retained = msg->is_retained(),
                          .qos = msg->get_qos()};
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
      // Taken over: wait longer each time (up to 10 min), so that the other client keeps its
      // session instead of the two handing it back and forth.
      if (const int streak = quick_losses.load(); streak >= kQuickLossesForTakeover) {
        const int doublings = std::min(streak - kQuickLossesForTakeover, 5);
        delay = std::min<std::chrono::milliseconds>(
            std::chrono::minutes(10),
            std::chrono::duration_cast<std::chrono::milliseconds>(options.reconnect_max) *
                (1 << doublings));
      }
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

void require_paho_c_version() {
  if (auto problem = paho_c_version_problem(paho_c_runtime_version())) throw Error(*problem);
}

PahoMqttConnection::PahoMqttConnection(MqttConnectOptions options, MqttHandlers handlers,
                                       std::shared_ptr<spdlog::logger> log) {
  require_paho_c_version();  // before Paho creates a client or this class a thread
  impl_ = std::make_unique<Impl>(std::move(options), std::move(handlers), std::move(log));
}

PahoMqttConnection::~PahoMqttConnection() { disconnect(std::chrono::seconds(2)); }

bool PahoMqttConnection::connect() {
  try {
    return impl_->connect_and_wait();
  } catch (const mqtt::exception& e) {
    throw Error("MQTT broker " + impl_->where() + ": " + e.what());
  }
}

std::vector<std::string> PahoMqttConnection::subscribe(const std::vector<std::string>& filters,
                                                       bool wait) {
  if (filters.empty()) return {};
  if (!impl_->client.is_connected()) {
    if (wait) throw Error("MQTT subscribe: not connected");
    return {};
  }
  auto topics = mqtt::string_collection::create(filters);
  std::vector<int> qos(filters.size(), 1);
  std::vector<std::string> refused;
  try {
    auto tok = impl_->client.subscribe(topics, qos);
    if (!wait) return {};
    if (!tok->wait_for(std::chrono::seconds(10))) throw Error("MQTT subscribe timed out");
    const auto codes = tok->get_subscribe_response().get_reason_codes();
    for (std::size_t i = 0; i < codes.size() && i < filters.size(); ++i) {
      if (static_cast<int>(codes[i]) >= 0x80) refused.push_back(filters[i]);
    }
  } catch (const mqtt::exception& e) {
    if (wait) throw Error(std::string("MQTT subscribe failed: ") + e.what());
    impl_->log->error("mqtt: subscribe failed: {}", e.what());
  }
  return refused;
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
