// The reference's queries against a real MariaDB.
#include "gateway/adapters/mysql_flow_repository.h"

#include <gtest/gtest.h>

#include "gateway/adapters/mysql_delivery_repository.h"
#include "gateway/adapters/mysql_schema.h"
#include "gateway/env_file.h"
#include "gateway/errors.h"
#include "support/test_database.h"

namespace gateway {
namespace {

using testing::TestDatabase;

class MySqlFlowRepositoryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { mysql_global_init(); }
  static Settings settings_for(const TestDatabase& db) {
    EnvMap env;
    for (const auto& [k, v] : db.gateway_env()) env[k] = v;
    return load_settings(env);
  }
  TestDatabase db_;
  Settings settings_ = settings_for(db_);
  MySqlFlowRepository repo_{settings_};
  MySqlSchema schema_{settings_};
};

TEST_F(MySqlFlowRepositoryTest, LoadMqttServerPrefersTheDefaultThenTheLowestId) {
  EXPECT_FALSE(repo_.load_mqtt_server().has_value());
  db_.insert_mqtt_server("first", 1);
  const auto second = db_.insert_mqtt_server("second", 2, "user", "secret");
  db_.execute("UPDATE mqtt_servers SET is_default = 1 WHERE id = " + std::to_string(second));
  auto s = repo_.load_mqtt_server();
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->host, "second");
  EXPECT_EQ(s->username.value_or(""), "user");
  ASSERT_TRUE(s->password.has_value());
  EXPECT_EQ(s->password->reveal(), "secret");
  db_.execute("UPDATE mqtt_servers SET enabled = 0 WHERE id = " + std::to_string(second));
  EXPECT_EQ(repo_.load_mqtt_server()->host, "first");
  db_.execute("UPDATE mqtt_servers SET enabled = 0");
  EXPECT_FALSE(repo_.load_mqtt_server().has_value());
}

// Issue 15: the failover candidates, in the order load_mqtt_server() picks the first.
TEST_F(MySqlFlowRepositoryTest, LoadMqttServersListsEveryEnabledRowDefaultFirst) {
  EXPECT_TRUE(repo_.load_mqtt_servers().empty());
  const auto a = db_.insert_mqtt_server("a", 1);
  const auto b = db_.insert_mqtt_server("b", 2, "user", "secret");
  const auto c = db_.insert_mqtt_server("c", 3);
  const auto off = db_.insert_mqtt_server("off", 4);
  db_.execute("UPDATE mqtt_servers SET is_default = 1 WHERE id = " + std::to_string(c));
  db_.execute("UPDATE mqtt_servers SET enabled = 0 WHERE id = " + std::to_string(off));
  const auto servers = repo_.load_mqtt_servers();
  ASSERT_EQ(servers.size(), 3u);
  EXPECT_EQ(servers[0].id, c);
  EXPECT_EQ(servers[1].id, a);
  EXPECT_EQ(servers[2].id, b);
  ASSERT_TRUE(servers[2].password.has_value());
  EXPECT_EQ(servers[2].password->reveal(), "secret");
  EXPECT_EQ(repo_.load_mqtt_server()->id, servers[0].id);
}

TEST_F(MySqlFlowRepositoryTest, LoadFlowsReturnsOnlyEnabledFlowsAndSeesChanges) {
  db_.insert_flow("a", "t/a", "STORE_DB", R"({"x": "int"})");
  db_.insert_flow("b", "t/b", "POST_ENDPOINT", std::nullopt, "http://127.0.0.1:1/", false);
  auto flows = repo_.load_flows();
  ASSERT_EQ(flows.size(), 1u);
  EXPECT_EQ(flows[0].code, "a");
  EXPECT_EQ(flows[0].payload_schema.value_or(""), R"({"x": "int"})");
  db_.execute("UPDATE flows SET enabled = 1 WHERE code = 'b'");
  flows = repo_.load_flows();  // a new read, not the first one's snapshot
  ASSERT_EQ(flows.size(), 2u);
  EXPECT_EQ(flows[1].endpoint_url.value_or(""), "http://127.0.0.1:1/");
}

TEST_F(MySqlFlowRepositoryTest, LockFlowOfAMissingRowIsNull) {
  EXPECT_EQ(repo_.lock_flow(12345, "s"), nullptr);
}

TEST_F(MySqlFlowRepositoryTest, BuiltInSchemaIsIdempotentAndComplete) {
  EXPECT_TRUE(schema_.missing_tables().empty());
  schema_.apply_script(builtin_schema_sql());
  schema_.apply_script(builtin_schema_sql());
  db_.execute("DROP TABLE spool_offsets");
  EXPECT_EQ(schema_.missing_tables(), std::vector<std::string>{"spool_offsets"});
  schema_.apply_script(builtin_schema_sql());
  EXPECT_TRUE(schema_.missing_tables().empty());
}

