// DB_HOST as a list of Galera nodes (issue 15) on the real 3-node test cluster
// (scripts/galera.sh): every connection goes to the first node that takes writes, a node that is
// dead, desynced, rejecting queries or read-only is passed over, the connections stay on the node
// they moved to, and two nodes writing one flow row conflict at COMMIT (1213) as a retryable
// error whose retry numbers after the winner. Skipped without GW_TEST_GALERA_*.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "galera/galera_fixture.h"
#include "gateway/adapters/mysql_flow_repository.h"
#include "gateway/env_file.h"
#include "gateway/errors.h"
#include "support/loopback_http.h"
#include "support/test_database.h"

namespace gateway {
namespace {

using testing::free_port;
using testing::galera_root_execute;
using testing::GaleraChoice;
using ::testing::HasSubstr;
using testing::KilledNode;
using ::testing::Not;
using testing::TestDatabase;

class GaleraNodes : public ::testing::Test, protected GaleraChoice {
 protected:
  GaleraNodes() : GaleraChoice(1) {}
  static void SetUpTestSuite() { mysql_global_init(); }
  void SetUp() override {
    if (!cluster_) GTEST_SKIP() << why_not_;
    db_ = std::make_unique<TestDatabase>();
  }

  // The test database on the cluster, DB_HOST = `hosts`.
  Settings settings(const std::string& hosts) {
    EnvMap env;
    for (const auto& [k, v] : db_->gateway_env()) env[k] = v;
    env["DB_HOST"] = hosts;
    env["DB_CONNECT_TIMEOUT_SECONDS"] = "2";
    return load_settings(env);
  }
  std::string node(int n) const { return cluster_->node(n).address(); }

  std::unique_ptr<TestDatabase> db_;
  // The gateway's node, as main shares it among its adapters.
  const std::shared_ptr<DatabaseNode> node_ = std::make_shared<DatabaseNode>();
};

// Sets a global variable on one node as root for the life of the object.
class NodeVariable {
 public:
  NodeVariable(const testing::GaleraCluster& c, int node, std::string name, const std::string& on,
               std::string off)
      : c_(c), node_(node), name_(std::move(name)), off_(std::move(off)) {
    galera_root_execute(c_, node_, "SET GLOBAL " + name_ + " = " + on);
  }
  ~NodeVariable() {
    try {
      galera_root_execute(c_, node_, "SET GLOBAL " + name_ + " = " + off_);
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
    }
  }
  NodeVariable(const NodeVariable&) = delete;
  NodeVariable& operator=(const NodeVariable&) = delete;

