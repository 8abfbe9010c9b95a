// MySqlFlowAdmin (the subcommands' reads and writes) and dead-letter replay through
// MySqlFlowRepository against a real MariaDB: filters, counters, the schema upgrade, the marks
// committed with the rows, and two replays of the same dead letters at once.
#include "gateway/adapters/mysql_flow_admin.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <thread>

#include "fakes/fake_http_poster.h"
#include "gateway/adapters/mysql_flow_repository.h"
#include "gateway/adapters/mysql_schema.h"
#include "gateway/admin_commands.h"
#include "gateway/env_file.h"
#include "gateway/errors.h"
#include "gateway/processor.h"
#include "support/test_database.h"

namespace gateway {
namespace {

using testing::FakeHttpPoster;
using testing::TestDatabase;

Settings settings_for(const TestDatabase& db) {
  EnvMap env;
  for (const auto& [k, v] : db.gateway_env()) env[k] = v;
  return load_settings(env);
}

std::shared_ptr<spdlog::logger> quiet() {
  return std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
}

class MySqlFlowAdminTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { mysql_global_init(); }

  // A dead letter of `flow` (0: no flow), created `age_seconds` ago.
  std::int64_t insert_rejected(std::int64_t flow, const std::string& topic,
                               const std::string& payload, const std::string& reason,
                               int age_seconds = 0, bool truncated = false) {
    db_.execute(
        "INSERT INTO rejected_messages (flow_id, topic, payload, payload_truncated, "
        "reason, created_at) VALUES (" +
        (flow == 0 ? std::string("NULL") : std::to_string(flow)) + ", '" + topic + "', '" +
        payload + "', " + (truncated ? "1" : "0") + ", '" + reason + "', NOW(6) - INTERVAL " +
        std::to_string(age_seconds) + " SECOND)");
    return db_.query_int("SELECT MAX(id) FROM rejected_messages");
  }

  std::vector<ReplayItem> items_for(const std::vector<DeadLetter>& letters) {
    std::vector<ReplayItem> items;
    for (const auto& d : letters) {
      ReplayItem item;
      item.rejected_id = d.id;
      item.message.topic = d.topic;
      item.message.payload = d.payload;
      item.message.parsed = parse_payload(item.message.payload, PayloadLimits{});
      items.push_back(std::move(item));
    }
    return items;
  }

  TestDatabase db_;
  Settings settings_ = settings_for(db_);
  MySqlFlowAdmin admin_{settings_};
};

TEST_F(MySqlFlowAdminTest, InsertFindListAndUpdateFlows) {
  FlowDefinition d;
  d.code = "temps";
  d.name = "Temperatures";
  d.topic = "sensors/+/temp";
  d.action = "STORE_DB";
  d.payload_schema = R"({"temperature": "int"})";
  const std::int64_t id = admin_.insert_flow(d);
  EXPECT_GT(id, 0);
  db_.execute("UPDATE flows SET last_msg_id = 41 WHERE id = " + std::to_string(id));
  FlowDefinition hook;
  hook.code = "hook";
  hook.topic = "hook/#";
  hook.action = "POST_ENDPOINT";
  hook.endpoint_url = "http://127.0.0.1:9/in";
  hook.enabled = false;
  admin_.insert_flow(hook);

  auto list = admin_.list_flows();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].flow.code, "hook");  // by code
  EXPECT_FALSE(list[0].flow.enabled);
  EXPECT_FALSE(list[0].flow.payload_schema.has_value());
  EXPECT_EQ(list[1].name.value_or(""), "Temperatures");
  EXPECT_EQ(list[1].flow.last_msg_id, 41);
  EXPECT_EQ(list[1].updated_at.size(), 19u);

  d.payload_schema = R"({"temperature": "number"})";
  d.name.reset();
  EXPECT_TRUE(admin_.update_flow(id, d));
  EXPECT_TRUE(admin_.update_flow(id, d));  // unchanged values still find the row
  EXPECT_FALSE(admin_.update_flow(id + 100, d));
  auto f = admin_.find_flow("temps");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->flow.payload_schema.value_or(""), R"({"temperature": "number"})");
  EXPECT_FALSE(f->name.has_value());
  EXPECT_EQ(f->flow.last_msg_id, 41);  // never written by update_flow
  EXPECT_FALSE(admin_.find_flow("nope").has_value());
  // A duplicate code is the database's refusal (the commands check first).
  EXPECT_THROW(admin_.insert_flow(d), DbError);
}

