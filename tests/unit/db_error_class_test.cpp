// The classification of database errors: whose fault each one is. The expectations are written
// out here, independently of the table in src/core/db_error_class.cpp, one row per code; every code
// the table knows must have its row here.
#include "gateway/db_error_class.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace gateway {
namespace {

using enum DbFault;

struct Case {
  int code;
  DbFault expected;
  const char* what;
};

constexpr Case kCases[] = {
    // The message's own data: a dead letter.
    {1264, kData, "out of range"},
    {1265, kData, "data truncated"},
    {1292, kData, "incorrect datetime/number value"},
    {1300, kData, "invalid character string"},
    {1366, kData, "incorrect string value"},
    {1367, kData, "illegal value for type"},
    {1406, kData, "data too long"},
    {1690, kData, "value out of range"},
    {3140, kData, "invalid JSON text (MySQL)"},
    {3819, kData, "CHECK constraint (MySQL)"},
    {4025, kData, "CHECK constraint (MariaDB JSON_VALID)"},
    // A deadlock: retried at once.
    {1213, kDeadlock, "deadlock"},
    // The session is gone: reconnect.
    {1053, kConnection, "server shutdown"},
    {1152, kConnection, "aborted connection"},
    {1158, kConnection, "net read error"},
    {1159, kConnection, "net read interrupted"},
    {1160, kConnection, "net write error"},
    {1161, kConnection, "net write interrupted"},
    {1927, kConnection, "connection killed"},
    {4031, kConnection, "idle disconnect"},
    {2002, kConnection, "can't connect (socket)"},
    {2003, kConnection, "can't connect (TCP)"},
    {2006, kConnection, "server has gone away"},
    {2013, kConnection, "lost connection during query"},
    {2027, kConnection, "malformed packet"},
    // Everything else holds the flow and retries: the environment's fault.
    {1021, kEnvironment, "disk full"},
    {1062, kEnvironment, "duplicate (flow_id, msg_id): last_msg_id behind the rows"},
    {1030, kEnvironment, "storage engine error"},
    {1037, kEnvironment, "out of memory"},
    {1040, kEnvironment, "too many connections"},
    {1041, kEnvironment, "out of resources"},
    {1044, kEnvironment, "database access denied"},
    {1045, kEnvironment, "access denied (login)"},
    {1047, kEnvironment, "Galera node without quorum"},
    {1049, kEnvironment, "unknown database"},
    {1054, kEnvironment, "unknown column"},
    {1114, kEnvironment, "table full"},
    {1142, kEnvironment, "table access denied (revoked grant)"},
    {1146, kEnvironment, "table missing"},
    {1203, kEnvironment, "max user connections"},
    {1205, kEnvironment, "lock wait timeout"},
    {1290, kEnvironment, "read-only"},
    {1792, kEnvironment, "read-only transaction"},
    {1836, kEnvironment, "read-only mode"},
    {1969, kEnvironment, "statement timeout"},
    // Codes nobody listed: never the message's fault.
    {0, kEnvironment, "no code"},
    {1, kEnvironment, "unknown"},
    {1999, kEnvironment, "unknown"},
    {3000, kEnvironment, "unknown"},
    {9999, kEnvironment, "unknown"},
    {-1, kEnvironment, "negative"},
};

class DbErrorClassTest : public ::testing::TestWithParam<Case> {};

TEST_P(DbErrorClassTest, IsClassifiedByWhoseFaultItIs) {
  const Case& c = GetParam();
  EXPECT_EQ(classify_db_error(c.code), c.expected)
      << c.code << " (" << c.what << ") is " << to_string(classify_db_error(c.code))
      << ", expected " << to_string(c.expected);
}

INSTANTIATE_TEST_SUITE_P(Codes, DbErrorClassTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) {
                           const int code = info.param.code;
                           return code < 0 ? "minus" + std::to_string(-code)
                                           : "code" + std::to_string(code);
                         });

TEST(DbErrorTableTest, EveryRowOfTheTableHasATestCase) {
  std::set<int> tested;
  for (const Case& c : kCases) tested.insert(c.code);
  for (const DbErrorRule& rule : db_error_table()) {
    EXPECT_TRUE(tested.count(rule.code)) << rule.code << " " << rule.name << " has no test case";
  }
}

TEST(DbErrorTableTest, IsSortedByCodeWithoutDuplicates) {
  const auto table = db_error_table();
  EXPECT_TRUE(
      std::is_sorted(table.begin(), table.end(),
                     [](const DbErrorRule& a, const DbErrorRule& b) { return a.code < b.code; }));
  EXPECT_EQ(std::adjacent_find(
                table.begin(), table.end(),
                [](const DbErrorRule& a, const DbErrorRule& b) { return a.code == b.code; }),
            table.end());
}

TEST(DbErrorTableTest, OnlyDataErrorsAreTheMessagesFault) {
  // The whole client range is the connection's, never the message's.
  for (int code = 2000; code < 3000; ++code) EXPECT_EQ(classify_db_error(code), kConnection);
  std::size_t data = 0;
  for (const DbErrorRule& rule : db_error_table()) data += rule.fault == kData;
  EXPECT_EQ(data, 11u) << "a new data rule releases messages: add its case above on purpose";
}

}  // namespace
}  // namespace gateway
