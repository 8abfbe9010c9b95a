// The 3-node Galera test cluster that scripts/galera.sh starts, as described by the
// GW_TEST_GALERA_* variables it writes to galera.env. Unlike test_services(), a missing variable
// is not an error: galera_cluster() says what is missing and the Galera tests skip with that
// reason (they run in CI's Galera step and in scripts/test-galera.sh, which start the cluster).
// Not thread-safe; call from the test's own thread.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gateway::testing {

struct GaleraNode {
  std::string host;
  int port = 0;
  std::string socket;  // root without a password over this Unix socket
  std::string address() const { return host + ":" + std::to_string(port); }
};

struct GaleraCluster {
  std::vector<GaleraNode> nodes;  // GW_TEST_GALERA_NODES and GW_TEST_GALERA_SOCKETS, node 1 first
  std::string user;               // GW_TEST_GALERA_USER (may create databases named gw_test_*)
  std::string password;           // GW_TEST_GALERA_PASSWORD
  std::string dir;                // GW_TEST_GALERA_DIR: the cluster's run directory
  std::string script;             // GW_GALERA_SCRIPT: scripts/galera.sh

  // DB_HOST listing the nodes in this order of 1-based node numbers, e.g. {2, 3, 1}.
  std::string db_host(const std::vector<int>& order) const;
  const GaleraNode& node(int number) const {
    return nodes.at(static_cast<std::size_t>(number - 1));
  }
};

// The cluster, or std::nullopt with *why_not naming the missing or malformed variables.
std::optional<GaleraCluster> galera_cluster(std::string* why_not = nullptr);

// Runs `$GW_GALERA_SCRIPT <words...>` (e.g. {"kill-node", "2"}) with GW_GALERA_DIR set to the
// cluster's directory, and waits for it (at most 5 minutes). Throws std::runtime_error, with the
// script's output, if it fails or times out.
void run_galera_command(const GaleraCluster& cluster, const std::vector<std::string>& words);

// Points this process's GW_TEST_DB_HOST, GW_TEST_DB_PORT, GW_TEST_DB_USER, GW_TEST_DB_PASSWORD and
// GW_TEST_DB_SOCKET at node `number`, so that TestDatabase and SqlSession (test_database.h) work on
// the cluster (what they create replicates to every node) while mosquitto stays the one
// services.sh started. Call before anything reads test_services(): it reads the environment
// once per process (ctest runs each test in a process of its own). Throws std::runtime_error
// if test_services() was read already and names another server.
void use_galera_for_test_database(const GaleraCluster& cluster, int number);

// Root on node `number` over its socket: runs one statement (no result), or returns the first
// column of the first row of a query as text ("" when there is none). Throws std::runtime_error.
void galera_root_execute(const GaleraCluster& cluster, int number, std::string_view sql);
std::string galera_root_query(const GaleraCluster& cluster, int number, std::string_view sql);

}  // namespace gateway::testing
