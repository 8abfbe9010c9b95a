// MqttConnection over Eclipse Paho MQTT C++ 1.2 (async_client). Only src/adapters/paho_*.cpp
// include <mqtt/...>.
//
// Threads: Paho runs the message and connection-lost handlers on its receive thread, one at a
// time; the QoS 1 PUBACK for a message goes out when the message handler returns (Paho C 1.3.10
// and newer, checked at configure time and by require_paho_c_version()). Reconnection
// after a loss runs on a thread of this class (which also runs the reconnected handler), with
// capped exponential backoff and jitter (Paho's own automatic reconnect has no jitter, so a fleet
// of gateways would reconnect in lockstep after a broker restart). Losses right after connecting,
// several in a row, mean another client uses the same client id: one error line names
// MQTT_CLIENT_ID and the reconnects wait the longest backoff instead of fighting for the session.
//
// MQTT 5 (MqttConnectOptions::mqtt_version): clean start and a session expiry interval instead of
// clean session; subscriptions with retain handling 1 (one SUBSCRIBE per filter: Paho C++ 1.2
// cannot send per-filter options in one); the CONNACK is logged with its reason code, a refusal
// (CONNACK, SUBACK) and a broker's DISCONNECT name theirs; each message's Message Expiry
// Interval, Content Type and User Properties reach the handler.
//
// TLS: the broker's certificate is always verified (chain against ca_file or the system CAs, and
// the host name). With a client certificate, Paho loads it, its key and the key's password (the
// files are checked and the password file read at every connect). A failed TLS connect is one
// line naming the broker, the problem (tls_probe.h finds it: Paho says only "TCP/TLS connect
// failure") and the files and name used. With tls_server_name the certificate is verified
// against that name through a ConnectRelay (connect_relay.h); a connect then takes up to 250 ms
// longer (Paho polls for the relay's answer).
#pragma once

#include <memory>

#include "gateway/mqtt_connection.h"

namespace spdlog {
class logger;
}

namespace gateway {

// Throws gateway::Error, with a one-line message naming the version found and kMinPahoCVersion
// (paho_version.h), when the Paho MQTT C library loaded at run time is older than that or does
// not say which version it is: an older library sends the QoS 1 PUBACK before the message is
// spooled. main calls it at start-up, before anything is opened; the constructor of
// PahoMqttConnection calls it too. Thread-safe.
void require_paho_c_version();

class PahoMqttConnection final : public MqttConnection {
 public:
  // Throws gateway::Error when the Paho C library is too old (require_paho_c_version()), or with
  // tls_server_name when the relay cannot listen.
  PahoMqttConnection(MqttConnectOptions options, MqttHandlers handlers,
                     std::shared_ptr<spdlog::logger> log);
  ~PahoMqttConnection() override;  // disconnects if still connected

  bool connect() override;
  std::vector<SubscribeRefusal> subscribe(const std::vector<std::string>& filters,
                                          bool wait) override;
  void unsubscribe(const std::vector<std::string>& filters) override;
  void publish(std::string_view topic, std::string_view payload, int qos, bool retain) override;
  void force_reconnect(const std::string& why) override;
  bool connected() const override;
  void disconnect(std::chrono::milliseconds timeout) override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gateway
