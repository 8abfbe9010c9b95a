#include "gateway/settings.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>

#include "gateway/errors.h"

namespace gateway {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

EnvMap required_only() {
  return {{"DB_HOST", "db.example"}, {"DB_NAME", "gw"}, {"DB_USER", "gw"}, {"DB_PASSWORD", "pw"}};
}

EnvMap with(EnvMap env, const std::string& key, const std::string& value) {
  env[key] = value;
  return env;
}

EnvMap without(EnvMap env, const std::string& key) {
  env.erase(key);
  return env;
}

// Returns the ConfigError message thrown by load_settings(env), or "" if none was thrown.
std::string load_error(const EnvMap& env) {
  try {
    load_settings(env);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(SettingsTest, DefaultsApplyWhenOnlyRequiredVariablesAreSet) {
  Settings s = load_settings(required_only());
  EXPECT_EQ(s.db_host, "db.example");
  EXPECT_EQ(s.db_port, 3306);
  EXPECT_EQ(s.db_name, "gw");
  EXPECT_EQ(s.db_user, "gw");
  EXPECT_EQ(s.db_password.reveal(), "pw");
  EXPECT_EQ(s.db_pool_size, 4);
  EXPECT_EQ(s.max_batch, 2000);
  EXPECT_EQ(s.db_retry_max_seconds, 30);
  EXPECT_EQ(s.db_connect_timeout_seconds, 5);
  EXPECT_EQ(s.mqtt_client_id, "mqtt-gateway");
  EXPECT_EQ(s.mqtt_keepalive, 60);
  EXPECT_EQ(s.mqtt_shared_group, "");
  EXPECT_EQ(s.mqtt_reconnect_max_seconds, 30);
  EXPECT_EQ(s.mqtt_heartbeat_seconds, 15);
  EXPECT_EQ(s.mqtt_version, 4);
  EXPECT_EQ(s.mqtt_session_expiry_seconds, 86400u);
  EXPECT_EQ(s.mqtt_tls_server_name, "");
  EXPECT_EQ(s.flows_reload_interval_seconds, 600);
  EXPECT_EQ(s.http_timeout_seconds, 10);
  EXPECT_EQ(s.http_max_attempts, 10);
  EXPECT_EQ(s.http_max_age_seconds, 86400);
  EXPECT_EQ(s.http_retry_max_seconds, 300);
  EXPECT_EQ(s.http_delivery, HttpDelivery::kOutbox);
  EXPECT_EQ(s.spool_dir, "./spool");
  EXPECT_EQ(s.spool_fsync, FsyncPolicy::kBatch);
  EXPECT_EQ(s.spool_fsync_interval_ms, 5);
  EXPECT_EQ(s.spool_max_bytes, 1024ULL * 1024 * 1024);
  EXPECT_EQ(s.spool_segment_bytes, 64ULL * 1024 * 1024);
  EXPECT_EQ(s.max_payload_bytes, 262144u);
  EXPECT_EQ(s.max_json_depth, 32);
  EXPECT_EQ(s.rejected_payload_max_bytes, 65536u);
  EXPECT_EQ(s.log_dir, "./log");
  EXPECT_EQ(s.log_level, "info");
  EXPECT_EQ(s.log_max_bytes, 10ULL * 1024 * 1024);
  EXPECT_EQ(s.log_max_files, 5);
  EXPECT_EQ(s.summary_interval_seconds, 60);
  EXPECT_EQ(s.metrics_address, "");
  EXPECT_EQ(s.health_unreachable_seconds, 30);
  EXPECT_EQ(s.shutdown_timeout_seconds, 30);
}

TEST(SettingsTest, LoadedDefaultsEqualTheStructDefaults) {
  Settings loaded = load_settings(required_only());
  Settings plain;
  plain.db_host = "db.example";
  plain.db_name = "gw";
  plain.db_user = "gw";
  plain.db_password = Secret("pw");
  EXPECT_EQ(describe_settings(loaded), describe_settings(plain));
}

TEST(SettingsTest, EveryVariableCanBeOverridden) {
  EnvMap env = {{"DB_HOST", "10.0.0.5"},
                {"DB_PORT", "3307"},
                {"DB_NAME", "telemetry"},
                {"DB_USER", "writer"},
                {"DB_PASSWORD", "secret"},
                {"DB_POOL_SIZE", "8"},
                {"MAX_BATCH", "1000"},
                {"BATCH_LINGER_MS", "3"},
                {"DB_RETRY_MAX_SECONDS", "60"},
                {"DB_CONNECT_TIMEOUT_SECONDS", "7"},
                {"DB_SSL_MODE", "verify-identity"},
                {"DB_SSL_CA", __FILE__},  // any readable file: the content is read at connect
                {"DB_SSL_CERT", __FILE__},
                {"DB_SSL_KEY", __FILE__},
                {"MQTT_CLIENT_ID", "gw-2"},
                {"MQTT_KEEPALIVE", "30"},
                {"MQTT_SHARED_GROUP", "writers"},
                {"MQTT_RECONNECT_MAX_SECONDS", "20"},
                {"MQTT_HEARTBEAT_SECONDS", "0"},
                {"MQTT_FAILOVER_SECONDS", "0"},
                {"MQTT_VERSION", "5"},
                {"MQTT_SESSION_EXPIRY_SECONDS", "3600"},
                {"MQTT_TLS_SERVER_NAME", "broker.internal"},
                {"FLOWS_RELOAD_INTERVAL_SECONDS", "120"},
                {"HTTP_TIMEOUT_SECONDS", "3"},
                {"HTTP_MAX_ATTEMPTS", "5"},
                {"HTTP_MAX_AGE_SECONDS", "3600"},
                {"HTTP_RETRY_MAX_SECONDS", "90"},
                {"HTTP_DELIVERY", "inline"},
                {"SPOOL_DIR", "/var/spool/gw"},
                {"SPOOL_FSYNC", "always"},
                {"SPOOL_FSYNC_INTERVAL_MS", "20"},
                {"SPOOL_MAX_BYTES", "2G"},
                {"SPOOL_SEGMENT_BYTES", "128M"},
                {"MAX_PAYLOAD_BYTES", "1M"},
                {"MAX_JSON_DEPTH", "64"},
                {"REJECTED_PAYLOAD_MAX_BYTES", "0"},
                {"LOG_DIR", "/var/log/gw"},
                {"LOG_LEVEL", "debug"},
                {"LOG_MAX_BYTES", "512K"},
                {"LOG_MAX_FILES", "9"},
                {"SUMMARY_INTERVAL_SECONDS", "300"},
                {"METRICS_ADDRESS", "127.0.0.1:9100"},
                {"HEALTH_UNREACHABLE_SECONDS", "45"},
                {"SHUTDOWN_TIMEOUT_SECONDS", "12"}};
  Settings s = load_settings(env);
  EXPECT_EQ(s.db_host, "10.0.0.5");
  EXPECT_EQ(s.db_port, 3307);
  EXPECT_EQ(s.db_name, "telemetry");
  EXPECT_EQ(s.db_user, "writer");
  EXPECT_EQ(s.db_password.reveal(), "secret");
  EXPECT_EQ(s.db_pool_size, 8);
  EXPECT_EQ(s.max_batch, 1000);
  EXPECT_EQ(s.batch_linger_ms, 3);
  EXPECT_EQ(s.db_retry_max_seconds, 60);
  EXPECT_EQ(s.db_connect_timeout_seconds, 7);
  EXPECT_EQ(s.db_ssl_mode, DbSslMode::kVerifyIdentity);
  EXPECT_EQ(s.db_ssl_ca, __FILE__);
  EXPECT_EQ(s.db_ssl_cert, __FILE__);
  EXPECT_EQ(s.db_ssl_key, __FILE__);
  EXPECT_EQ(s.mqtt_client_id, "gw-2");
  EXPECT_EQ(s.mqtt_keepalive, 30);
  EXPECT_EQ(s.mqtt_shared_group, "writers");
  EXPECT_EQ(s.mqtt_reconnect_max_seconds, 20);
  EXPECT_EQ(s.mqtt_heartbeat_seconds, 0);
  EXPECT_EQ(s.mqtt_failover_seconds, 0);
  EXPECT_EQ(s.mqtt_version, 5);
  EXPECT_EQ(s.mqtt_session_expiry_seconds, 3600u);
  EXPECT_EQ(s.mqtt_tls_server_name, "broker.internal");
  EXPECT_EQ(s.flows_reload_interval_seconds, 120);
  EXPECT_EQ(s.http_timeout_seconds, 3);
  EXPECT_EQ(s.http_max_attempts, 5);
  EXPECT_EQ(s.http_max_age_seconds, 3600);
  EXPECT_EQ(s.http_retry_max_seconds, 90);
  EXPECT_EQ(s.http_delivery, HttpDelivery::kInline);
  EXPECT_EQ(s.spool_dir, "/var/spool/gw");
  EXPECT_EQ(s.spool_fsync, FsyncPolicy::kAlways);
  EXPECT_EQ(s.spool_fsync_interval_ms, 20);
  EXPECT_EQ(s.spool_max_bytes, 2ULL << 30);
  EXPECT_EQ(s.spool_segment_bytes, 128ULL << 20);
  EXPECT_EQ(s.max_payload_bytes, 1ULL << 20);
  EXPECT_EQ(s.max_json_depth, 64);
  EXPECT_EQ(s.rejected_payload_max_bytes, 0u);
  EXPECT_EQ(s.log_dir, "/var/log/gw");
  EXPECT_EQ(s.log_level, "debug");
  EXPECT_EQ(s.log_max_bytes, 512ULL << 10);
  EXPECT_EQ(s.log_max_files, 9);
  EXPECT_EQ(s.summary_interval_seconds, 300);
  EXPECT_EQ(s.metrics_address, "127.0.0.1:9100");
  EXPECT_EQ(s.health_unreachable_seconds, 45);
  EXPECT_EQ(s.shutdown_timeout_seconds, 12);
  // Every variable of the table is covered by this test.
  EXPECT_EQ(env.size(), describe_settings(s).size());
}

TEST(SettingsTest, FailoverSecondsIsCheckedAndNamed) {
  EnvMap env = required_only();
  EXPECT_EQ(load_settings(env).mqtt_failover_seconds, 30);
  for (const char* bad : {"-1", "3601", "30s"}) {
    env["MQTT_FAILOVER_SECONDS"] = bad;
    try {
      load_settings(env);
      ADD_FAILURE() << bad << " accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("MQTT_FAILOVER_SECONDS"), std::string::npos) << e.what();
    }
  }
}

TEST(SettingsTest, EmptyOptionalValueMeansDefault) {
  EnvMap env = required_only();
  env["DB_PORT"] = "";
  env["LOG_LEVEL"] = "";
  env["SPOOL_MAX_BYTES"] = "";
  env["MQTT_CLIENT_ID"] = "";
  Settings s = load_settings(env);
  EXPECT_EQ(s.db_port, 3306);
  EXPECT_EQ(s.log_level, "info");
  EXPECT_EQ(s.spool_max_bytes, 1ULL << 30);
  EXPECT_EQ(s.mqtt_client_id, "mqtt-gateway");
}

TEST(SettingsTest, MissingOrEmptyRequiredVariableIsNamed) {
  for (const char* name : {"DB_HOST", "DB_NAME", "DB_USER"}) {
    EXPECT_EQ(load_error(without(required_only(), name)),
              std::string(name) + ": required variable is not set");
    EXPECT_EQ(load_error(with(required_only(), name, "")),
              std::string(name) + ": required variable is not set");
  }
}

TEST(SettingsTest, PasswordMustBeSetButMayBeEmpty) {
  EXPECT_EQ(load_error(without(required_only(), "DB_PASSWORD")),
            "DB_PASSWORD: required variable is not set");
  Settings s = load_settings(with(required_only(), "DB_PASSWORD", ""));
  EXPECT_TRUE(s.db_password.empty());
}

TEST(SettingsTest, FirstMissingRequiredVariableIsReportedFromAnEmptyEnvironment) {
  EXPECT_EQ(load_error({}), "DB_HOST: required variable is not set");
}

struct IntegerVariable {
  const char* name;
  long long min;
  long long max;
};

const IntegerVariable kIntegerVariables[] = {
    {"DB_PORT", 1, 65535},
    {"DB_POOL_SIZE", 1, 64},
    {"MAX_BATCH", 1, 10000},
    {"BATCH_LINGER_MS", 0, 1000},
    {"DB_RETRY_MAX_SECONDS", 1, 3600},
    {"DB_CONNECT_TIMEOUT_SECONDS", 1, 300},
    {"MQTT_KEEPALIVE", 1, 65535},
    {"MQTT_RECONNECT_MAX_SECONDS", 1, 30},
    {"MQTT_HEARTBEAT_SECONDS", 0, 3600},
    {"FLOWS_RELOAD_INTERVAL_SECONDS", 1, 604800},
    {"HTTP_TIMEOUT_SECONDS", 1, 3600},
    {"HTTP_MAX_ATTEMPTS", 1, 1000},
    {"HTTP_MAX_AGE_SECONDS", 1, 2592000},
    {"HTTP_RETRY_MAX_SECONDS", 1, 86400},
    {"SPOOL_FSYNC_INTERVAL_MS", 1, 10000},
    {"MAX_JSON_DEPTH", 1, 1000},
    {"LOG_MAX_FILES", 1, 100},
    {"SUMMARY_INTERVAL_SECONDS", 1, 86400},
    {"HEALTH_UNREACHABLE_SECONDS", 1, 86400},
    {"SHUTDOWN_TIMEOUT_SECONDS", 1, 3600},
};

TEST(SettingsTest, IntegerVariablesRejectMalformedAndOutOfRangeValuesNamingTheVariable) {
  for (const auto& v : kIntegerVariables) {
    std::string expected_prefix = std::string(v.name) + ": expected an integer between " +
                                  std::to_string(v.min) + " and " + std::to_string(v.max) +
                                  ", got ";
    for (std::string bad : {std::string("abc"), std::string("10s"), std::string(" 10"),
                            std::string("10 "), std::string("+10"), std::string("1.5"),
                            std::string("0x10"), std::string("-1"), std::to_string(v.min - 1),
                            std::to_string(v.max + 1), std::string("99999999999999999999999")}) {
      EXPECT_EQ(load_error(with(required_only(), v.name, bad)), expected_prefix + "'" + bad + "'")
          << v.name << "=" << bad;
    }
  }
}

TEST(SettingsTest, IntegerVariablesAcceptTheirBounds) {
  for (const auto& v : kIntegerVariables) {
    for (long long good : {v.min, v.max}) {
      EXPECT_EQ(load_error(with(required_only(), v.name, std::to_string(good))), "")
          << v.name << "=" << good;
    }
  }
}

TEST(SettingsTest, ReferenceExampleMessage) {
  EXPECT_EQ(load_error(with(required_only(), "FLOWS_RELOAD_INTERVAL_SECONDS", "10s")),
            "FLOWS_RELOAD_INTERVAL_SECONDS: expected an integer between 1 and 604800, got '10s'");
}

TEST(SettingsTest, ByteSizesAcceptPlainIntegersAndBinarySuffixes) {
  EXPECT_EQ(load_settings(with(required_only(), "MAX_PAYLOAD_BYTES", "1000")).max_payload_bytes,
            1000u);
  EXPECT_EQ(load_settings(with(required_only(), "MAX_PAYLOAD_BYTES", "64k")).max_payload_bytes,
            65536u);
  EXPECT_EQ(load_settings(with(required_only(), "MAX_PAYLOAD_BYTES", "16M")).max_payload_bytes,
            16u << 20);
  EXPECT_EQ(load_settings(with(required_only(), "SPOOL_MAX_BYTES", "1g")).spool_max_bytes,
            1ULL << 30);
  EXPECT_EQ(load_settings(with(required_only(), "SPOOL_MAX_BYTES", "1000G")).spool_max_bytes,
            1000ULL << 30);
}

TEST(SettingsTest, ByteSizesRejectJunkOverflowAndOutOfRange) {
  struct Case {
    const char* name;
    const char* value;
    const char* range;
  };
  const Case cases[] = {
      {"SPOOL_MAX_BYTES", "1T", "of at least 1M"},
      {"SPOOL_MAX_BYTES", "1.5G", "of at least 1M"},
      {"SPOOL_MAX_BYTES", "G", "of at least 1M"},
      {"SPOOL_MAX_BYTES", "-1G", "of at least 1M"},
      {"SPOOL_MAX_BYTES", "1023K", "of at least 1M"},
      {"SPOOL_MAX_BYTES", "17179869185G", "of at least 1M"},  // 2^64 + 1G: would wrap to 1G
      {"SPOOL_MAX_BYTES", "99999999999999999999999", "of at least 1M"},
      {"SPOOL_MAX_BYTES", "64 M", "of at least 1M"},
      {"SPOOL_SEGMENT_BYTES", "63K", "between 64K and 1G"},
      {"SPOOL_SEGMENT_BYTES", "1025M", "between 64K and 1G"},
      {"MAX_PAYLOAD_BYTES", "0", "between 1 and 16M"},
      {"MAX_PAYLOAD_BYTES", "17M", "between 1 and 16M"},
      {"REJECTED_PAYLOAD_MAX_BYTES", "16M", "between 0 and 16777215"},  // a MEDIUMBLOB
      {"LOG_MAX_BYTES", "1K", "of at least 64K"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(load_error(with(required_only(), c.name, c.value)),
              std::string(c.name) + ": expected a byte size (integer with optional K/M/G suffix) " +
                  c.range + ", got '" + c.value + "'")
        << c.name << "=" << c.value;
  }
}

TEST(SettingsTest, SegmentMustNotExceedSpoolMax) {
  EnvMap env = with(required_only(), "SPOOL_MAX_BYTES", "2M");
  EXPECT_EQ(load_error(with(env, "SPOOL_SEGMENT_BYTES", "4M")),
            "SPOOL_SEGMENT_BYTES: must not exceed SPOOL_MAX_BYTES (4M > 2M)");
  EXPECT_EQ(load_error(with(required_only(), "SPOOL_MAX_BYTES", "32M")),
            "SPOOL_SEGMENT_BYTES: must not exceed SPOOL_MAX_BYTES (64M > 32M)");
  EXPECT_EQ(load_error(with(env, "SPOOL_SEGMENT_BYTES", "2M")), "");
}

TEST(SettingsTest, FsyncPolicyIsParsedCaseInsensitively) {
  EXPECT_EQ(load_settings(with(required_only(), "SPOOL_FSYNC", "never")).spool_fsync,
            FsyncPolicy::kNever);
  EXPECT_EQ(load_settings(with(required_only(), "SPOOL_FSYNC", "Always")).spool_fsync,
            FsyncPolicy::kAlways);
  EXPECT_EQ(load_settings(with(required_only(), "SPOOL_FSYNC", "BATCH")).spool_fsync,
            FsyncPolicy::kBatch);
  EXPECT_EQ(load_error(with(required_only(), "SPOOL_FSYNC", "sometimes")),
            "SPOOL_FSYNC: expected one of batch, always, never, got 'sometimes'");
}

TEST(SettingsTest, FsyncPolicyStringsRoundTrip) {
  for (auto policy : {FsyncPolicy::kNever, FsyncPolicy::kBatch, FsyncPolicy::kAlways}) {
    EXPECT_EQ(parse_fsync_policy(to_string(policy)), policy);
  }
  EXPECT_EQ(parse_fsync_policy("Batch"), std::nullopt);
}

TEST(SettingsTest, LogLevelIsNormalisedAndValidated) {
  EXPECT_EQ(load_settings(with(required_only(), "LOG_LEVEL", "DEBUG")).log_level, "debug");
  EXPECT_EQ(load_settings(with(required_only(), "LOG_LEVEL", "WARNING")).log_level, "warn");
  EXPECT_EQ(load_settings(with(required_only(), "LOG_LEVEL", "off")).log_level, "off");
  EXPECT_EQ(load_error(with(required_only(), "LOG_LEVEL", "verbose")),
            "LOG_LEVEL: expected one of trace, debug, info, warn, error, critical, off, got "
            "'verbose'");
}

TEST(SettingsTest, HttpDeliveryIsOutboxOrInline) {
  EXPECT_EQ(load_settings(with(required_only(), "HTTP_DELIVERY", "inline")).http_delivery,
            HttpDelivery::kInline);
  EXPECT_EQ(load_settings(with(required_only(), "HTTP_DELIVERY", "outbox")).http_delivery,
            HttpDelivery::kOutbox);
  EXPECT_EQ(load_settings(with(required_only(), "HTTP_DELIVERY", "")).http_delivery,
            HttpDelivery::kOutbox);
  EXPECT_EQ(load_error(with(required_only(), "HTTP_DELIVERY", "later")),
            "HTTP_DELIVERY: expected outbox or inline, got 'later'");
}

TEST(SettingsTest, HttpDeliveryIsParsedStrictly) {
  for (const char* bad : {"Inline", "OUTBOX", " inline", "inline ", "outbox\n", "in line"}) {
    EXPECT_THAT(load_error(with(required_only(), "HTTP_DELIVERY", bad)),
                StartsWith("HTTP_DELIVERY: expected outbox or inline, got '"))
        << bad;
  }
}

TEST(SettingsTest, HttpDeliveryStringsRoundTrip) {
  for (auto delivery : {HttpDelivery::kOutbox, HttpDelivery::kInline}) {
    EXPECT_EQ(parse_http_delivery(to_string(delivery)), delivery);
  }
  EXPECT_EQ(parse_http_delivery("Outbox"), std::nullopt);
  EXPECT_THAT(describe_settings(load_settings(with(required_only(), "HTTP_DELIVERY", "inline"))),
              ::testing::Contains("HTTP_DELIVERY=inline"));
}

TEST(SettingsTest, ClientIdAndSharedGroupRejectTopicCharacters) {
  for (const char* name : {"MQTT_CLIENT_ID", "MQTT_SHARED_GROUP"}) {
    for (const char* bad : {"a/b", "a+", "#"}) {
      EXPECT_EQ(load_error(with(required_only(), name, bad)),
                std::string(name) + ": must not contain '/', '+' or '#', got '" + bad + "'");
    }
  }
}

TEST(SettingsTest, MqttVersionIs311Or5) {
  for (const char* v311 : {"3.1.1", "4"}) {
    const Settings s = load_settings(with(required_only(), "MQTT_VERSION", v311));
    EXPECT_EQ(s.mqtt_version, 4) << v311;
    EXPECT_THAT(describe_settings(s), ::testing::Contains("MQTT_VERSION=3.1.1"));
  }
  for (const char* v5 : {"5", "5.0"}) {
    const Settings s = load_settings(with(required_only(), "MQTT_VERSION", v5));
    EXPECT_EQ(s.mqtt_version, 5) << v5;
    EXPECT_THAT(describe_settings(s), ::testing::Contains("MQTT_VERSION=5"));
  }
  for (const char* bad : {"3", "3.1", "6", "v5", " 5", "mqtt5"}) {
    EXPECT_EQ(load_error(with(required_only(), "MQTT_VERSION", bad)),
              std::string("MQTT_VERSION: expected 3.1.1 (or 4) or 5, got '") + bad + "'");
  }
}

TEST(SettingsTest, SessionExpiryTakesTheWholeUnsignedRangeButNotZero) {
  EXPECT_EQ(load_settings(with(required_only(), "MQTT_SESSION_EXPIRY_SECONDS", "1"))
                .mqtt_session_expiry_seconds,
            1u);
  EXPECT_EQ(load_settings(with(required_only(), "MQTT_SESSION_EXPIRY_SECONDS", "4294967295"))
                .mqtt_session_expiry_seconds,
            4294967295u);
  for (const char* bad : {"0", "4294967296", "-1", "1d", "99999999999999999999"}) {
    EXPECT_THAT(load_error(with(required_only(), "MQTT_SESSION_EXPIRY_SECONDS", bad)),
                StartsWith("MQTT_SESSION_EXPIRY_SECONDS: expected an integer between 1 and "
                           "4294967295, got '"))
        << bad;
  }
}

TEST(SettingsTest, TlsServerNameIsAHostNameWithoutPortOrScheme) {
  EXPECT_EQ(load_settings(with(required_only(), "MQTT_TLS_SERVER_NAME", "mqtt.example.com"))
                .mqtt_tls_server_name,
            "mqtt.example.com");
  EXPECT_EQ(
      load_settings(with(required_only(), "MQTT_TLS_SERVER_NAME", "10.1.2.3")).mqtt_tls_server_name,
      "10.1.2.3");
  for (const char* bad : {"mqtt.example.com:8883", "ssl://mqtt", "a b", "user@host"}) {
    EXPECT_THAT(load_error(with(required_only(), "MQTT_TLS_SERVER_NAME", bad)),
                StartsWith("MQTT_TLS_SERVER_NAME: expected a DNS name or IPv4 address"))
        << bad;
  }
}

TEST(SettingsTest, MetricsAddressNeedsHostAndValidPort) {
  for (const char* good : {"127.0.0.1:9100", "0.0.0.0:1", "localhost:65535", "[::1]:9100"}) {
    EXPECT_EQ(load_settings(with(required_only(), "METRICS_ADDRESS", good)).metrics_address, good);
  }
  for (const char* bad : {"9100", ":9100", "host:", "host:0", "host:65536", "host:91x", "::1:9100",
                          "[::1]9100", "[]:9100", "host: 9100"}) {
    EXPECT_THAT(load_error(with(required_only(), "METRICS_ADDRESS", bad)),
                StartsWith("METRICS_ADDRESS: expected host:port"))
        << bad;
  }
}

TEST(SettingsTest, ParseHostPortSplitsHostAndPort) {
  auto v4 = parse_host_port("127.0.0.1:9100");
  ASSERT_TRUE(v4.has_value());
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 9100);
  auto v6 = parse_host_port("[::1]:8080");
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 8080);
}

TEST(SettingsTest, ErrorMessageStaysOnOneLineAndEchoesAtMostAShortValue) {
  std::string error = load_error(with(required_only(), "DB_PORT", "33\n06\x01"));
  EXPECT_EQ(error, "DB_PORT: expected an integer between 1 and 65535, got '33\\n06\\x01'");
  std::string long_error = load_error(with(required_only(), "DB_PORT", std::string(1000, '9')));
  EXPECT_LT(long_error.size(), 200u);
  EXPECT_THAT(long_error, HasSubstr("...'"));
}

TEST(SettingsTest, DatabaseUrlPercentEncodesUserAndPassword) {
  Settings s = load_settings({{"DB_HOST", "db.local"},
                              {"DB_PORT", "3307"},
                              {"DB_NAME", "gw"},
                              {"DB_USER", "us er@x"},
                              {"DB_PASSWORD", "p@ss:w/rd%?#~._-"}});
  EXPECT_EQ(s.database_url(), "mysql://us%20er%40x:p%40ss%3Aw%2Frd%25%3F%23~._-@db.local:3307/gw");
  EXPECT_EQ(s.database_url_redacted(), "mysql://us%20er%40x:***@db.local:3307/gw");
}

TEST(SettingsTest, DatabaseUrlBracketsIpv6HostAndHandlesEmptyPassword) {
  Settings s = load_settings(
      {{"DB_HOST", "::1"}, {"DB_NAME", "gw"}, {"DB_USER", "gw"}, {"DB_PASSWORD", ""}});
  EXPECT_EQ(s.database_url(), "mysql://gw:@[::1]:3306/gw");
  EXPECT_EQ(s.database_url_redacted(), "mysql://gw:***@[::1]:3306/gw");
}

// ---- DB_HOST as a list of nodes (issue 15) ----

TEST(SettingsTest, DbHostListGivesNodesInOrderWithDbPortForThoseWithout) {
  Settings s = load_settings(
      with(with(required_only(), "DB_HOST", "db1:3306, db2:3316 ,db3"), "DB_PORT", "3307"));
  EXPECT_EQ(s.db_host, "db1:3306, db2:3316 ,db3");  // as given: describe_settings() shows it
  EXPECT_EQ(s.db_nodes(), (std::vector<DbNode>{{"db1", 3306}, {"db2", 3316}, {"db3", 3307}}));
}

TEST(SettingsTest, SingleDbHostIsOneNodeOnDbPort) {
  Settings s = load_settings(required_only());
  EXPECT_EQ(s.db_nodes(), (std::vector<DbNode>{{"db.example", 3306}}));
  EXPECT_EQ(load_settings(with(required_only(), "DB_HOST", "db.example:3399")).db_nodes(),
            (std::vector<DbNode>{{"db.example", 3399}}));
}

TEST(SettingsTest, DbHostTakesIpv6InBracketsAndBareWithoutPort) {
  EXPECT_EQ(parse_db_nodes("[::1]:3310,[fe80::2],::3", 3306),
            (std::vector<DbNode>{{"::1", 3310}, {"fe80::2", 3306}, {"::3", 3306}}));
  EXPECT_EQ(parse_db_nodes("[::1]:3310", 3306).at(0).address(), "[::1]:3310");
  EXPECT_EQ(parse_db_nodes("10.0.0.1", 3306).at(0).address(), "10.0.0.1:3306");
}

TEST(SettingsTest, BadDbHostEntryIsOneLineNamingDbHostAndTheEntry) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"db1,,db3", "node 2 '': empty entry"},
      {"db1,", "node 2 '': empty entry"},
      {",db1", "node 1 '': empty entry"},
      {"db1:0", "node 1 'db1:0': the port must be 1..65535"},
      {"db1:3306,db2:65536", "node 2 'db2:65536': the port must be 1..65535"},
      {"db1:33o6", "node 1 'db1:33o6': the port must be 1..65535"},
      {"db1:", "node 1 'db1:': the port must be 1..65535"},
      {":3306", "node 1 ':3306': no host"},
      {"db 1:3306", "node 1 'db 1:3306': a host has no blanks"},
      {"tcp://db1", "node 1 'tcp://db1': the port must be 1..65535"},
      {"user@db1", "node 1 'user@db1': a host has no blanks"},
      {"[::1", "node 1 '[::1': '[' without ']'"},
      {"[::1]3306", "node 1 '[::1]3306': expected ':port' after ']'"},
      {"[db1]:3306", "node 1 '[db1]:3306': brackets are for IPv6 addresses"},
      {"db1:3306,db2,db1", "node 3 'db1': db1:3306 listed twice"},
  };
  for (const auto& [value, why] : cases) {
    const std::string error = load_error(with(required_only(), "DB_HOST", value));
    EXPECT_THAT(error, StartsWith("DB_HOST: " + why)) << value;
    EXPECT_THAT(error, HasSubstr("expected host[:port] separated by commas")) << value;
    EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  }
}

