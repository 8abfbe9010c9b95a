#include "gateway/adapters/paho_mqtt_connection.h"

#include <MQTTAsync.h>
#include <mqtt/async_client.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include "gateway/adapters/connect_relay.h"
#include "gateway/adapters/paho_version.h"
#include "gateway/adapters/tls_probe.h"
#include "gateway/backoff.h"
#include "gateway/errors.h"
#include "gateway/loss_ledger.h"
#include "gateway/thread_name.h"

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
// and the two take turns. MQTT 3.1.1 gives no reason code for it (MQTT 5 does: 0x8E).
constexpr auto kQuickLoss = std::chrono::seconds(5);
constexpr int kQuickLossesForTakeover = 3;

// ---- MQTT 5 ----

// "0x87 Not authorized".
std::string reason_text(int code) {
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned>(code) & 0xFFu);
  const char* name = MQTTReasonCode_toString(static_cast<MQTTReasonCodes>(code));
  return std::string(hex) + " " + (name != nullptr ? name : "(unknown reason code)");
}

// The Reason String property of a broker's answer, as " (<text>)", or "".
std::string reason_string(const mqtt::properties& props) {
  const MQTTProperties& c = props.c_struct();
  for (int i = 0; i < c.count; ++i) {
    const MQTTProperty& p = c.array[i];
    if (p.identifier == MQTTPROPERTY_CODE_REASON_STRING && p.value.data.len > 0) {
      return " (" + std::string(p.value.data.data, static_cast<std::size_t>(p.value.data.len)) +
             ")";
    }
  }
  return "";
}

std::string_view view(const MQTTLenString& s) {
  return s.len > 0 ? std::string_view(s.data, static_cast<std::size_t>(s.len)) : std::string_view();
}

// ---- TLS ----

// Throws Error naming `what` and `path` unless the file can be opened for reading now.
void check_readable(std::string_view what, const std::string& path, const std::string& broker) {
  if (path.empty()) return;
  std::ifstream in(path);
  if (!in) {
    throw Error("MQTT broker " + broker + ": cannot read " + std::string(what) + " '" + path +
                "': " + std::strerror(errno));
  }
}

// The private key's password: the file's content without one trailing newline.
Secret read_key_password(const std::string& path, const std::string& broker) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error("MQTT broker " + broker + ": cannot read client_key_password_file '" + path +
                "': " + std::strerror(errno));
  }
  std::string password((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!password.empty() && password.back() == '\n') password.pop_back();
  if (!password.empty() && password.back() == '\r') password.pop_back();
  if (password.empty()) {
    throw Error("MQTT broker " + broker + ": client_key_password_file '" + path + "' is empty");
  }
  return Secret(std::move(password));
}

}  // namespace

struct PahoMqttConnection::Impl {
  MqttConnectOptions options;
  MqttHandlers handlers;
  std::shared_ptr<spdlog::logger> log;
  // MQTT_TLS_SERVER_NAME: Paho's proxy (see connect_relay.h). Before the client, which uses it.
  std::unique_ptr<ConnectRelay> relay;
  std::unique_ptr<mqtt::async_client> client;
  mqtt::connect_options connect_options;  // of the last connect (set_v5_properties())
  std::atomic<bool> is_connected{false};
  std::atomic<std::int64_t> connected_at_ms{0};  // steady clock of the last successful connect
  std::atomic<int> quick_losses{0};              // consecutive losses soon after connecting
  LossLedger losses;
  std::thread reconnector;
  std::atomic<bool> stopped{false};
  // The message handler's user properties, reused (Paho runs it on one thread at a time).
  std::vector<std::pair<std::string_view, std::string_view>> user_properties;