TEST_F(MySqlFlowAdminTest, StoreTableColumnsAreWrittenReadAndCleared) {
  FlowDefinition d;
  d.code = "latest";
  d.topic = "plant/+/temp";
  d.action = "STORE_TABLE";
  d.target_table = "device_state";
  d.column_map = R"({"device": "$topic[1]", "temp": "/temperature"})";
  d.write_mode = "upsert";
  const std::int64_t id = admin_.insert_flow(d);
  auto f = admin_.find_flow("latest");
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->flow.target_table.value_or(""), "device_state");
  EXPECT_EQ(nlohmann::json::parse(f->flow.column_map.value_or("null")),
            nlohmann::json::parse(*d.column_map));
  EXPECT_EQ(f->flow.write_mode, "upsert");
  // What the gateway loads is what the command wrote.
  MySqlFlowRepository repo(settings_);
  const auto loaded = repo.load_flows();
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].target_table, f->flow.target_table);
  EXPECT_EQ(loaded[0].column_map, f->flow.column_map);
  EXPECT_EQ(loaded[0].write_mode, "upsert");

  d.action = "STORE_DB";
  d.target_table.reset();
  d.column_map.reset();
  d.write_mode = "insert";
  EXPECT_TRUE(admin_.update_flow(id, d));
  f = admin_.find_flow("latest");
  ASSERT_TRUE(f.has_value());
  EXPECT_FALSE(f->flow.target_table.has_value());
  EXPECT_FALSE(f->flow.column_map.has_value());
  EXPECT_EQ(f->flow.write_mode, "insert");
  EXPECT_EQ(admin_.list_flows().at(0).flow.write_mode, "insert");
}

TEST_F(MySqlFlowAdminTest, DescribeTableAsTheGatewaySeesIt) {
  db_.execute(
      "CREATE TABLE device_state (device VARCHAR(32) NOT NULL PRIMARY KEY, temp DOUBLE NULL, "
      "meta JSON NULL, at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))");
  const TableInfo t = admin_.describe_table("device_state");
  ASSERT_EQ(t.columns.size(), 4u);
  EXPECT_EQ(t.columns[0].name, "device");
  EXPECT_FALSE(t.columns[0].nullable);
  EXPECT_EQ(t.columns[2].data_type, "json");
  EXPECT_TRUE(t.columns[3].has_default);
  EXPECT_TRUE(admin_.describe_table("no_such_table").columns.empty());
  // The commands' check of a mapping against it (flows add/set/enable).
  FlowDefinition d;
  d.code = "latest";
  d.topic = "plant/+/temp";
  d.action = "STORE_TABLE";
  d.target_table = "device_state";
  d.column_map = R"({"device": "$topic[1]", "temp": "/t", "meta": "$payload", "site": "/s"})";
  EXPECT_EQ(
      flow_table_problems(d, t),
      std::vector<std::string>{"column_map: column 'site' does not exist in table 'device_state'"});
  // Another schema's table of the same name is not the gateway's.
  db_.execute("CREATE DATABASE IF NOT EXISTS " + db_.name() + "_other");
  db_.execute("CREATE TABLE " + db_.name() + "_other.elsewhere (id INT)");
  EXPECT_TRUE(admin_.describe_table("elsewhere").columns.empty());
  db_.execute("DROP DATABASE " + db_.name() + "_other");
}

TEST_F(MySqlFlowAdminTest, CountersOfAFlow) {
  const auto flow = db_.insert_flow("f", "f/#", "POST_ENDPOINT", std::nullopt, "http://x/");
  db_.execute(
      "INSERT INTO deliveries (flow_id, msg_id, topic, payload, created_ms, "
      "next_attempt_ms) VALUES (" +
      std::to_string(flow) + ", 1, 'f/a', '{}', 0, 0), (" + std::to_string(flow) +
      ", 2, 'f/a', '{}', 0, 0)");
  insert_rejected(flow, "f/a", "{}", "r1");
  insert_rejected(flow, "f/a", "{}", "r2", 2 * 86400);
  const auto replayed = insert_rejected(flow, "f/a", "{}", "r3");
  db_.execute("UPDATE rejected_messages SET replayed_at = NOW(6), replayed_msg_id = 9 WHERE id = " +
              std::to_string(replayed));
  const auto s = admin_.find_flow("f");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->pending_deliveries, 2);
  EXPECT_EQ(s->rejected_last_24h, 2);
  EXPECT_EQ(s->dead_letters_waiting, 2);
  EXPECT_EQ(admin_.list_flows().at(0).rejected_last_24h, 2);
}

