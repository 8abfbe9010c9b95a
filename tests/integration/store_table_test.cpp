// STORE_TABLE against a real MariaDB: the table as information_schema describes it, every source
// kind landing in typed columns, every rejection reason, upserts, and the database's own refusals.
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "fakes/fake_http_poster.h"
#include "gateway/adapters/mysql_flow_repository.h"
#include "gateway/env_file.h"
#include "gateway/errors.h"
#include "gateway/processor.h"
#include "support/test_database.h"

namespace gateway {
namespace {

using testing::TestDatabase;

Settings settings_for(const TestDatabase& db) {
  EnvMap env;
  for (const auto& [k, v] : db.gateway_env()) env[k] = v;
  return load_settings(env);
}

class StoreTableTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { mysql_global_init(); }

  StoreTableTest() {
    db_.execute(
        "CREATE TABLE readings ("
        " id BIGINT AUTO_INCREMENT PRIMARY KEY,"
        " device VARCHAR(8) NOT NULL,"
        " site INT UNSIGNED NULL,"
        " temp DECIMAL(5,2) NULL,"
        " level TINYINT NULL,"
        " at DATETIME(6) NULL,"
        " received DATETIME(6) NULL,"
        " doc JSON NULL,"
        " topic VARCHAR(64) NULL,"
        " flow VARCHAR(16) NULL,"
        " msg BIGINT NULL,"
        " unit VARCHAR(8) NULL,"
        " note VARCHAR(16) NOT NULL DEFAULT 'none',"
        " created TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
        " twice INT AS (level * 2) VIRTUAL)");
  }

  std::int64_t add_flow(const std::string& code, const std::string& table, const std::string& map,
                        const std::string& mode = "insert") {
    const std::int64_t id = db_.insert_flow(code, "plant/+/temp", "STORE_TABLE", std::nullopt);
    db_.execute("UPDATE flows SET target_table = '" + table + "', column_map = '" + map +
                "', write_mode = '" + mode + "' WHERE id = " + std::to_string(id));
    return id;
  }

  InboundMessage message(std::uint64_t seq, const std::string& topic, const std::string& payload) {
    InboundMessage m;
    m.seq = seq;
    m.topic = topic;
    m.payload = payload;
    m.arrival_us = 1764672000123456;  // 2025-12-02 10:40:00.123456 UTC
    m.parsed = parse_payload(m.payload, PayloadLimits{});
    return m;
  }

  BatchResult run(std::int64_t flow, const std::vector<InboundMessage>& msgs) {
    std::vector<const InboundMessage*> view;
    for (const auto& m : msgs) view.push_back(&m);
    return processor_.process_batch(flow, view, "spool-t");
  }

