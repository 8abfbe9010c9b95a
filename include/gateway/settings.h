// The daemon's settings, read once at start-up from the environment and an optional .env file
// (reference: src/config.py). Settings is a plain value: copy it freely; a const Settings may be
// read from any thread. load_settings(EnvMap) reads no environment, only the files secrets come
// from (DB_PASSWORD_FILE, systemd credentials) and the DB_SSL_* files' readability; the other
// overload also reads the .env file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/env_file.h"
#include "gateway/secret.h"

namespace gateway {

// When the spool calls fsync: never (leave it to the kernel), in batches (every
// spool_fsync_interval_ms, group commit), or after every append.
enum class FsyncPolicy { kNever, kBatch, kAlways };

// "never", "batch", "always"; parse_fsync_policy() returns std::nullopt for anything else.
std::string_view to_string(FsyncPolicy policy);
std::optional<FsyncPolicy> parse_fsync_policy(std::string_view text);

// How POST_ENDPOINT messages reach their endpoint: recorded in the outbox (table deliveries) by
// the flow transaction and POSTed after the commit, retried, in order; or POSTed inline, while
// the flow row is locked, one try (the reference; the benchmark's baseline). Either way the
// delivery service runs, so that outbox rows an earlier outbox run left are still delivered.
enum class HttpDelivery { kOutbox, kInline };

// "outbox", "inline"; parse_http_delivery() is exact (case-sensitive) and returns std::nullopt
// for anything else.
std::string_view to_string(HttpDelivery delivery);
std::optional<HttpDelivery> parse_http_delivery(std::string_view text);

// How the database connections use TLS (DB_SSL_MODE), as MySQL's --ssl-mode names them:
// disabled: never; preferred: when the server offers it, no certificate check (falls back to
// clear text); required: always, no certificate check; verify-ca: always, the server's certificate
// must chain to DB_SSL_CA; verify-identity: as verify-ca (DB_SSL_CA, else the system's trust
// store), and the certificate must also name the host of DB_HOST.
enum class DbSslMode { kDisabled, kPreferred, kRequired, kVerifyCa, kVerifyIdentity };

// "disabled", "preferred", "required", "verify-ca", "verify-identity"; parse_db_ssl_mode() is
// case-insensitive and also takes '_' for '-', and returns std::nullopt for anything else.
std::string_view to_string(DbSslMode mode);
std::optional<DbSslMode> parse_db_ssl_mode(std::string_view text);

// A host and port, as METRICS_ADDRESS holds them.
struct HostPort {
  std::string host;  // without brackets for an IPv6 literal ("[::1]:9100" -> "::1")
  int port = 0;      // 1..65535
};

// Parses "host:port" or "[ipv6]:port" with a non-empty host and a port in 1..65535; returns
// std::nullopt otherwise.
std::optional<HostPort> parse_host_port(std::string_view text);

// One database node of DB_HOST.
struct DbNode {
  std::string host;  // without brackets for an IPv6 literal
  int port = 3306;
  // "host:port" ("[ipv6]:port"): how logs, errors, --check and /metrics name the node.
  std::string address() const;
  bool operator==(const DbNode&) const = default;
};

// Parses a DB_HOST value: one node, or several separated by commas ("db1:3306,db2:3306,db3"),
// each `host`, `host:port`, `[ipv6]` or `[ipv6]:port` (an IPv6 address without brackets is a
// host without a port); blanks around an entry are ignored; a node without a port gets
// default_port. Throws ConfigError, one line naming DB_HOST and the entry, for an empty entry, a
// host with blanks, '/', '@' or brackets, a port that is not 1..65535, or a node listed twice.
std::vector<DbNode> parse_db_nodes(std::string_view text, int default_port);

// Each field is named after its variable (DB_HOST -> db_host) and documented in .env.example.
// Byte sizes are bytes (the variables also accept a K/M/G suffix); durations are in the unit
// their name says.
struct Settings {
  // Database (the reference settings).
  // DB_HOST, required: one node or a list (parse_db_nodes()). With several, every connection
  // goes to the first node that takes writes, trying the one the last connection reached first
  // (src/adapters/mysql_session.h: the safe Galera mode).
  std::string db_host;
  int db_port = 3306;   // DB_PORT, 1..65535
  std::string db_name;  // DB_NAME, required
  std::string db_user;  // DB_USER, required
  // DB_PASSWORD, required but may be empty; or read from the file DB_PASSWORD_FILE names, or
  // from $CREDENTIALS_DIRECTORY/db_password (systemd's LoadCredential=): see load_settings().
  Secret db_password;
  // Where db_password came from, for the start-up log: "" (DB_PASSWORD itself),
  // "DB_PASSWORD_FILE <path>" or "systemd credential <path>". Never the password.
  std::string db_password_from;
  int db_pool_size = 4;                // DB_POOL_SIZE: connections used for writing, 1..64
  int max_batch = 2000;                // MAX_BATCH: messages per DB transaction, 1..10000
  int batch_linger_ms = 10;            // BATCH_LINGER_MS a worker waits for a fuller batch, 0..1000
  int db_retry_max_seconds = 30;       // DB_RETRY_MAX_SECONDS: cap of the reconnect backoff
  int db_connect_timeout_seconds = 5;  // DB_CONNECT_TIMEOUT_SECONDS, 1..300
  DbSslMode db_ssl_mode = DbSslMode::kPreferred;  // DB_SSL_MODE
  // DB_SSL_CA: PEM file of the CA(s) the server's certificate must chain to; required by
  // verify-ca, optional for verify-identity, refused with the other modes (they check nothing).
  std::string db_ssl_ca;
  // DB_SSL_CERT, DB_SSL_KEY: the gateway's client certificate (PEM; the key may be in the
  // certificate file) for a server that asks for one (REQUIRE X509); not with disabled.
  std::string db_ssl_cert;
  std::string db_ssl_key;

