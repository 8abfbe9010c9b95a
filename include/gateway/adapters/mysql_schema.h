// The gateway's tables: creating them (config/schema.sql, compiled in), upgrading tables made by
// an older version, and telling which are missing. Used by --init-db, --check and start-up; one
// connection per instance.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/adapters/mysql_driver.h"
#include "gateway/database_node.h"
#include "gateway/settings.h"

namespace gateway {

class MySqlSession;

// config/schema.sql as compiled into the binary (for --init-db and tests).
const char* builtin_schema_sql();

class MySqlSchema {
 public:
  // Connects at once; throws as MySqlFlowRepository's constructor.
  // `node`: shared by the gateway's connections (see database_node.h); null: one of its own.
  explicit MySqlSchema(const Settings& settings, std::shared_ptr<DatabaseNode> node = nullptr);
  ~MySqlSchema();

  // Runs every statement of an SQL script (config/schema.sql): statements end with ';' at the end
  // of a line, comments start with "--".
  void apply_script(std::string_view sql);
  // Brings tables made by an older version up to date (what CREATE TABLE IF NOT EXISTS cannot):
  // data_records.field_name compared as bytes (utf8mb4_nopad_bin); the columns newer versions
  // added (rejected_messages.replayed_at/replayed_msg_id, mqtt_servers.client_cert_file/
  // client_key_file/client_key_password_file, flows.target_table/column_map/write_mode). Returns
  // one line per change made; empty when there was nothing to do. Idempotent.
  std::vector<std::string> upgrade_schema();
  // The tables the gateway needs that are missing (empty when the schema is complete).
  std::vector<std::string> missing_tables();
  // The columns upgrade_schema() would add, as "table.column" (empty when up to date).
  std::vector<std::string> missing_columns();

 private:
  std::unique_ptr<MySqlSession> db_;
};

}  // namespace gateway