 private:
  const testing::GaleraCluster& c_;
  int node_;
  std::string name_;
  std::string off_;
};

TEST_F(GaleraNodes, FirstNodeDeadReachesTheSecond) {
  MySqlFlowRepository repo(
      settings("127.0.0.1:" + std::to_string(free_port()) + "," + cluster_->db_host({2, 3})),
      node_);
  EXPECT_EQ(node_->address(), node(2));
  EXPECT_EQ(node_->name(), "node2");
  db_->insert_flow("f", "t/#", "STORE_DB", std::nullopt);  // through node 1
  // Node 2 applies node 1's commit a moment later (reads do not wait: wsrep_sync_wait 0).
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (repo.load_flows().empty() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(repo.load_flows().size(), 1u);
}

TEST_F(GaleraNodes, KilledNodeIsPassedOver) {
  KilledNode killed(*cluster_, 3);
  MySqlFlowRepository repo(settings(cluster_->db_host({3, 1, 2})), node_);
  EXPECT_EQ(node_->address(), node(1));
}

TEST_F(GaleraNodes, ReadOnlyNodeIsSkipped) {
  NodeVariable read_only(*cluster_, 1, "read_only", "ON", "OFF");
  MySqlFlowRepository repo(settings(cluster_->db_host({1, 2, 3})), node_);
  EXPECT_EQ(node_->address(), node(2));
}

// wsrep_desync: the node leaves flow control and says Donor/Desynced (wsrep_local_state 2).
TEST_F(GaleraNodes, DesyncedNodeIsSkipped) {
  {
    NodeVariable desync(*cluster_, 1, "wsrep_desync", "ON", "OFF");
    ASSERT_TRUE(wait_state(1, false, std::chrono::seconds(10))) << state(1);
    MySqlFlowRepository repo(settings(cluster_->db_host({1, 2})), node_);
    EXPECT_EQ(node_->address(), node(2));
  }
  EXPECT_TRUE(wait_state(1, true, std::chrono::seconds(30))) << "node 1 stays " << state(1);
}

// Maintenance mode: the node answers SET and SHOW but refuses queries on tables with 1047.
TEST_F(GaleraNodes, NodeRejectingQueriesIsSkipped) {
  NodeVariable reject(*cluster_, 1, "wsrep_reject_queries", "ALL", "NONE");
  MySqlFlowRepository repo(settings(cluster_->db_host({1, 3})), node_);
  EXPECT_EQ(node_->address(), node(3));
  EXPECT_TRUE(repo.load_flows().empty());
}

TEST_F(GaleraNodes, NoNodeTakingWritesIsRefusedNamingEachNodeAndWhy) {
  NodeVariable read_only(*cluster_, 1, "read_only", "ON", "OFF");
  NodeVariable reject(*cluster_, 2, "wsrep_reject_queries", "ALL", "NONE");
  const std::string dead = "127.0.0.1:" + std::to_string(free_port());
  try {
    MySqlFlowRepository repo(settings(cluster_->db_host({1, 2}) + "," + dead), node_);
    FAIL() << "connected";
  } catch (const DbRefused& e) {
    const std::string what = e.what();
    EXPECT_THAT(what, HasSubstr(node(1) + ": not ready for writes ("));
    EXPECT_THAT(what, HasSubstr("read_only=ON"));
    EXPECT_THAT(what, HasSubstr(node(2) + ": not ready for writes ("));
    EXPECT_THAT(what, HasSubstr("wsrep_reject_queries=ALL"));
    EXPECT_THAT(what, HasSubstr(dead + ": "));
    EXPECT_THAT(what, Not(HasSubstr(cluster_->password + "@")));
  }
}

// The safe Galera mode: once the connections moved to node 2 they stay there when node 1 takes
// writes again, so that one gateway's writes do not split between two nodes.
TEST_F(GaleraNodes, ConnectionsStayOnTheNodeTheyMovedTo) {
  const Settings s = settings(cluster_->db_host({1, 2, 3}));
  {
    NodeVariable read_only(*cluster_, 1, "read_only", "ON", "OFF");
    MySqlFlowRepository moved(s, node_);
    EXPECT_EQ(node_->address(), node(2));
  }
  MySqlFlowRepository next(s, node_);
  EXPECT_EQ(node_->address(), node(2)) << "moved back to node 1 by itself";
  node_->forget();  // what a restart of the gateway does
  MySqlFlowRepository after_restart(s, node_);
  EXPECT_EQ(node_->address(), node(1));
}

// Two gateways writing one flow through two nodes: both lock the flow row (each only on its own
// node), both number msg_id 1, the first COMMIT wins and the second fails certification. That is
// a DbRetryable (retried whole), and the retry, a new transaction, numbers after the winner.
TEST_F(GaleraNodes, CertificationConflictIsRetryableAndTheRetryNumbersAfterTheWinner) {
  const std::int64_t flow = db_->insert_flow("c", "c/#", "STORE_DB", std::nullopt);
  MySqlFlowRepository on1(settings(node(1)));
  MySqlFlowRepository on2(settings(node(2)));
  const auto write = [&](FlowTransaction& tx, const char* spool, std::uint64_t seq) {
    const std::int64_t msg_id = tx.flow().last_msg_id + 1;
    const std::vector<DataRecord> rows = {DataRecord{msg_id, "c/x", "by", spool}};
    tx.insert_records(rows);
    tx.advance(msg_id, seq);
  };
  auto a = on1.lock_flow(flow, "spool-a");
  auto b = on2.lock_flow(flow, "spool-b");  // not blocked: the lock of `a` is node 1's only
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->flow().last_msg_id, 0);
  EXPECT_EQ(b->flow().last_msg_id, 0);
  write(*a, "\"a\"", 1);
  write(*b, "\"b\"", 1);
  a->commit();
  int conflicts = 0;
  try {
    b->commit();
  } catch (const DbRetryable& e) {
    ++conflicts;
    EXPECT_EQ(e.code, 1213) << e.what();
  }
  b.reset();
  ASSERT_EQ(conflicts, 1) << "the second COMMIT did not fail certification: "
                          << ::testing::PrintToString(db_->query(
                                 "SELECT msg_id, field_value FROM data_records WHERE flow_id = " +
                                 std::to_string(flow)));
  // The retry, as the pipeline makes it (a read on node 2 may still lag behind node 1's commit;
  // then the retry conflicts again and is retried again).
  for (int attempt = 0; attempt < 10; ++attempt) {
    try {
      auto retry = on2.lock_flow(flow, "spool-b");
      write(*retry, "\"b\"", 1);
      retry->commit();
      break;
    } catch (const DbRetryable& e) {
      ++conflicts;
      std::cout << "[galera] retry " << attempt << ": " << e.what() << "\n";
    }
  }
  // db_ reads on node 1, which applies node 2's commit a moment later (wsrep_sync_wait 0).
  db_->execute("SET SESSION wsrep_sync_wait = 1");
  const auto rows = db_->query("SELECT msg_id, field_value FROM data_records WHERE flow_id = " +
                               std::to_string(flow) + " ORDER BY msg_id");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].at(0).value_or(""), "1");
  EXPECT_EQ(rows[0].at(1).value_or(""), "\"a\"");
  EXPECT_EQ(rows[1].at(0).value_or(""), "2");
  EXPECT_EQ(rows[1].at(1).value_or(""), "\"b\"");
  EXPECT_EQ(db_->query_int("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(flow)), 2);
  std::cout << "[galera] certification conflicts in this test: " << conflicts << "\n";
}

}  // namespace
}  // namespace gateway