  Impl(MqttConnectOptions o, MqttHandlers h, std::shared_ptr<spdlog::logger> l)
      : options(std::move(o)), handlers(std::move(h)), log(std::move(l)) {
    if (options.use_tls && !options.tls_server_name.empty()) {
      relay =
          std::make_unique<ConnectRelay>(options.host, options.port, options.connect_timeout, log);
    }
    if (v5()) {
      client = std::make_unique<mqtt::async_client>(paho_uri(), options.client_id,
                                                    mqtt::create_options(MQTTVERSION_5));
    } else {
      client = std::make_unique<mqtt::async_client>(paho_uri(), options.client_id);
    }

    client->set_message_callback([this](const mqtt::const_message_ptr& msg) {
      const auto& payload = msg->get_payload_ref();
      MqttMessage m{.topic = msg->get_topic(),
                    .payload = std::string_view(payload.data(), payload.size()),
                    .packet_id = packet_id_of(*msg),
                    .dup = msg->is_duplicate(),
                    .retained = msg->is_retained(),
                    .qos = msg->get_qos()};
      if (v5()) add_properties(*msg, m);
      handlers.message(m);
    });
    client->set_connection_lost_handler(
        [this](const std::string& cause) { on_lost(cause.empty() ? "connection lost" : cause); });
    if (v5()) {
      // A broker's DISCONNECT: Paho reports it here only, not as a lost connection.
      client->set_disconnected_handler([this](const mqtt::properties& props, mqtt::ReasonCode rc) {
        on_lost("the broker sent DISCONNECT " + reason_text(rc) + reason_string(props));
      });
    }
    reconnector = std::thread([this] { reconnect_loop(); });
  }

  bool v5() const { return options.mqtt_version == kMqtt5; }

  // PahoMqttConnection::subscribe() on MQTT 5. Throws mqtt::exception or Error.
  std::vector<SubscribeRefusal> subscribe_v5(const std::vector<std::string>& filters, bool wait);

  void on_lost(const std::string& cause) {
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
    if (handlers.connection_lost) handlers.connection_lost(cause);
    losses.report_loss();
  }

  // The MQTT 5 properties the gateway keeps, as views into `msg` (valid during the callback).
  void add_properties(const mqtt::message& msg, MqttMessage& m) {
    user_properties.clear();
    const MQTTProperties& props = msg.get_properties().c_struct();
    for (int i = 0; i < props.count; ++i) {
      const MQTTProperty& p = props.array[i];
      switch (p.identifier) {
        case MQTTPROPERTY_CODE_MESSAGE_EXPIRY_INTERVAL:
          m.expiry_seconds = p.value.integer4;
          break;
        case MQTTPROPERTY_CODE_CONTENT_TYPE:
          m.content_type = view(p.value.data);
          break;
        case MQTTPROPERTY_CODE_USER_PROPERTY:
          user_properties.emplace_back(view(p.value.data), view(p.value.value));
          break;
        default:
          break;
      }
    }
    m.user_properties = user_properties;
  }

  // What Paho connects to: with a pinned TLS name, that name (it verifies the certificate
  // against the URI's host), reached through the relay.
  std::string paho_uri() const {
    if (relay) return "ssl://" + options.tls_server_name + ":" + std::to_string(options.port);
    return uri(options);
  }

