// The services the integration and e2e tests run against (MariaDB, mosquitto), as described by
// the GW_TEST_* environment variables that scripts/services.sh writes. Tests never skip silently:
// a missing variable is a test failure that names it.
#pragma once

#include <string>
#include <string_view>

namespace gateway::testing {

struct TestServices {
  std::string db_host;             // GW_TEST_DB_HOST
  int db_port = 0;                 // GW_TEST_DB_PORT
  std::string db_user;             // GW_TEST_DB_USER (may create databases named gw_test_*)
  std::string db_password;         // GW_TEST_DB_PASSWORD (may be empty, but must be set)
  std::string mqtt_host;           // GW_TEST_MQTT_HOST
  int mqtt_port = 0;               // GW_TEST_MQTT_PORT (plain TCP, anonymous)
  int mqtt_tls_port = 0;           // GW_TEST_MQTT_TLS_PORT
  std::string mqtt_ca_file;        // GW_TEST_MQTT_CA_FILE: the CA that signed the broker's cert
  std::string mqtt_wrong_ca_file;  // GW_TEST_MQTT_WRONG_CA_FILE: a CA that did not
  std::string run_dir;             // GW_TEST_RUN_DIR: the services' state directory
  std::string services_script;     // GW_SERVICES_SCRIPT: scripts/services.sh
};

// Reads the environment on first success and caches it. Thread-safe. Throws std::runtime_error
// naming every missing or malformed variable (inside a test, gtest reports it as a failure).
const TestServices& test_services();

// Runs `$GW_SERVICES_SCRIPT <action>` (e.g. "stop-db", "start-db", "restart-mqtt") with this
// process's environment, plus GW_RUN_DIR=$GW_TEST_RUN_DIR unless GW_RUN_DIR is already set, and
// waits for it (at most 3 minutes). Throws std::runtime_error, with the script's output, if it
// cannot be started, exits non-zero or times out, so the calling test stops and fails.
void run_services_command(std::string_view action);

}  // namespace gateway::testing
