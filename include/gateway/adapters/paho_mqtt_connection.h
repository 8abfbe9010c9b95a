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
  // Throws gateway::Error when the Paho C library is too old (require_paho_c_version()).
  PahoMqttConnection(MqttConnectOptions options, MqttHandlers handlers,
                     std::shared_ptr<spdlog::logger> log);
  ~PahoMqttConnection() override;  // disconnects if still connected

  bool connect() override;
  std::vector<std::string> subscribe(const std::vector<std::string>& filters, bool wait) override;
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
