#include "gateway/adapters/mysql_flow_repository.h"

#include <cppconn/datatype.h>
#include <cppconn/statement.h>

#include <array>
#include <map>
#include <sstream>

#include "gateway/errors.h"
#include "gateway/hash.h"
#include "mysql_session.h"
#include "mysql_table_rows.h"

namespace gateway {
namespace {

constexpr const char* kLoadServerSql =
    "SELECT id, host, port, username, password, use_tls, ca_file, client_cert_file, "
    "client_key_file, client_key_password_file FROM mqtt_servers "
    "WHERE enabled = 1 ORDER BY is_default DESC, id ASC LIMIT 1";
// Every broker candidate (issue 15, failover), in the same order and columns.
constexpr const char* kLoadServersSql =
    "SELECT id, host, port, username, password, use_tls, ca_file, client_cert_file, "
    "client_key_file, client_key_password_file FROM mqtt_servers "
    "WHERE enabled = 1 ORDER BY is_default DESC, id ASC";
// The flows columns read_flow() reads, in its order: one list for every statement that reads
// flows (a macro, so that the statements stay compile-time constants).
#define GW_FLOW_COLUMNS                                                                         \
  "id, code, topic, action, endpoint_url, payload_schema, last_msg_id, enabled, target_table, " \
  "column_map, write_mode"
// The column after GW_FLOW_COLUMNS (1-based).
constexpr int kAfterFlowColumns = 12;
constexpr const char* kLoadFlowsSql =
    "SELECT " GW_FLOW_COLUMNS " FROM flows WHERE enabled = 1 ORDER BY id";
// The flow row and its spool offset in one round trip (the offset row, when there is one, is
// locked too: only the holder of the flow row writes it anyway).
constexpr const char* kLockFlowSql =
    "SELECT " GW_FLOW_COLUMNS
    ", o.last_seq FROM flows f LEFT JOIN spool_offsets o ON "
    "o.spool_id = ? AND o.flow_id = f.id WHERE f.id = ? FOR UPDATE";
// The spool offset alone, a plain read: for the dead letters of no flow (begin_unrouted), whose
// offset only the pipeline's one kNoFlow batch at a time writes.
constexpr const char* kOffsetSql =
    "SELECT last_seq FROM spool_offsets WHERE spool_id = ? AND flow_id = ?";
constexpr const char* kAdvanceSql = "UPDATE flows SET last_msg_id = ? WHERE id = ?";
constexpr const char* kAdvanceBothSql =
    "UPDATE flows f JOIN spool_offsets o ON o.flow_id = f.id AND o.spool_id = ? "
    "SET f.last_msg_id = ?, o.last_seq = ? WHERE f.id = ?";
// A group of flows (lock_flows): the same statements for n flows at once, built per n. The lock
// reads the primary key in ascending order, so the rows are locked in id order. NOWAIT: a row
// another session holds fails the group at once (1205), and its flows run alone, where only the
// busy flow waits; the group would otherwise hold the other rows while it waits.
constexpr const char* kLockFlowsPrefix =
    "SELECT " GW_FLOW_COLUMNS " FROM flows FORCE INDEX (PRIMARY) WHERE id IN (";
constexpr const char* kLockFlowsSuffix = ") ORDER BY id FOR UPDATE NOWAIT";
// The group's offsets, read after their flow rows are locked (which serialises their writers).
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
constexpr const char* kInsertDeliveriesPrefix =
    "INSERT INTO deliveries (flow_id, msg_id, topic, payload, created_ms, next_attempt_ms) VALUES ";
constexpr const char* kInsertRejectedPrefix =
    "INSERT INTO rejected_messages (flow_id, topic, payload, payload_truncated, reason, spool_id, "
    "spool_seq) VALUES ";
constexpr const char* kInsertRejectedRow = "(?, ?, ?, ?, ?, ?, ?)";
// Dead-letter replay: the rows of a batch not replayed yet, locked after the flow row.
constexpr const char* kLockRejectedPrefix =
    "SELECT id FROM rejected_messages WHERE replayed_at IS NULL AND id IN (";
constexpr const char* kLockRejectedSuffix = ") ORDER BY id FOR UPDATE";

// rejected_messages.reason holds up to 1024 characters: this many bytes at most, and then some.
constexpr std::size_t kReasonBytes = 2048;

// A row of GW_FLOW_COLUMNS.
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
  f.target_table = nullable_string(rs, 9);
  f.column_map = nullable_string(rs, 10);
  f.write_mode = rs.getString(11);
  return f;
}

// The spool offset of a flow (0 if none). Throws sql::SQLException.
std::uint64_t committed_seq(MySqlSession& db, std::int64_t flow_id, std::string_view spool_id) {
  if (spool_id.empty()) return 0;
  auto& off = db.prepare(kOffsetSql);
  off.setString(1, sql::SQLString(spool_id.data(), spool_id.size()));
  off.setInt64(2, flow_id);
  std::unique_ptr<sql::ResultSet> o(off.executeQuery());
  return o->next() ? static_cast<std::uint64_t>(o->getInt64(1)) : 0;
}

// A data_records row as insert_text_rows() writes it.
void append_record(std::string& sql, std::int64_t flow_id, const DataRecord& r) {
  sql += '(';
  append_sql_int(sql, flow_id);
  sql += ',';
  append_sql_int(sql, r.msg_id);
  sql += ',';
  append_sql_string(sql, r.topic);
  sql += ',';
  append_sql_string(sql, r.field_name);
  sql += ',';
  append_sql_string(sql, r.field_value);
  sql += ')';
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
  MySqlFlowTransaction(MySqlSession& db, Flow flow, std::uint64_t committed_seq,
                       std::string spool_id, GroupWrites* group = nullptr)
      : db_(db),
        flow_(std::move(flow)),
        committed_seq_(committed_seq),
        spool_id_(std::move(spool_id)),
        group_(group) {}

  ~MySqlFlowTransaction() override {
    if (!committed_ && !group_) db_.rollback_quietly();
  }

  const Flow& flow() const override { return flow_; }
  std::uint64_t committed_seq() const override { return committed_seq_; }

  void insert_records(std::span<const DataRecord> rows) override {
    if (group_) {
      for (const DataRecord& r : rows) group_->records.push_back({flow_.id, r});
      return;
    }
    insert_text_rows(
        db_, rows, kInsertRecordsPrefix, "insert data_records",
        [this](std::string& sql, const DataRecord& r) { append_record(sql, flow_.id, r); });
  }

  void insert_deliveries(std::span<const OutboxEntry> rows) override {
    insert_text_rows(db_, rows, kInsertDeliveriesPrefix, "insert deliveries",
                     [this](std::string& sql, const OutboxEntry& r) {
                       sql += '(';
                       append_sql_int(sql, flow_.id);
                       sql += ',';
                       append_sql_int(sql, r.msg_id);
                       sql += ',';
                       append_sql_string(sql, r.topic);
                       sql += ',';
                       append_sql_string(sql, r.payload);
                       sql += ',';
                       append_sql_int(sql, r.created_ms);
                       sql += ',';
                       append_sql_int(sql, r.created_ms);
                       sql += ')';
                     });
  }

  void insert_table_rows(const TableRows& rows) override { gateway::insert_table_rows(db_, rows); }

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
            0, db_.packet_budget() -
                   std::min(db_.packet_budget(), topic.size() + kReasonBytes + kRowOverheadBytes));
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
      if (flow_.id != kNoFlow && committed_seq_ > 0 && last_seq > 0 && !spool_id_.empty() &&
          last_msg_id != flow_.last_msg_id) {
        // The offset row exists (committed_seq_ came from it): both in one round trip. It
        // changes (a larger seq), so 0 rows means it is gone after all: the two statements below.
        auto& both = db_.prepare(kAdvanceBothSql);
        both.setString(1, spool_id_);
        both.setInt64(2, last_msg_id);
        both.setInt64(3, static_cast<std::int64_t>(last_seq));
        both.setInt64(4, flow_.id);
        if (both.executeUpdate() > 0) return;
      }
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

