// One MySQL/MariaDB connection as the adapters use it: connected from Settings, in READ
// COMMITTED without autocommit, with its prepared statements cached, and the helpers every
// adapter needs (errors classified by db_error_class.h, NULL columns, UTF-8 cuts). Internal to
// src/adapters/mysql_*.cpp: the only files that include <cppconn/...>. Not thread-safe.
#pragma once

#include <cppconn/connection.h>
#include <cppconn/exception.h>
#include <cppconn/prepared_statement.h>
#include <cppconn/resultset.h>
#include <cppconn/statement.h>

#include <array>
#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "gateway/adapters/sql_literal.h"
#include "gateway/database_node.h"
#include "gateway/errors.h"
#include "gateway/settings.h"

namespace gateway {

// DB_HOST may list several nodes (a Galera cluster): the safe Galera mode. Every connection goes
// to one node that takes writes: the node the gateway's last connection reached (its
// DatabaseNode) if it still does, else the first in DB_HOST's order. So all of a
// gateway's writes go to one node: on Galera, SELECT ... FOR UPDATE locks the flow row only on
// the node that runs it, and two nodes writing the same flow both commit locally and one of them
// fails certification at COMMIT (1213, retried whole). A node counts as down for writes when it
// cannot be reached, refuses the login or any statement (1047: not in the primary component), or
// answers but says it is not ready: wsrep_ready OFF, wsrep_cluster_status not Primary,
// wsrep_local_state not Synced (4), wsrep_reject_queries set, or read_only ON. It does not move
// back to an earlier node by itself when that one returns: moving would split the writes while
// the connections follow.
class MySqlSession {
 public:
  // Connects at once, as above, and reads the server's max_allowed_packet. With one node, that
  // node as it is (a read-only server refuses the writes itself). Throws DbUnavailable when no
  // node can be reached, DbRefused when one answered but none takes writes or for a refused
  // login or missing database (the message names every node tried and why, the database and
  // the user, never the password). TLS as DB_SSL_MODE says: a connection that mode does not
  // allow (no TLS, a certificate that does not verify) fails like an unreachable node (2026);
  // the DatabaseNode records its TLS protocol and cipher. `node`: the gateway's (see above);
  // null: a node of its own.
  MySqlSession(const Settings& settings, std::shared_ptr<DatabaseNode> node);
  MySqlSession(const MySqlSession&) = delete;
  MySqlSession& operator=(const MySqlSession&) = delete;

  // The connection. Its commit() sends COMMIT as a statement: Connector/C++ 1.1's own commit()
  // reports success for a COMMIT the server refused (a Galera certification failure) or never
  // got (connection lost), and the messages would be released as stored.
  sql::Connection& conn() { return *conn_; }
  // The most bytes of bound values one statement may carry: the server's max_allowed_packet (read
  // at connect) less headroom. A larger packet would make the server drop the connection, and the
  // retry would fail the same way forever.
  std::size_t packet_budget() const { return packet_budget_; }

  // The statement for `sql`, prepared once per session.
  sql::PreparedStatement& prepare(const std::string& sql);
  // prefix + n times `row` joined by commas + suffix (multi-row INSERTs, IN lists), prepared once
  // per (prefix, n).
  sql::PreparedStatement& prepare_rows(const char* prefix, const char* row, std::size_t n,
                                       const char* suffix = "");
  // The statement for n items, known by `key` (a constant's address) and n; built once.
  template <typename Build>
  sql::PreparedStatement& prepare_sized(const char* key, std::size_t n, Build build) {
    auto& slot = sized_[{key, n}];
    if (!slot) slot.reset(conn_->prepareStatement(build()));
    return *slot;
  }

  // The statement for n items, known by `key` (a statement head built at run time) and n.
  template <typename Build>
  sql::PreparedStatement& prepare_keyed(const std::string& key, std::size_t n, Build build) {
    auto& slot = keyed_[{key, n}];
    if (!slot) slot.reset(conn_->prepareStatement(build()));
    return *slot;
  }

  // Runs `sql` as a text-protocol statement without a result (insert_text_rows()). Throws
  // sql::SQLException.
  void execute(const std::string& sql);
  // An empty buffer to build a statement in; the same one every time, so that its capacity is
  // kept between statements. Valid until the next call.
  std::string& sql_buffer() {
    sql_buffer_.clear();
    return sql_buffer_;
  }

  // Ends the transaction; a broken connection is left for the server to roll back.
  void rollback_quietly() noexcept;

 private:
  // Connects to `node` and sets the session up. With `choose`, a node not ready for writes is
  // closed again and the reason returned; "" when connected. Throws sql::SQLException.
  std::string connect(const Settings& settings, const DbNode& node, bool choose);

