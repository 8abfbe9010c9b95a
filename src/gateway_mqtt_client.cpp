#include "gateway/gateway_mqtt_client.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include "gateway/errors.h"
#include "gateway/signal_mask.h"

namespace gateway {
namespace {

std::string join_codes(const std::vector<Flow>& flows) {
  std::string out;
  for (const Flow& f : flows) out += (out.empty() ? "" : ", ") + f.code;
  return out.empty() ? "-" : out;
}

}  // namespace

GatewayMqttClient::GatewayMqttClient(const Settings& settings, RepositoryFactory repositories,
                                     FlowTable& flows, Spool& spool, Metrics& metrics,
                                     ConnectionFactory connect, std::shared_ptr<spdlog::logger> log)
    : settings_(settings),
      repositories_(std::move(repositories)),
      flows_(flows),
      spool_(spool),
      metrics_(metrics),
      connect_(std::move(connect)),
      log_(std::move(log)) {}

GatewayMqttClient::~GatewayMqttClient() { stop(); }

FlowRepository& GatewayMqttClient::repo() {
  if (!repo_) repo_ = repositories_();
  return *repo_;
}

MqttServer GatewayMqttClient::load_mqtt_server() {
  std::lock_guard lock(reload_mu_);
  try {
    auto server = repo().load_mqtt_server();
    if (!server) throw Error("no enabled MQTT server in table mqtt_servers (enabled = 1)");
    return *server;
  } catch (const DbUnavailable&) {
    repo_.reset();
    throw;
  }
}

std::vector<Flow> GatewayMqttClient::load_flows() {
  std::lock_guard lock(reload_mu_);
  try {
    return repo().load_flows();
  } catch (const DbUnavailable&) {
    repo_.reset();
    throw;
  }
}

std::string GatewayMqttClient::subscription(const std::string& filter) const {
  if (settings_.mqtt_shared_group.empty()) return filter;
  return "$share/" + settings_.mqtt_shared_group + "/" + filter;
}

std::vector<std::string> GatewayMqttClient::subscriptions(
    const std::vector<std::string>& filters) const {
  std::vector<std::string> out;
  out.reserve(filters.size());
  for (const std::string& f : filters) out.push_back(subscription(f));
  return out;
}

std::string GatewayMqttClient::heartbeat_topic() const {
  return "mqtt-gateway/heartbeat/" + settings_.mqtt_client_id;
}

FlowDiff GatewayMqttClient::reload_flows() {
  std::lock_guard lock(reload_mu_);
  FlowDiff diff = flows_.replace(load_flows());
  metrics_.last_reload_unix.store(unix_now_us() / 1000000);
  for (const auto& [flow, why] : diff.invalid) {
    log_->error("flow {} disabled: invalid topic filter '{}': {}", flow.code, flow.topic, why);
  }
  if (diff.empty()) {
    log_->debug("flows reloaded: no change");
  } else {
    std::string changed;
    for (const auto& [before, after] : diff.changed)
      changed += (changed.empty() ? "" : ", ") + after.code;
    log_->info("flows reloaded: added [{}], removed [{}], changed [{}]; {} flow(s) active",
               join_codes(diff.added), join_codes(diff.removed), changed.empty() ? "-" : changed,
               flows_.snapshot()->flows().size());
  }
  if (connection_ && connection_->connected()) {
    if (!diff.unsubscribe.empty()) {
      connection_->unsubscribe(subscriptions(diff.unsubscribe));
      for (const auto& f : diff.unsubscribe) log_->info("unsubscribed from {}", subscription(f));
    }
    if (!diff.subscribe.empty()) {
      connection_->subscribe(subscriptions(diff.subscribe), false);
      for (const auto& f : diff.subscribe) log_->info("subscribed to {}", subscription(f));
    }
  }
  return diff;
}

void GatewayMqttClient::on_connect(bool reconnect) {
  connected_at_ms_ = steady_now_ms();
  last_heartbeat_ms_ = steady_now_ms();
  metrics_.broker_connected = true;
  metrics_.broker_down_since_ms = 0;
  auto filters = subscriptions(flows_.snapshot()->filters());
  if (settings_.mqtt_heartbeat_seconds > 0) filters.push_back(heartbeat_topic());
  log_->info("{} to the broker; subscribing to {} filter(s)",
             reconnect ? "reconnected" : "connected", filters.size());
  // Always resubscribe: a broker without persistence (or a new one) has forgotten the session.
  if (reconnect) connection_->subscribe(filters, false);
}

void GatewayMqttClient::on_message(const MqttMessage& m) {
  if (settings_.mqtt_heartbeat_seconds > 0 && m.topic == heartbeat_topic()) {
    last_heartbeat_ms_ = steady_now_ms();
    return;
  }
  auto appended = spool_.append(m.topic, m.payload, m.packet_id, m.dup, unix_now_us());
  if (!appended) {
    // The spool was closed for shutdown while this message waited for space. Returning would
    // acknowledge a message that is not stored, so hold it: the broker redelivers it after the
    // process exits.
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }
  if (appended->redelivery) {
    metrics_.redeliveries.fetch_add(1, std::memory_order_relaxed);
    log_->info("broker redelivered spooled message (packet id {}, topic {}); dropped", m.packet_id,
               m.topic);
    return;
  }
  metrics_.received.fetch_add(1, std::memory_order_relaxed);
}

void GatewayMqttClient::start() {
  const MqttServer server = load_mqtt_server();
  reload_flows();

  MqttConnectOptions o;
  o.host = server.host;
  o.port = server.port;
  o.client_id = settings_.mqtt_client_id;
  o.username = server.username;
  o.password = server.password;
  o.use_tls = server.use_tls;
  o.ca_file = server.ca_file;
  o.keepalive_seconds = settings_.mqtt_keepalive;
  o.clean_session = false;
  o.reconnect_max = std::chrono::seconds(settings_.mqtt_reconnect_max_seconds);
  MqttHandlers h;
  h.connected = [this](bool reconnect) { on_connect(reconnect); };
  h.connection_lost = [this](const std::string& cause) {
    metrics_.broker_connected = false;
    metrics_.broker_down_since_ms = steady_now_ms();
    log_->warn("lost the broker connection: {}", cause);
  };
  h.message = [this](const MqttMessage& m) { on_message(m); };
  log_->info("connecting to broker {}:{} (server id {}, tls {}, user {})", server.host, server.port,
             server.id, server.use_tls ? "on" : "off", server.username.value_or("-"));
  connection_ = connect_(std::move(o), std::move(h));
  connection_->connect();

  auto filters = subscriptions(flows_.snapshot()->filters());
  if (settings_.mqtt_heartbeat_seconds > 0) filters.push_back(heartbeat_topic());
  connection_->subscribe(filters, true);
  for (const auto& f : filters) log_->info("subscribed to {}", f);

  timer_ = std::thread([this] { timer_loop(); });
}

void GatewayMqttClient::timer_loop() {
  using namespace std::chrono;
  const auto reload_every = seconds(settings_.flows_reload_interval_seconds);
  const auto heartbeat_every = seconds(settings_.mqtt_heartbeat_seconds);
  auto next_reload = steady_clock::now() + reload_every;
  auto next_heartbeat = steady_clock::now() + heartbeat_every;
  auto next_db_probe = steady_clock::now();
  std::unique_lock lock(timer_mu_);
  while (!timer_cv_.wait_for(lock, milliseconds(200), [this] { return stopping_; })) {
    const auto now = steady_clock::now();
    lock.unlock();
    if (now >= next_reload) {
      next_reload = now + reload_every;
      try {
        reload_flows();
      } catch (const std::exception& e) {
        log_->error("flow reload failed (keeping the current flows): {}", e.what());
      }
    }
    if (now >= next_db_probe) {
      next_db_probe = now + seconds(5);
      probe_database();
    }
    if (settings_.mqtt_heartbeat_seconds > 0 && now >= next_heartbeat) {
      next_heartbeat = now + heartbeat_every;
      const std::int64_t silent_ms = steady_now_ms() - last_heartbeat_ms_;
      const std::int64_t up_ms = steady_now_ms() - connected_at_ms_;
      const std::int64_t limit_ms = 3000LL * settings_.mqtt_heartbeat_seconds;
      if (spool_.stats().full) {
        // A full spool blocks the message thread on purpose, inside Paho's client lock: no
        // heartbeat can arrive, and a publish would block this thread (reloads, probes) too.
        // Count the time as heard from, so that no reconnect follows once there is room again.
        last_heartbeat_ms_ = steady_now_ms();
      } else if (connection_->connected() && silent_ms > limit_ms && up_ms > limit_ms) {
        connection_->force_reconnect("no heartbeat from the broker for " +
                                     std::to_string(silent_ms / 1000) + " s (stalled session)");
      } else {
        connection_->publish(heartbeat_topic(), std::to_string(unix_now_us()), 1);
      }
    }
    lock.lock();
  }
}

void GatewayMqttClient::probe_database() {
  bool up = false;
  {
    std::lock_guard lock(reload_mu_);
    try {
      up = repo().ping();
    } catch (const std::exception&) {
      up = false;
    }
    if (!up) repo_.reset();
  }
  if (up) {
    if (!metrics_.db_connected.exchange(true)) log_->info("database reachable again");
    metrics_.db_down_since_ms = 0;
  } else {
    if (metrics_.db_connected.exchange(false)) log_->error("database unreachable");
    if (metrics_.db_down_since_ms.load() == 0) metrics_.db_down_since_ms = steady_now_ms();
  }
}

int GatewayMqttClient::run_forever(const SignalMask& signals,
                                   const std::function<void()>& on_hangup,
                                   const std::function<void()>& on_tick) {
  for (;;) {
    std::optional<int> sig = signals.wait(std::chrono::seconds(1));
    if (on_tick) on_tick();
    if (!sig) continue;
    if (*sig == SIGHUP) {
      log_->info("SIGHUP: reloading flows and reopening log files");
      if (on_hangup) on_hangup();
      try {
        reload_flows();
      } catch (const std::exception& e) {
        log_->error("flow reload failed (keeping the current flows): {}", e.what());
      }
      continue;
    }
    log_->info("{}: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    return *sig;
  }
}

void GatewayMqttClient::stop() {
  {
    std::lock_guard lock(timer_mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  // A message callback waiting for room in a full spool holds Paho's client lock, so the timer
  // (publishing a heartbeat) and disconnect() below would wait for it forever. Let it spool the
  // message and return; nothing is acknowledged that is not spooled.
  spool_.stop_back_pressure();
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
  if (connection_) {
    connection_->disconnect(std::chrono::seconds(5));
    metrics_.broker_connected = false;
    log_->info("disconnected from the broker");
  }
}

}  // namespace gateway