  // MQTT.
  std::string mqtt_client_id = "mqtt-gateway";  // MQTT_CLIENT_ID, no '/', '+', '#'
  int mqtt_keepalive = 60;                      // MQTT_KEEPALIVE seconds, 1..65535
  std::string mqtt_shared_group;                // MQTT_SHARED_GROUP: $share group, "" = off
  int mqtt_reconnect_max_seconds = 30;          // MQTT_RECONNECT_MAX_SECONDS, 1..30
  int mqtt_heartbeat_seconds = 15;              // MQTT_HEARTBEAT_SECONDS, 0 = off, ..3600
  // MQTT_FAILOVER_SECONDS: how long the current broker may stay unreachable before the gateway
  // moves to the next enabled mqtt_servers row (and how often it probes the first one to move
  // back); 0 = stay on one broker. 0..3600.
  int mqtt_failover_seconds = 30;
  int mqtt_version = 4;  // MQTT_VERSION: 3.1.1 (also "4", the protocol level; stored as 4) or 5
  // MQTT_SESSION_EXPIRY_SECONDS (MQTT 5 only): how long the broker keeps the session (and queues
  // messages) after the connection ends; 1..4294967295 (that one: never expires).
  std::uint32_t mqtt_session_expiry_seconds = 86400;
  // MQTT_TLS_SERVER_NAME: the name the broker's TLS certificate must carry when it is not the
  // host of the mqtt_servers row; "" = the host.
  std::string mqtt_tls_server_name;
  int flows_reload_interval_seconds = 600;  // FLOWS_RELOAD_INTERVAL_SECONDS, 1..604800

  // HTTP endpoints.
  int http_timeout_seconds = 10;     // HTTP_TIMEOUT_SECONDS per POST, 1..3600
  int http_max_attempts = 10;        // HTTP_MAX_ATTEMPTS before a message is given up, 1..1000
  int http_max_age_seconds = 86400;  // HTTP_MAX_AGE_SECONDS a message may wait, 1..30 days
  int http_retry_max_seconds = 300;  // HTTP_RETRY_MAX_SECONDS: cap of the retry backoff
  HttpDelivery http_delivery = HttpDelivery::kOutbox;  // HTTP_DELIVERY: outbox|inline

