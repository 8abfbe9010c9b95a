// DB_HOST as a list of nodes (issue 15) against the one test MariaDB: dead nodes (closed ports)
// are passed over, a read-only node counts as down in a list but is taken when it is the only
// one, the error names every node and why, and the node reached is reported once. The same on a
// real Galera cluster: tests/galera/galera_integration_test.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "gateway/adapters/mysql_flow_repository.h"
#include "gateway/database_node.h"
#include "gateway/env_file.h"
#include "gateway/errors.h"
#include "support/loopback_http.h"
#include "support/test_database.h"
#include "support/test_env.h"

namespace gateway {
namespace {

using testing::free_port;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::SqlSession;
using testing::test_services;
using testing::TestDatabase;

class MySqlNodeListTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { mysql_global_init(); }

  // The test database's settings with DB_HOST = `hosts` and a short connect timeout.
  Settings settings(const std::string& hosts) {
    EnvMap env;
    for (const auto& [k, v] : db_.gateway_env()) env[k] = v;
    env["DB_HOST"] = hosts;
    env["DB_CONNECT_TIMEOUT_SECONDS"] = "2";
    return load_settings(env);
  }
  static std::string server() {
    return test_services().db_host + ":" + std::to_string(test_services().db_port);
  }
  static std::string dead() { return "127.0.0.1:" + std::to_string(free_port()); }

  TestDatabase db_;
  // The gateway's node, as main shares it among its adapters.
  const std::shared_ptr<DatabaseNode> node_ = std::make_shared<DatabaseNode>();
};

TEST_F(MySqlNodeListTest, DeadFirstNodesArePassedOverAndTheServerIsReached) {
  MySqlFlowRepository repo(settings(dead() + "," + dead() + "," + server()), node_);
  EXPECT_EQ(node_->address(), server());
  db_.insert_flow("f", "t/#", "STORE_DB", std::nullopt);
  EXPECT_EQ(repo.load_flows().size(), 1u);
}

TEST_F(MySqlNodeListTest, NoReachableNodeIsAnOutageNamingEveryNodeNeverThePassword) {
  const std::string a = dead(), b = dead();
  try {
    MySqlFlowRepository repo(settings(a + "," + b));
    FAIL() << "connected";
  } catch (const DbUnavailable& e) {
    const std::string what = e.what();
    EXPECT_THAT(what, HasSubstr("no node of DB_HOST takes writes"));
    EXPECT_THAT(what, HasSubstr(a + ": "));
    EXPECT_THAT(what, HasSubstr(b + ": "));
    EXPECT_THAT(what, HasSubstr("MySQL error 2002"));
    EXPECT_THAT(what, Not(HasSubstr(test_services().db_password + "@")));
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

// Sets read_only as root for the life of the object.
class ReadOnlyServer {
 public:
  ReadOnlyServer() { root_.execute("SET GLOBAL read_only = ON"); }
  ~ReadOnlyServer() {
    try {
      root_.execute("SET GLOBAL read_only = OFF");
    } catch (const std::exception& e) {
      ADD_FAILURE() << "SET GLOBAL read_only = OFF: " << e.what();
    }
  }
  ReadOnlyServer(const ReadOnlyServer&) = delete;
  ReadOnlyServer& operator=(const ReadOnlyServer&) = delete;

 private:
  SqlSession root_{SqlSession::As::kRoot};
};

// In a list, a read-only node is down for writes: the next is tried, and when none is left the
// error says why. Alone, it is taken as before: reads work and the server refuses the writes
// (1290), which holds the flows.
TEST_F(MySqlNodeListTest, ReadOnlyNodeIsDownInAListButTakenAlone) {
  const std::string other = dead();
  ReadOnlyServer read_only;
  try {
    MySqlFlowRepository repo(settings(server() + "," + other));
    FAIL() << "connected to a read-only node";
  } catch (const DbRefused& e) {
    EXPECT_THAT(e.what(), HasSubstr(server() + ": not ready for writes (read_only=ON)"));
    EXPECT_THAT(e.what(), HasSubstr(other + ": "));
  }
  MySqlFlowRepository alone(settings(server()), node_);
  EXPECT_EQ(node_->address(), server());
  EXPECT_TRUE(alone.load_flows().empty());
}

TEST_F(MySqlNodeListTest, TheNodeReachedIsReportedOncePerChange) {
  std::vector<std::string> lines;
  node_->set_on_change([&](const std::string& line) { lines.push_back(line); });
  const Settings s = settings(dead() + "," + server());
  for (int i = 0; i < 3; ++i) MySqlFlowRepository repo(s, node_);
  ASSERT_EQ(lines.size(), 1u) << ::testing::PrintToString(lines);
  EXPECT_THAT(lines[0], ::testing::StartsWith("database node " + server() + " ("));
  EXPECT_FALSE(node_->name().empty()) << "the server's hostname";
  node_->set_on_change(nullptr);
}

}  // namespace
}  // namespace gateway
