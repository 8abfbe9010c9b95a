#include "support/test_database.h"

#include <cppconn/connection.h>
#include <cppconn/driver.h>
#include <cppconn/exception.h>
#include <cppconn/prepared_statement.h>
#include <cppconn/resultset.h>
#include <cppconn/resultset_metadata.h>
#include <cppconn/statement.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>

#include "support/test_env.h"

namespace gateway::testing {

namespace {

// Every row of `result`, every column as text (NULL as std::nullopt).
std::vector<TestDatabase::Row> rows_of(sql::ResultSet& result) {
  const unsigned columns = result.getMetaData()->getColumnCount();
  std::vector<TestDatabase::Row> rows;
  while (result.next()) {
    TestDatabase::Row row;
    row.reserve(columns);
    for (unsigned column = 1; column <= columns; ++column) {
      if (result.isNull(column)) {
        row.emplace_back(std::nullopt);
      } else {
        row.emplace_back(std::string(result.getString(column)));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::string make_database_name() {
  static std::atomic<unsigned> counter{0};
  std::random_device random;
  std::ostringstream name;
  name << "gw_test_" << ::getpid() << "_" << counter.fetch_add(1) << "_" << std::hex
       << (random() & 0xffffffu);
  return name.str();
}

bool is_client_error(const sql::SQLException& e) {
  return e.getErrorCode() >= 2000 && e.getErrorCode() < 3000;
}

std::runtime_error sql_failure(const sql::SQLException& e, std::string_view sql) {
  return std::runtime_error("SQL error " + std::to_string(e.getErrorCode()) + " (" +
                            e.getSQLStateCStr() + "): " + e.what() +
                            "\n  in: " + std::string(sql.substr(0, 500)));
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<std::filesystem::path> find_upwards(std::filesystem::path dir,
                                                  const std::filesystem::path& relative) {
  std::error_code ignored;
  while (!dir.empty()) {
    if (std::filesystem::is_regular_file(dir / relative, ignored)) return dir / relative;
    if (dir == dir.parent_path()) break;
    dir = dir.parent_path();
  }
  return std::nullopt;
}

}  // namespace

struct TestDatabase::Connection {
  std::mutex mu;
  std::unique_ptr<sql::Connection> connection;  // guarded by mu; null until (re)connected
  std::string schema;                           // empty until the database exists

  sql::Connection& get() {
    if (!connection) {
      const TestServices& services = test_services();
      sql::ConnectOptionsMap options;
      options["hostName"] =
          sql::SQLString("tcp://" + services.db_host + ":" + std::to_string(services.db_port));
      options["userName"] = sql::SQLString(services.db_user);
      options["password"] = sql::SQLString(services.db_password);
      options["OPT_CONNECT_TIMEOUT"] = 5;
      options["OPT_READ_TIMEOUT"] = 60;
      options["OPT_WRITE_TIMEOUT"] = 60;
      options["OPT_RECONNECT"] = false;
      options["OPT_CHARSET_NAME"] = sql::SQLString("utf8mb4");
      connection.reset(get_driver_instance()->connect(options));
      connection->setAutoCommit(true);
      if (!schema.empty()) connection->setSchema(sql::SQLString(schema));
    }
    return *connection;
  }

  // Runs fn under the mutex; after a client error (2000-2999: connection lost, server restarted)
  // reconnects and runs it once more.
  template <typename Fn>
  auto run(std::string_view sql, Fn&& fn) {
    std::lock_guard lock(mu);
    try {
      try {
        return fn(get());
      } catch (const sql::SQLException& e) {
        if (!is_client_error(e)) throw;
        connection.reset();
        return fn(get());
      }
    } catch (const sql::SQLException& e) {
      if (is_client_error(e)) connection.reset();
      throw sql_failure(e, sql);
    }
  }
};

std::vector<std::string> TestDatabase::split_sql_script(std::string_view script) {
  enum class State { kNormal, kQuoted, kLineComment, kBlockComment };
  std::vector<std::string> statements;
  std::string current;
  State state = State::kNormal;
  char quote = 0;
  const auto finish = [&] {
    const auto first = current.find_first_not_of(" \t\r\n");
    if (first != std::string::npos) {
      const auto last = current.find_last_not_of(" \t\r\n");
      statements.push_back(current.substr(first, last - first + 1));
    }
    current.clear();
  };
  for (std::size_t i = 0; i < script.size(); ++i) {
    const char c = script[i];
    const char next = i + 1 < script.size() ? script[i + 1] : '\0';
    switch (state) {
      case State::kNormal:
        if (c == '#' ||
            (c == '-' && next == '-' &&
             (i + 2 >= script.size() || std::isspace(static_cast<unsigned char>(script[i + 2]))))) {
          state = State::kLineComment;
        } else if (c == '/' && next == '*') {
          state = State::kBlockComment;
          ++i;
        } else if (c == ';') {
          finish();
        } else {
          if (c == '\'' || c == '"' || c == '`') {
            state = State::kQuoted;
            quote = c;
          }
          current += c;
        }
        break;
      case State::kQuoted:
        current += c;
        if (c == '\\' && quote != '`' && next != '\0') {
          current += next;
          ++i;
        } else if (c == quote) {
          state = State::kNormal;  // a doubled quote simply re-enters on the next character
        }
        break;
      case State::kLineComment:
        if (c == '\n') {
          state = State::kNormal;
          current += '\n';
        }
        break;
      case State::kBlockComment:
        if (c == '*' && next == '/') {
          state = State::kNormal;
          current += ' ';
          ++i;
        }
        break;
    }
  }
  finish();
  return statements;
}

std::filesystem::path TestDatabase::default_schema_file() {
  const std::filesystem::path relative = std::filesystem::path("config") / "schema.sql";
#ifdef GATEWAY_SOURCE_DIR
  if (const auto path = std::filesystem::path(GATEWAY_SOURCE_DIR) / relative;
      std::filesystem::is_regular_file(path)) {
    return path;
  }
#endif
  if (auto found = find_upwards(std::filesystem::current_path(), relative)) return *found;
  std::error_code ignored;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ignored);
  if (auto found = find_upwards(exe.parent_path(), relative)) return *found;
  throw std::runtime_error(
      "config/schema.sql not found above the current directory or the test executable; pass "
      "its path to TestDatabase");
}

TestDatabase::TestDatabase(std::filesystem::path schema_file)
    : name_(make_database_name()), connection_(std::make_unique<Connection>()) {
  if (schema_file.empty()) schema_file = default_schema_file();
  const std::vector<std::string> statements = split_sql_script(read_file(schema_file));

  const std::string create =
      "CREATE DATABASE `" + name_ + "` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci";
  connection_->run(create, [&](sql::Connection& c) {
    std::unique_ptr<sql::Statement> statement(c.createStatement());
    statement->execute(sql::SQLString(create));
    c.setSchema(sql::SQLString(name_));
    return 0;
  });
  connection_->schema = name_;
  try {
    for (const auto& statement : statements) execute(statement);
  } catch (...) {
    try {
      execute("DROP DATABASE IF EXISTS `" + name_ + "`");
    } catch (...) {
    }
    throw;
  }
}

TestDatabase::~TestDatabase() {
  if (const char* keep = std::getenv("GW_TEST_KEEP_DB"); keep != nullptr && keep[0] == '1') {
    std::cerr << "[ keeping  ] database " << name_ << "\n";
    return;
  }
  try {
    execute("DROP DATABASE IF EXISTS `" + name_ + "`");
  } catch (const std::exception& e) {
    std::cerr << "TestDatabase: could not drop " << name_ << ": " << e.what() << "\n";
  }
}

void TestDatabase::execute(std::string_view sql) {
  connection_->run(sql, [&](sql::Connection& c) {
    std::unique_ptr<sql::Statement> statement(c.createStatement());
    statement->execute(sql::SQLString(sql.data(), sql.size()));
    return 0;
  });
}

std::vector<TestDatabase::Row> TestDatabase::query(std::string_view sql) {
  return connection_->run(sql, [&](sql::Connection& c) {
    std::unique_ptr<sql::Statement> statement(c.createStatement());
    std::unique_ptr<sql::ResultSet> result(
        statement->executeQuery(sql::SQLString(sql.data(), sql.size())));
    return rows_of(*result);
  });
}

std::int64_t TestDatabase::query_int(std::string_view sql) {
  return connection_->run(sql, [&](sql::Connection& c) -> std::int64_t {
    std::unique_ptr<sql::Statement> statement(c.createStatement());
    std::unique_ptr<sql::ResultSet> result(
        statement->executeQuery(sql::SQLString(sql.data(), sql.size())));
    if (!result->next()) throw std::runtime_error("query_int: no row from: " + std::string(sql));
    if (result->isNull(1)) throw std::runtime_error("query_int: NULL from: " + std::string(sql));
    return result->getInt64(1);
  });
}

namespace {

void bind_optional(sql::PreparedStatement& statement, unsigned index,
                   const std::optional<std::string>& value) {
  if (value) {
    statement.setString(index, sql::SQLString(*value));
  } else {
    statement.setNull(index, sql::DataType::VARCHAR);
  }
}

std::int64_t last_insert_id(sql::Connection& c) {
  std::unique_ptr<sql::Statement> statement(c.createStatement());
  std::unique_ptr<sql::ResultSet> result(statement->executeQuery("SELECT LAST_INSERT_ID()"));
  result->next();
  return result->getInt64(1);
}

}  // namespace

std::int64_t TestDatabase::insert_mqtt_server(const std::string& host, int port,
                                              std::optional<std::string> username,
                                              std::optional<std::string> password, bool use_tls,
                                              std::optional<std::string> ca_file) {
  static constexpr std::string_view kSql =
      "INSERT INTO mqtt_servers (host, port, username, password, use_tls, ca_file, enabled) "
      "VALUES (?, ?, ?, ?, ?, ?, 1)";
  return connection_->run(kSql, [&](sql::Connection& c) {
    std::unique_ptr<sql::PreparedStatement> statement(
        c.prepareStatement(sql::SQLString(kSql.data(), kSql.size())));
    statement->setString(1, sql::SQLString(host));
    statement->setInt(2, port);
    bind_optional(*statement, 3, username);
    bind_optional(*statement, 4, password);
    statement->setInt(5, use_tls ? 1 : 0);
    bind_optional(*statement, 6, ca_file);
    statement->executeUpdate();
    return last_insert_id(c);
  });
}

std::int64_t TestDatabase::insert_flow(const std::string& code, const std::string& topic,
                                       const std::string& action,
                                       std::optional<std::string> schema_json,
                                       std::optional<std::string> endpoint_url, bool enabled) {
  static constexpr std::string_view kSql =
      "INSERT INTO flows (code, topic, action, payload_schema, endpoint_url, enabled) "
      "VALUES (?, ?, ?, ?, ?, ?)";
  return connection_->run(kSql, [&](sql::Connection& c) {
    std::unique_ptr<sql::PreparedStatement> statement(
        c.prepareStatement(sql::SQLString(kSql.data(), kSql.size())));
    statement->setString(1, sql::SQLString(code));
    statement->setString(2, sql::SQLString(topic));
    statement->setString(3, sql::SQLString(action));
    bind_optional(*statement, 4, schema_json);
    bind_optional(*statement, 5, endpoint_url);
    statement->setInt(6, enabled ? 1 : 0);
    statement->executeUpdate();
    return last_insert_id(c);
  });
}

std::map<std::string, std::string> TestDatabase::gateway_env() const {
  const TestServices& services = test_services();
  return {
      {"DB_HOST", services.db_host},
      {"DB_PORT", std::to_string(services.db_port)},
      {"DB_NAME", name_},
      {"DB_USER", services.db_user},
      {"DB_PASSWORD", services.db_password},
  };
}

struct SqlSession::Impl {
  std::unique_ptr<sql::Connection> connection;
};

SqlSession::SqlSession(As who, const std::string& database) : impl_(std::make_unique<Impl>()) {
  const TestServices& services = test_services();
  sql::ConnectOptionsMap options;
  std::string host = "tcp://" + services.db_host + ":" + std::to_string(services.db_port);
  std::string user = services.db_user;
  std::string password = services.db_password;
  if (who == As::kRoot) {
    const char* socket = std::getenv("GW_TEST_DB_SOCKET");
    if (socket != nullptr && socket[0] != '\0') host = std::string("unix://") + socket;
    user = "root";
    password.clear();
  }
  options["hostName"] = sql::SQLString(host);
  options["userName"] = sql::SQLString(user);
  options["password"] = sql::SQLString(password);
  options["OPT_CONNECT_TIMEOUT"] = 5;
  options["OPT_READ_TIMEOUT"] = 60;
  options["OPT_WRITE_TIMEOUT"] = 60;
  options["OPT_RECONNECT"] = false;
  options["OPT_CHARSET_NAME"] = sql::SQLString("utf8mb4");
  try {
    impl_->connection.reset(get_driver_instance()->connect(options));
    impl_->connection->setAutoCommit(true);
    if (!database.empty()) impl_->connection->setSchema(sql::SQLString(database));
  } catch (const sql::SQLException& e) {
    throw sql_failure(e, "connect to " + host + " as " + user);
  }
}

SqlSession::~SqlSession() = default;

void SqlSession::execute(std::string_view sql) {
  try {
    std::unique_ptr<sql::Statement> statement(impl_->connection->createStatement());
    statement->execute(sql::SQLString(sql.data(), sql.size()));
  } catch (const sql::SQLException& e) {
    throw sql_failure(e, sql);
  }
}

std::vector<TestDatabase::Row> SqlSession::query(std::string_view sql) {
  try {
    std::unique_ptr<sql::Statement> statement(impl_->connection->createStatement());
    std::unique_ptr<sql::ResultSet> result(
        statement->executeQuery(sql::SQLString(sql.data(), sql.size())));
    return rows_of(*result);
  } catch (const sql::SQLException& e) {
    throw sql_failure(e, sql);
  }
}

}  // namespace gateway::testing