// Field names differing only in case or trailing spaces are different fields; a table made by an
// older version (case-insensitive collation) is migrated by --init-db's upgrade_schema().
TEST_F(MySqlFlowRepositoryTest, FieldNamesCompareAsBytesAfterTheUpgrade) {
  db_.execute(
      "ALTER TABLE data_records MODIFY field_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE "
      "utf8mb4_unicode_ci NOT NULL");
  const auto flow = db_.insert_flow("f", "t/#", "STORE_DB", std::nullopt);
  const auto insert_case_variants = [&] {
    auto tx = repo_.lock_flow(flow, "s");
    ASSERT_TRUE(tx);
    const std::vector<DataRecord> rows = {
        {1, "t/a", "a", "1"}, {1, "t/a", "A", "2"}, {1, "t/a", "a ", "3"}};
    tx->insert_records(rows);
    tx->commit();
  };
  EXPECT_THROW(insert_case_variants(), DbError) << "the old collation makes them collide";
  EXPECT_EQ(schema_.upgrade_schema().size(), 1u);
  EXPECT_TRUE(schema_.upgrade_schema().empty()) << "idempotent";
  insert_case_variants();
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"), 3);
}

TEST_F(MySqlFlowRepositoryTest, WrongPasswordIsAClearErrorWithoutThePassword) {
  Settings bad = settings_;
  bad.db_password = Secret("definitely-wrong-pw");
  try {
    MySqlFlowRepository r(bad);
    ADD_FAILURE() << "connected with a wrong password";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(settings_.db_user), std::string::npos) << what;
    EXPECT_EQ(what.find("definitely-wrong-pw"), std::string::npos) << what;
  }
}

TEST_F(MySqlFlowRepositoryTest, NothingListeningIsDbUnavailable) {
  Settings bad = settings_;
  bad.db_port = 1;  // nothing listens on tcpmux
  EXPECT_THROW(MySqlFlowRepository r(bad), DbUnavailable);
}

