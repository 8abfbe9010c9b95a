// ConnectRelay: a one-target HTTP CONNECT proxy on the loopback interface, so that Paho can verify
// a broker's certificate against a name other than the host it connects to
// (MQTT_TLS_SERVER_NAME).
//
// Why: Paho C 1.3 verifies the certificate (and sends SNI) for the host of the server URI and has
// no option for another name. So PahoMqttConnection gives Paho the URI ssl://<server name>:<port>
// and this relay as its HTTPS proxy: Paho asks the relay for a tunnel ("CONNECT <server
// name>:<port>"), the relay connects to the real host and port, whatever the request names, and
// copies the bytes both ways. TLS stays end to end between Paho and the broker (the relay sees
// only ciphertext), so verification is Paho's own, against the pinned name.
//
// Threads: one accepting thread, which also reads each request and connects upstream (bounded by
// connect_timeout), and two per tunnel (one per direction). Any process on the machine can open
// a tunnel through the relay, but only to the one broker, which it could reach directly as well.
#pragma once

#include <chrono>
#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace gateway {

class ConnectRelay {
 public:
  // Listens on 127.0.0.1 on a free port and starts accepting. Every tunnel goes to host:port.
  // Throws gateway::Error if it cannot listen.
  ConnectRelay(std::string host, int port, std::chrono::milliseconds connect_timeout,
               std::shared_ptr<spdlog::logger> log);
  // Closes every tunnel and joins every thread.
  ~ConnectRelay();
  ConnectRelay(const ConnectRelay&) = delete;
  ConnectRelay& operator=(const ConnectRelay&) = delete;

  // "127.0.0.1:<port>", for Paho's https_proxy (without a scheme: Paho C strips the one it
  // expects, which differs between versions).
  std::string proxy_address() const;
  // Why the last tunnel could not be opened (e.g. "cannot connect to h:p: Connection refused"),
  // "" when the last one was. Thread-safe.
  std::string last_error() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gateway
