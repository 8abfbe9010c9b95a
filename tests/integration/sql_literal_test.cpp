// The SQL literals of the text-protocol INSERTs against a real MariaDB: every byte string means
// itself under every sql_mode that changes how literals are read, and the rows the repository
// writes with them come back byte for byte.
#include "gateway/adapters/sql_literal.h"

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

std::string hex(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : s) {
    out += kHex[static_cast<unsigned char>(c) >> 4];
    out += kHex[static_cast<unsigned char>(c) & 0xF];
  }
  return out;
}

std::vector<std::string> tricky_strings() {
  std::vector<std::string> v = {"",
                                "plain text 21.5",
                                "it's",
                                "''",
                                "\\",
                                "a\\'b",
                                "x\\' OR 1=1 -- ",
                                "' OR '1'='1",
                                "\"quoted\" `back`",
                                std::string("nul\0byte", 8),
                                "\n\r\t\x1a",
                                "K\xC3\xBC"
                                "che 21\xC2\xB0"
                                "C",
                                "\xFF\xFE not UTF-8"};
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  v.push_back(all);
  return v;
}

TEST(SqlLiteralTest, PrintableAsciiIsQuotedAndTheRestIsHex) {
  std::string sql;
  append_sql_string(sql, "it's");
  EXPECT_EQ(sql, "'it''s'");
  sql.clear();
  append_sql_string(sql, "a\\b");
  EXPECT_EQ(sql, "X'615C62'");
  sql.clear();
  append_sql_string(sql, "");
  EXPECT_EQ(sql, "''");
  sql.clear();
  append_sql_int(sql, -9223372036854775807LL - 1);
  EXPECT_EQ(sql, "-9223372036854775808");
}

// Read by the server under each mode, every literal is exactly its bytes.
TEST(SqlLiteralTest, EveryByteStringMeansItselfUnderEverySqlMode) {
  TestDatabase db;  // the test services must be up
  SqlSession session(SqlSession::As::kTestUser, db.name());
  for (const char* mode :
       {"", "NO_BACKSLASH_ESCAPES", "ANSI_QUOTES,NO_BACKSLASH_ESCAPES", "ANSI,STRICT_ALL_TABLES"}) {
    session.execute(std::string("SET SESSION sql_mode = '") + mode + "'");
    for (const std::string& s : tricky_strings()) {
      std::string sql = "SELECT HEX(CAST(";
      append_sql_string(sql, s);
      sql += " AS BINARY)), ";
      append_sql_int(sql, 42);
      const auto rows = session.query(sql);
      ASSERT_EQ(rows.size(), 1u);
      EXPECT_EQ(rows[0][0].value_or("NULL"), hex(s)) << "sql_mode '" << mode << "': " << sql;
      EXPECT_EQ(rows[0][1].value_or("NULL"), "42");
    }
  }
}

class SqlLiteralRepositoryTest : public ::testing::Test {
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
};

// data_records and deliveries rows with quotes, backslashes and UTF-8 come back byte for byte;
// invalid UTF-8 is refused as the message's fault, and the session goes on.
TEST_F(SqlLiteralRepositoryTest, RowsComeBackByteForByteAndInvalidUtf8IsTheMessagesFault) {
  const auto id = db_.insert_flow("f", "t/#", "STORE_DB", std::nullopt);
  const std::string topic =
      "t/it's/K\xC3\xBC"
      "che\\x";
  const std::vector<std::string> values = {"\"a\\\"b\\\\c\"",
                                           "\"21\xC2\xB0"
                                           "C\"",
                                           "{\"k\": \"it's\"}", "[1, 2.5, null]"};
  {
    auto tx = repo_.lock_flow(id, "s");
    ASSERT_TRUE(tx);
    std::vector<std::string> names;  // DataRecord holds views
    for (std::size_t i = 0; i < values.size(); ++i) names.push_back("f'" + std::to_string(i));
    std::vector<DataRecord> rows;
    for (std::size_t i = 0; i < values.size(); ++i) {
      rows.push_back(DataRecord{1, topic, names[i], values[i]});
    }
    tx->insert_records(rows);
    const std::vector<OutboxEntry> out = {{1, topic, "{\"x\": \"\\\\ '\"}", 1700000000000}};
    tx->insert_deliveries(out);
    tx->advance(1, 10);
    tx->commit();
  }
  const auto rows = db_.query(
      "SELECT HEX(topic), HEX(field_name), HEX(field_value) FROM data_records ORDER BY "
      "field_name");
  ASSERT_EQ(rows.size(), values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(rows[i][0].value_or(""), hex(topic));
    EXPECT_EQ(rows[i][1].value_or(""), hex("f'" + std::to_string(i)));
    EXPECT_EQ(rows[i][2].value_or(""), hex(values[i]));
  }
  const auto delivery = db_.query("SELECT HEX(topic), HEX(payload), created_ms FROM deliveries");
  ASSERT_EQ(delivery.size(), 1u);
  EXPECT_EQ(delivery[0][0].value_or(""), hex(topic));
  EXPECT_EQ(delivery[0][1].value_or(""), hex("{\"x\": \"\\\\ '\"}"));
  EXPECT_EQ(delivery[0][2].value_or(""), "1700000000000");

  {
    auto tx = repo_.lock_flow(id, "s");
    const std::vector<DataRecord> bad = {{2, "t/\xFF", "f", "1"}};
    EXPECT_THROW(tx->insert_records(bad), DbDataError);
  }
  auto tx = repo_.lock_flow(id, "s");
  ASSERT_TRUE(tx);
  const std::vector<DataRecord> ok = {{2, "t/ok", "f", "2"}};
  tx->insert_records(ok);
  tx->advance(2, 11);
  tx->commit();
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"),
            static_cast<std::int64_t>(values.size()) + 1);
}

}  // namespace
}  // namespace gateway