  std::vector<std::int64_t> lock_rejected(std::span<const std::int64_t> ids) override {
    std::vector<std::int64_t> waiting;
    if (ids.empty()) return waiting;
    try {
      auto& stmt = db_.prepare_rows(kLockRejectedPrefix, "?", ids.size(), kLockRejectedSuffix);
      for (std::size_t i = 0; i < ids.size(); ++i) stmt.setInt64(static_cast<int>(i + 1), ids[i]);
      std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
      while (rs->next()) waiting.push_back(rs->getInt64(1));
    } catch (const sql::SQLException& e) {
      rethrow(e, "lock rejected_messages");
    }
    return waiting;
  }

  void mark_replayed(std::int64_t rejected_id, std::int64_t msg_id) override {
    try {
      auto& stmt = db_.prepare(
          "UPDATE rejected_messages SET replayed_at = CURRENT_TIMESTAMP(6), replayed_msg_id = ?, "
          "flow_id = ? WHERE id = ?");
      stmt.setInt64(1, msg_id);
      stmt.setInt64(2, flow_.id);
      stmt.setInt64(3, rejected_id);
      stmt.executeUpdate();
    } catch (const sql::SQLException& e) {
      rethrow(e, "mark rejected_messages replayed");
    }
  }

  void update_rejected(std::int64_t rejected_id, std::string_view reason) override {
    try {
      auto& stmt = db_.prepare(
          "UPDATE rejected_messages SET reason = ?, attempts = COALESCE(attempts, 1) + 1 "
          "WHERE id = ?");
      const std::string_view cut = utf8_prefix(reason, 1024);
      stmt.setString(1, sql::SQLString(cut.data(), cut.size()));
      stmt.setInt64(2, rejected_id);
      stmt.executeUpdate();
    } catch (const sql::SQLException& e) {
      rethrow(e, "update rejected_messages");
    }
  }