  const std::shared_ptr<DatabaseNode> node_;
  std::unique_ptr<sql::Connection> conn_;
  std::size_t packet_budget_ = 1u << 20;
  std::map<std::string, std::unique_ptr<sql::PreparedStatement>, std::less<>> statements_;
  std::map<std::pair<const char*, std::size_t>, std::unique_ptr<sql::PreparedStatement>> sized_;
  std::map<std::pair<std::string, std::size_t>, std::unique_ptr<sql::PreparedStatement>> keyed_;
  std::unique_ptr<sql::Statement> text_;  // execute()'s, made at its first use
  std::string sql_buffer_;
};

// Turns a driver error into the exception that tells the caller whose fault it is
// (db_error_class.h has the table): DbUnavailable, DbRetryable, DbDataError or DbRefused.
[[noreturn]] void rethrow(const sql::SQLException& e, std::string_view what);

std::optional<std::string> nullable_string(sql::ResultSet& rs, int column);

// At most `max` bytes of `s`, cut at a UTF-8 character boundary (VARCHAR limits count
// characters, but a cut inside a character would be refused as invalid).
std::string_view utf8_prefix(std::string_view s, std::size_t max);

std::string repeated_rows(const char* prefix, const char* row, std::size_t n,
                          const char* suffix = "");

// Multi-row INSERTs go out in chunks of these sizes so that a handful of prepared statements
// serve every batch size.
inline constexpr std::array<std::size_t, 7> kChunkSizes = {1024, 256, 64, 16, 4, 2, 1};
// What a bound row costs in an execute packet besides its values (types, length prefixes), with
// room to spare.
inline constexpr std::size_t kRowOverheadBytes = 64;

// The most placeholders one prepared statement may have.
inline constexpr std::size_t kMaxPlaceholders = 65535;

// Multi-row INSERTs: runs of rows that fit one packet (db.packet_budget()) and the placeholder
// limit (`params_per_row` each), each run sent as statements of the kChunkSizes row counts,
// `prepare(n)` giving the statement for n rows (each prepared once). bind(stmt, p, row) binds a
// row from parameter p on; size(row) is its bytes of values. A single row larger than a packet
// is its message's fault: DbDataError. Throws what rethrow() throws, with `what` in the message.
template <typename Row, typename Prepare, typename Bind, typename Size>
void insert_in_chunks(MySqlSession& db, std::span<const Row> rows, Prepare prepare,
                      std::string_view what, Bind bind, Size size, std::size_t params_per_row = 8) {
  const std::size_t max_rows =
      std::min(kChunkSizes.front(), kMaxPlaceholders / std::max<std::size_t>(1, params_per_row));
  try {
    std::size_t done = 0;
    while (done < rows.size()) {
      std::size_t n = 0, bytes = 0;
      while (done + n < rows.size() && n < max_rows) {
        const std::size_t b = size(rows[done + n]) + kRowOverheadBytes;
        if (n == 0 && b > db.packet_budget()) {
          throw DbDataError(std::string(what) + ": a row of " + std::to_string(b) +
                                " bytes does not fit the server's max_allowed_packet",
                            1153);
        }
        if (bytes + b > db.packet_budget()) break;
        bytes += b;
        ++n;
      }
      for (std::size_t chunk : kChunkSizes) {
        while (n >= chunk) {
          sql::PreparedStatement& stmt = prepare(chunk);
          int p = 1;
          for (std::size_t i = done; i < done + chunk; ++i) bind(stmt, p, rows[i]);
          stmt.executeUpdate();
          done += chunk;
          n -= chunk;
        }
      }
    }
  } catch (const sql::SQLException& e) {
    rethrow(e, what);
  }
}

// Multi-row INSERTs in the text protocol (values written with sql_literal.h), for rows of a few
// short values (data_records, deliveries): Connector/C++ copies every bound string twice and
// allocates per parameter, which cost more than the whole statement written out.
// The most rows one text INSERT carries (a bound on the server's parse tree, not on packets).
inline constexpr std::size_t kTextRowsPerStatement = 4096;

// `prefix` (ending in "VALUES "), then the rows, each as append_row(sql, row) writes it (the row
// in parentheses), as many per statement as fit the packet budget and kTextRowsPerStatement. A
// single row larger than a packet is its message's fault: DbDataError. Throws what rethrow()
// throws, with `what` in the message.
template <typename Row, typename Append>
void insert_text_rows(MySqlSession& db, std::span<const Row> rows, std::string_view prefix,
                      std::string_view what, Append append_row) {
  try {
    std::string& sql = db.sql_buffer();
    std::size_t i = 0;
    while (i < rows.size()) {
      sql.assign(prefix);
      for (std::size_t n = 0; i < rows.size() && n < kTextRowsPerStatement; ++n, ++i) {
        const std::size_t before = sql.size();
        if (n > 0) sql += ',';
        append_row(sql, rows[i]);
        if (sql.size() <= db.packet_budget()) continue;
        if (n == 0) {
          throw DbDataError(std::string(what) + ": a row of " +
                                std::to_string(sql.size() - prefix.size()) +
                                " bytes does not fit the server's max_allowed_packet",
                            1153);
        }
        sql.resize(before);  // the row starts the next statement
        break;
      }
      db.execute(sql);
    }
  } catch (const sql::SQLException& e) {
    rethrow(e, what);
  }
}

}  // namespace gateway
