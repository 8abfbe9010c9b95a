#include "gateway/adapters/mysql_flow_repository.h"

#include <cppconn/connection.h>
#include <cppconn/datatype.h>
#include <cppconn/driver.h>
#include <cppconn/exception.h>
#include <cppconn/prepared_statement.h>
#include <cppconn/resultset.h>
#include <cppconn/statement.h>

#include <array>
#include <map>
#include <sstream>

#include "gateway/db_error_class.h"
#include "gateway/errors.h"
#include "gateway/hash.h"
#include "schema_sql.h"

namespace gateway {
namespace {

constexpr const char* kLoadServerSql =
    "SELECT id, host, port, username, password, use_tls, ca_file FROM mqtt_servers "
    "WHERE enabled = 1 ORDER BY is_default DESC, id ASC LIMIT 1";
constexpr const char* kLoadFlowsSql =
    "SELECT id, code, topic, action, endpoint_url, payload_schema, last_msg_id, enabled "
    "FROM flows WHERE enabled = 1 ORDER BY id";
constexpr const char* kLockFlowSql =
    "SELECT id, code, topic, action, endpoint_url, payload_schema, last_msg_id, enabled "
    "FROM flows WHERE id = ? FOR UPDATE";
// A plain (non-locking) read: the flow row lock already serialises every writer of this row.
constexpr const char* kOffsetSql =
    "SELECT last_seq FROM spool_offsets WHERE spool_id = ? AND flow_id = ?";
constexpr const char* kAdvanceSql = "UPDATE flows SET last_msg_id = ? WHERE id = ?";
// A group of flows (lock_flows): the same statements for n flows at once, built per n. The lock
// reads the primary key in ascending order, so the rows are locked in id order.
constexpr const char* kLockFlowsPrefix =
    "SELECT id, code, topic, action, endpoint_url, payload_schema, last_msg_id, enabled "
    "FROM flows WHERE id IN (";
constexpr const char* kLockFlowsSuffix = ") ORDER BY id FOR UPDATE";
constexpr const char* kOffsetsPrefix =
    "SELECT flow_id, last_seq FROM spool_offsets WHERE spool_id = ? AND flow_id IN (";
constexpr const char* kAdvanceManyPrefix = "UPDATE flows SET last_msg_id = CASE id ";
constexpr const char* kUpsertOffsetsPrefix =
    "INSERT INTO spool_offsets (spool_id, flow_id, last_seq) VALUES ";
constexpr const char* kUpsertOffsetsSuffix = " ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq)";
constexpr const char* kUpsertOffsetSql =
    "INSERT INTO spool_offsets (spool_id, flow_id, last_seq) VALUES (?, ?, ?) "
    "ON DUPLICATE KEY UPDATE last_seq = VALUES(last_seq)";
constexpr const char* kInsertRecordsPrefix =
    "INSERT INTO data_records (flow_id, msg_id, topic, field_name, field_value) VALUES ";
constexpr const char* kInsertRecordRow = "(?, ?, ?, ?, ?)";
constexpr const char* kInsertDeliveriesPrefix =
    "INSERT INTO deliveries (flow_id, msg_id, topic, payload, created_ms, next_attempt_ms) VALUES ";
constexpr const char* kInsertDeliveryRow = "(?, ?, ?, ?, ?, ?)";
constexpr const char* kInsertRejectedPrefix =
    "INSERT INTO rejected_messages (flow_id, topic, payload, payload_truncated, reason, spool_id, "
    "spool_seq) VALUES ";
constexpr const char* kInsertRejectedRow = "(?, ?, ?, ?, ?, ?, ?)";

// Multi-row INSERTs go out in chunks of these sizes so that a handful of prepared statements
// serve every batch size.
constexpr std::array<std::size_t, 7> kChunkSizes = {1024, 256, 64, 16, 4, 2, 1};
// What a bound row costs in an execute packet besides its values (types, length prefixes), with
// room to spare.
constexpr std::size_t kRowOverheadBytes = 64;
// rejected_messages.reason holds up to 1024 characters: this many bytes at most, and then some.
constexpr std::size_t kReasonBytes = 2048;
// Kept free in every packet for the protocol's own header and the statement id.
constexpr std::size_t kPacketHeadroomBytes = 4096;

// Turns a driver error into the exception that tells the caller whose fault it is
// (db_error_class.h has the table).
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

Flow read_flow(sql::ResultSet& rs) {
  Flow f;
  f.id = rs.getInt64(1);
  f.code = rs.getString(2);
  f.topic = rs.getString(3);
  f.action = rs.getString(4);
  f.endpoint_url = nullable_string(rs, 5);
  f.payload_schema = nullable_string(rs, 6);
  f.last_msg_id = rs.getInt64(7);
  f.enabled = rs.getInt(8) != 0;
  return f;
}

// At most `max` bytes of `s`, cut at a UTF-8 character boundary (VARCHAR limits count
// characters, but a cut inside a character would be refused as invalid).
std::string_view utf8_prefix(std::string_view s, std::size_t max) {
  if (s.size() <= max) return s;
  std::size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

std::string repeated_rows(const char* prefix, const char* row, std::size_t n,
                          const char* suffix = "") {
  std::string sql = prefix;
  for (std::size_t i = 0; i < n; ++i) {
    if (i) sql += ',';
    sql += row;
  }
  return sql + suffix;
}

}  // namespace

const char* builtin_schema_sql() { return kSchemaSql; }

void mysql_global_init() { (void)get_driver_instance(); }

MySqlThreadScope::MySqlThreadScope() { get_driver_instance()->threadInit(); }
MySqlThreadScope::~MySqlThreadScope() { get_driver_instance()->threadEnd(); }

struct MySqlFlowRepository::Impl {
  std::unique_ptr<sql::Connection> conn;
  // The most bytes of bound values one statement may carry: the server's max_allowed_packet (read
  // at connect) less headroom. A larger packet would make the server drop the connection, and the
  // retry would fail the same way forever.
  std::size_t packet_budget = 1u << 20;
  std::map<std::string, std::unique_ptr<sql::PreparedStatement>, std::less<>> statements;

