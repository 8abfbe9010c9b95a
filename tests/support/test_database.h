// TestDatabase: a throwaway MariaDB database for one test (userver's TmpTable idea). The
// constructor creates gw_test_<pid>_<counter>_<random> on the test server (test_services()) and
// applies config/schema.sql; the destructor drops it (set GW_TEST_KEEP_DB=1 to keep it).
//
// Thread-safe: one connection (autocommit) behind a mutex; use it from any thread that the test
// controls. After a client error (server restarted by a fault test) the connection is re-opened
// and the statement retried once. SQL errors throw std::runtime_error with the server's message.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gateway::testing {

class TestDatabase {
 public:
  using Row = std::vector<std::optional<std::string>>;  // std::nullopt is SQL NULL

  // schema_file empty: default_schema_file(). Throws std::runtime_error if the services are not
  // configured, the server cannot be reached or the schema fails.
  explicit TestDatabase(std::filesystem::path schema_file = {});
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  // config/schema.sql from GATEWAY_SOURCE_DIR when this library was compiled with it, else found
  // by walking up from the current directory and from the test executable's directory. Throws
  // std::runtime_error if not found.
  static std::filesystem::path default_schema_file();
  // Splits an SQL script into statements (on ';' outside quotes and comments); comments dropped.
  static std::vector<std::string> split_sql_script(std::string_view script);

  const std::string& name() const { return name_; }

  // Runs one statement (no result set expected) in the test database.
  void execute(std::string_view sql);
  // Returns the first column of the first row as an integer. Throws if there is no row or the
  // value is NULL.
  std::int64_t query_int(std::string_view sql);
  // Returns all rows, every column as text (the server's text form of numbers and JSON).
  std::vector<Row> query(std::string_view sql);

  // Inserts an mqtt_servers row (enabled, not default) and returns its id. Empty optionals are
  // NULL.
  std::int64_t insert_mqtt_server(const std::string& host, int port,
                                  std::optional<std::string> username = {},
                                  std::optional<std::string> password = {}, bool use_tls = false,
                                  std::optional<std::string> ca_file = {});
  // Inserts a flows row (name NULL, last_msg_id 0) and returns its id. action is written as given
  // (kFlowActionStoreDb / kFlowActionPostEndpoint, or a bad value on purpose).
  std::int64_t insert_flow(const std::string& code, const std::string& topic,
                           const std::string& action, std::optional<std::string> schema_json,
                           std::optional<std::string> endpoint_url = {}, bool enabled = true);

  // The gateway's settings for this database: DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD.
  std::map<std::string, std::string> gateway_env() const;

 private:
  struct Connection;
  std::string name_;
  std::unique_ptr<Connection> connection_;
};

// A connection of its own, next to the gateway's and TestDatabase's, for fault tests: hold a
// transaction open (row locks) while the gateway works, or, as MariaDB's root, change server
// variables (SET GLOBAL read_only). Autocommit, unless the test runs START TRANSACTION itself.
// Not thread-safe: use it from one thread. SQL errors throw std::runtime_error with the server's
// message; nothing is retried (a lost connection would silently end the transaction).
class SqlSession {
 public:
  enum class As {
    kTestUser,  // GW_TEST_DB_USER over TCP, like the gateway (no SUPER, no READ_ONLY ADMIN)
    kRoot,      // root without a password over the Unix socket GW_TEST_DB_SOCKET (as
                // scripts/services.sh creates it), else over TCP to GW_TEST_DB_HOST
  };
  // Connects (5 s bound) with `database` as the default database (empty: none). Throws
  // std::runtime_error if it cannot.
  explicit SqlSession(As who, const std::string& database = {});
  ~SqlSession();
  SqlSession(const SqlSession&) = delete;
  SqlSession& operator=(const SqlSession&) = delete;

  void execute(std::string_view sql);
  std::vector<TestDatabase::Row> query(std::string_view sql);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gateway::testing
