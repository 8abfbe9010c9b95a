// Port to the MQTT broker. GatewayMqttClient sees only this; PahoMqttConnection is the real
// adapter. Callbacks run on the connection's own thread (Paho's), one at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/secret.h"

namespace gateway {

// One received PUBLISH. Views are valid only during the callback.
struct MqttMessage {
  std::string_view topic;
  std::string_view payload;
  std::uint16_t packet_id = 0;
  bool dup = false;
  bool retained = false;  // the RETAIN flag: a broker's stored copy, sent on subscribe
  int qos = 0;
  // MQTT 5 properties (absent on 3.1.1):
  std::optional<std::uint32_t> expiry_seconds{};  // Message Expiry Interval left, as the broker
                                                  // forwards it (time spent there is deducted)
  std::string_view content_type{};
  std::span<const std::pair<std::string_view, std::string_view>> user_properties{};  // in order
};

// The protocol level of CONNECT: 4 is MQTT 3.1.1, 5 is MQTT 5.
inline constexpr int kMqtt311 = 4;
inline constexpr int kMqtt5 = 5;

struct MqttConnectOptions {
  std::string host;
  int port = 1883;
  std::string client_id;
  std::optional<std::string> username;
  std::optional<Secret> password;
  bool use_tls = false;
  std::string ca_file;  // empty with use_tls: the system CAs
  // With use_tls, a client certificate (PEM; may hold the key too), its private key (PEM; empty:
  // in client_cert_file) and a file holding the key's password (empty: the key is not
  // encrypted; one trailing newline is not part of the password). Read at every connect.
  std::string client_cert_file;
  std::string client_key_file;
  std::string client_key_password_file;
  // With use_tls: the name the broker's certificate must carry (and the SNI sent), when it is
  // not `host`; empty: `host`. See PahoMqttConnection for how the connection then goes.
  std::string tls_server_name;
  int keepalive_seconds = 60;
  int mqtt_version = kMqtt311;
  // A persistent session keeps QoS 1 messages while we are away. MQTT 5: clean start = this, and
  // the session outlives the connection by session_expiry_seconds (0 when clean_session).
  bool clean_session = false;
  std::uint32_t session_expiry_seconds = 86400;
  std::chrono::seconds reconnect_max{30};
  std::chrono::seconds connect_timeout{10};
};

// A filter the broker refused in its SUBACK.
struct SubscribeRefusal {
  std::string filter;
  std::string reason;  // the reason code and its name, e.g. "0x87 Not authorized"
};

struct MqttHandlers {
  // After every successful *re*connect (the first connect()'s answer is its return value), on the
  // connection's own reconnect thread, never Paho's: `session_present` is the broker's CONNACK
  // flag. A broker without the session has forgotten the subscriptions.
  std::function<void(bool session_present)> reconnected;
  std::function<void(const std::string& cause)> connection_lost;
  // Returns when the message is safe (spooled): the QoS 1 acknowledgement goes out after it.
  std::function<void(const MqttMessage&)> message;
};

class MqttConnection {
 public:
  virtual ~MqttConnection() = default;
  // Connects, waiting up to connect_timeout; returns the CONNACK session-present flag. Throws
  // gateway::Error naming the broker on failure. After that, a lost connection is re-established
  // in the background with capped, jittered backoff.
  virtual bool connect() = 0;
  // Thread-safe. QoS 1, all filters in one SUBSCRIBE (MQTT 5: one each, with retain handling 1:
  // retained messages only for a subscription the session did not have). With wait, blocks until
  // the broker answered and returns the filters it refused (the others are granted); throws
  // gateway::Error if it did not answer or the request failed as a whole. Never call it inside a
  // handler (the answer arrives on the handler's thread) and never while holding a lock that the
  // message path needs: it blocks while a message handler is blocked. Without wait, returns
  // nothing.
  virtual std::vector<SubscribeRefusal> subscribe(const std::vector<std::string>& filters,
                                                  bool wait) = 0;
  // Same threading rules as subscribe(). Throws gateway::Error if the broker did not answer.
  virtual void unsubscribe(const std::vector<std::string>& filters) = 0;
  virtual void publish(std::string_view topic, std::string_view payload, int qos, bool retain) = 0;
  // Drops the connection and reconnects (a stalled session).
  virtual void force_reconnect(const std::string& why) = 0;
  virtual bool connected() const = 0;
  // Clean DISCONNECT; waits up to `timeout`. No callbacks run after it returns.
  virtual void disconnect(std::chrono::milliseconds timeout) = 0;
};

}  // namespace gateway
