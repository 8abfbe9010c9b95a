// Shared by the Galera tests: the cluster from GW_TEST_GALERA_* (support/galera_env.h), chosen
// before anything reads the test services, and a skip with the reason when there is none.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "support/galera_env.h"

namespace gateway::testing {

// A base class listed before the fixture that creates a TestDatabase: base classes are built in
// order, so the test database is made on Galera node `node` (and replicated to the others).
class GaleraChoice {
 protected:
  explicit GaleraChoice(int node) : cluster_(galera_cluster(&why_not_)) {
    if (cluster_) use_galera_for_test_database(*cluster_, node);
  }

  // wsrep_local_state of node `number` ("4" = Synced), "" when it does not answer.
  std::string state(int number) const {
    try {
      return galera_root_query(*cluster_, number,
                               "SELECT VARIABLE_VALUE FROM "
                               "information_schema.GLOBAL_STATUS WHERE "
                               "VARIABLE_NAME = 'WSREP_LOCAL_STATE'");
    } catch (const std::exception&) {
      return {};
    }
  }
  // Waits (bounded) until node `number` is Synced or not, as asked.
  bool wait_state(int number, bool synced, std::chrono::seconds limit) const {
    const auto until = std::chrono::steady_clock::now() + limit;
    while ((state(number) == "4") != synced) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return true;
  }

  std::string why_not_;  // before cluster_: galera_cluster() writes it
  std::optional<GaleraCluster> cluster_;
};

// Kills a node with -9 for the life of the object, or until start(); brings it back (and waits
// until it is Synced) in any case, also when the test fails half-way.
class KilledNode {
 public:
  KilledNode(const GaleraCluster& cluster, int number) : cluster_(cluster), number_(number) {
    run_galera_command(cluster_, {"kill-node", std::to_string(number_)});
  }
  ~KilledNode() {
    try {
      start();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "restarting galera node " << number_ << ": " << e.what();
    }
  }
  KilledNode(const KilledNode&) = delete;
  KilledNode& operator=(const KilledNode&) = delete;

  void start() {
    if (started_) return;
    started_ = true;
    run_galera_command(cluster_, {"start-node", std::to_string(number_)});
  }

 private:
  const GaleraCluster& cluster_;
  int number_;
  bool started_ = false;
};

}  // namespace gateway::testing