TEST_F(MySqlFlowAdminTest, RejectedFiltersPagingAndPayloads) {
  const auto a = db_.insert_flow("a", "a/#", "STORE_DB", std::nullopt);
  const auto b = db_.insert_flow("b", "b/#", "STORE_DB", std::nullopt);
  const auto a1 = insert_rejected(a, "a/1", R"({"x": 1})", "field x: expected string", 3 * 3600);
  const auto b1 = insert_rejected(b, "b/1", "{}", "other reason", 60);
  const auto n1 = insert_rejected(0, "a/2", "{}", "no flow takes it");
  const auto a2 = insert_rejected(a, "a/3", R"({"x": 2})", "Field x: EXPECTED string", 0, true);
  db_.execute("UPDATE rejected_messages SET replayed_at = NOW(6), replayed_msg_id = 1 WHERE id = " +
              std::to_string(b1));

  RejectedFilter f;
  f.waiting_only = false;
  EXPECT_EQ(admin_.count_rejected(f), 4);
  f.waiting_only = true;
  EXPECT_EQ(admin_.count_rejected(f), 3);
  f.flow_id = a;
  auto got = admin_.list_rejected(f);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].id, a1);
  EXPECT_EQ(got[0].flow_code.value_or(""), "a");
  EXPECT_EQ(got[0].payload, "");  // not asked for
  EXPECT_EQ(got[0].payload_bytes, 8);
  EXPECT_TRUE(got[1].payload_truncated);
  f.after_id = a1;
  f.with_payload = true;
  got = admin_.list_rejected(f);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].payload, R"({"x": 2})");
  f.after_id = 0;
  f.newest_first = true;
  f.limit = 1;
  EXPECT_EQ(admin_.list_rejected(f).at(0).id, a2);
  f = RejectedFilter{};
  f.reason_contains = "expected STRING";  // case-insensitive
  EXPECT_EQ(admin_.count_rejected(f), 2);
  f = RejectedFilter{};
  f.since_seconds_ago = 3600;
  EXPECT_EQ(admin_.count_rejected(f), 2);  // n1, a2 (b1 is replayed)
  f.since_seconds_ago.reset();
  f.since = "2000-01-01 00:00:00";
  EXPECT_EQ(admin_.count_rejected(f), 3);
  f.since = "2999-01-01 00:00:00";
  EXPECT_EQ(admin_.count_rejected(f), 0);
  // ids: the flow's and those without a flow, never another flow's.
  f = RejectedFilter{};
  f.flow_id = a;
  f.ids = {n1, b1, a2};
  f.waiting_only = false;
  got = admin_.list_rejected(f);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].id, n1);
  EXPECT_FALSE(got[0].flow_id.has_value());
  EXPECT_EQ(got[1].id, a2);

  const auto one = admin_.find_rejected(b1);
  ASSERT_TRUE(one.has_value());
  EXPECT_EQ(one->replayed_msg_id.value_or(0), 1);
  EXPECT_EQ(one->replayed_at.value_or("").size(), 26u);
  EXPECT_EQ(one->created_at.size(), 26u);
  EXPECT_FALSE(admin_.find_rejected(99999).has_value());
}

TEST_F(MySqlFlowAdminTest, ReplayStoresAndMarksInTheSameTransaction) {
  const auto flow = db_.insert_flow("f", "f/#", "STORE_DB", R"({"t": "number"})");
  db_.execute("UPDATE flows SET last_msg_id = 10 WHERE id = " + std::to_string(flow));
  const auto good = insert_rejected(flow, "f/a", R"({"t": 1.5})", "expected int");
  const auto bad = insert_rejected(flow, "f/a", R"({"t": "x"})", "expected int");
  MySqlFlowRepository repo(settings_);
  FakeHttpPoster http;
  Processor processor(repo, http, ProcessorOptions{}, quiet());
  RejectedFilter f;
  f.flow_id = flow;
  f.with_payload = true;
  const auto items = items_for(admin_.list_rejected(f));

  // Rolled back: nothing at all.
  auto r = processor.replay(flow, items, false);
  EXPECT_EQ(r.outcomes.at(0).msg_id, 11);
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"), 0);
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM rejected_messages WHERE replayed_at IS NOT NULL "
                          "OR attempts IS NOT NULL"),
            0);

  r = processor.replay(flow, items, true);
  EXPECT_EQ(r.outcomes.at(0).msg_id, 11);
  EXPECT_EQ(r.outcomes.at(1).reason, "field 't': expected number, got string");
  EXPECT_EQ(db_.query_int("SELECT last_msg_id FROM flows"), 11);
  EXPECT_EQ(db_.query_int("SELECT msg_id FROM data_records WHERE field_name = 't'"), 11);
  EXPECT_EQ(db_.query_int("SELECT replayed_msg_id FROM rejected_messages WHERE id = " +
                          std::to_string(good)),
            11);
  EXPECT_EQ(
      db_.query_int("SELECT attempts FROM rejected_messages WHERE id = " + std::to_string(bad)), 2);
  EXPECT_EQ(db_.query("SELECT reason FROM rejected_messages WHERE id = " + std::to_string(bad))
                .at(0)
                .at(0)
                .value_or(""),
            "field 't': expected number, got string");

  // Again: the replayed one is left alone.
  r = processor.replay(flow, items, true);
  EXPECT_TRUE(r.outcomes.at(0).already_replayed);
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"), 1);
  EXPECT_EQ(
      db_.query_int("SELECT attempts FROM rejected_messages WHERE id = " + std::to_string(bad)), 3);
  EXPECT_TRUE(processor.replay_refused(flow, bad, "Data too long", true));
  EXPECT_FALSE(processor.replay_refused(flow, good, "Data too long", true));
}

