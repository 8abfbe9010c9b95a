#include "gateway/gateway_mqtt_client.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <utility>

#include "gateway/backoff.h"
#include "gateway/clock.h"
#include "gateway/column_map.h"
#include "gateway/errors.h"
#include "gateway/thread_name.h"

namespace gateway {
namespace {

std::string join_codes(const std::vector<Flow>& flows) {
  std::string out;
  for (const Flow& f : flows) out += (out.empty() ? "" : ", ") + f.code;
  return out.empty() ? "-" : out;
}

// How a broker is named in the log, /metrics and the spool's redelivery windows (no credentials).
std::string broker_uri(const MqttServer& s) {
  return (s.use_tls ? "ssl://" : "tcp://") + s.host + ":" + std::to_string(s.port);
}

}  // namespace

GatewayMqttClient::GatewayMqttClient(const Settings& settings, RepositoryFactory repositories,
                                     FlowTable& flows, Spool& spool, Metrics& metrics,
                                     ConnectionFactory connect, std::shared_ptr<spdlog::logger> log,
                                     ClientIdCheck client_id_check)
    : settings_(settings),
      repositories_(std::move(repositories)),
      flows_(flows),
      spool_(spool),
      metrics_(metrics),
      connect_(std::move(connect)),
      log_(std::move(log)),
      cache_(settings.spool_dir),
      client_id_check_(client_id_check) {}

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

std::vector<MqttServer> GatewayMqttClient::load_mqtt_servers() {
  std::lock_guard lock(reload_mu_);
  try {
    auto servers = repo().load_mqtt_servers();
    if (servers.empty()) throw Error("no enabled MQTT server in table mqtt_servers (enabled = 1)");
    return servers;
  } catch (const DbUnavailable&) {
    repo_.reset();
    throw;
  }
}

std::vector<MqttServer> GatewayMqttClient::candidates() const {
  std::lock_guard lock(servers_mu_);
  return candidates_;
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

void GatewayMqttClient::check_store_tables(std::vector<Flow>& flows) {
  std::lock_guard lock(reload_mu_);
  const auto current = flows_.snapshot();
  // At start-up nothing is active yet, but the last run's flows may have messages waiting in
  // the spool: dropped, they would become dead letters for a fault of their table.
  std::optional<std::set<std::int64_t>> last_run;
  const auto active = [&](std::int64_t id) {
    if (current->flows().empty()) {
      if (!last_run) last_run = flows_of_last_run();
      return last_run->count(id) > 0;
    }
    return std::any_of(current->flows().begin(), current->flows().end(),
                       [id](const Flow& f) { return f.id == id; });
  };
  try {
    std::erase_if(flows, [&](const Flow& f) {
      if (parse_flow_action(f.action) != FlowAction::kStoreTable) return false;
      const TableInfo table = f.target_table && !f.target_table->empty()
                                  ? repo().describe_table(*f.target_table)
                                  : TableInfo{};
      const FlowMapping m = compile_flow_mapping(f.target_table, f.column_map, f.write_mode, table);
      if (m.ok()) return false;
      if (active(f.id)) {
        log_->error("flow {}: STORE_TABLE {}; its messages wait in the spool until it is fixed",
                    f.code, m.map.error);
        return false;
      }
      log_->error("flow {} not activated: STORE_TABLE {}", f.code, m.map.error);
      return true;
    });
  } catch (const DbUnavailable&) {
    repo_.reset();
    throw;
  }
}

std::set<std::int64_t> GatewayMqttClient::flows_of_last_run() const {
  std::set<std::int64_t> ids;
  try {
    const auto copy = cache_.load();
    if (copy && copy->spool_id == spool_.id()) {
      for (const Flow& f : copy->flows) ids.insert(f.id);
    }
  } catch (const Error& e) {
    log_->warn("{}; STORE_TABLE flows that do not fit their tables are not activated", e.what());
  }
  return ids;
}

std::string GatewayMqttClient::subscription(const std::string& filter) const {
  if (settings_.mqtt_shared_group.empty()) return filter;
  return "$share/" + settings_.mqtt_shared_group + "/" + filter;
}

std::set<std::string> GatewayMqttClient::wanted_subscriptions() const {
  std::set<std::string> out;
  for (const std::string& f : flows_.snapshot()->filters()) out.insert(subscription(f));
  if (settings_.mqtt_heartbeat_seconds > 0) out.insert(heartbeat_topic());
  return out;
}

std::string GatewayMqttClient::heartbeat_topic() const {
  return "mqtt-gateway/heartbeat/" + settings_.mqtt_client_id;
}

std::string GatewayMqttClient::presence_topic() const {
  return "mqtt-gateway/presence/" + settings_.mqtt_client_id;
}

std::string GatewayMqttClient::presence() const {
  return spool_.id() + " " + std::to_string(unix_now_ms());
}

std::string GatewayMqttClient::probe_presence(const MqttConnectOptions& o) {
  MqttConnectOptions p = o;
  p.client_id = o.client_id + "-probe-" + spool_.id().substr(0, 8);
  p.clean_session = true;
  std::mutex mu;
  std::condition_variable cv;
  std::optional<std::string> found;  // guarded by mu
  bool marker_back = false;          // guarded by mu
  MqttHandlers h;
  const std::string topic = presence_topic();
  // The marker goes to the heartbeat topic, which a gateway with the heartbeat on already
  // publishes and subscribes to (so ACLs allow it); with the heartbeat off there is no marker.
  const bool with_marker = settings_.mqtt_heartbeat_seconds > 0;
  const std::string marker = heartbeat_topic();
  const std::string marker_payload = "probe " + spool_.id();  // ours, not another probe's
  h.message = [&](const MqttMessage& m) {
    const bool ours = with_marker && m.topic == marker && m.payload == marker_payload;
    if (m.topic != topic && !ours) return;
    {
      std::lock_guard lock(mu);
      if (m.topic == topic) {
        found = std::string(m.payload);
      } else {
        marker_back = true;
      }
    }
    cv.notify_all();
  };
  auto probe = connect_(std::move(p), std::move(h));
  probe->connect();
  std::vector<std::string> filters{topic};
  if (with_marker) filters.push_back(marker);
  const std::vector<SubscribeRefusal> refused = probe->subscribe(filters, true);
  for (const SubscribeRefusal& r : refused) {
    if (r.filter != topic) continue;
    log_->error(
        "the broker refused the subscription to {} ({}): cannot check that no other running "
        "gateway uses MQTT_CLIENT_ID '{}' (each instance needs its own)",
        topic, r.reason, settings_.mqtt_client_id);
    probe->disconnect(std::chrono::seconds(2));
    return {};
  }
  // Brokers send a retained presence right after the SUBACK, mostly before anything published
  // later on this connection comes back; some queue retained messages apart from live ones, so
  // the marker's return only shortens the wait to `grace`. Without the marker (no heartbeat,
  // an ACL, a refused subscription) the wait is `answer`.
  if (with_marker && refused.empty()) probe->publish(marker, marker_payload, 0, false);
  std::string payload;
  {
    std::unique_lock lock(mu);
    cv.wait_for(lock, client_id_check_.answer, [&] { return found.has_value() || marker_back; });
    if (!found && marker_back) {
      cv.wait_for(lock, client_id_check_.grace, [&] { return found.has_value(); });
    }
    payload = found.value_or("");
  }
  probe->disconnect(std::chrono::seconds(2));
  return payload;
}

void GatewayMqttClient::check_client_id_free(const MqttConnectOptions& o) {
  const auto until = std::chrono::steady_clock::now() + client_id_check_.wait;
  for (bool logged = false;;) {
    const std::string other = probe_presence(o);
    const auto space = other.find(' ');
    const std::string spool = other.substr(0, space);
    std::int64_t seen_ms = 0;
    if (space != std::string::npos) {
      const char* end = other.data() + other.size();
      if (std::from_chars(other.data() + space + 1, end, seen_ms).ptr != end) seen_ms = 0;
    }
    const std::int64_t age_ms = unix_now_ms() - seen_ms;
    // Empty, ours (a restart of this gateway), or stale (its owner died without clearing it).
    if (other.empty() || spool == spool_.id() || age_ms > client_id_check_.fresh.count()) return;
    const std::string what = "MQTT_CLIENT_ID '" + settings_.mqtt_client_id +
                             "' is in use by another running gateway (spool " + spool + ", seen " +
                             std::to_string(age_ms / 1000) +
                             " s ago): every instance needs its own MQTT_CLIENT_ID";
    if (std::chrono::steady_clock::now() + client_id_check_.poll > until) throw ConfigError(what);
    if (!std::exchange(logged, true)) log_->error("{}; waiting for it to go", what);
    std::this_thread::sleep_for(client_id_check_.poll);
  }
}

std::filesystem::path GatewayMqttClient::subscriptions_file() const {
  return std::filesystem::path(settings_.spool_dir) / "mqtt-subscriptions";
}

std::string GatewayMqttClient::session_key() const {
  return "# session " + std::string(connect_options_.use_tls ? "ssl://" : "tcp://") +
         connect_options_.host + ":" + std::to_string(connect_options_.port) + " " +
         connect_options_.client_id;
}

std::set<std::string> GatewayMqttClient::load_subscriptions() const {
  std::ifstream in(subscriptions_file());
  std::string line;
  // Written for another broker or client id: it says nothing about this session.
  if (!std::getline(in, line) || line != session_key()) return {};
  std::set<std::string> out;
  while (std::getline(in, line)) {
    if (!line.empty()) out.insert(line);
  }
  return out;
}

void GatewayMqttClient::save_subscriptions(const std::set<std::string>& subscribed) const {
  const auto path = subscriptions_file();
  const auto temp = path.string() + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << session_key() << "\n";
    for (const std::string& s : subscribed) out << s << "\n";
    if (!out) {
      log_->warn("cannot write {}: the next start subscribes to every filter again", temp);
      return;
    }
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) log_->warn("cannot replace {}: {}", path.string(), ec.message());
}

FlowDiff GatewayMqttClient::reload_flows() {
  FlowDiff diff;
  {
    std::lock_guard lock(reload_mu_);
    std::vector<Flow> flows = load_flows();
    check_store_tables(flows);
    // The broker candidates and the spool offset for the copy (flow_cache.h).
    std::vector<MqttServer> servers;
    std::uint64_t committed_seq = 0;
    try {
      servers = repo().load_mqtt_servers();
      committed_seq = repo().last_committed_seq(spool_.id());
    } catch (const DbUnavailable&) {
      repo_.reset();
      throw;
    }
    if (!servers.empty()) {
      std::lock_guard servers_lock(servers_mu_);
      candidates_ = std::move(servers);
    }
    save_cache(flows, committed_seq);
    diff = flows_.replace(std::move(flows));
    if (from_cache_.exchange(false)) {
      metrics_.flows_from_cache = false;
      log_->info("flows loaded from the database again (the gateway started from the cached copy)");
    }
  }
  metrics_.last_reload_unix.store(unix_now_us() / 1000000);
  metrics_.flow_reloads.fetch_add(1, std::memory_order_relaxed);
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
  if (!diff.subscribe.empty() || !diff.unsubscribe.empty()) request_sync();
  return diff;
}

void GatewayMqttClient::save_cache(const std::vector<Flow>& flows, std::uint64_t committed_seq) {
  FlowCacheContents c;
  c.servers = candidates();
  c.flows = flows;
  c.spool_id = spool_.id();
  c.committed_seq = committed_seq;
  c.written_unix_ms = unix_now_ms();
  try {
    cache_.save(c);
  } catch (const std::exception& e) {
    // Not fatal: only a start during a database outage needs it, and it would use the older copy.
    log_->warn("{}; a start while the database is down would use an older copy", e.what());
  }
}

void GatewayMqttClient::use_cached(const FlowCacheContents& copy) {
  std::lock_guard lock(reload_mu_);
  {
    std::lock_guard servers_lock(servers_mu_);
    candidates_ = copy.servers;
  }
  const FlowDiff diff = flows_.replace(copy.flows);
  for (const auto& [flow, why] : diff.invalid) {
    log_->error("flow {} disabled: invalid topic filter '{}': {}", flow.code, flow.topic, why);
  }
  from_cache_ = true;
  metrics_.flows_from_cache = true;
  const auto age_s = (unix_now_ms() - copy.written_unix_ms) / 1000;
  log_->warn(
      "starting from the cached copy {} ({} flow(s), {} broker(s), saved {} s ago): messages are "
      "spooled, and stored when the database answers",
      cache_.path().string(), flows_.snapshot()->flows().size(), copy.servers.size(), age_s);
}

void GatewayMqttClient::request_sync() {
  {
    std::lock_guard lock(mqtt_mu_);
    sync_needed_ = true;
  }
  mqtt_cv_.notify_all();
}

void GatewayMqttClient::sync_subscriptions() {
  std::lock_guard lock(sync_mu_);
  const std::set<std::string> wanted = wanted_subscriptions();
  std::vector<std::string> add, drop;
  // Refused filters are not asked for again until a reload changes them (a refusal is a broker
  // ACL or limit: asking every few seconds would only repeat it).
  std::erase_if(refused_, [&](const std::string& f) { return !wanted.count(f); });
  std::set<std::string> skip = subscribed_;
  skip.insert(refused_.begin(), refused_.end());
  std::set_difference(wanted.begin(), wanted.end(), skip.begin(), skip.end(),
                      std::back_inserter(add));
  std::set_difference(subscribed_.begin(), subscribed_.end(), wanted.begin(), wanted.end(),
                      std::back_inserter(drop));
  if (add.empty() && drop.empty()) return;
  // Many filters per packet, but bounded, so that thousands of flows need few round trips
  // without one huge SUBSCRIBE.
  constexpr std::size_t kPerPacket = 256;
  for (std::size_t i = 0; i < drop.size(); i += kPerPacket) {
    const std::vector<std::string> part(
        drop.begin() + static_cast<std::ptrdiff_t>(i),
        drop.begin() + static_cast<std::ptrdiff_t>(std::min(drop.size(), i + kPerPacket)));
    connection_->unsubscribe(part);
    for (const auto& f : part) {
      subscribed_.erase(f);
      log_->info("unsubscribed from {}", f);
    }
    save_subscriptions(subscribed_);
  }
  for (std::size_t i = 0; i < add.size(); i += kPerPacket) {
    const std::vector<std::string> part(
        add.begin() + static_cast<std::ptrdiff_t>(i),
        add.begin() + static_cast<std::ptrdiff_t>(std::min(add.size(), i + kPerPacket)));
    const std::vector<SubscribeRefusal> no = connection_->subscribe(part, true);
    for (const auto& f : part) {
      const auto refusal = std::find_if(no.begin(), no.end(),
                                        [&](const SubscribeRefusal& r) { return r.filter == f; });
      if (refusal != no.end()) {
        refused_.insert(f);
        log_->error(
            "the broker refused the subscription to {} (SUBACK {}; its flow receives nothing; "
            "check the broker's ACL for this client)",
            f, refusal->reason);
        continue;
      }
      subscribed_.insert(f);
      log_->info("subscribed to {}", f);
    }
    save_subscriptions(subscribed_);
  }
}

void GatewayMqttClient::on_reconnected(bool session_present) {
  connected_at_ms_ = steady_now_ms();
  last_heartbeat_ms_ = steady_now_ms();
  metrics_.broker_connected = true;
  metrics_.broker_down_since_ms = 0;
  down_since_ms_ = 0;
  std::string uri;
  {
    std::lock_guard lock(servers_mu_);
    uri = current_uri_;
  }
  spool_.new_broker_connection(session_present, uri);
  if (!session_present) {
    // A broker without persistence (or a new one) has forgotten the session: subscribe again,
    // and forget the file at once, so that a restart before the SUBACK does not trust it.
    std::lock_guard lock(sync_mu_);
    subscribed_.clear();
    refused_.clear();
    save_subscriptions(subscribed_);
  }
  log_->info("reconnected to the broker ({})",
             session_present ? "session present" : "new session: subscribing again");
  request_sync();
}

void GatewayMqttClient::on_message(const MqttMessage& m) {
  if (settings_.mqtt_heartbeat_seconds > 0 && m.topic == heartbeat_topic()) {
    last_heartbeat_ms_ = steady_now_ms();
    return;
  }
  // The gateways' own heartbeats and presences (of this instance and the others on the broker)
  // are not data: a flow on '#' would make each of them a dead letter, every few seconds. Unless
  // a flow asks for them by name (its filter starts with mqtt-gateway/).
  if (m.topic.starts_with("mqtt-gateway/heartbeat/") ||
      m.topic.starts_with("mqtt-gateway/presence/")) {
    const auto flows = flows_.snapshot();
    if (std::none_of(flows->flows().begin(), flows->flows().end(),
                     [](const Flow& f) { return f.topic.starts_with("mqtt-gateway/"); })) {
      return;
    }
  }
  // A payload over MAX_PAYLOAD_BYTES can only become a dead letter: spool just the part that
  // rejected_messages keeps, so that it is never held in memory (or on disk) again.
  std::string_view payload = m.payload;
  std::uint64_t original_size = 0;
  if (payload.size() > settings_.max_payload_bytes) {
    original_size = payload.size();
    // Strictly shorter than the original (the record format requires it), whatever the limits.
    payload = payload.substr(
        0, std::min(settings_.rejected_payload_max_bytes, settings_.max_payload_bytes));
  }
  const std::int64_t arrival_us = unix_now_us();
  // MQTT 5: the expiry becomes a deadline from arrival (the broker deducted its own time), so
  // that a message still in the spool when it passes is not stored.
  SpoolPropertiesView properties{
      .expiry_deadline_us =
          m.expiry_seconds ? arrival_us + static_cast<std::int64_t>(*m.expiry_seconds) * 1000000
                           : 0,
      .content_type = m.content_type,
      .user_properties = m.user_properties};
  if (spool_properties_bytes(properties) > kSpoolMaxPropertiesBytes) {
    // Not refused (its payload is what the flows want), but never spooled whole either.
    log_->warn(
        "message on {} carries {} bytes of user properties, more than the spool keeps ({}); "
        "stored without them",
        m.topic, spool_properties_bytes(properties), kSpoolMaxPropertiesBytes);
    properties.user_properties = {};
  }
  std::optional<AppendResult> appended;
  std::optional<Backoff> backoff;  // made on the first failure (seeding costs)
  for (;;) {
    try {
      appended = spool_.append(m.topic, payload, m.packet_id, m.dup, arrival_us, m.retained,
                               original_size, properties);
      break;
    } catch (const std::exception& e) {
      // The disk is full or failing. Returning (or throwing through Paho's C frames) would
      // acknowledge a message that is not on disk: hold the callback, and with it the broker's
      // deliveries, until an append works again.
      if (!metrics_.spool_failing.exchange(true)) {
        metrics_.spool_failing_since_ms = steady_now_ms();
        log_->error("spool append failed: {}; holding the broker's messages until it works",
                    e.what());
      }
      if (!backoff) backoff.emplace(std::chrono::milliseconds(100), std::chrono::seconds(5));
      std::this_thread::sleep_for(backoff->next());
    }
  }
  if (metrics_.spool_failing.exchange(false)) {
    log_->info("spool writable again after {} s",
               (steady_now_ms() - metrics_.spool_failing_since_ms.exchange(0)) / 1000);
  }
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

MqttConnectOptions GatewayMqttClient::options_for(const MqttServer& server) const {
  MqttConnectOptions o;
  o.host = server.host;
  o.port = server.port;
  o.client_id = settings_.mqtt_client_id;
  o.username = server.username;
  o.password = server.password;
  o.use_tls = server.use_tls;
  o.ca_file = server.ca_file;
  if (!server.use_tls && (!server.client_cert_file.empty() || !server.client_key_file.empty())) {
    throw ConfigError("mqtt_servers id " + std::to_string(server.id) +
                      ": client_cert_file/client_key_file are set but use_tls is 0 (a client "
                      "certificate needs TLS)");
  }
  if (server.client_cert_file.empty() &&
      (!server.client_key_file.empty() || !server.client_key_password_file.empty())) {
    throw ConfigError("mqtt_servers id " + std::to_string(server.id) +
                      ": client_key_file/client_key_password_file are set without "
                      "client_cert_file");
  }
  o.client_cert_file = server.client_cert_file;
  o.client_key_file = server.client_key_file;
  o.client_key_password_file = server.client_key_password_file;
  if (!settings_.mqtt_tls_server_name.empty()) {
    if (server.use_tls) {
      o.tls_server_name = settings_.mqtt_tls_server_name;
    } else {
      log_->warn("MQTT_TLS_SERVER_NAME is set but mqtt_servers id {} has use_tls 0: ignored",
                 server.id);
    }
  }
  o.keepalive_seconds = settings_.mqtt_keepalive;
  o.mqtt_version = settings_.mqtt_version == 5 ? kMqtt5 : kMqtt311;
  o.session_expiry_seconds = settings_.mqtt_session_expiry_seconds;
  o.clean_session = false;
  o.reconnect_max = std::chrono::seconds(settings_.mqtt_reconnect_max_seconds);
  return o;
}

MqttHandlers GatewayMqttClient::handlers() {
  MqttHandlers h;
  h.reconnected = [this](bool session_present) { on_reconnected(session_present); };
  h.connection_lost = [this](const std::string& cause) {
    metrics_.broker_connected = false;
    metrics_.broker_down_since_ms = steady_now_ms();
    std::int64_t up = 0;
    down_since_ms_.compare_exchange_strong(up, steady_now_ms());
    log_->warn("lost the broker connection: {}", cause);
  };
  h.message = [this](const MqttMessage& m) { on_message(m); };
  return h;
}

void GatewayMqttClient::attach(std::size_t index, const MqttServer& server, bool check_client_id) {
  MqttConnectOptions o = options_for(server);
  {
    std::lock_guard lock(servers_mu_);
    current_id_ = server.id;
    current_uri_ = broker_uri(server);
  }
  metrics_.set_broker(broker_uri(server), server.id, index);
  log_->info(
      "connecting to broker {}:{} (server id {}, tls {}, user {}{})", server.host, server.port,
      server.id, server.use_tls ? "on" : "off", server.username.value_or("-"),
      (o.mqtt_version == kMqtt5 ? ", MQTT 5" : "") +
          (o.client_cert_file.empty() ? std::string()
                                      : ", client certificate " + o.client_cert_file) +
          (o.tls_server_name.empty() ? std::string() : ", certificate name " + o.tls_server_name));
  if (check_client_id) check_client_id_free(o);
  connect_options_ = o;
  {
    // What the broker has for our session is read from the file when it says it has one.
    std::lock_guard lock(sync_mu_);
    subscribed_.clear();
    refused_.clear();
  }
  // Redeliveries may arrive right after the CONNACK, before connect() returns here: they must be
  // looked up in this broker's window already (a new session's messages never carry DUP, so
  // keeping the window until on_connected() knows is harmless).
  spool_.new_broker_connection(true, broker_uri(server));
  connection_ = connect_(std::move(o), handlers());
  on_connected(connection_->connect());
}

void GatewayMqttClient::on_connected(bool session_present) {
  std::string uri;
  {
    std::lock_guard lock(servers_mu_);
    uri = current_uri_;
  }
  spool_.new_broker_connection(session_present, uri);
  connected_at_ms_ = steady_now_ms();
  last_heartbeat_ms_ = steady_now_ms();
  metrics_.broker_connected = true;
  metrics_.broker_down_since_ms = 0;
  down_since_ms_ = 0;
  connection_->publish(presence_topic(), presence(), 1, true);
  {
    std::lock_guard lock(sync_mu_);
    subscribed_ = session_present ? load_subscriptions() : std::set<std::string>{};
    if (!session_present) save_subscriptions(subscribed_);
  }
  log_->info("connected to the broker ({}; {} subscription(s) kept)",
             session_present ? "session present" : "new session", subscribed_.size());
  sync_subscriptions();
}

void GatewayMqttClient::start() {
  if (!from_cache_) reload_flows();
  const std::vector<MqttServer> servers = candidates();
  if (servers.empty()) throw Error("no enabled MQTT server in table mqtt_servers (enabled = 1)");
  // Without failover only the first row, as the reference; with it, the first that answers.
  const std::size_t tries = settings_.mqtt_failover_seconds > 0 ? servers.size() : 1;
  for (std::size_t i = 0;; ++i) {
    try {
      attach(i, servers[i], true);
      break;
    } catch (const ConfigError&) {
      throw;  // a setting or a row to fix (or another live gateway): not a broker outage
    } catch (const std::exception& e) {
      if (i + 1 >= tries) throw;
      log_->warn("broker {} unreachable at start-up ({}); trying the next mqtt_servers row",
                 broker_uri(servers[i]), e.what());
      connection_.reset();
    }
  }
  next_probe_ms_ = steady_now_ms() + 1000LL * settings_.mqtt_failover_seconds;
  mqtt_thread_ = std::thread([this] { mqtt_loop(); });
}

bool GatewayMqttClient::probe_reachable(const MqttServer& server) {
  try {
    MqttConnectOptions p = options_for(server);
    p.client_id = settings_.mqtt_client_id + "-probe-" + spool_.id().substr(0, 8);
    p.clean_session = true;  // leaves nothing behind on the broker
    p.connect_timeout = std::chrono::seconds(5);
    MqttHandlers h;
    h.message = [](const MqttMessage&) {};  // subscribes to nothing: nothing arrives
    auto probe = connect_(std::move(p), std::move(h));
    probe->connect();
    probe->disconnect(std::chrono::seconds(1));
    return true;
  } catch (const std::exception& e) {
    log_->debug("broker {} still unreachable: {}", broker_uri(server), e.what());
    return false;
  }
}

void GatewayMqttClient::maybe_fail_over() {
  const std::vector<MqttServer> servers = candidates();
  if (settings_.mqtt_failover_seconds <= 0 || servers.size() < 2) return;
  const std::int64_t every_ms = 1000LL * settings_.mqtt_failover_seconds;
  const std::int64_t now = steady_now_ms();
  std::int64_t current_id = 0;
  {
    std::lock_guard lock(servers_mu_);
    current_id = current_id_;
  }
  const auto at = std::find_if(servers.begin(), servers.end(),
                               [&](const MqttServer& s) { return s.id == current_id; });
  // A row removed by a reload counts as just before the first.
  const std::size_t index =
      at == servers.end() ? servers.size() - 1 : static_cast<std::size_t>(at - servers.begin());
  const std::int64_t down_since = down_since_ms_.load();
  if (!connection_->connected() && down_since != 0 && now - down_since >= every_ms) {
    move_to((index + 1) % servers.size(),
            "unreachable for " + std::to_string((now - down_since) / 1000) + " s");
    return;
  }
  if (index == 0 || now < next_probe_ms_) return;
  next_probe_ms_ = now + every_ms;
  // A message handler blocked on a full or failing spool holds Paho's lock: a disconnect would
  // wait for it. Move back once there is room again.
  if (spool_.stats().full || metrics_.spool_failing) return;
  if (probe_reachable(servers[0])) move_to(0, "the first broker answers again");
}

void GatewayMqttClient::move_to(std::size_t index, const std::string& why) {
  const std::vector<MqttServer> servers = candidates();
  std::string from;
  {
    std::lock_guard lock(servers_mu_);
    from = current_uri_;
  }
  log_->warn("broker failover: {} -> {} (server id {}): {}", from, broker_uri(servers[index]),
             servers[index].id, why);
  metrics_.broker_failovers.fetch_add(1, std::memory_order_relaxed);
  // A clean DISCONNECT when it is still up (moving back): what was spooled has been acknowledged,
  // and the broker keeps the session, queueing for us, until we come back.
  auto old = std::move(connection_);
  old->disconnect(old->connected() ? std::chrono::seconds(5) : std::chrono::seconds(1));
  metrics_.broker_connected = false;
  next_probe_ms_ = steady_now_ms() + 1000LL * settings_.mqtt_failover_seconds;
  for (std::size_t k = 0; k < servers.size(); ++k) {
    const std::size_t i = (index + k) % servers.size();
    try {
      attach(i, servers[i], false);
      return;
    } catch (const ConfigError& e) {
      log_->error("{}; skipping that broker", e.what());
    } catch (const std::exception& e) {
      if (!connection_) break;
      if (connection_->connected()) {
        // Connected, but the subscriptions failed: the MQTT thread retries them.
        log_->warn("subscriptions on {} not restored yet ({}); retrying", broker_uri(servers[i]),
                   e.what());
        request_sync();
        return;
      }
      down_since_ms_ = steady_now_ms();
      log_->warn("broker {} not reachable either ({}); retrying it, next move in {} s",
                 broker_uri(servers[i]), e.what(), settings_.mqtt_failover_seconds);
      // Its own reconnect loop keeps trying until the next move.
      if (!connection_->connected()) connection_->force_reconnect("not connected after failover");
      return;
    }
  }
  // No row could be used: stay on the old (closed) connection, try again after the interval.
  if (!connection_) connection_ = std::move(old);
  down_since_ms_ = steady_now_ms();
}

void GatewayMqttClient::mqtt_loop() {
  set_thread_name("gw-mqtt");
  using namespace std::chrono;
  const auto heartbeat_every = seconds(settings_.mqtt_heartbeat_seconds);
  auto next_heartbeat = steady_clock::now() + heartbeat_every;
  auto next_presence = steady_clock::now() + client_id_check_.refresh;
  std::optional<steady_clock::time_point> retry_sync_at;  // after a failed sync
  std::unique_lock lock(mqtt_mu_);
  for (;;) {
    mqtt_cv_.wait_for(lock, milliseconds(200), [this] { return stopping_ || sync_needed_; });
    if (stopping_) return;
    if (retry_sync_at && steady_clock::now() >= *retry_sync_at) {
      retry_sync_at.reset();
      sync_needed_ = true;
    }
    const bool sync = std::exchange(sync_needed_, false);
    lock.unlock();
    if (sync) {
      try {
        if (!connection_->connected()) throw Error("not connected");
        sync_subscriptions();
      } catch (const std::exception& e) {
        log_->warn("subscriptions not in line with the flows yet ({}); retrying", e.what());
        retry_sync_at = steady_clock::now() + seconds(2);
      }
    }
    if (settings_.mqtt_heartbeat_seconds > 0 && steady_clock::now() >= next_heartbeat) {
      next_heartbeat = steady_clock::now() + heartbeat_every;
      heartbeat();
    }
    try {
      maybe_fail_over();
    } catch (const std::exception& e) {
      log_->error("broker failover: {}", e.what());
    }
    if (steady_clock::now() >= next_presence) {
      next_presence = steady_clock::now() + client_id_check_.refresh;
      if (connection_->connected()) connection_->publish(presence_topic(), presence(), 1, true);
    }
    lock.lock();
  }
}

void GatewayMqttClient::heartbeat() {
  const std::int64_t silent_ms = steady_now_ms() - last_heartbeat_ms_;
  const std::int64_t up_ms = steady_now_ms() - connected_at_ms_;
  const std::int64_t limit_ms = 3000LL * settings_.mqtt_heartbeat_seconds;
  if (spool_.stats().full || metrics_.spool_failing) {
    // A full or failing spool blocks the message thread on purpose, inside Paho's lock: no
    // heartbeat can arrive. Count the time as heard from, so that no reconnect follows once there
    // is room again.
    last_heartbeat_ms_ = steady_now_ms();
  } else if (connection_->connected() && silent_ms > limit_ms && up_ms > limit_ms) {
    connection_->force_reconnect("no heartbeat from the broker for " +
                                 std::to_string(silent_ms / 1000) + " s (stalled session)");
  } else {
    connection_->publish(heartbeat_topic(), spool_.id() + " " + std::to_string(unix_now_us()), 1,
                         false);
  }
}

bool GatewayMqttClient::ping_database() {
  std::lock_guard lock(reload_mu_);
  bool up = false;
  try {
    up = repo().ping();
  } catch (const std::exception&) {
    up = false;
  }
  if (!up) repo_.reset();
  if (up && from_cache_) {
    // Started from the cached copy: the database's flows (and a fresh copy) as soon as it answers.
    try {
      reload_flows();
    } catch (const std::exception& e) {
      log_->error("flow reload failed (keeping the cached flows): {}", e.what());
    }
  }
  return up;
}

void GatewayMqttClient::stop() {
  {
    std::lock_guard lock(mqtt_mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  // A message callback waiting for room in a full spool holds Paho's client lock, so the MQTT
  // thread (subscribing, publishing a heartbeat) and disconnect() below would wait for it
  // forever. Let it spool the message and return; nothing is acknowledged that is not spooled.
  spool_.stop_back_pressure();
  mqtt_cv_.notify_all();
  if (mqtt_thread_.joinable()) mqtt_thread_.join();
  if (connection_) {
    // Gone on purpose: the next gateway with this client id need not wait for it to go stale.
    // QoS 0: a QoS 1 publish would make disconnect() wait for its PUBACK behind every message
    // still arriving.
    if (connection_->connected()) connection_->publish(presence_topic(), "", 0, true);
    connection_->disconnect(std::chrono::seconds(5));
    metrics_.broker_connected = false;
    log_->info("disconnected from the broker");
  }
}

}  // namespace gateway