  // Built for every attempt: the certificate files are checked and the key's password read
  // again, so that a fixed file takes effect on the next reconnect. Throws Error.
  mqtt::connect_options build_connect_options() {
    auto b = mqtt::connect_options_builder();
    if (v5()) {
      // Clean start false and a session that outlives the connection (set_v5_properties()):
      // MQTT 5's persistent session (clean_session false in 3.1.1 never expires).
      b.mqtt_version(MQTTVERSION_5).clean_start(options.clean_session);
    } else {
      b.mqtt_version(MQTTVERSION_3_1_1).clean_session(options.clean_session);
    }
    b.keep_alive_interval(std::chrono::seconds(options.keepalive_seconds))
        .connect_timeout(options.connect_timeout)
        .automatic_reconnect(false);
    if (options.username && !options.username->empty()) b.user_name(*options.username);
    if (options.password) b.password(options.password->reveal());
    if (options.use_tls) {
      const std::string broker = uri(options);
      check_readable("ca_file", options.ca_file, broker);
      check_readable("client_cert_file", options.client_cert_file, broker);
      check_readable("client_key_file", options.client_key_file, broker);
      auto ssl = mqtt::ssl_options_builder().enable_server_cert_auth(true).verify(true);
      if (!options.ca_file.empty()) ssl.trust_store(options.ca_file);
      if (!options.client_cert_file.empty()) {
        ssl.key_store(options.client_cert_file);
        if (!options.client_key_file.empty()) ssl.private_key(options.client_key_file);
        if (!options.client_key_password_file.empty()) {
          ssl.private_keypassword(
              read_key_password(options.client_key_password_file, broker).reveal());
        }
      }
      // No ssl error_handler: Paho C++ 1.2 hands Paho C a pointer to the copy of the options that
      // async_client::connect() destroys before the handshake runs. tls_problem() explains a
      // failure instead.
      b.ssl(ssl.finalize());
      if (relay) b.https_proxy(relay->proxy_address());
    }
    return b.finalize();
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

  std::string where() const {
    std::string w = uri(options);
    if (relay) w += " (certificate name " + options.tls_server_name + ")";
    return w + " as " + options.client_id;
  }

  // Why a TLS connection failed, for the error line: a handshake of our own names the problem
  // (Paho says only "TCP/TLS connect failure"), then the files and name that were used.
  std::string tls_context() const {
    TlsProbeOptions probe;
    probe.host = options.host;
    probe.port = options.port;
    probe.server_name = relay ? options.tls_server_name : options.host;
    probe.ca_file = options.ca_file;
    probe.client_cert_file = options.client_cert_file;
    probe.client_key_file = options.client_key_file;
    probe.timeout = options.connect_timeout;
    std::string problem;
    try {
      if (!options.client_key_password_file.empty()) {
        probe.key_password = read_key_password(options.client_key_password_file, uri(options));
      }
      problem = tls_problem(probe);
    } catch (const std::exception& e) {
      problem = e.what();
    }
    if (problem.empty()) problem = "no TLS problem found when checked again";
    std::string out =
        "TLS: " + problem + " [broker certificate checked against " +
        (options.ca_file.empty() ? std::string("the system CAs") : "ca_file " + options.ca_file) +
        " for the name " + probe.server_name;
    if (!options.client_cert_file.empty()) {
      out += "; client certificate " + options.client_cert_file;
      if (!options.client_key_file.empty()) out += ", key " + options.client_key_file;
    } else {
      out += "; no client certificate";
    }
    return out + "]";
  }

  // The CONNECT properties, set on connect_options itself: Paho C++ 1.2 keeps a pointer to the
  // properties of the object they were set on, which a copy or move does not update.
  void set_v5_properties() {
    if (!v5()) return;
    const std::uint32_t expiry = options.clean_session ? 0 : options.session_expiry_seconds;
    connect_options.set_properties(mqtt::properties{mqtt::property(
        mqtt::property::SESSION_EXPIRY_INTERVAL, static_cast<std::int32_t>(expiry))});
  }

  // Connects and waits; returns the session-present flag. Throws mqtt::exception or Error.
  bool connect_and_wait() {
    connect_options = build_connect_options();
    set_v5_properties();
    auto tok = client->connect(connect_options);
    if (!tok->wait_for(options.connect_timeout + std::chrono::seconds(1)) ||
        !client->is_connected()) {
      throw Error("MQTT broker " + where() + ": connect timed out");
    }
    connected_at_ms = steady_ms();
    is_connected = true;
    const auto& response = tok->get_connect_response();
    if (v5()) {
      std::string granted;
      const auto& props = response.get_properties();
      if (props.contains(mqtt::property::SESSION_EXPIRY_INTERVAL)) {
        // The broker's own limit, if it lowered ours.
        granted = ", the broker keeps the session " +
                  std::to_string(
                      mqtt::get<std::uint32_t>(props, mqtt::property::SESSION_EXPIRY_INTERVAL)) +
                  " s";
      }
      log->info("mqtt: connected to {} (MQTT 5, CONNACK {}{}, session {}, expiry {} s{})", where(),
                reason_text(tok->get_reason_code()), reason_string(props),
                response.is_session_present() ? "present" : "new",
                options.clean_session ? 0 : options.session_expiry_seconds, granted);
    }
    return response.is_session_present();
  }

  // What went wrong in a failed connect, for one line: a CONNACK refusal with its reason code, or
  // a TLS failure with what is known about it, or Paho's message.
  std::string failure(const mqtt::exception& e) {
    if (v5() && e.get_reason_code() >= 0x80) {
      return "refused, CONNACK " + reason_text(e.get_reason_code());
    }
    if (options.use_tls && !v3_connack_refusal(e)) {
      return e.what() + std::string("; ") + tls_context();
    }
    return e.what();
  }

  // MQTT 3.1.1 CONNACK return codes 1..5 (Paho reports them as the return code).
  static bool v3_connack_refusal(const mqtt::exception& e) {
    const int rc = e.get_return_code();
    return rc >= 1 && rc <= 5;
  }

  void reconnect_loop() {
    set_thread_name("gw-reconnect");
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
      } catch (const mqtt::exception& e) {
        log->warn("mqtt: reconnect to {} failed: {}", uri(options), failure(e));
        continue;
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
    throw Error("MQTT broker " + impl_->where() + ": " + impl_->failure(e));
  }
}

std::vector<SubscribeRefusal> PahoMqttConnection::subscribe(const std::vector<std::string>& filters,
                                                            bool wait) {
  if (filters.empty()) return {};
  if (!impl_->client->is_connected()) {
    if (wait) throw Error("MQTT subscribe: not connected");
    return {};
  }
  std::vector<SubscribeRefusal> refused;
  try {
    if (impl_->v5()) return impl_->subscribe_v5(filters, wait);
    auto topics = mqtt::string_collection::create(filters);
    std::vector<int> qos(filters.size(), 1);
    auto tok = impl_->client->subscribe(topics, qos);
    if (!wait) return {};
    if (!tok->wait_for(std::chrono::seconds(10))) throw Error("MQTT subscribe timed out");
    const auto codes = tok->get_subscribe_response().get_reason_codes();
    for (std::size_t i = 0; i < codes.size() && i < filters.size(); ++i) {
      if (static_cast<int>(codes[i]) >= 0x80) {
        refused.push_back({filters[i], reason_text(static_cast<int>(codes[i]))});
      }
    }
  } catch (const mqtt::exception& e) {
    if (wait) throw Error(std::string("MQTT subscribe failed: ") + e.what());
    impl_->log->error("mqtt: subscribe failed: {}", e.what());
  }
  return refused;
}

std::vector<SubscribeRefusal> PahoMqttConnection::Impl::subscribe_v5(
    const std::vector<std::string>& filters, bool wait) {
  // One SUBSCRIBE per filter: Paho C++ 1.2 loses the per-filter options of a multi-filter
  // SUBSCRIBE (response_options' copy drops them; Paho C then reads a null list). Sent one after
  // the other without waiting, so they still cost one round trip.
  // Retain handling 1: the broker sends retained messages only for a subscription the session did
  // not have, so subscribing again after a reconnect re-sends nothing. No local stays off: the
  // heartbeat is our own publish coming back.
  const mqtt::subscribe_options options(/*noLocal=*/false, /*retainAsPublished=*/false,
                                        mqtt::subscribe_options::SEND_RETAINED_ON_NEW);
  std::vector<mqtt::token_ptr> tokens;
  tokens.reserve(filters.size());
  for (const std::string& f : filters) tokens.push_back(client->subscribe(f, 1, options));
  if (!wait) return {};
  std::vector<SubscribeRefusal> refused;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    try {
      if (!tokens[i]->wait_until(deadline)) throw Error("MQTT subscribe timed out");
    } catch (const mqtt::exception& e) {
      // A refusal fails the token of a one-filter SUBACK, with the reason code.
      if (e.get_reason_code() < 0x80) throw;
      refused.push_back({filters[i], reason_text(e.get_reason_code())});
    }
  }
  return refused;
}

