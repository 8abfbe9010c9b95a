// MqttConnection over Eclipse Paho MQTT C++ 1.2 (async_client). Only src/paho_*.cpp include
// <mqtt/...>.
//
// Threads: Paho runs the message and connection-lost handlers on its receive thread, one at a
// time; the QoS 1 PUBACK for a message goes out when the message handler returns. Reconnection
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

class PahoMqttConnection final : public MqttConnection {
 public:
  PahoMqttConnection(MqttConnectOptions options, MqttHandlers handlers,
                     std::shared_ptr<spdlog::logger> log);
  ~PahoMqttConnection() override;  // disconnects if still connected

  bool connect() override;
  void subscribe(const std::vector<std::string>& filters, bool wait) override;
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
