// Whose fault a database error is: the one table that decides what happens to a message when the
// server or the client library reports an error code. Adapters map a code to an exception with
// classify_db_error(); the pipeline and the delivery service act on the exception type:
//
//   kConnection   the session is gone           DbUnavailable  reconnect, back off, retry
//   kDeadlock     rolled back by the server     DbRetryable    retry the transaction soon
//   kData         the message's own data        DbDataError    dead letter (rejected_messages)
//   kEnvironment  anything else, known or not   DbRefused      hold the flow, back off, retry
//
// Only kData releases a message without storing it, and only as a committed dead letter. An
// unknown code is kEnvironment: an error we do not recognise is never the message's fault.
// Pure functions; thread-safe.
#pragma once

#include <span>
#include <string_view>

namespace gateway {

enum class DbFault { kConnection, kDeadlock, kData, kEnvironment };

struct DbErrorRule {
  int code;
  DbFault fault;
  std::string_view name;  // the server's symbol, e.g. ER_OPTION_PREVENTS_STATEMENT
};

// The known codes (MariaDB and MySQL), for documentation and tests. Client errors 2000-2999 are
// one range rule in classify_db_error(), not rows.
std::span<const DbErrorRule> db_error_table();

DbFault classify_db_error(int code);

std::string_view to_string(DbFault fault);

}  // namespace gateway
