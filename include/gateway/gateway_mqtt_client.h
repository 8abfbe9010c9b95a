// The gateway's MQTT side (reference: src/mqtt_client.py): which broker, which flows, which
// subscriptions, and what happens to an arriving message: it is appended to the spool, and only
// then acknowledged to the broker. Storing it is the pipeline's job.
//
// Threads: on_connect()/on_message() run on the MQTT connection's thread; reload_flows() on the
// reload timer thread or the caller's (SIGHUP); they are serialised where they share state.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gateway/flow_repository.h"
#include "gateway/flow_table.h"
#include "gateway/metrics.h"
#include "gateway/mqtt_connection.h"
#include "gateway/settings.h"
#include "gateway/spool.h"

namespace spdlog {
class logger;
}

namespace gateway {

class SignalMask;

class GatewayMqttClient {
 public:
  using ConnectionFactory =
      std::function<std::unique_ptr<MqttConnection>(MqttConnectOptions, MqttHandlers)>;

  using RepositoryFactory = std::function<std::unique_ptr<FlowRepository>()>;

  // `repositories` opens the control connection (reconnected after a database error).
  GatewayMqttClient(const Settings& settings, RepositoryFactory repositories, FlowTable& flows,
                    Spool& spool, Metrics& metrics, ConnectionFactory connect,
                    std::shared_ptr<spdlog::logger> log);
  ~GatewayMqttClient();  // stop()s

  // The first enabled broker, default first. Throws Error("no enabled MQTT server ...").
  MqttServer load_mqtt_server();
  // The enabled flows.
  std::vector<Flow> load_flows();
  // Loads the flows, installs them, subscribes to new filters and unsubscribes from filters no
  // flow uses any more; logs what changed. Throws what the repository throws (the old flows stay).
  FlowDiff reload_flows();

  // Loads broker and flows, connects, subscribes (waiting for the broker's answer) and starts the
  // reload timer. Throws Error when any of that fails.
  void start();
  // Blocks until SIGTERM or SIGINT arrives (returned); SIGHUP reloads the flows at once and calls
  // on_hangup (the log files are reopened there). `on_tick` runs about every second.
  int run_forever(const SignalMask& signals, const std::function<void()>& on_hangup,
                  const std::function<void()>& on_tick);
  // Stops the timer and disconnects cleanly. Idempotent.
  void stop();

  // Connection callbacks (public for the tests; the connection calls them).
  void on_connect(bool reconnect);
  void on_message(const MqttMessage& message);

 private:
  std::string subscription(const std::string& filter) const;
  std::vector<std::string> subscriptions(const std::vector<std::string>& filters) const;
  std::string heartbeat_topic() const;
  void timer_loop();
  // Pings the database on the control connection; keeps the health state in Metrics current
  // even when no message is flowing.
  void probe_database();

  const Settings& settings_;
  // The control connection, opened on first use and dropped after a connection error.
  FlowRepository& repo();

  RepositoryFactory repositories_;
  std::unique_ptr<FlowRepository> repo_;  // guarded by reload_mu_
  FlowTable& flows_;
  Spool& spool_;
  Metrics& metrics_;
  ConnectionFactory connect_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<MqttConnection> connection_;

  std::recursive_mutex reload_mu_;  // serialises reload_flows() and the repository
  std::atomic<std::int64_t> last_heartbeat_ms_{0};
  std::atomic<std::int64_t> connected_at_ms_{0};

  std::mutex timer_mu_;
  std::condition_variable timer_cv_;
  bool stopping_ = false;  // guarded by timer_mu_
  std::thread timer_;
};

}  // namespace gateway
