// Shared set-up for tests that run the real mqtt-gateway binary against the test MariaDB and
// mosquitto: a fresh database with one broker row, a unique topic prefix and client id, and
// helpers to start the gateway and wait (bounded) for rows, to run it to completion (--check and
// other one-shot commands), and to read what it wrote.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/gateway_process.h"
#include "support/mqtt_test_client.h"
#include "support/test_database.h"
#include "support/test_env.h"

namespace gateway::testing {

// Polls `pred` every 50 ms until it holds or `timeout` passes; returns its last value.
inline bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

// How a run of the binary to completion ended.
struct Outcome {
  std::optional<int> code;  // std::nullopt: still running at the timeout
  std::string output;       // stdout and stderr
};

// Runs `mqtt-gateway args...` with exactly `env` to completion (bounded) in a fresh directory.
inline Outcome run_gateway(std::vector<std::string> args, std::map<std::string, std::string> env,
                           std::chrono::seconds timeout = std::chrono::seconds(30)) {
  GatewayProcess gw(GATEWAY_BINARY, std::move(args), std::move(env));
  Outcome o;
  o.code = gw.wait_exit(timeout);
  o.output = gw.output();
  return o;
}

inline std::size_t line_count(const std::string& text) {
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

// The whole file ("" if it cannot be read), e.g. a log or spool file the gateway wrote.
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class GatewayE2eTest : public ::testing::Test {
 protected:
  GatewayE2eTest() {
    const auto& svc = test_services();
    server_id_ = db_.insert_mqtt_server(svc.mqtt_host, svc.mqtt_port);
    db_.execute("UPDATE mqtt_servers SET is_default = 1");
    prefix_ = "e2e/" + db_.name();
    client_id_ = "gw-" + db_.name();
  }

  // The gateway's environment: this test's database, logs and spool in the working directory.
  std::map<std::string, std::string> env() const {
    auto e = db_.gateway_env();
    e["LOG_DIR"] = "log";
    e["SPOOL_DIR"] = "spool";
    e["MQTT_CLIENT_ID"] = client_id_;
    e["FLOWS_RELOAD_INTERVAL_SECONDS"] = "1";
    e["MQTT_KEEPALIVE"] = "5";
    e["LOG_LEVEL"] = "info";
    for (const auto& [k, v] : extra_env_) e[k] = v;
    return e;
  }

  // Starts the gateway (in `dir` to reuse a previous run's spool) and waits until it is ready.
  GatewayProcess& start_gateway(const std::filesystem::path& dir = {}) {
    // Keep the previous run's directory (spool, logs) alive for a restart in it.
    if (gateway_) {
      if (auto owned = gateway_->take_work_dir()) old_dirs_.push_back(std::move(owned));
    }
    gateway_.reset();
    gateway_ =
        std::make_unique<GatewayProcess>(GATEWAY_BINARY, std::vector<std::string>{}, env(), dir);
    EXPECT_TRUE(gateway_->wait_for_output("ready", std::chrono::seconds(20))) << gateway_->output();
    return *gateway_;
  }

  MqttTestClient& publisher() {
    if (!publisher_) {
      publisher_ =
          std::make_unique<MqttTestClient>(test_services().mqtt_host, test_services().mqtt_port);
    }
    return *publisher_;
  }

  std::int64_t count(const std::string& sql) { return db_.query_int(sql); }
  bool wait_for_count(const std::string& sql, std::int64_t n,
                      std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    return wait_until([&] { return count(sql) >= n; }, timeout);
  }

  TestDatabase db_;
  std::int64_t server_id_ = 0;
  std::string prefix_;
  std::string client_id_;
  std::map<std::string, std::string> extra_env_;
  std::vector<std::unique_ptr<TempDir>> old_dirs_;  // before gateway_: outlives it
  std::unique_ptr<GatewayProcess> gateway_;
  std::unique_ptr<MqttTestClient> publisher_;
};

}  // namespace gateway::testing