  // Multi-row INSERTs by (statement prefix, row count): built and prepared once.
  std::map<std::pair<const char*, std::size_t>, std::unique_ptr<sql::PreparedStatement>> multi;

  sql::PreparedStatement& prepare_rows(const char* prefix, const char* row, std::size_t n,
                                       const char* suffix = "") {
    return prepare_sized(prefix, n, [&] { return repeated_rows(prefix, row, n, suffix); });
  }

  // The statement for n items, known by `key` (a constant's address) and n; built once.
  template <typename Build>
  sql::PreparedStatement& prepare_sized(const char* key, std::size_t n, Build build) {
    auto& slot = multi[{key, n}];
    if (!slot) slot.reset(conn->prepareStatement(build()));
    return *slot;
  }

  // The spool offset of a flow (0 if none). Throws sql::SQLException.
  std::uint64_t committed_seq(std::int64_t flow_id, std::string_view spool_id) {
    if (spool_id.empty()) return 0;
    auto& off = prepare(kOffsetSql);
    off.setString(1, sql::SQLString(spool_id.data(), spool_id.size()));
    off.setInt64(2, flow_id);
    std::unique_ptr<sql::ResultSet> o(off.executeQuery());
    return o->next() ? static_cast<std::uint64_t>(o->getInt64(1)) : 0;
  }

