#include "gateway/settings.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <system_error>

#include "gateway/errors.h"

namespace gateway {

namespace {

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = 1024 * kKiB;
constexpr std::uint64_t kGiB = 1024 * kMiB;
constexpr std::uint64_t kNoLimit = std::numeric_limits<std::uint64_t>::max();

[[noreturn]] void fail(std::string_view name, const std::string& message) {
  throw ConfigError(std::string(name) + ": " + message);
}

// A value echoed in an error message: quoted, control characters escaped so the message stays
// one line, and cut short so a pasted blob does not flood the log.
std::string quoted(std::string_view value, std::size_t max_shown = 64) {
  constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (std::size_t i = 0; i < value.size() && i < max_shown; ++i) {
    auto c = static_cast<unsigned char>(value[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (value.size() > max_shown) out += "...";
  return out + "'";
}

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// The whole value must be an integer: no sign other than '-', no blanks, no suffix.
template <typename T>
std::optional<T> parse_integer(std::string_view text) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// "65536", "64K", "64M", "1G" (binary units, either case). std::nullopt on junk or overflow.
std::optional<std::uint64_t> parse_byte_size(std::string_view text) {
  std::uint64_t unit = 1;
  if (!text.empty()) {
    switch (text.back()) {
      case 'K':
      case 'k':
        unit = kKiB;
        break;
      case 'M':
      case 'm':
        unit = kMiB;
        break;
      case 'G':
      case 'g':
        unit = kGiB;
        break;
      default:
        break;
    }
    if (unit != 1) text.remove_suffix(1);
  }
  auto number = parse_integer<std::uint64_t>(text);
  if (!number || *number > kNoLimit / unit) return std::nullopt;
  return *number * unit;
}

// The shortest exact spelling: 1073741824 -> "1G", 65536 -> "64K", 1000 -> "1000".
std::string format_byte_size(std::uint64_t bytes) {
  if (bytes != 0 && bytes % kGiB == 0) return std::to_string(bytes / kGiB) + "G";
  if (bytes != 0 && bytes % kMiB == 0) return std::to_string(bytes / kMiB) + "M";
  if (bytes != 0 && bytes % kKiB == 0) return std::to_string(bytes / kKiB) + "K";
  return std::to_string(bytes);
}

bool has_topic_wildcard_or_separator(std::string_view text) {
  return text.find_first_of("/+#") != std::string_view::npos;
}

std::string percent_encode(std::string_view text) {
  constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

std::string url_host(const std::string& host) {
  bool ipv6 = host.find(':') != std::string::npos && host.front() != '[';  // non-empty if found
  return ipv6 ? "[" + host + "]" : host;
}

// Every node as host:port, comma-separated (one node: as it always was).
std::string url_nodes(const Settings& s) {
  std::vector<DbNode> nodes;
  try {
    nodes = s.db_nodes();
  } catch (const ConfigError&) {
    return url_host(s.db_host) + ":" + std::to_string(s.db_port);  // not from load_settings()
  }
  std::string out;
  for (const DbNode& node : nodes) {
    if (!out.empty()) out += ',';
    out += node.address();
  }
  return out;
}

std::string database_url_with(const Settings& s, const std::string& password) {
  return "mysql://" + percent_encode(s.db_user) + ":" + password + "@" + url_nodes(s) + "/" +
         s.db_name;
}

std::string_view trim_blanks(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// One DB_HOST entry (already trimmed): the node, or why it is not one.
std::optional<std::string> parse_db_node(std::string_view entry, int default_port, DbNode& node) {
  if (entry.empty()) return "empty entry";
  std::string_view host = entry;
  std::string_view port;
  bool has_port = false;
  if (entry.front() == '[') {
    const std::size_t close = entry.find(']');
    if (close == std::string_view::npos) return "'[' without ']'";
    host = entry.substr(1, close - 1);
    const std::string_view rest = entry.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return "expected ':port' after ']'";
      port = rest.substr(1);
      has_port = true;
    }
    if (host.find(':') == std::string_view::npos) return "brackets are for IPv6 addresses";
  } else {
    const std::size_t colon = entry.find(':');
    // One colon: host:port. More: an IPv6 address without brackets, hence without a port.
    if (colon != std::string_view::npos && entry.find(':', colon + 1) == std::string_view::npos) {
      host = entry.substr(0, colon);
      port = entry.substr(colon + 1);
      has_port = true;
    }
  }
  if (host.empty()) return "no host";
  if (host.find_first_of(" \t/@[]") != std::string_view::npos) {
    return "a host has no blanks, '/', '@' or brackets";
  }
  int number = default_port;
  if (has_port) {
    const auto parsed = parse_integer<int>(port);
    if (!parsed || *parsed < 1 || *parsed > 65535) return "the port must be 1..65535";
    number = *parsed;
  }
  node = DbNode{std::string(host), number};
  return std::nullopt;
}

// ---- The variable table: one row per environment variable. ----

enum class Presence { kOptional, kRequired, kRequiredMayBeEmpty };

struct Variable {
  std::string_view name;
  Presence presence;
  // Called with the non-empty value (or an empty one for kRequiredMayBeEmpty); throws ConfigError.
  std::function<void(Settings&, std::string_view value)> parse;
  std::function<std::string(const Settings&)> show;
};

Variable integer(std::string_view name, int Settings::*field, int min, int max) {
  return {name, Presence::kOptional,
          [=](Settings& s, std::string_view value) {
            auto number = parse_integer<long long>(value);
            if (!number || *number < min || *number > max) {
              fail(name, "expected an integer between " + std::to_string(min) + " and " +
                             std::to_string(max) + ", got " + quoted(value));
            }
            s.*field = static_cast<int>(*number);
          },
          [=](const Settings& s) { return std::to_string(s.*field); }};
}

Variable byte_size(std::string_view name, std::uint64_t Settings::*field, std::uint64_t min,
                   std::uint64_t max) {
  return {name, Presence::kOptional,
          [=](Settings& s, std::string_view value) {
            auto bytes = parse_byte_size(value);
            if (!bytes || *bytes < min || *bytes > max) {
              std::string range = max == kNoLimit ? "of at least " + format_byte_size(min)
                                                  : "between " + format_byte_size(min) + " and " +
                                                        format_byte_size(max);
              fail(name, "expected a byte size (integer with optional K/M/G suffix) " + range +
                             ", got " + quoted(value));
            }
            s.*field = *bytes;
          },
          [=](const Settings& s) { return format_byte_size(s.*field); }};
}

// check returns an error description for a bad value, or std::nullopt.
using Check = std::function<std::optional<std::string>(std::string_view)>;

Variable text(std::string_view name, std::string Settings::*field,
              Presence presence = Presence::kOptional, const Check& check = {}) {
  return {name, presence,
          [=](Settings& s, std::string_view value) {
            if (check) {
              if (auto error = check(value)) fail(name, *error + ", got " + quoted(value));
            }
            s.*field = std::string(value);
          },
          [=](const Settings& s) { return s.*field; }};
}

std::optional<std::string> check_topic_safe(std::string_view value) {
  if (has_topic_wildcard_or_separator(value)) return "must not contain '/', '+' or '#'";
  return std::nullopt;
}

std::optional<std::string> check_host_port(std::string_view value) {
  if (!parse_host_port(value)) {
    return "expected host:port (e.g. 127.0.0.1:9100) with a port between 1 and 65535";
  }
  return std::nullopt;
}

Variable log_level(std::string_view name) {
  return {name, Presence::kOptional,
          [=](Settings& s, std::string_view value) {
            constexpr std::string_view kLevels[] = {"trace", "debug",    "info", "warn",
                                                    "error", "critical", "off"};
            std::string level = lower(value);
            if (level == "warning") level = "warn";  // Python's spelling
            if (std::find(std::begin(kLevels), std::end(kLevels), level) == std::end(kLevels)) {
              fail(name, "expected one of trace, debug, info, warn, error, critical, off, got " +
                             quoted(value));
            }
            s.log_level = level;
          },
          [](const Settings& s) { return s.log_level; }};
}

Variable fsync_policy(std::string_view name) {
  return {name, Presence::kOptional,
          [=](Settings& s, std::string_view value) {
            auto policy = parse_fsync_policy(lower(value));
            if (!policy) fail(name, "expected one of batch, always, never, got " + quoted(value));
            s.spool_fsync = *policy;
          },
          [](const Settings& s) { return std::string(to_string(s.spool_fsync)); }};
}

Variable http_delivery(std::string_view name) {
  return {name, Presence::kOptional,
          [=](Settings& s, std::string_view value) {
            auto delivery = parse_http_delivery(value);
            if (!delivery) fail(name, "expected outbox or inline, got " + quoted(value));
            s.http_delivery = *delivery;
          },
          [](const Settings& s) { return std::string(to_string(s.http_delivery)); }};
}

Variable mqtt_version(std::string_view name) {
  return {name, Presence::kOptional,
          [=](Settings& s, std::string_view value) {
            if (value == "3.1.1" || value == "4") {
              s.mqtt_version = 4;
            } else if (value == "5" || value == "5.0") {
              s.mqtt_version = 5;
            } else {
              fail(name, "expected 3.1.1 (or 4) or 5, got " + quoted(value));
            }
          },
          [](const Settings& s) { return std::string(s.mqtt_version == 5 ? "5" : "3.1.1"); }};
}

Variable uint32(std::string_view name, std::uint32_t Settings::*field, std::uint32_t min) {
  constexpr std::uint32_t max = std::numeric_limits<std::uint32_t>::max();
  return {name, Presence::kOptional,
          [=](Settings& s, std::string_view value) {
            auto number = parse_integer<std::uint64_t>(value);
            if (!number || *number < min || *number > max) {
              fail(name, "expected an integer between " + std::to_string(min) + " and " +
                             std::to_string(max) + ", got " + quoted(value));
            }
            s.*field = static_cast<std::uint32_t>(*number);
          },
          [=](const Settings& s) { return std::to_string(s.*field); }};
}

std::optional<std::string> check_host_name(std::string_view value) {
  if (value.find_first_of(" \t/:@[]") != std::string_view::npos) {
    return "expected a DNS name or IPv4 address (no port, scheme or blanks)";
  }
  return std::nullopt;
}

// std::nullopt when `path` is a regular file this process can open for reading, else why not.
std::optional<std::string> unreadable(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec) return "cannot read the file (" + ec.message() + ")";
  if (!std::filesystem::is_regular_file(status)) return std::string("not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return "cannot read the file (" + std::string(std::strerror(errno)) + ")";
  return std::nullopt;
}

// A path in an error message: whole (a cut path would not say which file), still one line.
std::string quoted_path(std::string_view path) { return quoted(path, 4096); }

// A file the gateway reads later (at every connect): it must be readable now.
Variable file_path(std::string_view name, std::string Settings::*field) {
  return {name, Presence::kOptional,
          [=](Settings& s, std::string_view value) {
            if (auto why = unreadable(std::string(value))) {
              fail(name, *why + ", got " + quoted_path(value));
            }
            s.*field = std::string(value);
          },
          [=](const Settings& s) { return s.*field; }};
}

Variable db_ssl_mode(std::string_view name) {
  return {name, Presence::kOptional,
          [=](Settings& s, std::string_view value) {
            auto mode = parse_db_ssl_mode(value);
            if (!mode) {
              fail(name,
                   "expected one of disabled, preferred, required, verify-ca, verify-identity, "
                   "got " +
                       quoted(value));
            }
            s.db_ssl_mode = *mode;
          },
          [](const Settings& s) { return std::string(to_string(s.db_ssl_mode)); }};
}

// The DB_SSL_* files that fit DB_SSL_MODE; each is one line naming the variable.
void check_db_ssl(const Settings& s) {
  const bool disabled = s.db_ssl_mode == DbSslMode::kDisabled;
  const bool verifies =
      s.db_ssl_mode == DbSslMode::kVerifyCa || s.db_ssl_mode == DbSslMode::kVerifyIdentity;
  const std::string mode = "DB_SSL_MODE=" + std::string(to_string(s.db_ssl_mode));
  // A CA that would not be used would suggest a check that does not happen.
  if (!s.db_ssl_ca.empty() && !verifies) {
    fail("DB_SSL_CA", "is only used with DB_SSL_MODE=verify-ca or verify-identity, not with " +
                          mode + " (which does not check the server's certificate)");
  }
  if (s.db_ssl_ca.empty() && s.db_ssl_mode == DbSslMode::kVerifyCa) {
    fail("DB_SSL_CA", "required by " + mode);
  }
  if (disabled && !s.db_ssl_cert.empty()) fail("DB_SSL_CERT", "not used with " + mode);
  if (disabled && !s.db_ssl_key.empty()) fail("DB_SSL_KEY", "not used with " + mode);
  if (!s.db_ssl_key.empty() && s.db_ssl_cert.empty()) {
    fail("DB_SSL_KEY", "set without DB_SSL_CERT (the client certificate)");
  }
}

// The whole file, less one trailing newline ("\n" or "\r\n"): what `echo secret > file` and
// editors leave behind is not part of a password.
std::string read_secret_file(std::string_view variable, const std::string& path) {
  if (auto why = unreadable(path)) fail(variable, *why + ", got " + quoted_path(path));
  std::ifstream in(path, std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(variable, "cannot read the file, got " + quoted_path(path));
  if (!content.empty() && content.back() == '\n') {
    content.pop_back();
    if (!content.empty() && content.back() == '\r') content.pop_back();
  }
  return content;
}

// Replaces the secret `name` in env by its value from NAME_FILE or the systemd credential (see
// load_settings() in settings.h); returns where it came from ("" for the variable itself).
std::string resolve_secret(EnvMap& env, const std::string& name) {
  const auto non_empty = [&env](const std::string& key) {
    auto it = env.find(key);
    return it != env.end() && !it->second.empty() ? &it->second : nullptr;
  };
  const std::string file_variable = name + "_FILE";
  const std::string* value = non_empty(name);
  const std::string* file = non_empty(file_variable);
  if (value && file) fail(file_variable, "set only one of " + name + " and " + file_variable);
  if (file) {
    const std::string path = *file;
    env[name] = read_secret_file(file_variable, path);
    return file_variable + " " + path;
  }
  if (value) return {};
  if (const std::string* dir = non_empty("CREDENTIALS_DIRECTORY")) {
    const std::string path = (std::filesystem::path(*dir) / lower(name)).string();
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) {
      env[name] = read_secret_file(name, path);
      return "systemd credential " + path;
    }
  }
  return {};
}

Variable password(std::string_view name) {
  return {name, Presence::kRequiredMayBeEmpty,
          [](Settings& s, std::string_view value) { s.db_password = Secret(std::string(value)); },
          [](const Settings& s) {
            return "***" + (s.db_password_from.empty() ? "" : " (from " + s.db_password_from + ")");
          }};
}

const std::vector<Variable>& variables() {
  using S = Settings;
  constexpr int kDay = 86400;
  static const std::vector<Variable> kVariables = {
      // Database.
      text("DB_HOST", &S::db_host, Presence::kRequired),
      integer("DB_PORT", &S::db_port, 1, 65535),
      text("DB_NAME", &S::db_name, Presence::kRequired),
      text("DB_USER", &S::db_user, Presence::kRequired),
      password("DB_PASSWORD"),
      integer("DB_POOL_SIZE", &S::db_pool_size, 1, 64),
      integer("MAX_BATCH", &S::max_batch, 1, 10000),
      integer("BATCH_LINGER_MS", &S::batch_linger_ms, 0, 1000),
      integer("DB_RETRY_MAX_SECONDS", &S::db_retry_max_seconds, 1, 3600),
      integer("DB_CONNECT_TIMEOUT_SECONDS", &S::db_connect_timeout_seconds, 1, 300),
      db_ssl_mode("DB_SSL_MODE"),
      file_path("DB_SSL_CA", &S::db_ssl_ca),
      file_path("DB_SSL_CERT", &S::db_ssl_cert),
      file_path("DB_SSL_KEY", &S::db_ssl_key),
      // MQTT.
      text("MQTT_CLIENT_ID", &S::mqtt_client_id, Presence::kOptional, check_topic_safe),
      integer("MQTT_KEEPALIVE", &S::mqtt_keepalive, 1, 65535),
      text("MQTT_SHARED_GROUP", &S::mqtt_shared_group, Presence::kOptional, check_topic_safe),
      integer("MQTT_RECONNECT_MAX_SECONDS", &S::mqtt_reconnect_max_seconds, 1, 30),
      integer("MQTT_HEARTBEAT_SECONDS", &S::mqtt_heartbeat_seconds, 0, 3600),
      integer("MQTT_FAILOVER_SECONDS", &S::mqtt_failover_seconds, 0, 3600),
      mqtt_version("MQTT_VERSION"),
      // 0 would end the session with the connection: whatever arrives while the gateway is away
      // (a deploy, a restart) would be lost.
      uint32("MQTT_SESSION_EXPIRY_SECONDS", &S::mqtt_session_expiry_seconds, 1),
      text("MQTT_TLS_SERVER_NAME", &S::mqtt_tls_server_name, Presence::kOptional, check_host_name),
      integer("FLOWS_RELOAD_INTERVAL_SECONDS", &S::flows_reload_interval_seconds, 1, 7 * kDay),
      // HTTP.
      integer("HTTP_TIMEOUT_SECONDS", &S::http_timeout_seconds, 1, 3600),
      integer("HTTP_MAX_ATTEMPTS", &S::http_max_attempts, 1, 1000),
      integer("HTTP_MAX_AGE_SECONDS", &S::http_max_age_seconds, 1, 30 * kDay),
      integer("HTTP_RETRY_MAX_SECONDS", &S::http_retry_max_seconds, 1, kDay),
      http_delivery("HTTP_DELIVERY"),
      // Spool.
      text("SPOOL_DIR", &S::spool_dir),
      fsync_policy("SPOOL_FSYNC"),
      integer("SPOOL_FSYNC_INTERVAL_MS", &S::spool_fsync_interval_ms, 1, 10000),
      byte_size("SPOOL_MAX_BYTES", &S::spool_max_bytes, kMiB, kNoLimit),
      byte_size("SPOOL_SEGMENT_BYTES", &S::spool_segment_bytes, 64 * kKiB, kGiB),
      // Payloads.
      byte_size("MAX_PAYLOAD_BYTES", &S::max_payload_bytes, 1, 16 * kMiB),
      integer("MAX_JSON_DEPTH", &S::max_json_depth, 1, 1000),
      // rejected_messages.payload is a MEDIUMBLOB: at most 16 MiB - 1 bytes.
      byte_size("REJECTED_PAYLOAD_MAX_BYTES", &S::rejected_payload_max_bytes, 0, 16 * kMiB - 1),
      // Logging.
      text("LOG_DIR", &S::log_dir),
      log_level("LOG_LEVEL"),
      byte_size("LOG_MAX_BYTES", &S::log_max_bytes, 64 * kKiB, kNoLimit),
      integer("LOG_MAX_FILES", &S::log_max_files, 1, 100),
      integer("SUMMARY_INTERVAL_SECONDS", &S::summary_interval_seconds, 1, kDay),
      // Operations.
      text("METRICS_ADDRESS", &S::metrics_address, Presence::kOptional, check_host_port),
      integer("HEALTH_UNREACHABLE_SECONDS", &S::health_unreachable_seconds, 1, kDay),
      integer("SHUTDOWN_TIMEOUT_SECONDS", &S::shutdown_timeout_seconds, 1, 3600),
  };
  return kVariables;
}

}  // namespace

std::string_view to_string(FsyncPolicy policy) {
  switch (policy) {
    case FsyncPolicy::kNever:
      return "never";
    case FsyncPolicy::kBatch:
      return "batch";
    case FsyncPolicy::kAlways:
      return "always";
  }
  return "batch";
}

std::optional<FsyncPolicy> parse_fsync_policy(std::string_view text) {
  if (text == "never") return FsyncPolicy::kNever;
  if (text == "batch") return FsyncPolicy::kBatch;
  if (text == "always") return FsyncPolicy::kAlways;
  return std::nullopt;
}

std::string_view to_string(HttpDelivery delivery) {
  switch (delivery) {
    case HttpDelivery::kOutbox:
      return "outbox";
    case HttpDelivery::kInline:
      return "inline";
  }
  return "outbox";
}

std::optional<HttpDelivery> parse_http_delivery(std::string_view text) {
  if (text == "outbox") return HttpDelivery::kOutbox;
  if (text == "inline") return HttpDelivery::kInline;
  return std::nullopt;
}

std::string_view to_string(DbSslMode mode) {
  switch (mode) {
    case DbSslMode::kDisabled:
      return "disabled";
    case DbSslMode::kPreferred:
      return "preferred";
    case DbSslMode::kRequired:
      return "required";
    case DbSslMode::kVerifyCa:
      return "verify-ca";
    case DbSslMode::kVerifyIdentity:
      return "verify-identity";
  }
  return "preferred";
}

std::optional<DbSslMode> parse_db_ssl_mode(std::string_view text) {
  std::string name = lower(text);
  std::replace(name.begin(), name.end(), '_', '-');
  for (DbSslMode mode : {DbSslMode::kDisabled, DbSslMode::kPreferred, DbSslMode::kRequired,
                         DbSslMode::kVerifyCa, DbSslMode::kVerifyIdentity}) {
    if (name == to_string(mode)) return mode;
  }
  return std::nullopt;
}

std::optional<HostPort> parse_host_port(std::string_view text) {
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos || text.substr(close + 1, 1) != ":") return std::nullopt;
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    std::size_t colon = text.find(':');
    // A second colon means an IPv6 address without brackets: ambiguous.
    if (colon == std::string_view::npos || text.find(':', colon + 1) != std::string_view::npos) {
      return std::nullopt;
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  auto number = parse_integer<int>(port);
  if (host.empty() || !number || *number < 1 || *number > 65535) return std::nullopt;
  return HostPort{std::string(host), *number};
}

std::string DbNode::address() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::vector<DbNode> parse_db_nodes(std::string_view text, int default_port) {
  std::vector<DbNode> nodes;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = text.find(',', start);
    const std::string_view entry =
        trim_blanks(text.substr(start, comma == std::string_view::npos ? comma : comma - start));
    DbNode node;
    std::optional<std::string> why = parse_db_node(entry, default_port, node);
    if (!why && std::find(nodes.begin(), nodes.end(), node) != nodes.end()) {
      why = node.address() + " listed twice";
    }
    if (why) {
      fail("DB_HOST", "node " + std::to_string(nodes.size() + 1) + " " + quoted(entry) + ": " +
                          *why +
                          "; expected host[:port] separated by commas (e.g. "
                          "db1:3306,db2:3306,db3), got " +
                          quoted(text));
    }
    nodes.push_back(std::move(node));
    if (comma == std::string_view::npos) return nodes;
    start = comma + 1;
  }
}

std::vector<DbNode> Settings::db_nodes() const { return parse_db_nodes(db_host, db_port); }

std::string Settings::database_url() const {
  return database_url_with(*this, percent_encode(db_password.reveal()));
}

std::string Settings::database_url_redacted() const { return database_url_with(*this, "***"); }

Settings load_settings(const EnvMap& given) {
  EnvMap env = given;
  Settings settings;
  settings.db_password_from = resolve_secret(env, "DB_PASSWORD");
  for (const Variable& variable : variables()) {
    auto it = env.find(variable.name);
    bool present = it != env.end();
    std::string_view value = present ? std::string_view(it->second) : std::string_view();
    if (value.empty()) {
      bool missing = variable.presence == Presence::kRequired ||
                     (variable.presence == Presence::kRequiredMayBeEmpty && !present);
      if (missing) fail(variable.name, "required variable is not set");
      if (variable.presence == Presence::kOptional) continue;
    }
    variable.parse(settings, value);
  }
  (void)settings.db_nodes();  // after DB_PORT, the default port of a node without one
  check_db_ssl(settings);
  if (settings.spool_segment_bytes > settings.spool_max_bytes) {
    fail("SPOOL_SEGMENT_BYTES", "must not exceed SPOOL_MAX_BYTES (" +
                                    format_byte_size(settings.spool_segment_bytes) + " > " +
                                    format_byte_size(settings.spool_max_bytes) + ")");
  }
  return settings;
}

Settings load_settings(char** envp, const std::filesystem::path& env_file) {
  std::optional<EnvMap> file_env = read_env_file(env_file);
  return load_settings(merge_env(environment_map(envp), file_env.value_or(EnvMap{})));
}

std::vector<std::string> describe_settings(const Settings& s) {
  std::vector<std::string> lines;
  lines.reserve(variables().size());
  for (const Variable& variable : variables()) {
    lines.push_back(std::string(variable.name) + "=" + variable.show(s));
  }
  return lines;
}

}  // namespace gateway
