#include "mysql_session.h"

#include <cppconn/driver.h>
#include <cppconn/statement.h>

#include <algorithm>
#include <map>
#include <sstream>
#include <vector>

#include "gateway/adapters/mysql_driver.h"
#include "gateway/db_error_class.h"
#include "gateway/errors.h"
#include "gateway/metrics.h"

namespace gateway {
namespace {

// Kept free in every packet for the protocol's own header and the statement id.
constexpr std::size_t kPacketHeadroomBytes = 4096;
// wsrep_local_state of a Galera node that is in the cluster and up to date.
constexpr int kWsrepSynced = 4;

// What a node that just accepted the connection says about itself.
struct NodeFacts {
  std::string name;  // wsrep_node_name on a Galera node, else hostname
  std::size_t max_allowed_packet = 0;
  std::string not_ready;  // why it does not take writes; empty when it does
};

std::map<std::string, std::string> name_values(sql::Statement& st, const char* query) {
  std::map<std::string, std::string> out;
  std::unique_ptr<sql::ResultSet> rs(st.executeQuery(query));
  while (rs->next()) out[std::string(rs->getString(1))] = std::string(rs->getString(2));
  return out;
}

// One round trip on any server, two on a Galera node (wsrep_on, a MariaDB variable: MySQL and
// a MariaDB without a provider report wsrep_ready OFF or nothing, and are not Galera nodes).
NodeFacts inspect(sql::Statement& st) {
  auto vars = name_values(st,
                          "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('max_allowed_packet', "
                          "'read_only', 'wsrep_on', 'wsrep_node_name', "
                          "'wsrep_reject_queries', 'hostname')");
  NodeFacts facts;
  try {
    facts.max_allowed_packet = std::stoull(vars["max_allowed_packet"]);
  } catch (const std::exception&) {
    facts.max_allowed_packet = 0;  // keep the default budget
  }
  std::vector<std::string> why;
  if (vars["wsrep_on"] == "ON") {
    facts.name = vars["wsrep_node_name"];
    auto status = name_values(st,
                              "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', "
                              "'wsrep_local_state', 'wsrep_local_state_comment', "
                              "'wsrep_cluster_status')");
    if (status["wsrep_ready"] != "ON") why.push_back("wsrep_ready=" + status["wsrep_ready"]);
    if (status["wsrep_cluster_status"] != "Primary") {
      why.push_back("wsrep_cluster_status=" + status["wsrep_cluster_status"]);
    }
    if (status["wsrep_local_state"] != std::to_string(kWsrepSynced)) {
      why.push_back("wsrep_local_state=" + status["wsrep_local_state"] + " (" +
                    status["wsrep_local_state_comment"] + "), not Synced");
    }
    // Maintenance: the node answers SHOW and SET but refuses queries on tables with 1047.
    if (const std::string& reject = vars["wsrep_reject_queries"];
        !reject.empty() && reject != "NONE") {
      why.push_back("wsrep_reject_queries=" + reject);
    }
  } else {
    facts.name = vars["hostname"];
  }
  if (vars["read_only"] == "ON") why.emplace_back("read_only=ON");
  for (const std::string& w : why) facts.not_ready += (facts.not_ready.empty() ? "" : ", ") + w;
  return facts;
}

// DB_SSL_MODE as Connector/C++ 1.1.12 options. Debian builds it on MariaDB Connector/C 3.3, where
// "OPT_SSL_MODE" is accepted and silently does nothing (measured: OPT_SSL_MODE=SSL_MODE_REQUIRED
// connects in clear text). What works there: "sslEnforce" asks for TLS but falls back to clear
// text when the server does not offer it; "sslCA" makes the library check the certificate chain
// (also falling back to clear text without TLS); "sslVerify" checks the chain (against sslCA,
// else the system's trust store) and the host name, and refuses a server without TLS. So
// required and verify-ca are completed by tls_of() after the connect.
void set_tls_options(sql::ConnectOptionsMap& o, const Settings& s) {
  if (s.db_ssl_mode == DbSslMode::kDisabled) return;
  o["sslEnforce"] = true;
  if (!s.db_ssl_ca.empty()) o["sslCA"] = sql::SQLString(s.db_ssl_ca);
  if (!s.db_ssl_cert.empty()) o["sslCert"] = sql::SQLString(s.db_ssl_cert);
  if (!s.db_ssl_key.empty()) o["sslKey"] = sql::SQLString(s.db_ssl_key);
  if (s.db_ssl_mode == DbSslMode::kVerifyIdentity) o["sslVerify"] = true;
}

// "TLSv1.3 TLS_AES_256_GCM_SHA384" for an encrypted connection, "" for clear text: what the
// server says of this session.
std::string tls_of(sql::Statement& st) {
  auto status =
      name_values(st, "SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')");
  if (status["Ssl_cipher"].empty()) return {};
  return status["Ssl_version"] + " " + status["Ssl_cipher"];
}

// Connector/C++ 1.1.12's Connection::commit() drops the server's answer to COMMIT: a transaction
// the server rolled back at COMMIT (a Galera certification failure, 1213) or whose connection was
// lost before it reports success, and its messages would be released from the spool as stored.
// This connection sends COMMIT as a statement, whose errors are reported (sql::SQLException,
// classified by the callers as always); everything else goes to the driver's connection as is.
class CheckedCommitConnection final : public sql::Connection {
 public:
  explicit CheckedCommitConnection(sql::Connection* c) : c_(c) {}