// A node without a port is on DB_PORT: "db1:3307,db1" is the same node twice only when DB_PORT
// is 3307.
TEST(SettingsTest, DuplicateDbHostNodesAreFoundWithDbPortApplied) {
  EXPECT_EQ(load_error(with(required_only(), "DB_HOST", "db1:3307,db1")), "");
  EXPECT_THAT(load_error(with(with(required_only(), "DB_HOST", "db1:3307,db1"), "DB_PORT", "3307")),
              StartsWith("DB_HOST: node 2 'db1': db1:3307 listed twice"));
}

TEST(SettingsTest, DatabaseUrlOfANodeListNamesEveryNodeNotAnIpv6Address) {
  Settings s = load_settings({{"DB_HOST", "127.0.0.1:3381,127.0.0.1:3382, db3"},
                              {"DB_NAME", "gw"},
                              {"DB_USER", "gw"},
                              {"DB_PASSWORD", "s3cret"}});
  EXPECT_EQ(s.database_url_redacted(), "mysql://gw:***@127.0.0.1:3381,127.0.0.1:3382,db3:3306/gw");
  EXPECT_EQ(s.database_url(), "mysql://gw:s3cret@127.0.0.1:3381,127.0.0.1:3382,db3:3306/gw");
  EXPECT_THAT(s.database_url_redacted(), Not(HasSubstr("s3cret")));
  EXPECT_THAT(s.database_url_redacted(), Not(HasSubstr("[")));
  Settings v6 = load_settings(with(required_only(), "DB_HOST", "[::1]:3381,[::2]"));
  EXPECT_EQ(v6.database_url_redacted(), "mysql://gw:***@[::1]:3381,[::2]:3306/gw");
}