void PahoMqttConnection::unsubscribe(const std::vector<std::string>& filters) {
  if (filters.empty()) return;
  if (!impl_->client->is_connected()) throw Error("MQTT unsubscribe: not connected");
  try {
    auto tok = impl_->client->unsubscribe(mqtt::string_collection::create(filters));
    if (!tok->wait_for(std::chrono::seconds(10))) throw Error("MQTT unsubscribe timed out");
  } catch (const mqtt::exception& e) {
    // MQTT 5's UNSUBACK codes below 0x80 are successes ("No subscription existed" included), but
    // Paho C++ throws for anything above 2.
    if (impl_->v5() && e.get_return_code() == MQTTASYNC_SUCCESS && e.get_reason_code() < 0x80) {
      return;
    }
    throw Error(std::string("MQTT unsubscribe failed: ") + e.what());
  }
}

void PahoMqttConnection::publish(std::string_view topic, std::string_view payload, int qos,
                                 bool retain) {
  if (!impl_->client->is_connected()) return;
  try {
    impl_->client->publish(std::string(topic), payload.data(), payload.size(), qos, retain);
  } catch (const mqtt::exception& e) {
    impl_->log->warn("mqtt: publish to {} failed: {}", topic, e.what());
  }
}

void PahoMqttConnection::force_reconnect(const std::string& why) {
  impl_->log->warn("mqtt: {}; reconnecting", why);
  impl_->is_connected = false;
  try {
    impl_->client->disconnect(0)->wait_for(std::chrono::seconds(2));
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
    if (impl_->client->is_connected()) {
      impl_->client->disconnect(static_cast<int>(timeout.count()))->wait_for(timeout);
    }
  } catch (const mqtt::exception& e) {
    impl_->log->warn("mqtt: disconnect: {}", e.what());
  }
  impl_->is_connected = false;
}

}  // namespace gateway
