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
// Broker failover (MQTT_FAILOVER_SECONDS > 0, issue 15): every enabled mqtt_servers row is a
// candidate, is_default first, then by id. start() connects to the first that answers. When the
// current broker has been unreachable for MQTT_FAILOVER_SECONDS, the MQTT thread moves to the next
// candidate (one warning line per move; /metrics gateway_broker_info); while it is not on the
// first, it probes the first every MQTT_FAILOVER_SECONDS with a short clean-session connection
// under another client id, and moves back as soon as that connects. Each broker keeps its own
// persistent session: what it queued for us while we were elsewhere comes when we connect to it
// again (moving back drains the first broker's queue); the spool recognises each broker's
// redeliveries on their own (Spool::new_broker_connection). Subscriptions are restored on every
// move (all filters, unless the broker has the session and the subscriptions file is its own).
//
// Start during a database outage: every successful reload saves the broker rows and the flows
// in SPOOL_DIR/flow-cache.json (flow_cache.h); main hands that copy to use_cached() when the
// database cannot be reached at start-up. The first ping that reaches the database reloads the
// flows from it (and saves a new copy).
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

#include "gateway/flow_cache.h"
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
  // The probe's longest wait for the retained message. With the heartbeat on, the probe
  // publishes a marker on the heartbeat topic after its SUBACK; once that comes back it waits
  // only `grace` more (a broker may send a retained message a little after live ones).
  std::chrono::milliseconds answer{500};
  std::chrono::milliseconds grace{150};
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
  // Every enabled broker, the failover candidates in order. Throws Error("no enabled MQTT server
  // ...") when there is none.
  std::vector<MqttServer> load_mqtt_servers();
  // The enabled flows.
  std::vector<Flow> load_flows();
  // Loads the flows, installs them, logs what changed and asks the MQTT thread to subscribe and
  // unsubscribe accordingly; never calls the broker itself. A new STORE_TABLE flow whose mapping
  // does not fit its table as information_schema shows it now is not activated (one error line
  // naming the flow and the problem, on every reload until it is fixed). One that is active
  // stays active with an error line: unsubscribing would let the broker drop its messages,
  // while the processor holds them in the spool until the table is fixed. Throws what the
  // repository throws (the old flows stay). Also reloads the broker candidates and, when all of it
  // worked, saves the copy for a start during a database outage (a failure to write it is a
  // warning).
  FlowDiff reload_flows();

  // Installs flows and broker candidates from the cached copy instead of the database (which is
  // down at start-up); start() then connects without the database. Logs one warning.
  void use_cached(const FlowCacheContents& copy);

  // Loads broker and flows, checks that no other live gateway uses MQTT_CLIENT_ID (waiting up to
  // ClientIdCheck::wait for it to go; ConfigError if it stays), connects, subscribes (waiting for
  // the broker's answer) and starts the MQTT thread. Throws Error when any of that fails.
  void start();
  // Stops the MQTT thread and disconnects cleanly. Idempotent.
  void stop();

  // Pings the database on the control connection (SELECT 1): false when it is unreachable. A
  // failed ping drops the connection, so that the next load reconnects. After a start from the
  // cached copy, the first ping that answers reloads the flows from the database. Never throws.
  // (The Supervisor's health probe.)
  bool ping_database();

  // Subscribes to the filters the flows need and the broker does not have for this session, and
  // unsubscribes from those no flow needs; records the result. Throws Error when the broker
  // refuses or does not answer (what was not confirmed is tried again next time).
  void sync_subscriptions();

  // Connection callbacks (public for the tests; the connection calls them).
  void on_reconnected(bool session_present);
  void on_message(const MqttMessage& message);

 private:
  // Checks the STORE_TABLE flows' mappings against their tables: takes the new ones that do not
  // fit out of `flows`, logs every one that does not fit. A flow active before (in this run or,
  // at start-up, in the last one) stays, held: its messages wait in the spool.
  void check_store_tables(std::vector<Flow>& flows);
  // The flows the last run had active (its cached copy of this spool); empty without one.
  std::set<std::int64_t> flows_of_last_run() const;
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

  // Failover (MQTT thread, and start()).
  std::vector<MqttServer> candidates() const;
  // The connect options for a broker row. Throws ConfigError for a row that cannot work.
  MqttConnectOptions options_for(const MqttServer& server) const;
  MqttHandlers handlers();
  // Makes `server` (candidate `index`) the current broker: a new connection, connected, presence,
  // subscriptions restored. Throws Error when it cannot connect (connection_ is then the new,
  // unconnected connection) or subscribe.
  void attach(std::size_t index, const MqttServer& server, bool check_client_id);
  // What start() and a failover do once connected.
  void on_connected(bool session_present);
  // Moves when the current broker has been down long enough, or back to the first when it answers.
  void maybe_fail_over();
  void move_to(std::size_t index, const std::string& why);
  // A short clean-session connection under another client id: true if the broker accepts it.
  bool probe_reachable(const MqttServer& server);
  // Saves the copy (flow_cache.h); logs instead of throwing.
  void save_cache(const std::vector<Flow>& flows, std::uint64_t committed_seq);

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
  // Replaced only on the MQTT thread (failover) or by start()/stop() while it does not run.
  std::unique_ptr<MqttConnection> connection_;
  MqttConnectOptions connect_options_;  // set by attach()
  FlowCache cache_;
  std::atomic<bool> from_cache_{false};  // flows from the copy; the database not reached since

  mutable std::mutex servers_mu_;
  std::vector<MqttServer> candidates_;  // guarded by servers_mu_; replaced by reloads
  std::int64_t current_id_ = 0;         // guarded by servers_mu_; the broker we are on
  std::string current_uri_;             // guarded by servers_mu_; its URI (spool window key)
  // Steady ms since when the current broker has not answered; 0 while connected.
  std::atomic<std::int64_t> down_since_ms_{0};
  std::int64_t next_probe_ms_ = 0;  // MQTT thread only: when to probe the first broker again

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
