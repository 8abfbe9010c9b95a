#include "gateway/adapters/mysql_schema.h"

#include <cppconn/statement.h>

#include <array>
#include <sstream>
#include <utility>

#include "mysql_session.h"
#include "schema_sql.h"

namespace gateway {

namespace {

// Columns newer versions added to existing tables (nullable or with a default), added in place by
// upgrade_schema(): dead-letter replay (issue 14), the broker's client certificate (issue 12)
// and STORE_TABLE (issue 13).
struct AddedColumn {
  const char* table;
  const char* name;
  const char* type;
  const char* why;
};
constexpr std::array kAddedColumns = {
    AddedColumn{"rejected_messages", "replayed_at", "TIMESTAMP(6) NULL", "dead-letter replay"},
    AddedColumn{"rejected_messages", "replayed_msg_id", "BIGINT NULL", "dead-letter replay"},
    AddedColumn{"mqtt_servers", "client_cert_file", "VARCHAR(1024) NULL AFTER ca_file",
                "client certificates"},
    AddedColumn{"mqtt_servers", "client_key_file", "VARCHAR(1024) NULL AFTER client_cert_file",
                "client certificates"},
    AddedColumn{"mqtt_servers", "client_key_password_file",
                "VARCHAR(1024) NULL AFTER client_key_file", "client certificates"},
    AddedColumn{"flows", "target_table", "VARCHAR(64) NULL AFTER enabled", "STORE_TABLE"},
    AddedColumn{"flows", "column_map", "JSON NULL AFTER target_table", "STORE_TABLE"},
    AddedColumn{"flows", "write_mode", "VARCHAR(16) NOT NULL DEFAULT 'insert' AFTER column_map",
                "STORE_TABLE"},
};

// Throws sql::SQLException.
bool has_column(MySqlSession& db, const AddedColumn& a) {
  auto& stmt = db.prepare(
      "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND "
      "TABLE_NAME = ? AND COLUMN_NAME = ?");
  stmt.setString(1, a.table);
  stmt.setString(2, a.name);
  std::unique_ptr<sql::ResultSet> found(stmt.executeQuery());
  return found->next() && found->getInt(1) > 0;
}

}  // namespace

const char* builtin_schema_sql() { return kSchemaSql; }

MySqlSchema::MySqlSchema(const Settings& settings, std::shared_ptr<DatabaseNode> node)
    : db_(std::make_unique<MySqlSession>(settings, std::move(node))) {}
MySqlSchema::~MySqlSchema() = default;

void MySqlSchema::apply_script(std::string_view sql) {
  // Statements end with ';' at the end of a line; comments start with "--". Enough for our DDL.
  std::istringstream in{std::string(sql)};
  std::string line, statement;
  try {
    std::unique_ptr<sql::Statement> st(db_->conn().createStatement());
    while (std::getline(in, line)) {
      auto first = line.find_first_not_of(" \t");
      if (first == std::string::npos || line.compare(first, 2, "--") == 0) continue;
      statement += line + "\n";
      auto last = line.find_last_not_of(" \t\r");
      if (line[last] == ';') {
        st->execute(statement);
        statement.clear();
      }
    }
    db_->conn().commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "apply schema");
  }
}

std::vector<std::string> MySqlSchema::upgrade_schema() {
  std::vector<std::string> done;
  try {
    auto& collation = db_->prepare(
        "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'data_records' AND COLUMN_NAME = 'field_name'");
    std::unique_ptr<sql::ResultSet> rs(collation.executeQuery());
    const bool needs_bin = rs->next() && std::string(rs->getString(1)) != "utf8mb4_nopad_bin";
    rs.reset();
    if (needs_bin) {
      // Copies the table (the unique key changes); done once, by --init-db, not at start-up.
      std::unique_ptr<sql::Statement> st(db_->conn().createStatement());
      st->execute(
          "ALTER TABLE data_records MODIFY field_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE "
          "utf8mb4_nopad_bin NOT NULL");
      done.emplace_back("data_records.field_name now compares as bytes (utf8mb4_nopad_bin)");
    }
    for (const AddedColumn& a : kAddedColumns) {
      if (has_column(*db_, a)) continue;
      std::unique_ptr<sql::Statement> st(db_->conn().createStatement());
      st->execute(std::string("ALTER TABLE ") + a.table + " ADD COLUMN " + a.name + " " + a.type);
      done.emplace_back(std::string(a.table) + "." + a.name + " added (" + a.why + ")");
    }
    db_->conn().commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "upgrade schema");
  }
  return done;
}

std::vector<std::string> MySqlSchema::missing_columns() {
  std::vector<std::string> missing;
  try {
    for (const AddedColumn& a : kAddedColumns) {
      if (!has_column(*db_, a)) missing.push_back(std::string(a.table) + "." + a.name);
    }
    db_->conn().commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "read the schema");
  }
  return missing;
}

std::vector<std::string> MySqlSchema::missing_tables() {
  static constexpr std::array<const char*, 8> kTables = {
      "mqtt_servers",  "flows",      "data_records",    "rejected_messages",
      "spool_offsets", "deliveries", "delivery_leases", "retained_messages"};
  std::vector<std::string> missing;
  try {
    auto& stmt = db_->prepare(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND "
        "table_name = ?");
    for (const char* t : kTables) {
      stmt.setString(1, t);
      std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
      if (!rs->next() || rs->getInt(1) == 0) missing.emplace_back(t);
    }
    db_->conn().commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "check schema");
  }
  return missing;
}

}  // namespace gateway
