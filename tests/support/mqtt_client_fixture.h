// MqttClientFixture: the set-up shared by GatewayMqttClient's unit tests (subscriptions, broker
// failover, MQTT 5): a scratch directory holding the client's spool, Settings for a test client
// there, the in-memory flow repository, the metrics, and make_client() wiring them into a client.
// Each test keeps its fake brokers (the connection factory), logger, flow table, client and its
// specific settings. Header-only: the unit tests do not link test_support.
#pragma once

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include "fakes/fake_flow_repository.h"
#include "gateway/gateway_mqtt_client.h"

namespace gateway::testing {

class MqttClientFixture : public ::testing::Test {
 protected:
  // The scratch directory is <temp>/<dir_prefix>XXXXXX.
  explicit MqttClientFixture(const std::string& dir_prefix) {
    std::string pattern =
        (std::filesystem::temp_directory_path() / (dir_prefix + "XXXXXX")).string();
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    settings_.spool_dir = (dir_ / "spool").string();
    settings_.mqtt_client_id = "gw-test";
    settings_.mqtt_heartbeat_seconds = 0;
    SpoolOptions so;
    so.dir = settings_.spool_dir;
    so.fsync = SpoolFsync::kNever;
    spool_ = std::make_unique<Spool>(so, nullptr);
  }
  // The derived fixture's client is gone by now (its members are destroyed before these): it
  // writes to the spool, which goes before its directory.
  ~MqttClientFixture() override {
    spool_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A STORE_DB flow in the repository.
  void add_flow(std::int64_t id, const std::string& topic) {
    Flow f;
    f.id = id;
    f.code = "f" + std::to_string(id);
    f.topic = topic;
    f.action = "STORE_DB";
    repo_.flows[id] = f;
  }

  // A client (not started) on this fixture's settings, repository, spool and metrics.
  std::unique_ptr<GatewayMqttClient> make_client(FlowTable& flows,
                                                 GatewayMqttClient::ConnectionFactory connect,
                                                 std::shared_ptr<spdlog::logger> log,
                                                 ClientIdCheck client_id_check) {
    return std::make_unique<GatewayMqttClient>(
        settings_, [this] { return std::make_unique<FakeFlowRepositoryView>(repo_); }, flows,
        *spool_, metrics_, std::move(connect), std::move(log), client_id_check);
  }

  std::filesystem::path dir_;
  Settings settings_;
  FakeFlowRepository repo_;
  std::unique_ptr<Spool> spool_;
  Metrics metrics_;
};

}  // namespace gateway::testing
