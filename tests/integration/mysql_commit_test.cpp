// A COMMIT the server did not carry out must fail, never look like a success: the spool releases
// the messages of every transaction whose commit() returned. Connector/C++ 1.1.12's own
// Connection::commit() drops the server's answer (MySqlSession sends COMMIT as a statement; the
// Galera certification failure at COMMIT: tests/galera/galera_integration_test.cpp).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "gateway/adapters/mysql_flow_repository.h"
#include "gateway/env_file.h"
#include "gateway/errors.h"
#include "support/test_database.h"

namespace gateway {
namespace {

using testing::SqlSession;
using testing::TestDatabase;

class MySqlCommitTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { mysql_global_init(); }
  MySqlCommitTest() {
    EnvMap env;
    for (const auto& [k, v] : db_.gateway_env()) env[k] = v;
    settings_ = load_settings(env);
    flow_id_ = db_.insert_flow("f", "t/#", "STORE_DB", std::nullopt);
  }

  TestDatabase db_;
  Settings settings_;
  std::int64_t flow_id_ = 0;
};

TEST_F(MySqlCommitTest, CommitOnAConnectionKilledMeanwhileFailsAndStoresNothing) {
  MySqlFlowRepository repo(settings_);
  auto tx = repo.lock_flow(flow_id_, "spool");
  ASSERT_TRUE(tx);
  const std::vector<DataRecord> rows = {DataRecord{1, "t/a", "x", "1"}};
  tx->insert_records(rows);
  tx->advance(1, 1);
  // The connection with the open transaction (the test database's own is in autocommit).
  SqlSession root(SqlSession::As::kRoot);
  const auto threads = root.query(
      "SELECT trx_mysql_thread_id FROM information_schema.innodb_trx t JOIN "
      "information_schema.processlist p ON p.id = t.trx_mysql_thread_id WHERE p.db = '" +
      db_.name() + "'");
  ASSERT_EQ(threads.size(), 1u);
  root.execute("KILL CONNECTION " + threads.at(0).at(0).value_or("0"));
  bool failed = false;
  try {
    tx->commit();
  } catch (const DbUnavailable& e) {
    failed = true;
    EXPECT_GE(e.code, 2000) << e.what();
  }
  EXPECT_TRUE(failed) << "commit() on a killed connection reported success";
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"), 0);
  EXPECT_EQ(db_.query_int("SELECT last_msg_id FROM flows"), 0);
}

TEST_F(MySqlCommitTest, CommitStillCommits) {
  MySqlFlowRepository repo(settings_);
  for (std::int64_t id = 1; id <= 2; ++id) {
    auto tx = repo.lock_flow(flow_id_, "spool");
    ASSERT_TRUE(tx);
    EXPECT_EQ(tx->flow().last_msg_id, id - 1);
    const std::vector<DataRecord> rows = {DataRecord{id, "t/a", "x", std::to_string(id)}};
    tx->insert_records(rows);
    tx->advance(id, static_cast<std::uint64_t>(id));
    tx->commit();
  }
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"), 2);
  EXPECT_EQ(db_.query_int("SELECT last_msg_id FROM flows"), 2);
  EXPECT_EQ(repo.last_committed_seq("spool"), 2u);
}

}  // namespace
}  // namespace gateway