  // Spool (the on-disk queue between MQTT and the sinks).
  std::string spool_dir = "./spool";                // SPOOL_DIR
  FsyncPolicy spool_fsync = FsyncPolicy::kBatch;    // SPOOL_FSYNC: never|batch|always
  int spool_fsync_interval_ms = 5;                  // SPOOL_FSYNC_INTERVAL_MS (batch), 1..10000
  std::uint64_t spool_max_bytes = 1ULL << 30;       // SPOOL_MAX_BYTES, >= 1 MiB
  std::uint64_t spool_segment_bytes = 64ULL << 20;  // SPOOL_SEGMENT_BYTES, 64 KiB..1 GiB

  // Payloads.
  std::uint64_t max_payload_bytes = 262144;          // MAX_PAYLOAD_BYTES, 1..16 MiB
  int max_json_depth = 32;                           // MAX_JSON_DEPTH, 1..1000
  std::uint64_t rejected_payload_max_bytes = 65536;  // REJECTED_PAYLOAD_MAX_BYTES, 0..16 MiB-1

  // Logging.
  std::string log_dir = "./log";              // LOG_DIR
  std::string log_level = "info";             // LOG_LEVEL: trace|debug|info|warn|error|critical|off
  std::uint64_t log_max_bytes = 10ULL << 20;  // LOG_MAX_BYTES per file, >= 64 KiB
  int log_max_files = 5;                      // LOG_MAX_FILES kept, 1..100
  int summary_interval_seconds = 60;          // SUMMARY_INTERVAL_SECONDS, 1..86400

  // Operations.
  std::string metrics_address;          // METRICS_ADDRESS host:port, "" = no metrics endpoint
  int health_unreachable_seconds = 30;  // HEALTH_UNREACHABLE_SECONDS before unhealthy, 1..86400
  int shutdown_timeout_seconds = 30;    // SHUTDOWN_TIMEOUT_SECONDS to drain, 1..3600

  // DB_HOST as nodes, DB_PORT for those without a port. Throws ConfigError for a bad DB_HOST
  // (load_settings() has checked it already).
  std::vector<DbNode> db_nodes() const;

  // mysql://USER:PASSWORD@HOST:PORT/NAME with user and password percent-encoded and an IPv6
  // host in brackets (the reference's sqlalchemy_url); with several nodes, HOST:PORT is the
  // comma-separated list (mysql://u:p@db1:3306,db2:3306/gw). Contains the password: never log it.
  std::string database_url() const;
  // The same with *** for the password, for logs.
  std::string database_url_redacted() const;
};

// Builds Settings from a variable map; does not read the environment itself, but reads the files
// that secrets come from and checks that the DB_SSL_* files are readable. An empty value counts
// as unset: an optional variable takes its default, a required one is missing (except
// DB_PASSWORD, which must be present but may be empty). A secret (DB_PASSWORD) comes from, in
// this order: NAME (non-empty), the file NAME_FILE names, the file <lower-case name> in the
// directory CREDENTIALS_DIRECTORY (systemd credentials) if it exists there, NAME present but
// empty. A file's content is the secret, less one trailing newline. NAME and NAME_FILE both set
// is an error. Integers are strict: the whole value
// must be digits in range ("10s", " 10", "+10" and overflow are errors). LOG_LEVEL and
// SPOOL_FSYNC are case-insensitive (LOG_LEVEL also takes "warning"); HTTP_DELIVERY is not.
// Throws ConfigError with a one-line message naming the variable, e.g.
// "FLOWS_RELOAD_INTERVAL_SECONDS: expected an integer between 1 and 604800, got '10s'".
Settings load_settings(const EnvMap& env);

// The reference's load_settings(): the process environment (envp, e.g. ::environ) merged over
// the .env file at env_file (a missing file is fine), then load_settings(map). Throws
// ConfigError for an unreadable or malformed .env file or a bad setting.
Settings load_settings(char** envp, const std::filesystem::path& env_file = ".env");

// One "KEY=value" line per variable, in .env.example order, for the start-up log.
// DB_PASSWORD shows as ***; byte sizes use a K/M/G suffix when exact ("SPOOL_MAX_BYTES=1G").
std::vector<std::string> describe_settings(const Settings& s);

}  // namespace gateway