  void commit() override {
    if (!commit_) commit_.reset(c_->createStatement());
    commit_->execute("COMMIT");
  }

  void clearWarnings() override { c_->clearWarnings(); }
  sql::Statement* createStatement() override { return c_->createStatement(); }
  void close() override {
    commit_.reset();
    c_->close();
  }
  bool getAutoCommit() override { return c_->getAutoCommit(); }
  sql::SQLString getCatalog() override { return c_->getCatalog(); }
  sql::Driver* getDriver() override { return c_->getDriver(); }
  sql::SQLString getSchema() override { return c_->getSchema(); }
  sql::SQLString getClientInfo() override { return c_->getClientInfo(); }
  void getClientOption(const sql::SQLString& name, void* value) override {
    c_->getClientOption(name, value);
  }
  sql::SQLString getClientOption(const sql::SQLString& name) override {
    return c_->getClientOption(name);
  }
  sql::DatabaseMetaData* getMetaData() override { return c_->getMetaData(); }
  sql::enum_transaction_isolation getTransactionIsolation() override {
    return c_->getTransactionIsolation();
  }
  const sql::SQLWarning* getWarnings() override { return c_->getWarnings(); }
  bool isClosed() override { return c_->isClosed(); }
  bool isReadOnly() override { return c_->isReadOnly(); }
  bool isValid() override { return c_->isValid(); }
  bool reconnect() override { return c_->reconnect(); }
  sql::SQLString nativeSQL(const sql::SQLString& sql) override { return c_->nativeSQL(sql); }
  sql::PreparedStatement* prepareStatement(const sql::SQLString& sql) override {
    return c_->prepareStatement(sql);
  }
  sql::PreparedStatement* prepareStatement(const sql::SQLString& sql, int keys) override {
    return c_->prepareStatement(sql, keys);
  }
  sql::PreparedStatement* prepareStatement(const sql::SQLString& sql, int* columns) override {
    return c_->prepareStatement(sql, columns);
  }
  sql::PreparedStatement* prepareStatement(const sql::SQLString& sql, int type,
                                           int concurrency) override {
    return c_->prepareStatement(sql, type, concurrency);
  }
  sql::PreparedStatement* prepareStatement(const sql::SQLString& sql, int type, int concurrency,
                                           int holdability) override {
    return c_->prepareStatement(sql, type, concurrency, holdability);
  }
  sql::PreparedStatement* prepareStatement(const sql::SQLString& sql,
                                           sql::SQLString columns[]) override {
    return c_->prepareStatement(sql, columns);
  }
  void releaseSavepoint(sql::Savepoint* savepoint) override { c_->releaseSavepoint(savepoint); }
  void rollback() override { c_->rollback(); }
  void rollback(sql::Savepoint* savepoint) override { c_->rollback(savepoint); }
  void setAutoCommit(bool on) override { c_->setAutoCommit(on); }
  void setCatalog(const sql::SQLString& catalog) override { c_->setCatalog(catalog); }
  void setSchema(const sql::SQLString& schema) override { c_->setSchema(schema); }
  sql::Connection* setClientOption(const sql::SQLString& name, const void* value) override {
    c_->setClientOption(name, value);
    return this;
  }
  sql::Connection* setClientOption(const sql::SQLString& name,
                                   const sql::SQLString& value) override {
    c_->setClientOption(name, value);
    return this;
  }
  void setHoldability(int holdability) override { c_->setHoldability(holdability); }
  void setReadOnly(bool read_only) override { c_->setReadOnly(read_only); }
  sql::Savepoint* setSavepoint() override { return c_->setSavepoint(); }
  sql::Savepoint* setSavepoint(const sql::SQLString& name) override {
    return c_->setSavepoint(name);
  }
  void setTransactionIsolation(sql::enum_transaction_isolation level) override {
    c_->setTransactionIsolation(level);
  }

