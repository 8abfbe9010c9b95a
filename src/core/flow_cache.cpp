#include "gateway/flow_cache.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "gateway/atomic_file.h"
#include "gateway/errors.h"

namespace gateway {
namespace {

constexpr int kVersion = 1;

// std::optional<std::string> as JSON null or a string.
nlohmann::json opt(const std::optional<std::string>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}
std::optional<std::string> opt_string(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  return j.at(key).get<std::string>();
}

}  // namespace

std::uint64_t seq_floor_without_database(const FlowCacheContents& copy,
                                         std::uint64_t spool_next_seq) {
  constexpr std::uint64_t kMargin = std::uint64_t{1} << 32;
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max() - 1;
  const std::uint64_t known = std::max(copy.committed_seq, spool_next_seq - 1);
  return known >= kMax - kMargin ? kMax : known + kMargin;
}

// The one place that lists Flow's fields for the cache: a field added to Flow goes here too
// (flow_cache_test checks a round trip of every field).
void to_json(nlohmann::json& j, const Flow& f) {
  j = nlohmann::json{{"id", f.id},
                     {"code", f.code},
                     {"topic", f.topic},
                     {"action", f.action},
                     {"endpoint_url", opt(f.endpoint_url)},
                     {"payload_schema", opt(f.payload_schema)},
                     {"last_msg_id", f.last_msg_id},
                     {"enabled", f.enabled},
                     {"target_table", opt(f.target_table)},
                     {"column_map", opt(f.column_map)},
                     {"write_mode", f.write_mode}};
}

void from_json(const nlohmann::json& j, Flow& f) {
  f = Flow{};
  j.at("id").get_to(f.id);
  j.at("code").get_to(f.code);
  j.at("topic").get_to(f.topic);
  j.at("action").get_to(f.action);
  f.endpoint_url = opt_string(j, "endpoint_url");
  f.payload_schema = opt_string(j, "payload_schema");
  j.at("last_msg_id").get_to(f.last_msg_id);
  j.at("enabled").get_to(f.enabled);
  // Absent in a copy written before these fields existed: the defaults.
  f.target_table = opt_string(j, "target_table");
  f.column_map = opt_string(j, "column_map");
  if (j.contains("write_mode")) j.at("write_mode").get_to(f.write_mode);
}

void to_json(nlohmann::json& j, const MqttServer& s) {
  j = nlohmann::json{
      {"id", s.id},
      {"host", s.host},
      {"port", s.port},
      {"username", opt(s.username)},
      {"password", s.password ? nlohmann::json(s.password->reveal()) : nlohmann::json(nullptr)},
      {"use_tls", s.use_tls},
      {"ca_file", s.ca_file},
      {"client_cert_file", s.client_cert_file},
      {"client_key_file", s.client_key_file},
      {"client_key_password_file", s.client_key_password_file}};
}

void from_json(const nlohmann::json& j, MqttServer& s) {
  s = MqttServer{};
  j.at("id").get_to(s.id);
  j.at("host").get_to(s.host);
  j.at("port").get_to(s.port);
  s.username = opt_string(j, "username");
  if (auto pw = opt_string(j, "password")) s.password = Secret(std::move(*pw));
  j.at("use_tls").get_to(s.use_tls);
  j.at("ca_file").get_to(s.ca_file);
  j.at("client_cert_file").get_to(s.client_cert_file);
  j.at("client_key_file").get_to(s.client_key_file);
  j.at("client_key_password_file").get_to(s.client_key_password_file);
}

FlowCache::FlowCache(const std::filesystem::path& spool_dir) : path_(spool_dir / kFileName) {}

void FlowCache::save(const FlowCacheContents& c) const {
  const nlohmann::json j{{"version", kVersion},    {"written_unix_ms", c.written_unix_ms},
                         {"spool_id", c.spool_id}, {"committed_seq", c.committed_seq},
                         {"servers", c.servers},   {"flows", c.flows}};
  // error_handler replace: a flow text with invalid UTF-8 must not make the copy unwritable.
  const std::string text = j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  // 0600: it holds the brokers' passwords.
  replace_file_atomically(path_, text, 0600, "flow cache");
}

std::optional<FlowCacheContents> FlowCache::load() const {
  const std::optional<std::string> text = read_file_if_exists(path_, "flow cache");
  if (!text) return std::nullopt;
  try {
    const auto j = nlohmann::json::parse(*text);
    if (j.at("version").get<int>() != kVersion) {
      throw Error("flow cache " + path_.string() + ": unknown version " + j.at("version").dump());
    }
    FlowCacheContents c;
    j.at("written_unix_ms").get_to(c.written_unix_ms);
    j.at("spool_id").get_to(c.spool_id);
    j.at("committed_seq").get_to(c.committed_seq);
    j.at("servers").get_to(c.servers);
    j.at("flows").get_to(c.flows);
    return c;
  } catch (const nlohmann::json::parse_error& e) {
    // Not e.what(): it quotes the text near the error, which may be a broker password.
    throw Error("flow cache " + path_.string() + ": not valid JSON (at byte " +
                std::to_string(e.byte) + ")");
  } catch (const nlohmann::json::exception& e) {
    throw Error("flow cache " + path_.string() + ": not a valid copy (" + e.what() + ")");
  }
}

}  // namespace gateway
