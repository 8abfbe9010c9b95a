// The exception hierarchy. Expected outcomes of one message (a schema failure, an HTTP 500) are
// values, not exceptions; these are for infrastructure failures and bad settings.
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

// The database connection is gone (client errors 2000-2999): reconnect, then retry.
struct DbUnavailable : Error {
  using Error::Error;
};

// Deadlock or lock wait timeout: the transaction was rolled back and may simply be retried.
struct DbRetryable : Error {
  using Error::Error;
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
