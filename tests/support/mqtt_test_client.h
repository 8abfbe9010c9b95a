// MQTT helpers for tests, on Paho C++ (MQTT 3.1.1, clean session, unique client ids):
// MqttTestClient publishes and waits for the broker's acknowledgement; MqttTestSubscriber
// collects what arrives on a topic filter (to check the broker, or what the gateway sees).
//
// MqttTestClient is not thread-safe (one thread publishes). MqttTestSubscriber is thread-safe:
// Paho's thread records, the test reads. Every wait is bounded; failures throw std::runtime_error.
// Measured here (Paho C 1.3.12): while another Paho client is alive in this process, a new
// client's connect takes ~2 s (the shared receive thread polls); alone, ~15 ms.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace gateway::testing {

class MqttTestClient {
 public:
  // Connects to tcp://host:port (anonymous). Throws std::runtime_error if it cannot (10 s bound).
  MqttTestClient(const std::string& host, int port);
  // Connects to ssl://host:port, verifying the broker's certificate and host name against
  // ca_file. Throws std::runtime_error if the connection or the verification fails.
  MqttTestClient(const std::string& host, int port, const std::string& ca_file);
  // Disconnects (bounded).
  ~MqttTestClient();
  MqttTestClient(const MqttTestClient&) = delete;
  MqttTestClient& operator=(const MqttTestClient&) = delete;

  const std::string& client_id() const;

  // Publishes one message and waits until the broker took it (PUBACK for QoS 1, PUBCOMP for 2;
  // for QoS 0, until it was written). Throws std::runtime_error on failure or after 10 s.
  void publish(const std::string& topic, const std::string& payload, int qos = 1,
               bool retained = false);
  // Publishes all messages in order with at most max_in_flight unacknowledged at a time, and
  // waits for all of them. Throws std::runtime_error on the first failure or a 10 s stall.
  void publish_many(const std::vector<std::pair<std::string, std::string>>& messages, int qos = 1,
                    std::size_t max_in_flight = 200);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct ReceivedMessage {
  std::string topic;
  std::string payload;
  int qos = 0;
  bool retained = false;
};

class MqttTestSubscriber {
 public:
  // Connects to tcp://host:port and subscribes to filter; returns once the broker confirmed the
  // subscription, so anything published afterwards is collected. Throws std::runtime_error.
  MqttTestSubscriber(const std::string& host, int port, const std::string& filter, int qos = 1);
  ~MqttTestSubscriber();
  MqttTestSubscriber(const MqttTestSubscriber&) = delete;
  MqttTestSubscriber& operator=(const MqttTestSubscriber&) = delete;

  // Waits until at least n messages arrived. Returns false at the timeout.
  bool wait_for_count(std::size_t n, std::chrono::milliseconds timeout) const;
  std::vector<ReceivedMessage> messages() const;
  std::size_t count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gateway::testing