// Issue 17: one transaction for several flows: each flow's rows, last_msg_id and spool offset,
// committed together; a missing row is null; nothing is visible before the commit.
TEST_F(MySqlFlowRepositoryTest, GroupTransactionWritesEveryFlowAndCommitsOnce) {
  const auto a = db_.insert_flow("a", "a/#", "STORE_DB", std::nullopt);
  const auto b = db_.insert_flow("b", "b/#", "STORE_DB", std::nullopt);
  const auto c = db_.insert_flow("c", "c/#", "STORE_DB", std::nullopt);
  db_.execute("UPDATE flows SET last_msg_id = 7 WHERE id = " + std::to_string(b));
  db_.execute("INSERT INTO spool_offsets (spool_id, flow_id, last_seq) VALUES ('s', " +
              std::to_string(b) + ", 40)");
  const std::vector<std::int64_t> ids = {a, b, 999999, c};
  {
    auto tx = repo_.lock_flows(ids, "s");
    ASSERT_TRUE(tx);
    ASSERT_NE(tx->flow(0), nullptr);
    EXPECT_EQ(tx->flow(2), nullptr) << "no row 999999";
    EXPECT_EQ(tx->flow(1)->flow().last_msg_id, 7);
    EXPECT_EQ(tx->flow(1)->committed_seq(), 40u);
    EXPECT_EQ(tx->flow(0)->committed_seq(), 0u);
    const std::vector<DataRecord> ra = {{1, "a/x", "t", "1"}, {1, "a/x", "h", "2"}};
    const std::vector<DataRecord> rb = {{8, "b/x", "t", "3"}};
    tx->flow(0)->insert_records(ra);
    tx->flow(0)->advance(1, 50);
    tx->flow(1)->insert_records(rb);
    tx->flow(1)->advance(8, 51);
    tx->flow(3)->advance(0, 52);  // only the offset (e.g. every message was rejected)
    EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"), 0) << "nothing before commit";
    tx->commit();
  }
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records WHERE flow_id = " + std::to_string(a) +
                          " AND msg_id = 1"),
            2);
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records WHERE flow_id = " + std::to_string(b) +
                          " AND msg_id = 8 AND field_value = '3'"),
            1);
  EXPECT_EQ(db_.query_int("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(a)), 1);
  EXPECT_EQ(db_.query_int("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(b)), 8);
  EXPECT_EQ(db_.query_int("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(c)), 0);
  for (const auto& [flow, seq] : {std::pair{a, 50}, std::pair{b, 51}, std::pair{c, 52}}) {
    EXPECT_EQ(db_.query_int("SELECT last_seq FROM spool_offsets WHERE spool_id = 's' AND "
                            "flow_id = " +
                            std::to_string(flow)),
              seq);
  }
  EXPECT_EQ(repo_.last_committed_seq("s"), 52u);
}

TEST_F(MySqlFlowRepositoryTest, GroupTransactionRollsBackEverythingOnARefusedRow) {
  const auto a = db_.insert_flow("a", "a/#", "STORE_DB", std::nullopt);
  const auto b = db_.insert_flow("b", "b/#", "STORE_DB", std::nullopt);
  const std::vector<std::int64_t> ids = {a, b};
  const std::string too_long(300, 'n');  // field_name is VARCHAR(255)
  {
    auto tx = repo_.lock_flows(ids, "s");
    const std::vector<DataRecord> ra = {{1, "a/x", "t", "1"}};
    const std::vector<DataRecord> rb = {{1, "b/x", too_long, "2"}};
    tx->flow(0)->insert_records(ra);
    tx->flow(0)->advance(1, 10);
    tx->flow(1)->insert_records(rb);
    tx->flow(1)->advance(1, 11);
    EXPECT_THROW(tx->commit(), DbDataError);
  }
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"), 0);
  EXPECT_EQ(db_.query_int("SELECT COALESCE(MAX(last_msg_id), 0) FROM flows"), 0);
  EXPECT_EQ(repo_.last_committed_seq("s"), 0u);
  // The session is usable for the per-flow retry.
  auto tx = repo_.lock_flow(a, "s");
  ASSERT_TRUE(tx);
  EXPECT_EQ(tx->flow().last_msg_id, 0);
}

// The rows are really locked: another session's lock on one of them waits for the commit.
TEST_F(MySqlFlowRepositoryTest, GroupTransactionHoldsEveryRowLock) {
  const auto a = db_.insert_flow("a", "a/#", "STORE_DB", std::nullopt);
  const auto b = db_.insert_flow("b", "b/#", "STORE_DB", std::nullopt);
  const std::vector<std::int64_t> ids = {a, b};
  auto tx = repo_.lock_flows(ids, "s");
  testing::SqlSession other(testing::SqlSession::As::kTestUser, db_.name());
  other.execute("SET SESSION innodb_lock_wait_timeout = 1");
  other.execute("START TRANSACTION");
  const std::string lock_b = "SELECT id FROM flows WHERE id = " + std::to_string(b) + " FOR UPDATE";
  EXPECT_THROW(other.query(lock_b), std::runtime_error) << "lock wait timeout (1205) expected";
  other.execute("ROLLBACK");
  tx->commit();
  other.execute("START TRANSACTION");
  EXPECT_EQ(other.query(lock_b).size(), 1u);
  other.execute("ROLLBACK");
}

// A row another session holds fails the group at once (NOWAIT), instead of the group holding the
// other rows while it waits; the pipeline then runs the flows alone.
TEST_F(MySqlFlowRepositoryTest, GroupLockFailsAtOnceWhenARowIsBusy) {
  const auto a = db_.insert_flow("a", "a/#", "STORE_DB", std::nullopt);
  const auto b = db_.insert_flow("b", "b/#", "STORE_DB", std::nullopt);
  testing::SqlSession other(testing::SqlSession::As::kTestUser, db_.name());
  other.execute("START TRANSACTION");
  other.query("SELECT id FROM flows WHERE id = " + std::to_string(b) + " FOR UPDATE");
  const std::vector<std::int64_t> ids = {a, b};
  const auto started = std::chrono::steady_clock::now();
  EXPECT_THROW(repo_.lock_flows(ids, "s"), DbRefused);
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(5))
      << "waited for the lock instead of failing at once";
  other.execute("ROLLBACK");
  EXPECT_TRUE(repo_.lock_flows(ids, "s")) << "the session is usable afterwards";
}

// A delivery given up after its row is gone (another owner delivered it after our lease ran out)
// writes no dead letter beside the delivered message; one still there moves to the dead letters.
TEST_F(MySqlFlowRepositoryTest, GiveUpOnAGoneDeliveryWritesNoDeadLetter) {
  const auto flow =
      db_.insert_flow("p", "p/#", "POST_ENDPOINT", std::nullopt, "http://127.0.0.1:1/");
  db_.execute(
      "INSERT INTO deliveries (flow_id, msg_id, topic, payload, created_ms, "
      "next_attempt_ms) VALUES (" +
      std::to_string(flow) + ", 1, 'p/x', '{}', 0, 0), (" + std::to_string(flow) +
      ", 2, 'p/x', '{}', 0, 0)");
  MySqlDeliveryRepository deliveries(settings_);
  deliveries.delivered(flow, 1, 1);  // delivered by the other owner
  PendingDelivery gone;
  gone.flow_id = flow;
  gone.msg_id = 1;
  gone.topic = "p/x";
  gone.payload = "{}";
  deliveries.give_up(gone, 404, "permanent");
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM rejected_messages"), 0);
  PendingDelivery there = gone;
  there.msg_id = 2;
  deliveries.give_up(there, 404, "permanent");
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM rejected_messages WHERE msg_id = 2"), 1);
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM deliveries"), 0);
}

}  // namespace
}  // namespace gateway