  sql::PreparedStatement& prepare(const std::string& sql) {
    auto it = statements.find(sql);
    if (it == statements.end()) {
      it = statements
               .emplace(sql, std::unique_ptr<sql::PreparedStatement>(conn->prepareStatement(sql)))
               .first;
    }
    return *it->second;
  }
};

namespace {

// Rolls back unless committed; a broken connection is left for the server to roll back.
void rollback_quietly(sql::Connection& conn) {
  try {
    conn.rollback();
  } catch (const sql::SQLException&) {
    // The connection is already broken; the server rolls back when it notices.
  }
}

// Multi-row INSERTs: runs of rows that fit one packet (db.packet_budget), each run sent as
// statements of the kChunkSizes row counts, each statement prepared once. A single row larger
// than a packet is its message's fault: DbDataError.
template <typename Row, typename Bind, typename Size>
void insert_in_chunks(MySqlFlowRepository::Impl& db, std::span<const Row> rows, const char* prefix,
                      const char* row_sql, std::string_view what, Bind bind, Size size) {
  try {
    std::size_t done = 0;
    while (done < rows.size()) {
      std::size_t n = 0, bytes = 0;
      while (done + n < rows.size() && n < kChunkSizes.front()) {
        const std::size_t b = size(rows[done + n]) + kRowOverheadBytes;
        if (n == 0 && b > db.packet_budget) {
          throw DbDataError(std::string(what) + ": a row of " + std::to_string(b) +
                                " bytes does not fit the server's max_allowed_packet",
                            1153);
        }
        if (bytes + b > db.packet_budget) break;
        bytes += b;
        ++n;
      }
      for (std::size_t chunk : kChunkSizes) {
        while (n >= chunk) {
          auto& stmt = db.prepare_rows(prefix, row_sql, chunk);
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

void bind_record(sql::PreparedStatement& stmt, int& p, std::int64_t flow_id, const DataRecord& r) {
  stmt.setInt64(p++, flow_id);
  stmt.setInt64(p++, r.msg_id);
  stmt.setString(p++, sql::SQLString(r.topic.data(), r.topic.size()));
  stmt.setString(p++, sql::SQLString(r.field_name.data(), r.field_name.size()));
  stmt.setString(p++, r.field_value);
}

std::size_t record_size(const DataRecord& r) {
  return r.topic.size() + r.field_name.size() + r.field_value.size();
}

// What the flows of a group transaction write at its commit: their data_records rows, new
// last_msg_ids and spool offsets, each as one statement for the whole group instead of one per
// flow.
struct GroupWrites {
  struct Record {
    std::int64_t flow_id;
    DataRecord row;
  };
  std::vector<Record> records;
  std::vector<std::pair<std::int64_t, std::int64_t>> msg_ids;  // (flow id, last_msg_id)
  std::vector<std::pair<std::int64_t, std::uint64_t>> seqs;    // (flow id, last spool seq)
};

class MySqlFlowTransaction final : public FlowTransaction {
 public:
  // With `group`, the transaction is a group's (MySqlFlowGroup): records and advance() are
  // collected there, and the group commits or rolls back.
  MySqlFlowTransaction(MySqlFlowRepository::Impl& db, Flow flow, std::uint64_t committed_seq,
                       std::string spool_id, GroupWrites* group = nullptr)
      : db_(db),
        flow_(std::move(flow)),
        committed_seq_(committed_seq),
        spool_id_(std::move(spool_id)),
        group_(group) {}

  ~MySqlFlowTransaction() override {
    if (!committed_ && !group_) rollback_quietly(*db_.conn);
  }

  const Flow& flow() const override { return flow_; }
  std::uint64_t committed_seq() const override { return committed_seq_; }

  void insert_records(std::span<const DataRecord> rows) override {
    if (group_) {
      for (const DataRecord& r : rows) group_->records.push_back({flow_.id, r});
      return;
    }
    insert_in_chunks(
        db_, rows, kInsertRecordsPrefix, kInsertRecordRow, "insert data_records",
        [this](sql::PreparedStatement& stmt, int& p, const DataRecord& r) {
          bind_record(stmt, p, flow_.id, r);
        },
        record_size);
  }

  void insert_deliveries(std::span<const OutboxEntry> rows) override {
    insert_in_chunks(
        db_, rows, kInsertDeliveriesPrefix, kInsertDeliveryRow, "insert deliveries",
        [this](sql::PreparedStatement& stmt, int& p, const OutboxEntry& r) {
          stmt.setInt64(p++, flow_.id);
          stmt.setInt64(p++, r.msg_id);
          stmt.setString(p++, sql::SQLString(r.topic.data(), r.topic.size()));
          stmt.setString(p++, sql::SQLString(r.payload.data(), r.payload.size()));
          stmt.setInt64(p++, r.created_ms);
          stmt.setInt64(p++, r.created_ms);
        },
        [](const OutboxEntry& r) { return r.topic.size() + r.payload.size(); });
  }

  void insert_rejected(std::span<const RejectedMessage> rows) override {
    try {
      for (const RejectedMessage& r : rows) {
        auto& stmt = db_.prepare_rows(kInsertRejectedPrefix, kInsertRejectedRow, 1);
        if (flow_.id == kNoFlow) {
          stmt.setNull(1, sql::DataType::INTEGER);
        } else {
          stmt.setInt64(1, flow_.id);
        }
        const std::string_view topic = utf8_prefix(r.topic, 1024);
        stmt.setString(2, sql::SQLString(topic.data(), topic.size()));
        // Cut further if a dead letter would not fit a packet: it must always be writable.
        const std::string_view payload = r.payload.substr(
            0, db_.packet_budget -
                   std::min(db_.packet_budget, topic.size() + kReasonBytes + kRowOverheadBytes));
        std::istringstream blob{std::string(payload)};
        stmt.setBlob(3, &blob);
        stmt.setInt(4, r.payload_truncated || payload.size() < r.payload.size() ? 1 : 0);
        stmt.setString(5, std::string(utf8_prefix(r.reason, 1024)));
        stmt.setString(6, spool_id_);
        stmt.setInt64(7, static_cast<std::int64_t>(r.spool_seq));
        stmt.executeUpdate();
      }
    } catch (const sql::SQLException& e) {
      rethrow(e, "insert rejected_messages");
    }
  }

  std::optional<std::uint64_t> retained_payload(std::string_view topic) override {
    try {
      auto& stmt = db_.prepare(
          "SELECT payload_hash FROM retained_messages WHERE flow_id = ? AND topic_hash = ?");
      stmt.setInt64(1, flow_.id);
      stmt.setInt64(2, static_cast<std::int64_t>(fnv1a64(topic)));
      std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
      if (!rs->next()) return std::nullopt;
      return static_cast<std::uint64_t>(rs->getInt64(1));
    } catch (const sql::SQLException& e) {
      rethrow(e, "read retained_messages");
    }
  }

  void remember_retained(std::string_view topic, std::uint64_t payload_hash,
                         std::int64_t msg_id) override {
    try {
      auto& stmt = db_.prepare(
          "INSERT INTO retained_messages (flow_id, topic_hash, payload_hash, msg_id, topic) VALUES "
          "(?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE payload_hash = VALUES(payload_hash), msg_id = "
          "VALUES(msg_id), topic = VALUES(topic)");
      stmt.setInt64(1, flow_.id);
      stmt.setInt64(2, static_cast<std::int64_t>(fnv1a64(topic)));
      stmt.setInt64(3, static_cast<std::int64_t>(payload_hash));
      stmt.setInt64(4, msg_id);
      const std::string_view shown = utf8_prefix(topic, 1024);
      stmt.setString(5, sql::SQLString(shown.data(), shown.size()));
      stmt.executeUpdate();
    } catch (const sql::SQLException& e) {
      rethrow(e, "write retained_messages");
    }
  }

  void advance(std::int64_t last_msg_id, std::uint64_t last_seq) override {
    if (group_) {
      if (last_msg_id != flow_.last_msg_id) group_->msg_ids.emplace_back(flow_.id, last_msg_id);
      if (last_seq > 0 && !spool_id_.empty()) group_->seqs.emplace_back(flow_.id, last_seq);
      return;
    }
    try {
      if (last_msg_id != flow_.last_msg_id) {
        auto& upd = db_.prepare(kAdvanceSql);
        upd.setInt64(1, last_msg_id);
        upd.setInt64(2, flow_.id);
        upd.executeUpdate();
      }
      if (last_seq > 0 && !spool_id_.empty()) {
        auto& off = db_.prepare(kUpsertOffsetSql);
        off.setString(1, spool_id_);
        off.setInt64(2, flow_.id);
        off.setInt64(3, static_cast<std::int64_t>(last_seq));
        off.executeUpdate();
      }
    } catch (const sql::SQLException& e) {
      rethrow(e, "advance flow");
    }
  }

  void commit() override {
    try {
      db_.conn->commit();
      committed_ = true;
    } catch (const sql::SQLException& e) {
      rethrow(e, "commit");
    }
  }

 private:
  MySqlFlowRepository::Impl& db_;
  Flow flow_;
  std::uint64_t committed_seq_;
  std::string spool_id_;
  GroupWrites* group_;
  bool committed_ = false;
};

class MySqlFlowGroup final : public FlowGroupTransaction {
 public:
  explicit MySqlFlowGroup(MySqlFlowRepository::Impl& db, std::string spool_id)
      : db_(db), spool_id_(std::move(spool_id)) {}
  ~MySqlFlowGroup() override {
    if (!committed_) rollback_quietly(*db_.conn);
  }

  // Locks the rows of `ids` (ascending) and reads their spool offsets. Throws sql::SQLException.
  void lock(std::span<const std::int64_t> ids) {
    const std::size_t n = ids.size();
    std::map<std::int64_t, Flow> found;
    {
      auto& stmt = db_.prepare_rows(kLockFlowsPrefix, "?", n, kLockFlowsSuffix);
      for (std::size_t i = 0; i < n; ++i) stmt.setInt64(static_cast<int>(i + 1), ids[i]);
      std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
      while (rs->next()) {
        Flow f = read_flow(*rs);
        found.emplace(f.id, std::move(f));
      }
    }
    std::map<std::int64_t, std::uint64_t> seqs;
    if (!spool_id_.empty()) {
      auto& stmt = db_.prepare_rows(kOffsetsPrefix, "?", n, ")");
      stmt.setString(1, spool_id_);
      for (std::size_t i = 0; i < n; ++i) stmt.setInt64(static_cast<int>(i + 2), ids[i]);
      std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
      while (rs->next()) seqs[rs->getInt64(1)] = static_cast<std::uint64_t>(rs->getInt64(2));
    }
    parts_.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      auto it = found.find(ids[i]);
      if (it == found.end()) continue;
      parts_[i] = std::make_unique<MySqlFlowTransaction>(db_, std::move(it->second), seqs[ids[i]],
                                                         spool_id_, &writes_);
    }
  }

  LockedFlow* flow(std::size_t i) override { return parts_.at(i).get(); }

  void commit() override {
    try {
      insert_in_chunks(
          db_, std::span<const GroupWrites::Record>(writes_.records), kInsertRecordsPrefix,
          kInsertRecordRow, "insert data_records",
          [](sql::PreparedStatement& stmt, int& p, const GroupWrites::Record& r) {
            bind_record(stmt, p, r.flow_id, r.row);
          },
          [](const GroupWrites::Record& r) { return record_size(r.row); });
      if (const std::size_t n = writes_.msg_ids.size(); n > 0) {
        auto& stmt = db_.prepare_sized(kAdvanceManyPrefix, n, [n] {
          std::string sql = kAdvanceManyPrefix;
          for (std::size_t i = 0; i < n; ++i) sql += "WHEN ? THEN ? ";
          return repeated_rows((sql + "END WHERE id IN (").c_str(), "?", n, ")");
        });
        int p = 1;
        for (const auto& [id, last] : writes_.msg_ids) {
          stmt.setInt64(p++, id);
          stmt.setInt64(p++, last);
        }
        for (const auto& [id, last] : writes_.msg_ids) stmt.setInt64(p++, id);
        stmt.executeUpdate();
      }
      if (const std::size_t n = writes_.seqs.size(); n > 0) {
        auto& stmt = db_.prepare_rows(kUpsertOffsetsPrefix, "(?, ?, ?)", n, kUpsertOffsetsSuffix);
        int p = 1;
        for (const auto& [id, seq] : writes_.seqs) {
          stmt.setString(p++, spool_id_);
          stmt.setInt64(p++, id);
          stmt.setInt64(p++, static_cast<std::int64_t>(seq));
        }
        stmt.executeUpdate();
      }
      db_.conn->commit();
      committed_ = true;
    } catch (const sql::SQLException& e) {
      rethrow(e, "commit a group of flows");
    }
  }

 private:
  MySqlFlowRepository::Impl& db_;
  std::string spool_id_;
  GroupWrites writes_;
  std::vector<std::unique_ptr<MySqlFlowTransaction>> parts_;
  bool committed_ = false;
};

}  // namespace

MySqlFlowRepository::MySqlFlowRepository(const Settings& settings) : impl_(new Impl) {
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
    impl_->conn.reset(get_driver_instance()->connect(o));
    std::unique_ptr<sql::Statement> st(impl_->conn->createStatement());
    st->execute("SET SESSION innodb_lock_wait_timeout = 20");
    // READ COMMITTED: no gap locks between workers inserting rows of different flows.
    st->execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
    {
      std::unique_ptr<sql::ResultSet> rs(st->executeQuery("SELECT @@max_allowed_packet"));
      if (rs->next()) {
        const auto max = static_cast<std::size_t>(rs->getUInt64(1));
        impl_->packet_budget =
            max > 2 * kPacketHeadroomBytes ? max - kPacketHeadroomBytes : max / 2;
      }
    }
    impl_->conn->setAutoCommit(false);
  } catch (const sql::SQLException& e) {
    std::ostringstream where;
    where << "database " << settings.db_name << " at " << settings.db_host << ":"
          << settings.db_port << " as " << settings.db_user;
    rethrow(e, where.str());
  }
}

MySqlFlowRepository::~MySqlFlowRepository() = default;

std::optional<MqttServer> MySqlFlowRepository::load_mqtt_server() {
  try {
    auto& stmt = impl_->prepare(kLoadServerSql);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::optional<MqttServer> server;
    if (rs->next()) {
      MqttServer s;
      s.id = rs->getInt64(1);
      s.host = rs->getString(2);
      s.port = rs->getInt(3);
      s.username = nullable_string(*rs, 4);
      if (auto pw = nullable_string(*rs, 5)) s.password = Secret(std::move(*pw));
      s.use_tls = rs->getInt(6) != 0;
      s.ca_file = nullable_string(*rs, 7).value_or("");
      server = std::move(s);
    }
    rs.reset();
    impl_->conn->commit();  // end the read transaction: the next reload must see fresh rows
    return server;
  } catch (const sql::SQLException& e) {
    rethrow(e, "load mqtt_servers");
  }
}

std::vector<Flow> MySqlFlowRepository::load_flows() {
  try {
    auto& stmt = impl_->prepare(kLoadFlowsSql);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::vector<Flow> flows;
    while (rs->next()) flows.push_back(read_flow(*rs));
    rs.reset();
    impl_->conn->commit();
    return flows;
  } catch (const sql::SQLException& e) {
    rethrow(e, "load flows");
  }
}

std::unique_ptr<FlowTransaction> MySqlFlowRepository::lock_flow(std::int64_t flow_id,
                                                                std::string_view spool_id) {
  try {
    auto& lock = impl_->prepare(kLockFlowSql);
    lock.setInt64(1, flow_id);
    std::unique_ptr<sql::ResultSet> rs(lock.executeQuery());
    if (!rs->next()) {
      rs.reset();
      impl_->conn->rollback();
      return nullptr;
    }
    Flow flow = read_flow(*rs);
    rs.reset();
    const std::uint64_t committed = impl_->committed_seq(flow_id, spool_id);
    return std::make_unique<MySqlFlowTransaction>(*impl_, std::move(flow), committed,
                                                  std::string(spool_id));
  } catch (const sql::SQLException& e) {
    try {
      impl_->conn->rollback();
    } catch (const sql::SQLException&) {
    }
    rethrow(e, "lock flow " + std::to_string(flow_id));
  }
}

std::unique_ptr<FlowGroupTransaction> MySqlFlowRepository::lock_flows(
    std::span<const std::int64_t> ids, std::string_view spool_id) {
  auto group = std::make_unique<MySqlFlowGroup>(*impl_, std::string(spool_id));
  try {
    group->lock(ids);
    return group;
  } catch (const sql::SQLException& e) {
    rethrow(e, "lock " + std::to_string(ids.size()) + " flows");  // `group` rolls back
  }
}

std::unique_ptr<FlowTransaction> MySqlFlowRepository::begin_unrouted(std::string_view spool_id) {
  try {
    Flow none;
    none.id = kNoFlow;
    none.code = "(no flow)";
    const std::uint64_t committed = impl_->committed_seq(kNoFlow, spool_id);
    return std::make_unique<MySqlFlowTransaction>(*impl_, std::move(none), committed,
                                                  std::string(spool_id));
  } catch (const sql::SQLException& e) {
    try {
      impl_->conn->rollback();
    } catch (const sql::SQLException&) {
    }
    rethrow(e, "begin dead letters without a flow");
  }
}

bool MySqlFlowRepository::ping() {
  try {
    std::unique_ptr<sql::Statement> st(impl_->conn->createStatement());
    std::unique_ptr<sql::ResultSet> rs(st->executeQuery("SELECT 1"));
    impl_->conn->commit();
    return true;
  } catch (const sql::SQLException&) {
    return false;
  }
}

std::uint64_t MySqlFlowRepository::last_committed_seq(std::string_view spool_id) {
  try {
    auto& stmt =
        impl_->prepare("SELECT COALESCE(MAX(last_seq), 0) FROM spool_offsets WHERE spool_id = ?");
    stmt.setString(1, sql::SQLString(spool_id.data(), spool_id.size()));
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    const std::uint64_t seq = rs->next() ? static_cast<std::uint64_t>(rs->getInt64(1)) : 0;
    rs.reset();
    impl_->conn->commit();
    return seq;
  } catch (const sql::SQLException& e) {
    rethrow(e, "read spool offsets");
  }
}

std::vector<DueFlow> MySqlFlowRepository::pending_flows(std::string_view owner) {
  try {
    auto& stmt = impl_->prepare(
        "SELECT d.flow_id, d.next_attempt_ms FROM deliveries d JOIN (SELECT flow_id, MIN(msg_id) "
        "AS head FROM deliveries GROUP BY flow_id) h ON h.flow_id = d.flow_id AND h.head = "
        "d.msg_id LEFT JOIN delivery_leases l ON l.flow_id = d.flow_id WHERE l.flow_id IS NULL "
        "OR l.owner = ? OR l.expires_ms < ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000)");
    stmt.setString(1, sql::SQLString(owner.data(), owner.size()));
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::vector<DueFlow> due;
    while (rs->next()) due.push_back(DueFlow{rs->getInt64(1), rs->getInt64(2)});
    rs.reset();
    impl_->conn->commit();
    return due;
  } catch (const sql::SQLException& e) {
    rethrow(e, "list pending deliveries");
  }
}

bool MySqlFlowRepository::claim(std::int64_t flow_id, std::string_view owner, std::int64_t ttl_ms) {
  try {
    // The assignments run left to right: `owner` is decided first, then the expiry follows the
    // (possibly new) owner.
    auto& upsert = impl_->prepare(
        "INSERT INTO delivery_leases (flow_id, owner, expires_ms) VALUES (?, ?, "
        "ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000) + ?) ON DUPLICATE KEY UPDATE owner = IF(owner = "
        "VALUES(owner) OR expires_ms < ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000), VALUES(owner), "
        "owner), expires_ms = IF(owner = VALUES(owner), VALUES(expires_ms), expires_ms)");
    upsert.setInt64(1, flow_id);
    upsert.setString(2, sql::SQLString(owner.data(), owner.size()));
    upsert.setInt64(3, ttl_ms);
    upsert.executeUpdate();
    auto& holder = impl_->prepare("SELECT owner FROM delivery_leases WHERE flow_id = ?");
    holder.setInt64(1, flow_id);
    std::unique_ptr<sql::ResultSet> rs(holder.executeQuery());
    const bool mine = rs->next() && std::string(rs->getString(1)) == owner;
    rs.reset();
    impl_->conn->commit();
    return mine;
  } catch (const sql::SQLException& e) {
    try {
      impl_->conn->rollback();
    } catch (const sql::SQLException&) {
    }
    rethrow(e, "claim delivery lease");
  }
}

void MySqlFlowRepository::release(std::int64_t flow_id, std::string_view owner) {
  try {
    auto& stmt = impl_->prepare("DELETE FROM delivery_leases WHERE flow_id = ? AND owner = ?");
    stmt.setInt64(1, flow_id);
    stmt.setString(2, sql::SQLString(owner.data(), owner.size()));
    stmt.executeUpdate();
    impl_->conn->commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "release delivery lease");
  }
}

std::optional<DeliveryTarget> MySqlFlowRepository::delivery_target(std::int64_t flow_id) {
  try {
    auto& stmt = impl_->prepare("SELECT code, endpoint_url FROM flows WHERE id = ?");
    stmt.setInt64(1, flow_id);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::optional<DeliveryTarget> target;
    if (rs->next()) target = DeliveryTarget{rs->getString(1), nullable_string(*rs, 2)};
    rs.reset();
    impl_->conn->commit();
    return target;
  } catch (const sql::SQLException& e) {
    rethrow(e, "read delivery target");
  }
}

std::vector<PendingDelivery> MySqlFlowRepository::next_deliveries(std::int64_t flow_id,
                                                                  std::size_t limit) {
  try {
    auto& stmt = impl_->prepare(
        "SELECT msg_id, topic, payload, attempts, created_ms, next_attempt_ms FROM deliveries "
        "WHERE flow_id = ? ORDER BY msg_id LIMIT ?");
    stmt.setInt64(1, flow_id);
    stmt.setInt64(2, static_cast<std::int64_t>(limit));
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::vector<PendingDelivery> out;
    while (rs->next()) {
      PendingDelivery d;
      d.flow_id = flow_id;
      d.msg_id = rs->getInt64(1);
      d.topic = rs->getString(2);
      d.payload = rs->getString(3);
      d.attempts = rs->getInt(4);
      d.created_ms = rs->getInt64(5);
      d.next_attempt_ms = rs->getInt64(6);
      out.push_back(std::move(d));
    }
    rs.reset();
    impl_->conn->commit();
    return out;
  } catch (const sql::SQLException& e) {
    rethrow(e, "read deliveries");
  }
}

void MySqlFlowRepository::delivered(std::int64_t flow_id, std::int64_t first_msg_id,
                                    std::int64_t last_msg_id) {
  try {
    auto& stmt =
        impl_->prepare("DELETE FROM deliveries WHERE flow_id = ? AND msg_id BETWEEN ? AND ?");
    stmt.setInt64(1, flow_id);
    stmt.setInt64(2, first_msg_id);
    stmt.setInt64(3, last_msg_id);
    stmt.executeUpdate();
    impl_->conn->commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "delete delivered");
  }
}

void MySqlFlowRepository::retry_later(const PendingDelivery& d, int status,
                                      std::string_view error) {
  try {
    auto& stmt = impl_->prepare(
        "UPDATE deliveries SET attempts = ?, next_attempt_ms = ?, last_status = ?, last_error = ? "
        "WHERE flow_id = ? AND msg_id = ?");
    stmt.setInt(1, d.attempts);
    stmt.setInt64(2, d.next_attempt_ms);
    stmt.setInt(3, status);
    stmt.setString(4, std::string(utf8_prefix(error, 1024)));
    stmt.setInt64(5, d.flow_id);
    stmt.setInt64(6, d.msg_id);
    stmt.executeUpdate();
    impl_->conn->commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "record delivery attempt");
  }
}

void MySqlFlowRepository::give_up(const PendingDelivery& d, int status, std::string_view reason) {
  try {
    auto& ins = impl_->prepare(
        "INSERT INTO rejected_messages (flow_id, topic, payload, payload_truncated, reason, "
        "msg_id, attempts, last_status) VALUES (?, ?, ?, 0, ?, ?, ?, ?)");
    ins.setInt64(1, d.flow_id);
    ins.setString(2, std::string(utf8_prefix(d.topic, 1024)));
    ins.setString(3, d.payload);
    ins.setString(4, std::string(utf8_prefix(reason, 1024)));
    ins.setInt64(5, d.msg_id);
    ins.setInt(6, d.attempts);
    ins.setInt(7, status);
    ins.executeUpdate();
    auto& del = impl_->prepare("DELETE FROM deliveries WHERE flow_id = ? AND msg_id = ?");
    del.setInt64(1, d.flow_id);
    del.setInt64(2, d.msg_id);
    del.executeUpdate();
    impl_->conn->commit();
  } catch (const sql::SQLException& e) {
    try {
      impl_->conn->rollback();
    } catch (const sql::SQLException&) {
    }
    rethrow(e, "give up delivery");
  }
}

void MySqlFlowRepository::apply_script(std::string_view sql) {
  // Statements end with ';' at the end of a line; comments start with "--". Enough for our DDL.
  std::istringstream in{std::string(sql)};
  std::string line, statement;
  try {
    std::unique_ptr<sql::Statement> st(impl_->conn->createStatement());
    while (std::getline(in, line)) {
      auto first = line.find_first_not_of(" \t");
      if (first == std::string::npos || line.compare(first, 2, "--") == 0) continue;
      statement += line + "\n";
      auto last = line.find_last_not_of(" \t\r");
      if (line[last] == ';') {
        st->execute(statement);
        statement.clear();
      }
    }
    impl_->conn->commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "apply schema");
  }
}

std::vector<std::string> MySqlFlowRepository::upgrade_schema() {
  std::vector<std::string> done;
  try {
    auto& collation = impl_->prepare(
        "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'data_records' AND COLUMN_NAME = 'field_name'");
    std::unique_ptr<sql::ResultSet> rs(collation.executeQuery());
    const bool needs_bin = rs->next() && std::string(rs->getString(1)) != "utf8mb4_nopad_bin";
    rs.reset();
    if (needs_bin) {
      // Copies the table (the unique key changes); done once, by --init-db, not at start-up.
      std::unique_ptr<sql::Statement> st(impl_->conn->createStatement());
      st->execute(
          "ALTER TABLE data_records MODIFY field_name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE "
          "utf8mb4_nopad_bin NOT NULL");
      done.emplace_back("data_records.field_name now compares as bytes (utf8mb4_nopad_bin)");
    }
    impl_->conn->commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "upgrade schema");
  }
  return done;
}

std::vector<std::string> MySqlFlowRepository::missing_tables() {
  static constexpr std::array<const char*, 8> kTables = {
      "mqtt_servers",  "flows",      "data_records",    "rejected_messages",
      "spool_offsets", "deliveries", "delivery_leases", "retained_messages"};
  std::vector<std::string> missing;
  try {
    auto& stmt = impl_->prepare(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND "
        "table_name = ?");
    for (const char* t : kTables) {
      stmt.setString(1, t);
      std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
      if (!rs->next() || rs->getInt(1) == 0) missing.emplace_back(t);
    }
    impl_->conn->commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "check schema");
  }
  return missing;
}

}  // namespace gateway