  void commit() override {
    try {
      db_.conn().commit();
      committed_ = true;
    } catch (const sql::SQLException& e) {
      rethrow(e, "commit");
    }
  }

 private:
  MySqlSession& db_;
  Flow flow_;
  std::uint64_t committed_seq_;
  std::string spool_id_;
  GroupWrites* group_;
  bool committed_ = false;
};

class MySqlFlowGroup final : public FlowGroupTransaction {
 public:
  explicit MySqlFlowGroup(MySqlSession& db, std::string spool_id)
      : db_(db), spool_id_(std::move(spool_id)) {}
  ~MySqlFlowGroup() override {
    if (!committed_) db_.rollback_quietly();
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
      insert_text_rows(db_, std::span<const GroupWrites::Record>(writes_.records),
                       kInsertRecordsPrefix, "insert data_records",
                       [](std::string& sql, const GroupWrites::Record& r) {
                         append_record(sql, r.flow_id, r.row);
                       });
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
      db_.conn().commit();
      committed_ = true;
    } catch (const sql::SQLException& e) {
      rethrow(e, "commit a group of flows");
    }
  }

 private:
  MySqlSession& db_;
  std::string spool_id_;
  GroupWrites writes_;
  std::vector<std::unique_ptr<MySqlFlowTransaction>> parts_;
  bool committed_ = false;
};

}  // namespace

MySqlFlowRepository::MySqlFlowRepository(const Settings& settings,
                                         std::shared_ptr<DatabaseNode> node)
    : db_(std::make_unique<MySqlSession>(settings, std::move(node))) {}

MySqlFlowRepository::~MySqlFlowRepository() = default;

std::vector<MqttServer> MySqlFlowRepository::read_servers(const char* sql, std::size_t limit) {
  try {
    auto& stmt = db_->prepare(sql);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::vector<MqttServer> servers;
    while (servers.size() < limit && rs->next()) {
      MqttServer s;
      s.id = rs->getInt64(1);
      s.host = rs->getString(2);
      s.port = rs->getInt(3);
      s.username = nullable_string(*rs, 4);
      if (auto pw = nullable_string(*rs, 5)) s.password = Secret(std::move(*pw));
      s.use_tls = rs->getInt(6) != 0;
      s.ca_file = nullable_string(*rs, 7).value_or("");
      s.client_cert_file = nullable_string(*rs, 8).value_or("");
      s.client_key_file = nullable_string(*rs, 9).value_or("");
      s.client_key_password_file = nullable_string(*rs, 10).value_or("");
      servers.push_back(std::move(s));
    }
    rs.reset();
    db_->conn().commit();  // end the read transaction: the next reload must see fresh rows
    return servers;
  } catch (const sql::SQLException& e) {
    rethrow(e, "load mqtt_servers");
  }
}

