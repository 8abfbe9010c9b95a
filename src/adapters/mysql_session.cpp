#include "mysql_session.h"

#include <cppconn/driver.h>
#include <cppconn/statement.h>

#include <sstream>

#include "gateway/adapters/mysql_driver.h"
#include "gateway/db_error_class.h"
#include "gateway/errors.h"

namespace gateway {
namespace {

// Kept free in every packet for the protocol's own header and the statement id.
constexpr std::size_t kPacketHeadroomBytes = 4096;

}  // namespace

void mysql_global_init() { (void)get_driver_instance(); }

MySqlThreadScope::MySqlThreadScope() { get_driver_instance()->threadInit(); }
MySqlThreadScope::~MySqlThreadScope() { get_driver_instance()->threadEnd(); }

[[noreturn]] void rethrow(const sql::SQLException& e, std::string_view what) {
  const int code = e.getErrorCode();
  std::ostringstream msg;
  msg << what << ": " << e.what() << " (MySQL error " << code << ")";
  switch (classify_db_error(code)) {
    case DbFault::kConnection:
      throw DbUnavailable(msg.str(), code);
    case DbFault::kDeadlock:
      throw DbRetryable(msg.str(), code);
    case DbFault::kData:
      throw DbDataError(msg.str(), code);
    case DbFault::kEnvironment:
      break;
  }
  throw DbRefused(msg.str(), code);
}

std::optional<std::string> nullable_string(sql::ResultSet& rs, int column) {
  if (rs.isNull(column)) return std::nullopt;
  return std::string(rs.getString(column));
}

std::string_view utf8_prefix(std::string_view s, std::size_t max) {
  if (s.size() <= max) return s;
  std::size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

std::string repeated_rows(const char* prefix, const char* row, std::size_t n, const char* suffix) {
  std::string sql = prefix;
  for (std::size_t i = 0; i < n; ++i) {
    if (i) sql += ',';
    sql += row;
  }
  return sql + suffix;
}

MySqlSession::MySqlSession(const Settings& settings) {
  sql::ConnectOptionsMap o;
  o["hostName"] =
      sql::SQLString("tcp://" + settings.db_host + ":" + std::to_string(settings.db_port));
  o["userName"] = sql::SQLString(settings.db_user);
  o["password"] = sql::SQLString(settings.db_password.reveal());
  o["schema"] = sql::SQLString(settings.db_name);
  o["OPT_CONNECT_TIMEOUT"] = settings.db_connect_timeout_seconds;
  // Longer than the session's lock wait timeout below, so a lock wait surfaces as 1205, not as
  // a dead connection.
  o["OPT_READ_TIMEOUT"] = 60;
  o["OPT_WRITE_TIMEOUT"] = 60;
  o["OPT_RECONNECT"] = false;  // a silent reconnect would continue a transaction in autocommit
  o["OPT_CHARSET_NAME"] = sql::SQLString("utf8mb4");
  try {
    conn_.reset(get_driver_instance()->connect(o));
    std::unique_ptr<sql::Statement> st(conn_->createStatement());
    st->execute("SET SESSION innodb_lock_wait_timeout = 20");
    // READ COMMITTED: no gap locks between workers inserting rows of different flows.
    st->execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
    {
      std::unique_ptr<sql::ResultSet> rs(st->executeQuery("SELECT @@max_allowed_packet"));
      if (rs->next()) {
        const auto max = static_cast<std::size_t>(rs->getUInt64(1));
        packet_budget_ = max > 2 * kPacketHeadroomBytes ? max - kPacketHeadroomBytes : max / 2;
      }
    }
    conn_->setAutoCommit(false);
  } catch (const sql::SQLException& e) {
    std::ostringstream where;
    where << "database " << settings.db_name << " at " << settings.db_host << ":"
          << settings.db_port << " as " << settings.db_user;
    rethrow(e, where.str());
  }
}

sql::PreparedStatement& MySqlSession::prepare(const std::string& sql) {
  auto it = statements_.find(sql);
  if (it == statements_.end()) {
    it = statements_
             .emplace(sql, std::unique_ptr<sql::PreparedStatement>(conn_->prepareStatement(sql)))
             .first;
  }
  return *it->second;
}

sql::PreparedStatement& MySqlSession::prepare_rows(const char* prefix, const char* row,
                                                   std::size_t n, const char* suffix) {
  return prepare_sized(prefix, n, [&] { return repeated_rows(prefix, row, n, suffix); });
}

void MySqlSession::rollback_quietly() noexcept {
  try {
    conn_->rollback();
  } catch (const sql::SQLException&) {
    // The connection is already broken; the server rolls back when it notices.
  }
}

}  // namespace gateway