// Two replays of the same dead letters at once (two operators, or a replay run twice in
// parallel): the flow row serialises them and each dead letter is stored exactly once.
TEST_F(MySqlFlowAdminTest, TwoReplaysAtOnceStoreEachDeadLetterOnce) {
  const auto flow = db_.insert_flow("f", "f/#", "STORE_DB", std::nullopt);
  constexpr int kLetters = 200;
  std::string values;
  for (int i = 0; i < kLetters; ++i) {
    values += std::string(i ? "," : "") + "(" + std::to_string(flow) +
              ", 'f/a', '{\"n\": " + std::to_string(i) + "}', 'x')";
  }
  db_.execute("INSERT INTO rejected_messages (flow_id, topic, payload, reason) VALUES " + values);
  RejectedFilter f;
  f.flow_id = flow;
  f.with_payload = true;
  f.limit = kLetters;
  const auto items = items_for(admin_.list_rejected(f));
  std::atomic<int> stored{0}, already{0};
  const auto worker = [&](bool reverse_batches) {
    MySqlThreadScope scope;
    MySqlFlowRepository repo(settings_);
    FakeHttpPoster http;
    Processor processor(repo, http, ProcessorOptions{}, quiet());
    for (int b = 0; b < kLetters / 10; ++b) {
      const int start = (reverse_batches ? kLetters / 10 - 1 - b : b) * 10;
      std::vector<ReplayItem> batch(items.begin() + start, items.begin() + start + 10);
      for (;;) {
        try {
          for (const auto& o : processor.replay(flow, batch, true).outcomes) {
            (o.msg_id > 0 ? stored : already)++;
          }
          break;
        } catch (const DbRetryable&) {
          // A deadlock is retried, as the command does.
        }
      }
    }
  };
  std::thread t1(worker, false), t2(worker, true);
  t1.join();
  t2.join();
  EXPECT_EQ(stored.load(), kLetters);
  EXPECT_EQ(already.load(), kLetters);
  EXPECT_EQ(db_.query_int("SELECT COUNT(DISTINCT msg_id) FROM data_records"), kLetters);
  EXPECT_EQ(db_.query_int("SELECT MAX(msg_id) FROM data_records"), kLetters);
  EXPECT_EQ(db_.query_int("SELECT COUNT(DISTINCT field_value) FROM data_records"), kLetters);
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM rejected_messages r JOIN data_records d ON "
                          "d.msg_id = r.replayed_msg_id AND d.field_value = "
                          "JSON_EXTRACT(r.payload, '$.n')"),
            kLetters);
}

TEST_F(MySqlFlowAdminTest, UpgradeAddsTheReplayColumnsOnceAndTheAdapterAsksForIt) {
  db_.execute("ALTER TABLE rejected_messages DROP COLUMN replayed_at, DROP COLUMN replayed_msg_id");
  try {
    MySqlFlowAdmin old(settings_);
    ADD_FAILURE() << "an old table was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("run mqtt-gateway --init-db"), std::string::npos);
  }
  MySqlSchema schema(settings_);
  const auto changes = schema.upgrade_schema();
  EXPECT_EQ(changes, (std::vector<std::string>{
                         "rejected_messages.replayed_at added (dead-letter replay)",
                         "rejected_messages.replayed_msg_id added (dead-letter replay)"}));
  EXPECT_TRUE(schema.upgrade_schema().empty());
  MySqlFlowAdmin upgraded(settings_);
  EXPECT_EQ(upgraded.count_rejected(RejectedFilter{}), 0);
}

TEST_F(MySqlFlowAdminTest, AFlowsTableWithoutTheStoreTableColumnsAsksForInitDb) {
  db_.execute(
      "ALTER TABLE flows DROP COLUMN target_table, DROP COLUMN column_map, DROP COLUMN "
      "write_mode");
  try {
    MySqlFlowAdmin old(settings_);
    ADD_FAILURE() << "an old flows table was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("run mqtt-gateway --init-db"), std::string::npos);
  }
  MySqlSchema schema(settings_);
  EXPECT_EQ(
      schema.missing_columns(),
      (std::vector<std::string>{"flows.target_table", "flows.column_map", "flows.write_mode"}));
  EXPECT_EQ(schema.upgrade_schema().size(), 3u);
  EXPECT_TRUE(schema.missing_columns().empty());
  MySqlFlowAdmin upgraded(settings_);
  EXPECT_TRUE(upgraded.list_flows().empty());
}

}  // namespace
}  // namespace gateway