std::optional<MqttServer> MySqlFlowRepository::load_mqtt_server() {
  auto servers = read_servers(kLoadServerSql, 1);
  if (servers.empty()) return std::nullopt;
  return std::move(servers.front());
}

std::vector<MqttServer> MySqlFlowRepository::load_mqtt_servers() {
  return read_servers(kLoadServersSql, static_cast<std::size_t>(-1));
}

std::vector<Flow> MySqlFlowRepository::load_flows() {
  try {
    auto& stmt = db_->prepare(kLoadFlowsSql);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::vector<Flow> flows;
    while (rs->next()) flows.push_back(read_flow(*rs));
    rs.reset();
    db_->conn().commit();
    return flows;
  } catch (const sql::SQLException& e) {
    rethrow(e, "load flows");
  }
}

TableInfo MySqlFlowRepository::describe_table(std::string_view table) {
  try {
    // No commit: the processor describes inside its open flow transaction, whose locks and
    // uncommitted rows must stay as they are. (information_schema reads take no locks that
    // outlive the statement.)
    return gateway::describe_table(*db_, table);
  } catch (const sql::SQLException& e) {
    rethrow(e, "describe table " + std::string(table));
  }
}

std::unique_ptr<FlowTransaction> MySqlFlowRepository::lock_flow(std::int64_t flow_id,
                                                                std::string_view spool_id) {
  try {
    auto& lock = db_->prepare(kLockFlowSql);
    lock.setString(1, sql::SQLString(spool_id.data(), spool_id.size()));
    lock.setInt64(2, flow_id);
    std::unique_ptr<sql::ResultSet> rs(lock.executeQuery());
    if (!rs->next()) {
      rs.reset();
      db_->conn().rollback();
      return nullptr;
    }
    Flow flow = read_flow(*rs);
    // No spool (the reference API): no offset; a spool with no row yet: 0.
    const std::uint64_t committed =
        spool_id.empty() || rs->isNull(kAfterFlowColumns)
            ? 0
            : static_cast<std::uint64_t>(rs->getInt64(kAfterFlowColumns));
    rs.reset();
    return std::make_unique<MySqlFlowTransaction>(*db_, std::move(flow), committed,
                                                  std::string(spool_id));
  } catch (const sql::SQLException& e) {
    db_->rollback_quietly();
    rethrow(e, "lock flow " + std::to_string(flow_id));
  }
}

std::unique_ptr<FlowGroupTransaction> MySqlFlowRepository::lock_flows(
    std::span<const std::int64_t> ids, std::string_view spool_id) {
  auto group = std::make_unique<MySqlFlowGroup>(*db_, std::string(spool_id));
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
    const std::uint64_t committed = committed_seq(*db_, kNoFlow, spool_id);
    return std::make_unique<MySqlFlowTransaction>(*db_, std::move(none), committed,
                                                  std::string(spool_id));
  } catch (const sql::SQLException& e) {
    db_->rollback_quietly();
    rethrow(e, "begin dead letters without a flow");
  }
}

bool MySqlFlowRepository::ping() {
  try {
    std::unique_ptr<sql::Statement> st(db_->conn().createStatement());
    std::unique_ptr<sql::ResultSet> rs(st->executeQuery("SELECT 1"));
    db_->conn().commit();
    return true;
  } catch (const sql::SQLException&) {
    return false;
  }
}

std::uint64_t MySqlFlowRepository::last_committed_seq(std::string_view spool_id) {
  try {
    auto& stmt =
        db_->prepare("SELECT COALESCE(MAX(last_seq), 0) FROM spool_offsets WHERE spool_id = ?");
    stmt.setString(1, sql::SQLString(spool_id.data(), spool_id.size()));
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    const std::uint64_t seq = rs->next() ? static_cast<std::uint64_t>(rs->getInt64(1)) : 0;
    rs.reset();
    db_->conn().commit();
    return seq;
  } catch (const sql::SQLException& e) {
    rethrow(e, "read spool offsets");
  }
}

}  // namespace gateway