TEST(SettingsTest, SecretNeverPrintsItsValue) {
  Secret secret("hunter2");
  std::ostringstream out;
  out << secret;
  EXPECT_EQ(out.str(), "***");
  EXPECT_EQ(fmt::format("{}", secret), "***");
  EXPECT_EQ(fmt::format("[{:>5}]", secret), "[  ***]");
  EXPECT_EQ(secret.reveal(), "hunter2");
  EXPECT_FALSE(secret.empty());
  EXPECT_TRUE(Secret().empty());
  EXPECT_EQ(fmt::format("{}", Secret()), "***");  // does not even reveal emptiness
}

TEST(SettingsTest, DescribeSettingsListsEveryVariableAndHidesThePassword) {
  Settings s = load_settings(with(required_only(), "DB_PASSWORD", "hunter2"));
  std::vector<std::string> lines = describe_settings(s);
  std::set<std::string> names;
  for (const std::string& line : lines) {
    EXPECT_THAT(line, Not(HasSubstr("hunter2")));
    names.insert(line.substr(0, line.find('=')));
  }
  EXPECT_EQ(names.size(), lines.size()) << "duplicate variable";
  EXPECT_EQ(lines.size(), 45u);
  EXPECT_THAT(lines, ::testing::Contains("DB_PASSWORD=***"));
  EXPECT_THAT(lines, ::testing::Contains("DB_HOST=db.example"));
  EXPECT_THAT(lines, ::testing::Contains("SPOOL_MAX_BYTES=1G"));
  EXPECT_THAT(lines, ::testing::Contains("MAX_PAYLOAD_BYTES=256K"));
  EXPECT_THAT(lines, ::testing::Contains("SPOOL_FSYNC=batch"));
  EXPECT_THAT(lines, ::testing::Contains("METRICS_ADDRESS="));
}

