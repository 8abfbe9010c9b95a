// The exception hierarchy. Expected outcomes of one message (a schema failure, an HTTP 500) are
// values, not exceptions; these are for infrastructure failures and bad settings.
//
// Database errors carry whose fault they are (see db_error_class.h, the one table that decides):
// only DbDataError is the message's fault. Every other error, including any exception nobody
// listed, is the environment's: the message is held and retried, never dropped.
#pragma once

#include <stdexcept>
#include <string>

namespace gateway {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A setting is missing or malformed; start-up stops with this one-line message.
struct ConfigError : Error {
  using Error::Error;
};

// A database error with the server's or client's error code (0 when there is none).
struct DbError : Error {
  explicit DbError(const std::string& what, int code = 0) : Error(what), code(code) {}
  int code;
};

// The database connection is gone (client errors 2000-2999, server shutdown, killed): drop the
// connection, reconnect with backoff, retry.
struct DbUnavailable : DbError {
  using DbError::DbError;
};

// Deadlock: the server rolled the transaction back; retry it soon.
struct DbRetryable : DbError {
  using DbError::DbError;
};

// The server refused the statement for a reason that is not the message's (read-only, disk or
// table full, access denied, lock wait timeout, missing table, unknown error): hold the flow's
// messages, back off, retry until it works.
struct DbRefused : DbError {
  using DbError::DbError;
};

// The server refused the data of this statement's rows (out of range, too long, incorrect value,
// invalid JSON, CHECK constraint, duplicate key): the message's fault; it becomes a dead letter.
struct DbDataError : DbError {
  using DbError::DbError;
};

// A message the flow cannot take (schema failure, missing endpoint_url, failed POST): thrown
// only by the reference-shaped process_flow_message(); the batch path reports it as a value.
struct MessageRejected : Error {
  using Error::Error;
};

// The spool directory cannot be used (permissions, disk full).
struct SpoolError : Error {
  using Error::Error;
};

}  // namespace gateway
