// STORE_TABLE's SQL (issue 13): how a target table is described from information_schema and how
// mapped rows are written to it. Internal to src/adapters/mysql_*.cpp. Not thread-safe (the
// session is not).
#pragma once

#include <string_view>

#include "gateway/column_map.h"
#include "gateway/flow_repository.h"
#include "mysql_session.h"

namespace gateway {

// The columns of `table` in the session's database (ordinal order). MariaDB reports a JSON
// column as LONGTEXT with a json_valid(`col`) CHECK: such a column gets data_type "json".
// Throws sql::SQLException.
TableInfo describe_table(MySqlSession& db, std::string_view table);

// INSERT INTO `table` (mapped columns) VALUES ..., as multi-row statements that fit the packet
// budget, with ON DUPLICATE KEY UPDATE of the mapped columns for kUpsert. A UseDefault cell
// becomes the column's DEFAULT (NULL for AUTO_INCREMENT, which takes the next value). Throws
// what rethrow() throws; a duplicate key with kInsert (1062) or a failed foreign key (1452) is
// the row's fault here (DbDataError), unlike for the gateway's own tables.
void insert_table_rows(MySqlSession& db, const TableRows& rows);

}  // namespace gateway
