// Supervisor: the gateway's periodic and process-level duties that are not MQTT. The flow reload
// every FLOWS_RELOAD_INTERVAL_SECONDS, the database health probe, and the signal loop: the part of
// the reference's GatewayMqttClient.run_forever() (src/mqtt_client.py) that waits and reloads
// after the client has connected. What the client does itself (load_mqtt_server, load_flows,
// reload_flows, start, stop, on_message) stays in GatewayMqttClient.
//
// Threads:
// - start() starts the timer thread. Every 200 ms it checks what is due:
//   - every `reload_every` it calls GatewayMqttClient::reload_flows(); the first time is one
//     interval after start(), because start-up has just loaded the flows. A failure logs "flow
//     reload failed (keeping the current flows): ..." and the next interval tries again.
//   - every `db_probe_every`, the first time at once, it pings the database on the client's control
//     connection (GatewayMqttClient::ping_database()) and keeps Metrics::db_connected and
//     db_down_since_ms current, so that /healthz and the summary line see an outage even when no
//     message flows. One line when the database goes ("database unreachable") and one when it comes
//     back ("database reachable again").
//   The timer thread never calls the broker: reload_flows() only asks the MQTT thread to bring
//   the subscriptions in line. So a message handler blocked on a full spool (which holds Paho's
//   lock) cannot stall the reloads or the probe.
// - run_forever() runs on the caller's thread: main, the one thread that receives the signals
//   (SignalMask). It blocks until SIGTERM or SIGINT (returned). On SIGHUP it calls on_hangup (main
//   reopens the log files there), then reloads the flows at once. After every wait, at most a
//   second apart and also after a signal, it calls on_tick (main feeds the systemd watchdog and
//   writes the summary line there).
//
// What stays on the MQTT thread (GatewayMqttClient): the subscriptions, the heartbeat and the
// presence refresh. All three call the broker, and only the MQTT thread may do that. The
// heartbeat is not even triggered from here: its cadence (MQTT_HEARTBEAT_SECONDS) and what it
// reads (when the broker last echoed it, when the connection came up) belong to the broker
// connection, and a trigger from this thread would only add a hop without taking any duty away.
//
// A reload from the timer and one from SIGHUP may overlap; GatewayMqttClient serialises them.
// Errors: a failed reload or ping is logged and retried at the next interval; the timer thread
// never stops for an error. run_forever() throws only what SignalMask::wait() throws.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace spdlog {
class logger;
}

namespace gateway {

class GatewayMqttClient;
class Metrics;
class SignalMask;

struct SupervisorOptions {
  // FLOWS_RELOAD_INTERVAL_SECONDS.
  std::chrono::milliseconds reload_every{std::chrono::seconds(600)};
  // How often the health probe pings the database.
  std::chrono::milliseconds db_probe_every{std::chrono::seconds(5)};
  // Per-thread database client state (MySqlThreadScope), held by the timer thread for its
  // lifetime: the probe and the reloads open the control connection there. Optional.
  std::function<std::shared_ptr<void>()> thread_scope;
};

class Supervisor {
 public:
  // `client` and `metrics` must outlive the supervisor. `log` takes the lines listed above.
  Supervisor(GatewayMqttClient& client, Metrics& metrics, SupervisorOptions options,
             std::shared_ptr<spdlog::logger> log);
  ~Supervisor();  // stop()s

  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts the timer thread. Call once, after GatewayMqttClient::start().
  void start();
  // Blocks until SIGTERM or SIGINT arrives (returned); SIGHUP calls on_hangup, then reloads the
  // flows at once. `on_tick` runs about every second. Either function may be empty.
  int run_forever(const SignalMask& signals, const std::function<void()>& on_hangup,
                  const std::function<void()>& on_tick);
  // Stops and joins the timer thread (it finishes a reload or ping in progress first). Call it
  // before GatewayMqttClient::stop(). Idempotent.
  void stop();

 private:
  void timer_loop();
  // One ping; updates the health state in Metrics and logs its changes.
  void probe_database();
  // reload_flows(), logging a failure instead of throwing it.
  void reload_flows();

  GatewayMqttClient& client_;
  Metrics& metrics_;
  SupervisorOptions options_;
  std::shared_ptr<spdlog::logger> log_;

  std::mutex mu_;
  std::condition_variable cv_;  // stopping_
  bool stopping_ = false;       // guarded by mu_
  std::thread timer_;
};

}  // namespace gateway