  TestDatabase db_;
  Settings settings_ = settings_for(db_);
  MySqlFlowRepository repo_{settings_};
  testing::FakeHttpPoster http_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  Processor processor_{repo_, http_, ProcessorOptions{}, log_};
};

TEST_F(StoreTableTest, DescribesTheTableAsInformationSchemaShowsIt) {
  const TableInfo t = repo_.describe_table("readings");
  ASSERT_EQ(t.columns.size(), 15u);
  const auto col = [&](const std::string& name) {
    for (const auto& c : t.columns) {
      if (c.name == name) return c;
    }
    ADD_FAILURE() << name;
    return ColumnInfo{};
  };
  EXPECT_TRUE(col("id").auto_increment);
  EXPECT_TRUE(col("id").has_default);
  EXPECT_FALSE(col("device").nullable);
  EXPECT_FALSE(col("device").has_default);
  EXPECT_EQ(col("device").max_chars, 8u);
  EXPECT_EQ(col("site").column_type, "int(10) unsigned");
  EXPECT_EQ(col("temp").numeric_precision, 5);
  EXPECT_EQ(col("temp").numeric_scale, 2);
  EXPECT_EQ(col("doc").data_type, "json");  // LONGTEXT + json_valid CHECK in MariaDB
  EXPECT_TRUE(col("note").has_default);
  EXPECT_FALSE(col("unit").has_default);  // nullable, DEFAULT NULL
  EXPECT_TRUE(col("created").has_default);
  EXPECT_TRUE(col("twice").generated);
  EXPECT_TRUE(repo_.describe_table("no_such_table").columns.empty());
}

TEST_F(StoreTableTest, EverySourceKindLandsInItsColumn) {
  const std::int64_t flow =
      add_flow("plant", "readings", R"({"device": "/meta/device", "site": "$topic[1]", "temp": "/t",
                      "level": "/levels/1", "at": "/at", "received": "$received_at",
                      "doc": "$payload", "topic": "$topic", "flow": "$flow_code",
                      "msg": "$msg_id", "unit": "$user_property:unit"})");
  InboundMessage m = message(
      1, "plant/7/temp",
      R"({"meta": {"device": "d-1"}, "t": 21.25, "levels": [1, 3], "at": "2026-12-02T10:00:00Z"})");
  m.user_properties = {{"unit", "C"}, {"other", "x"}};
  InboundMessage plain =  // epoch milliseconds; no user property; "/levels/1" missing: NULL
      message(2, "plant/8/temp", R"({"meta": {"device": "d-2"}, "t": 5, "at": 1764669600500})");
  const BatchResult r = run(flow, {m, plain});
  ASSERT_EQ(r.accepted, 2u) << (r.rejections.empty() ? "" : r.rejections.front());
  const auto rows = db_.query(
      "SELECT device, site, temp, level, at, received, doc, topic, flow, msg, unit, note "
      "FROM readings ORDER BY id");
  ASSERT_EQ(rows.size(), 2u);
  const TestDatabase::Row want1 = {"d-1",
                                   "7",
                                   "21.25",
                                   "3",
                                   "2026-12-02 10:00:00.000000",
                                   "2025-12-02 10:40:00.123456",
                                   m.payload,
                                   "plant/7/temp",
                                   "plant",
                                   "1",
                                   "C",
                                   "none"};
  EXPECT_EQ(rows[0], want1);
  EXPECT_EQ(rows[1][0], "d-2");
  EXPECT_EQ(rows[1][2], "5.00");
  EXPECT_EQ(rows[1][3], std::nullopt);
  EXPECT_EQ(rows[1][4], "2025-12-02 10:00:00.500000");
  EXPECT_EQ(rows[1][9], "2");
  EXPECT_EQ(rows[1][10], std::nullopt);
  EXPECT_EQ(db_.query_int("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(flow)), 2);
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"), 0);
}

TEST_F(StoreTableTest, EveryRejectionNamesTheColumnAndStoresNothingOfTheMessage) {
  const std::int64_t flow = add_flow(
      "plant", "readings",
      R"({"device": "/d", "site": "/s", "temp": "/t", "level": "/l", "at": "/at", "unit": "/u"})");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"s": 1})", "column 'device'"},                   // NOT NULL without default
      {R"({"d": "x", "s": "seven"})", "column 'site'"},     // string into a number
      {R"({"d": "x", "l": 1.5})", "column 'level'"},        // fraction into an integer
      {R"({"d": "x", "l": 300})", "column 'level'"},        // out of TINYINT's range
      {R"({"d": "x", "s": -1})", "column 'site'"},          // negative into UNSIGNED
      {R"({"d": "x", "t": 1234.5})", "column 'temp'"},      // beyond DECIMAL(5,2)
      {R"({"d": "too long a name"})", "column 'device'"},   // longer than VARCHAR(8)
      {R"({"d": "x", "u": {"a": 1}})", "column 'unit'"},    // object into a non-JSON column
      {R"({"d": "x", "at": "yesterday"})", "column 'at'"},  // unparseable date-time
      {R"({"d": "x", "at": "2026-13-01T00:00:00"})", "column 'at'"},
  };
  std::vector<InboundMessage> msgs;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    msgs.push_back(message(i + 1, "plant/1/temp", cases[i].first));
  }
  msgs.push_back(message(cases.size() + 1, "plant/1/temp", R"({"d": "ok", "s": 1})"));
  const BatchResult r = run(flow, msgs);
  EXPECT_EQ(r.accepted, 1u);
  EXPECT_EQ(r.rejected, cases.size());
  const auto reasons = db_.query("SELECT reason FROM rejected_messages ORDER BY id");
  ASSERT_EQ(reasons.size(), cases.size());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    EXPECT_NE(reasons[i][0]->find(cases[i].second), std::string::npos)
        << cases[i].first << " -> " << *reasons[i][0];
  }
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM readings"), 1);
  EXPECT_EQ(db_.query_int("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(flow)), 1);
}

// A mapped column with a default takes it when the source is missing (IF(?, DEFAULT(col), ?)),
// also in an upsert; a TIMESTAMP gets the UTC time it was given, whatever the server's zone.
TEST_F(StoreTableTest, MissingSourcesTakeTheColumnsDefaultAndTimestampsStayUtc) {
  struct Zone {  // the server's zone for new sessions, put back however the test ends
    testing::SqlSession root{testing::SqlSession::As::kRoot};
    Zone() { root.execute("SET GLOBAL time_zone = '+05:00'"); }
    ~Zone() { root.execute("SET GLOBAL time_zone = 'SYSTEM'"); }
  } zone;
  MySqlFlowRepository repo{settings_};  // a session opened under the new global zone
  Processor processor{repo, http_, ProcessorOptions{}, log_};
  const std::int64_t flow =
      add_flow("defaults", "readings",
               R"({"device": "/d", "note": "/n", "created": "$received_at"})", "insert");
  std::vector<InboundMessage> msgs = {message(1, "plant/1/temp", R"({"d": "a"})"),
                                      message(2, "plant/1/temp", R"({"d": "b", "n": "given"})")};
  std::vector<const InboundMessage*> view = {&msgs[0], &msgs[1]};
  ASSERT_EQ(processor.process_batch(flow, view, "spool-t").accepted, 2u);
  const auto rows =
      db_.query("SELECT device, note, UNIX_TIMESTAMP(created) FROM readings ORDER BY id");
  const std::vector<TestDatabase::Row> want = {{"a", "none", "1764672000.123456"},
                                               {"b", "given", "1764672000.123456"}};
  EXPECT_EQ(rows, want);
}

TEST_F(StoreTableTest, UpsertKeepsOneRowPerDeviceWithTheLatestValues) {
  db_.execute(
      "CREATE TABLE latest (device VARCHAR(16) PRIMARY KEY, temp DOUBLE NULL, msg BIGINT NOT "
      "NULL, seen TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))");
  const std::int64_t flow = add_flow(
      "state", "latest", R"({"device": "$topic[1]", "temp": "/t", "msg": "$msg_id"})", "upsert");
  run(flow, {message(1, "plant/a/temp", R"({"t": 1})"), message(2, "plant/b/temp", R"({"t": 2})"),
             message(3, "plant/a/temp", R"({"t": 3})")});
  run(flow, {message(4, "plant/b/temp", R"({"t": 4})")});
  const auto rows = db_.query("SELECT device, temp, msg FROM latest ORDER BY device");
  const std::vector<TestDatabase::Row> want = {{"a", "3", "3"}, {"b", "4", "4"}};
  EXPECT_EQ(rows, want);
}

TEST_F(StoreTableTest, ADuplicateKeyWithInsertIsTheMessagesFault) {
  db_.execute("CREATE TABLE once (device VARCHAR(16) PRIMARY KEY, temp DOUBLE NULL)");
  const std::int64_t flow = add_flow("once", "once", R"({"device": "$topic[1]", "temp": "/t"})");
  run(flow, {message(1, "plant/a/temp", R"({"t": 1})")});
  // The pipeline retries one by one and dead-letters the one the database refuses for its data.
  EXPECT_THROW(run(flow, {message(2, "plant/a/temp", R"({"t": 2})")}), DbDataError);
  EXPECT_EQ(db_.query_int("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(flow)), 1);
}

TEST_F(StoreTableTest, AMissingTableOrColumnHoldsTheMessages) {
  const std::int64_t flow = add_flow("gone", "nowhere", R"({"device": "/d"})");
  EXPECT_THROW(run(flow, {message(1, "plant/a/temp", R"({"d": "x"})")}), Error);
  const std::int64_t column = add_flow("col", "readings", R"({"nope": "/d"})");
  try {
    run(column, {message(2, "plant/a/temp", R"({"d": "x"})")});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("column 'nope' does not exist in table 'readings'"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM rejected_messages"), 0);
}

TEST_F(StoreTableTest, ATableAlteredUnderARunningProcessorIsRefusedNotRejected) {
  const std::int64_t flow = add_flow("alter", "readings", R"({"device": "/d", "unit": "/u"})");
  run(flow, {message(1, "plant/a/temp", R"({"d": "x", "u": "C"})")});
  db_.execute("ALTER TABLE readings DROP COLUMN unit");
  // The compiled map is stale; the INSERT fails for the schema (1054): the environment's fault.
  EXPECT_THROW(run(flow, {message(2, "plant/a/temp", R"({"d": "y", "u": "C"})")}), DbRefused);
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM rejected_messages"), 0);
}

}  // namespace
}  // namespace gateway
