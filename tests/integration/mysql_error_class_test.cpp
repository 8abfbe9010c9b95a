// Real errors from a real MariaDB, made to happen, and the exception each one becomes: whose fault
// it is decides whether a message is dead-lettered (DbDataError) or held and retried (the rest).
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "gateway/adapters/mysql_flow_repository.h"
#include "gateway/env_file.h"
#include "gateway/errors.h"
#include "support/test_database.h"

namespace gateway {
namespace {

using testing::SqlSession;
using testing::TestDatabase;

// What `f` threw: the exception's dynamic type name and its error code.
struct Thrown {
  std::string type;
  int code = -1;
};

Thrown thrown_by(const std::function<void()>& f) {
  try {
    f();
  } catch (const DbDataError& e) {
    return {"DbDataError", e.code};
  } catch (const DbRetryable& e) {
    return {"DbRetryable", e.code};
  } catch (const DbUnavailable& e) {
    return {"DbUnavailable", e.code};
  } catch (const DbRefused& e) {
    return {"DbRefused", e.code};
  } catch (const std::exception& e) {
    return {std::string("other: ") + e.what(), -1};
  }
  return {"nothing", 0};
}

// Sets a global server variable as root and puts the old value back.
class GlobalVariable {
 public:
  GlobalVariable(std::string name, const std::string& value)
      : root_(SqlSession::As::kRoot), name_(std::move(name)) {
    old_ = root_.query("SELECT @@GLOBAL." + name_).at(0).at(0).value_or("");
    root_.execute("SET GLOBAL " + name_ + " = " + value);
  }
  ~GlobalVariable() {
    try {
      root_.execute("SET GLOBAL " + name_ + " = " + old_);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "restoring " << name_ << ": " << e.what();
    }
  }

 private:
  SqlSession root_;
  std::string name_;
  std::string old_;
};

class MySqlErrorClassTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { mysql_global_init(); }
  MySqlErrorClassTest() {
    EnvMap env;
    for (const auto& [k, v] : db_.gateway_env()) env[k] = v;
    settings_ = load_settings(env);
    flow_id_ = db_.insert_flow("f", "t/#", "STORE_DB", std::nullopt);
  }

  // One transaction on the flow that inserts `rows` and commits.
  void insert(MySqlFlowRepository& repo, const std::vector<DataRecord>& rows) {
    auto tx = repo.lock_flow(flow_id_, "spool");
    ASSERT_TRUE(tx);
    tx->insert_records(rows);
    tx->advance(1, 1);
    tx->commit();
  }

  TestDatabase db_;
  Settings settings_;
  std::int64_t flow_id_ = 0;
};

TEST_F(MySqlErrorClassTest, ReadOnlyServerIsRefusedNotTheMessagesFault) {
  MySqlFlowRepository repo(settings_);
  GlobalVariable read_only("read_only", "ON");
  const Thrown t = thrown_by([&] { insert(repo, {DataRecord{1, "t/a", "x", "1"}}); });
  EXPECT_EQ(t.type, "DbRefused");
  EXPECT_EQ(t.code, 1290);
}

TEST_F(MySqlErrorClassTest, DataTooLongIsTheMessagesFault) {
  MySqlFlowRepository repo(settings_);
  const std::string name(300, 'n');
  const Thrown t = thrown_by([&] { insert(repo, {DataRecord{1, "t/a", name, "1"}}); });
  EXPECT_EQ(t.type, "DbDataError");
  EXPECT_EQ(t.code, 1406);
}

TEST_F(MySqlErrorClassTest, InvalidJsonValueIsTheMessagesFault) {
  MySqlFlowRepository repo(settings_);
  const Thrown t = thrown_by([&] { insert(repo, {DataRecord{1, "t/a", "x", "{not json"}}); });
  EXPECT_EQ(t.type, "DbDataError");
  EXPECT_EQ(t.code, 4025);
}

// A duplicate (flow_id, msg_id, field_name) cannot come from one message (unique JSON keys,
// names compared as bytes): it means last_msg_id is behind the stored rows. Held, not rejected.
TEST_F(MySqlErrorClassTest, DuplicateRowHoldsTheFlow) {
  MySqlFlowRepository repo(settings_);
  insert(repo, {DataRecord{1, "t/a", "x", "1"}});
  db_.execute("UPDATE flows SET last_msg_id = 0");  // as a restored flows table would be
  const Thrown t = thrown_by([&] { insert(repo, {DataRecord{1, "t/a", "x", "2"}}); });
  EXPECT_EQ(t.type, "DbRefused");
  EXPECT_EQ(t.code, 1062);
}

TEST_F(MySqlErrorClassTest, MissingTableIsRefusedNotTheMessagesFault) {
  MySqlFlowRepository repo(settings_);
  db_.execute("DROP TABLE data_records");
  const Thrown t = thrown_by([&] { insert(repo, {DataRecord{1, "t/a", "x", "1"}}); });
  EXPECT_EQ(t.type, "DbRefused");
  EXPECT_EQ(t.code, 1146);
}

TEST_F(MySqlErrorClassTest, RefusedLoginIsRefusedNotFatalToTheMessage) {
  Settings bad = settings_;
  bad.db_password = Secret("not-the-password");
  const Thrown t = thrown_by([&] { MySqlFlowRepository r(bad); });
  EXPECT_EQ(t.type, "DbRefused");
  EXPECT_EQ(t.code, 1045);
}

// A batch larger than max_allowed_packet goes out in several statements; a single row larger
// than it is the message's fault (sent, the server would drop the connection, and every retry
// would fail the same way).
TEST_F(MySqlErrorClassTest, RowsAreSentInPacketsAndARowTooLargeIsTheMessagesFault) {
  GlobalVariable packet("max_allowed_packet", "1048576");
  MySqlFlowRepository repo(settings_);  // reads the new limit at connect
  const std::string value = "\"" + std::string(200 * 1024, 'v') + "\"";
  std::vector<DataRecord> rows;
  std::vector<std::string> names;
  for (int i = 0; i < 12; ++i) names.push_back("f" + std::to_string(i));
  for (const auto& n : names) rows.push_back(DataRecord{1, "t/a", n, value});
  EXPECT_EQ(thrown_by([&] { insert(repo, rows); }).type, "nothing");
  EXPECT_EQ(db_.query_int("SELECT COUNT(*) FROM data_records"), 12);

  const std::string huge = "\"" + std::string(1536 * 1024, 'h') + "\"";
  const Thrown t = thrown_by([&] { insert(repo, {DataRecord{2, "t/a", "big", huge}}); });
  EXPECT_EQ(t.type, "DbDataError");
  // The connection is still good for the next message.
  EXPECT_EQ(thrown_by([&] { insert(repo, {DataRecord{3, "t/a", "ok", "1"}}); }).type, "nothing");
}

}  // namespace
}  // namespace gateway