 private:
  std::unique_ptr<sql::Connection> c_;
  std::unique_ptr<sql::Statement> commit_;  // destroyed before c_ (declared after it)
};

// The nodes in the order to try them: the node the process's last connection reached first (so
// that all connections stay on one node, the safe Galera mode), then DB_HOST's order.
std::vector<DbNode> connect_order(const Settings& settings, const DatabaseNode& reached) {
  std::vector<DbNode> nodes = settings.db_nodes();
  const std::string last = reached.address();
  const auto it = std::find_if(nodes.begin(), nodes.end(),
                               [&](const DbNode& n) { return n.address() == last; });
  if (it != nodes.end()) std::rotate(nodes.begin(), it, it + 1);
  return nodes;
}

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

MySqlSession::MySqlSession(const Settings& settings, std::shared_ptr<DatabaseNode> node)
    : node_(node ? std::move(node) : std::make_shared<DatabaseNode>()) {
  const std::vector<DbNode> nodes = connect_order(settings, *node_);
  // With one node there is nowhere else to go: it is taken as it is, and a server that does not
  // take writes refuses them itself (read-only: the flows are held; reads still work).
  const bool choose = nodes.size() > 1;
  std::string tried;  // "address: why; ..." of the nodes passed over
  bool answered = false;
  int last_code = 0;
  for (const DbNode& node : nodes) {
    try {
      if (std::string why = connect(settings, node, choose); !why.empty()) {
        tried +=
            (tried.empty() ? "" : "; ") + node.address() + ": not ready for writes (" + why + ")";
        answered = true;
        continue;
      }
      return;
    } catch (const sql::SQLException& e) {
      conn_.reset();
      if (!choose) {
        std::ostringstream where;
        where << "database " << settings.db_name << " at " << node.address() << " as "
              << settings.db_user;
        // MariaDB refuses a clear-text login under require_secure_transport=ON with the same
        // 1045 as a wrong password.
        if (settings.db_ssl_mode == DbSslMode::kDisabled && e.getErrorCode() == 1045) {
          where << " in clear text (DB_SSL_MODE=disabled; a server with "
                   "require_secure_transport=ON refuses that as access denied)";
        }
        rethrow(e, where.str());
      }
      last_code = e.getErrorCode();
      // 1047: a Galera node that is not ready (not in the primary component, or rejecting
      // queries) answers every statement so; it is down for writes like any refusal here.
      if (classify_db_error(last_code) != DbFault::kConnection) answered = true;
      tried += (tried.empty() ? "" : "; ") + node.address() + ": " + e.what() + " (MySQL error " +
               std::to_string(last_code) + ")";
    }
  }
  const std::string message = "database " + settings.db_name + " as " + settings.db_user +
                              ": no node of DB_HOST takes writes (" + tried + ")";
  // Some node answered but refused: the cluster is there and refuses writes (held, like a
  // read-only server). None answered: an outage.
  if (answered) throw DbRefused(message, last_code);
  throw DbUnavailable(message, last_code);
}

std::string MySqlSession::connect(const Settings& settings, const DbNode& node, bool choose) {
  sql::ConnectOptionsMap o;
  o["hostName"] = sql::SQLString("tcp://" + node.address());
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
  set_tls_options(o, settings);
  conn_ = std::make_unique<CheckedCommitConnection>(get_driver_instance()->connect(o));
  std::unique_ptr<sql::Statement> st(conn_->createStatement());
  const std::string tls = tls_of(*st);
  if (tls.empty() && settings.db_ssl_mode != DbSslMode::kDisabled &&
      settings.db_ssl_mode != DbSslMode::kPreferred) {
    st.reset();
    conn_.reset();
    // 2026 (CR_SSL_CONNECTION_ERROR), the code the library gives its own TLS failures.
    throw sql::SQLException(
        "TLS/SSL error: DB_SSL_MODE=" + std::string(to_string(settings.db_ssl_mode)) +
            " but the server does not offer TLS (the connection would be clear text)",
        "HY000", 2026);
  }
  const NodeFacts facts = inspect(*st);
  if (choose && !facts.not_ready.empty()) {
    conn_.reset();
    return facts.not_ready;
  }
  st->execute("SET SESSION innodb_lock_wait_timeout = 20");
  // Date-times the gateway writes (STORE_TABLE's $received_at and ISO 8601 values) are UTC;
  // TIMESTAMP columns read them in the session's zone.
  st->execute("SET SESSION time_zone = '+00:00'");
  // READ COMMITTED: no gap locks between workers inserting rows of different flows.
  st->execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
  if (const std::size_t max = facts.max_allowed_packet; max > 0) {
    packet_budget_ = max > 2 * kPacketHeadroomBytes ? max - kPacketHeadroomBytes : max / 2;
  }
  conn_->setAutoCommit(false);
  node_->reached(node.address(), facts.name, tls);
  return {};
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

void MySqlSession::execute(const std::string& sql) {
  if (!text_) text_.reset(conn_->createStatement());
  text_->execute(sql);
}

void MySqlSession::rollback_quietly() noexcept {
  try {
    conn_->rollback();
  } catch (const sql::SQLException&) {
    // The connection is already broken; the server rolls back when it notices.
  }
}

}  // namespace gateway
