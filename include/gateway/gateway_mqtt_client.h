// The gateway's MQTT side (reference: src/mqtt_client.py): which broker, which flows, which
// subscriptions, and what happens to an arriving message: it is appended to the spool, and only
// then acknowledged to the broker. Storing it is the pipeline's job.
//
// Subscriptions follow the flows: reload_flows() installs the new flows and asks the MQTT thread
// to bring the broker's subscriptions in line (sync_subscriptions()). Only that thread (and
// start()/stop(), before and after it runs) calls the broker: a message handler blocked on a full
// or failing spool holds Paho's lock, and a broker call waiting behind it must never stall the
// main thread (signals, watchdog) or the Supervisor's timer (reloads, database probe).
//
// The MQTT thread does the broker's periodic work too: every MQTT_HEARTBEAT_SECONDS a heartbeat
// to our own topic (no echo for three intervals while connected: a stalled session, reconnected),
// and every ClientIdCheck::refresh the presence. The periodic work that is not MQTT (the flow
// reload timer, the database probe, the signal loop) is the Supervisor's (supervisor.h).
//
// Retained messages: every SUBSCRIBE makes the broker send the retained messages that match
// again. So the client subscribes only to what the broker does not have for this session: the
// subscriptions it made are remembered in SPOOL_DIR/mqtt-subscriptions, and when the broker says
// the session is present (a gateway restart, a broker restart with persistence), only new filters
// are subscribed. What is re-sent anyway is recognised by the flow transaction (processor.h).
//
// Threads: on_message() runs on Paho's thread; on_reconnected() on the connection's reconnect
// thread; reload_flows() and ping_database() on the Supervisor's timer thread or the caller's
// (SIGHUP, start-up); sync_subscriptions(), the heartbeat and the presence on the MQTT thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
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

// Before it takes the broker session, the client checks that no other live gateway uses the
// same MQTT_CLIENT_ID: two would take the session from each other, and a message in flight at a
// takeover can reach both. Each running gateway keeps a retained "<spool id> <unix ms>" on
// mqtt-gateway/presence/<client id>, refreshed every `refresh` and cleared on a clean stop; a
// probe connection under another client id reads it at start-up.
struct ClientIdCheck {
  std::chrono::milliseconds refresh{10000};  // how often a running gateway renews its presence
  std::chrono::milliseconds fresh{30000};    // a presence younger than this is a live gateway
  std::chrono::milliseconds wait{35000};     // start-up waits this long for it to go away
  std::chrono::milliseconds poll{5000};      // probing every this long
  std::chrono::milliseconds answer{500};     // how long the probe waits for the retained message
};

class GatewayMqttClient {
 public:
  using ConnectionFactory =
      std::function<std::unique_ptr<MqttConnection>(MqttConnectOptions, MqttHandlers)>;

  using RepositoryFactory = std::function<std::unique_ptr<FlowRepository>()>;

  // `repositories` opens the control connection (reconnected after a database error).
  GatewayMqttClient(const Settings& settings, RepositoryFactory repositories, FlowTable& flows,
                    Spool& spool, Metrics& metrics, ConnectionFactory connect,
                    std::shared_ptr<spdlog::logger> log, ClientIdCheck client_id_check = {});
  ~GatewayMqttClient();  // stop()s

  // The first enabled broker, default first. Throws Error("no enabled MQTT server ...").
  MqttServer load_mqtt_server();
  // The enabled flows.
  std::vector<Flow> load_flows();
  // Loads the flows, installs them, logs what changed and asks the MQTT thread to subscribe and
  // unsubscribe accordingly; never calls the broker itself. Throws what the repository throws
  // (the old flows stay).
  FlowDiff reload_flows();

  // Loads broker and flows, checks that no other live gateway uses MQTT_CLIENT_ID (waiting up to
  // ClientIdCheck::wait for it to go; ConfigError if it stays), connects, subscribes (waiting for
  // the broker's answer) and starts the MQTT thread. Throws Error when any of that fails.
  void start();
  // Stops the MQTT thread and disconnects cleanly. Idempotent.
  void stop();

  // Pings the database on the control connection (SELECT 1): false when it is unreachable. A
  // failed ping drops the connection, so that the next load reconnects. Never throws. (The
  // Supervisor's health probe.)
  bool ping_database();

  // Subscribes to the filters the flows need and the broker does not have for this session, and
  // unsubscribes from those no flow needs; records the result. Throws Error when the broker
  // refuses or does not answer (what was not confirmed is tried again next time).
  void sync_subscriptions();

  // Connection callbacks (public for the tests; the connection calls them).
  void on_reconnected(bool session_present);
  void on_message(const MqttMessage& message);

 private:
  std::string subscription(const std::string& filter) const;
  // What the broker should have: the flows' filters (as subscriptions) and the heartbeat topic.
  std::set<std::string> wanted_subscriptions() const;
  std::string heartbeat_topic() const;
  std::string presence_topic() const;
  std::string presence() const;  // this gateway's presence payload, now
  // The presence payload another gateway left under our client id, if a probe connection finds
  // one (empty otherwise). Throws Error if the probe cannot connect.
  std::string probe_presence(const MqttConnectOptions& o);
  void check_client_id_free(const MqttConnectOptions& o);
  std::filesystem::path subscriptions_file() const;
  // The first line of the subscriptions file: the session it belongs to.
  std::string session_key() const;
  std::set<std::string> load_subscriptions() const;
  void save_subscriptions(const std::set<std::string>& subscribed) const;
  void mqtt_loop();
  void heartbeat();
  void request_sync();

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
  MqttConnectOptions connect_options_;  // set by start()

  std::recursive_mutex reload_mu_;  // serialises reload_flows() and the repository
  std::atomic<std::int64_t> last_heartbeat_ms_{0};
  std::atomic<std::int64_t> connected_at_ms_{0};
  ClientIdCheck client_id_check_;

  std::mutex sync_mu_;                // serialises sync_subscriptions()
  std::set<std::string> subscribed_;  // guarded by sync_mu_; what the broker has for our session
  std::set<std::string> refused_;     // guarded by sync_mu_; refused by the broker, not retried

  std::mutex mqtt_mu_;
  std::condition_variable mqtt_cv_;  // the MQTT thread: stopping, or a sync to do
  bool stopping_ = false;            // guarded by mqtt_mu_
  bool sync_needed_ = false;         // guarded by mqtt_mu_
  std::thread mqtt_thread_;
};

}  // namespace gateway