TEST(SettingsTest, DescribedSettingsLoadBackToTheSameSettings) {
  EnvMap env = with(with(required_only(), "SPOOL_FSYNC", "never"), "MAX_PAYLOAD_BYTES", "1000");
  Settings original = load_settings(env);
  EnvMap described;
  for (const std::string& line : describe_settings(original)) {
    std::size_t equals = line.find('=');
    described[line.substr(0, equals)] = line.substr(equals + 1);
  }
  described["DB_PASSWORD"] = original.db_password.reveal();
  EXPECT_EQ(describe_settings(load_settings(described)), describe_settings(original));
}

class SettingsFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::filesystem::temp_directory_path() /
            ("settings_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".env");
  }
  void TearDown() override { std::filesystem::remove(path_); }

  std::filesystem::path path_;
};

TEST_F(SettingsFileTest, ProcessEnvironmentWinsOverDotEnvFile) {
  std::ofstream(path_) << "DB_HOST=file-host\nDB_NAME=file-db\nDB_USER=gw\nDB_PASSWORD=pw\n"
                          "DB_PORT=3307\n";
  char host[] = "DB_HOST=env-host";
  char port[] = "DB_PORT=3308";
  char* envp[] = {host, port, nullptr};
  Settings s = load_settings(envp, path_);
  EXPECT_EQ(s.db_host, "env-host");
  EXPECT_EQ(s.db_port, 3308);
  EXPECT_EQ(s.db_name, "file-db");
}

