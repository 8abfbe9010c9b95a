#include "support/test_env.h"

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <map>
#include <stdexcept>
#include <vector>

#include "support/gateway_process.h"

extern char** environ;  // NOLINT: POSIX, the environment inherited by the services script

namespace gateway::testing {

namespace {

constexpr std::chrono::minutes kServicesCommandTimeout{3};

class EnvReader {
 public:
  std::string text(const char* name, bool allow_empty = false) {
    const char* value = std::getenv(name);
    if (value == nullptr || (!allow_empty && value[0] == '\0')) {
      problems_.push_back(std::string(name) + " is not set");
      return {};
    }
    return value;
  }

  int port(const char* name) {
    const std::string value = text(name);
    if (value.empty()) return 0;
    int port = 0;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), port);
    if (ec != std::errc() || end != value.data() + value.size() || port < 1 || port > 65535) {
      problems_.push_back(std::string(name) + " is not a port number: '" + value + "'");
    }
    return port;
  }

  void throw_if_problems() const {
    if (problems_.empty()) return;
    std::string message = "test services are not configured: ";
    for (std::size_t i = 0; i < problems_.size(); ++i) {
      if (i > 0) message += "; ";
      message += problems_[i];
    }
    message += ". Start them with `scripts/services.sh start` and export the variables it writes.";
    throw std::runtime_error(message);
  }

 private:
  std::vector<std::string> problems_;
};

TestServices load_test_services() {
  EnvReader env;
  TestServices services;
  services.db_host = env.text("GW_TEST_DB_HOST");
  services.db_port = env.port("GW_TEST_DB_PORT");
  services.db_user = env.text("GW_TEST_DB_USER");
  services.db_password = env.text("GW_TEST_DB_PASSWORD", /*allow_empty=*/true);
  services.mqtt_host = env.text("GW_TEST_MQTT_HOST");
  services.mqtt_port = env.port("GW_TEST_MQTT_PORT");
  services.mqtt_tls_port = env.port("GW_TEST_MQTT_TLS_PORT");
  services.mqtt_ca_file = env.text("GW_TEST_MQTT_CA_FILE");
  services.mqtt_wrong_ca_file = env.text("GW_TEST_MQTT_WRONG_CA_FILE");
  services.run_dir = env.text("GW_TEST_RUN_DIR");
  services.services_script = env.text("GW_SERVICES_SCRIPT");
  env.throw_if_problems();
  return services;
}

std::map<std::string, std::string> inherited_environment() {
  std::map<std::string, std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string_view text(*entry);
    const auto equals = text.find('=');
    if (equals == std::string_view::npos || equals == 0) continue;
    env.emplace(std::string(text.substr(0, equals)), std::string(text.substr(equals + 1)));
  }
  return env;
}

}  // namespace

const TestServices& test_services() {
  // A throwing initialiser leaves the static uninitialised, so every caller gets the message.
  static const TestServices services = load_test_services();
  return services;
}

void run_services_command(std::string_view action) {
  const TestServices& services = test_services();
  std::map<std::string, std::string> env = inherited_environment();
  env.emplace("GW_RUN_DIR", services.run_dir);  // no-op when already set

  const std::string description = services.services_script + " " + std::string(action);
  // The script's output goes into the exception below, so its directory is never kept.
  const TempDir dir("gw_services_", /*keep_if_test_failed=*/false);
  GatewayProcess script(services.services_script, {std::string(action)}, std::move(env),
                        dir.path());
  const std::optional<int> status = script.wait_exit(kServicesCommandTimeout);
  if (!status) {
    script.kill(SIGKILL);
    throw std::runtime_error(description + " did not finish within 3 minutes; output:\n" +
                             script.output());
  }
  if (*status != 0) {
    throw std::runtime_error(description + " failed with " +
                             (*status < 0 ? "signal " + std::to_string(-*status)
                                          : "exit status " + std::to_string(*status)) +
                             "; output:\n" + script.output());
  }
}

}  // namespace gateway::testing
