// Values written into SQL text (the adapters' text-protocol INSERTs, mysql_session.h). Pure
// functions, thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace gateway {

// Appends `s` as an SQL string literal that means exactly these bytes under any sql_mode (with
// or without NO_BACKSLASH_ESCAPES, ANSI_QUOTES) and any client character set: printable ASCII
// without a backslash goes in single quotes (a quote doubled); anything else, as a hex literal
// (X'...'), whose bytes the server checks against the column's character set as it checks a
// bound value (so invalid UTF-8 is refused the same way).
void append_sql_string(std::string& sql, std::string_view s);
void append_sql_int(std::string& sql, std::int64_t v);

}  // namespace gateway