TEST_F(SettingsFileTest, MissingDotEnvFileIsFine) {
  char host[] = "DB_HOST=h";
  char name[] = "DB_NAME=n";
  char user[] = "DB_USER=u";
  char password[] = "DB_PASSWORD=";
  char* envp[] = {host, name, user, password, nullptr};
  EXPECT_EQ(load_settings(envp, path_).db_host, "h");
}

TEST_F(SettingsFileTest, MalformedDotEnvFileIsAConfigError) {
  std::ofstream(path_) << "DB_HOST='unterminated\n";
  char* envp[] = {nullptr};
  EXPECT_THROW(load_settings(envp, path_), ConfigError);
}

// .env.example is part of the product: it must parse, load, and mention every variable.
TEST(SettingsExampleTest, EnvExampleListsEveryVariableAndLoads) {
  std::filesystem::path path =
      std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / ".env.example";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot open " << path;
  std::stringstream text;
  text << in.rdbuf();
  Settings s = load_settings(parse_env_file(text.str()));
  EXPECT_EQ(s.db_host, "127.0.0.1");
  EXPECT_EQ(s.db_port, 3307);
  EXPECT_EQ(s.db_name, "gw");
  EXPECT_EQ(s.db_user, "gw");
  EXPECT_EQ(s.db_password.reveal(), "gwpass");
  // Uncommenting every optional line must give the defaults too.
  std::string uncommented;
  std::string line;
  std::istringstream lines(text.str());
  while (std::getline(lines, line)) {
    if (line.rfind("# ", 0) == 0 && line.find('=') != std::string::npos &&
        line.find(' ', 2) > line.find('=')) {
      line = line.substr(2);
    }
    uncommented += line + "\n";
  }
  Settings all = load_settings(parse_env_file(uncommented));
  Settings expected = load_settings({{"DB_HOST", "127.0.0.1"},
                                     {"DB_PORT", "3307"},
                                     {"DB_NAME", "gw"},
                                     {"DB_USER", "gw"},
                                     {"DB_PASSWORD", "gwpass"}});
  EXPECT_EQ(describe_settings(all), describe_settings(expected));
  EnvMap listed = parse_env_file(uncommented);
  for (const std::string& described : describe_settings(expected)) {
    std::string name = described.substr(0, described.find('='));
    EXPECT_TRUE(listed.count(name)) << name << " is missing from .env.example";
  }
}

}  // namespace
}  // namespace gateway
