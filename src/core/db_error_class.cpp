#include "gateway/db_error_class.h"

#include <algorithm>
#include <array>

namespace gateway {
namespace {

using enum DbFault;

// Sorted by code (checked by a unit test; looked up by binary search).
constexpr std::array kRules = {
    // The server refuses writes, is out of space or memory, or the account lost its rights.
    DbErrorRule{1021, kEnvironment, "ER_DISK_FULL"},
    DbErrorRule{1030, kEnvironment, "ER_GET_ERRNO (storage engine error)"},
    DbErrorRule{1037, kEnvironment, "ER_OUTOFMEMORY"},
    DbErrorRule{1040, kEnvironment, "ER_CON_COUNT_ERROR (too many connections)"},
    DbErrorRule{1041, kEnvironment, "ER_OUT_OF_RESOURCES"},
    DbErrorRule{1044, kEnvironment, "ER_DBACCESS_DENIED_ERROR"},
    DbErrorRule{1045, kEnvironment, "ER_ACCESS_DENIED_ERROR"},
    DbErrorRule{1047, kEnvironment, "ER_UNKNOWN_COM_ERROR (Galera node without quorum)"},
    DbErrorRule{1049, kEnvironment, "ER_BAD_DB_ERROR"},
    DbErrorRule{1053, kConnection, "ER_SERVER_SHUTDOWN"},
    DbErrorRule{1054, kEnvironment, "ER_BAD_FIELD_ERROR (schema differs)"},
    // Field names compare as bytes and JSON keys are unique, so no message can collide with
    // itself: a duplicate (flow_id, msg_id) means last_msg_id is behind existing rows (a restored
    // or reset flows table). Dead-lettering would not advance msg_id: every message would go.
    DbErrorRule{1062, kEnvironment, "ER_DUP_ENTRY (msg_id behind existing rows)"},
    DbErrorRule{1114, kEnvironment, "ER_RECORD_FILE_FULL (table full)"},
    DbErrorRule{1142, kEnvironment, "ER_TABLEACCESS_DENIED_ERROR"},
    DbErrorRule{1146, kEnvironment, "ER_NO_SUCH_TABLE"},
    DbErrorRule{1152, kConnection, "ER_ABORTING_CONNECTION"},
    DbErrorRule{1158, kConnection, "ER_NET_READ_ERROR"},
    DbErrorRule{1159, kConnection, "ER_NET_READ_INTERRUPTED"},
    DbErrorRule{1160, kConnection, "ER_NET_ERROR_ON_WRITE"},
    DbErrorRule{1161, kConnection, "ER_NET_WRITE_INTERRUPTED"},
    DbErrorRule{1203, kEnvironment, "ER_TOO_MANY_USER_CONNECTIONS"},
    DbErrorRule{1205, kEnvironment, "ER_LOCK_WAIT_TIMEOUT"},
    DbErrorRule{1213, kDeadlock, "ER_LOCK_DEADLOCK"},
    DbErrorRule{1264, kData, "ER_WARN_DATA_OUT_OF_RANGE"},
    DbErrorRule{1265, kData, "WARN_DATA_TRUNCATED"},
    DbErrorRule{1290, kEnvironment, "ER_OPTION_PREVENTS_STATEMENT (read_only)"},
    DbErrorRule{1292, kData, "ER_TRUNCATED_WRONG_VALUE"},
    DbErrorRule{1300, kData, "ER_INVALID_CHARACTER_STRING"},
    DbErrorRule{1366, kData, "ER_TRUNCATED_WRONG_VALUE_FOR_FIELD (incorrect value)"},
    DbErrorRule{1367, kData, "ER_ILLEGAL_VALUE_FOR_TYPE"},
    DbErrorRule{1406, kData, "ER_DATA_TOO_LONG"},
    DbErrorRule{1690, kData, "ER_DATA_OUT_OF_RANGE"},
    DbErrorRule{1792, kEnvironment, "ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION"},
    DbErrorRule{1836, kEnvironment, "ER_READ_ONLY_MODE"},
    DbErrorRule{1927, kConnection, "ER_CONNECTION_KILLED"},
    DbErrorRule{1969, kEnvironment, "ER_STATEMENT_TIMEOUT"},
    DbErrorRule{3140, kData, "ER_INVALID_JSON_TEXT (MySQL)"},
    DbErrorRule{3819, kData, "ER_CHECK_CONSTRAINT_VIOLATED (MySQL)"},
    DbErrorRule{4025, kData, "ER_CONSTRAINT_FAILED (CHECK, e.g. JSON_VALID)"},
    DbErrorRule{4031, kConnection, "ER_CLIENT_INTERACTION_TIMEOUT"},
};

}  // namespace

std::span<const DbErrorRule> db_error_table() { return kRules; }

DbFault classify_db_error(int code) {
  // CR_* client errors: the connection is gone or could not be made.
  if (code >= 2000 && code < 3000) return kConnection;
  const auto it = std::lower_bound(kRules.begin(), kRules.end(), code,
                                   [](const DbErrorRule& r, int c) { return r.code < c; });
  if (it != kRules.end() && it->code == code) return it->fault;
  return kEnvironment;
}

std::string_view to_string(DbFault fault) {
  switch (fault) {
    case kConnection:
      return "connection";
    case kDeadlock:
      return "deadlock";
    case kData:
      return "message data";
    case kEnvironment:
      return "environment";
  }
  return "environment";
}

}  // namespace gateway
