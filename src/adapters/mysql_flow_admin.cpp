#include "gateway/adapters/mysql_flow_admin.h"

#include <cppconn/datatype.h>
#include <cppconn/statement.h>

#include <variant>

#include "gateway/errors.h"
#include "mysql_session.h"
#include "mysql_table_rows.h"

namespace gateway {
namespace {

constexpr const char* kFlowColumns =
    "SELECT f.id, f.code, f.topic, f.action, f.endpoint_url, f.payload_schema, f.last_msg_id, "
    "f.enabled, f.name, DATE_FORMAT(f.updated_at, '%Y-%m-%d %H:%i:%s'), "
    "(SELECT COUNT(*) FROM deliveries d WHERE d.flow_id = f.id), "
    "(SELECT COUNT(*) FROM rejected_messages r WHERE r.flow_id = f.id AND r.created_at >= "
    "NOW(6) - INTERVAL 1 DAY), f.target_table, f.column_map, f.write_mode ";
// Counted for one flow only (`flows show`): it reads every dead letter the flow ever had.
constexpr const char* kWaitingCount =
    ", (SELECT COUNT(*) FROM rejected_messages r WHERE r.flow_id = f.id AND r.replayed_at IS "
    "NULL) ";

using Param = std::variant<std::int64_t, std::string>;

void bind_params(sql::PreparedStatement& stmt, const std::vector<Param>& params) {
  int i = 1;
  for (const Param& p : params) {
    if (const auto* n = std::get_if<std::int64_t>(&p)) {
      stmt.setInt64(i++, *n);
    } else {
      stmt.setString(i++, std::get<std::string>(p));
    }
  }
}

FlowStatus read_status(sql::ResultSet& rs, bool waiting) {
  FlowStatus s;
  s.flow.id = rs.getInt64(1);
  s.flow.code = rs.getString(2);
  s.flow.topic = rs.getString(3);
  s.flow.action = rs.getString(4);
  s.flow.endpoint_url = nullable_string(rs, 5);
  s.flow.payload_schema = nullable_string(rs, 6);
  s.flow.last_msg_id = rs.getInt64(7);
  s.flow.enabled = rs.getInt(8) != 0;
  s.name = nullable_string(rs, 9);
  s.updated_at = rs.getString(10);
  s.pending_deliveries = rs.getInt64(11);
  s.rejected_last_24h = rs.getInt64(12);
  s.flow.target_table = nullable_string(rs, 13);
  s.flow.column_map = nullable_string(rs, 14);
  s.flow.write_mode = rs.getString(15);
  if (waiting) s.dead_letters_waiting = rs.getInt64(16);
  return s;
}

std::optional<std::int64_t> nullable_int(sql::ResultSet& rs, int column) {
  if (rs.isNull(column)) return std::nullopt;
  return rs.getInt64(column);
}

DeadLetter read_dead_letter(sql::ResultSet& rs) {
  DeadLetter d;
  d.id = rs.getInt64(1);
  d.flow_id = nullable_int(rs, 2);
  d.flow_code = nullable_string(rs, 3);
  d.topic = rs.getString(4);
  d.payload = rs.getString(5);
  d.payload_bytes = rs.getInt64(6);
  d.payload_truncated = rs.getInt(7) != 0;
  d.reason = rs.getString(8);
  d.msg_id = nullable_int(rs, 9);
  d.attempts = nullable_int(rs, 10);
  d.last_status = nullable_int(rs, 11);
  d.created_at = rs.getString(12);
  d.replayed_at = nullable_string(rs, 13);
  d.replayed_msg_id = nullable_int(rs, 14);
  return d;
}

std::string dead_letter_select(bool with_payload) {
  return std::string("SELECT r.id, r.flow_id, f.code, r.topic, ") +
         (with_payload ? "r.payload" : "''") +
         ", LENGTH(r.payload), r.payload_truncated, r.reason, r.msg_id, r.attempts, "
         "r.last_status, DATE_FORMAT(r.created_at, '%Y-%m-%d %H:%i:%s.%f'), "
         "DATE_FORMAT(r.replayed_at, '%Y-%m-%d %H:%i:%s.%f'), r.replayed_msg_id "
         "FROM rejected_messages r LEFT JOIN flows f ON f.id = r.flow_id";
}

// The WHERE clause of `filter` (with after_id when `paging`), its parameters appended.
std::string where(const RejectedFilter& filter, std::vector<Param>& params, bool paging) {
  std::string w = " WHERE 1 = 1";
  if (filter.flow_id) {
    w += filter.ids.empty() ? " AND r.flow_id = ?" : " AND (r.flow_id = ? OR r.flow_id IS NULL)";
    params.emplace_back(*filter.flow_id);
  }
  if (!filter.ids.empty()) {
    w += " AND r.id IN (" + repeated_rows("", "?", filter.ids.size()) + ")";
    for (const std::int64_t id : filter.ids) params.emplace_back(id);
  }
  if (filter.since) {
    w += " AND r.created_at >= ?";
    params.emplace_back(*filter.since);
  }
  if (filter.since_seconds_ago) {
    w += " AND r.created_at >= NOW(6) - INTERVAL ? SECOND";
    params.emplace_back(*filter.since_seconds_ago);
  }
  if (filter.reason_contains) {
    w += " AND INSTR(r.reason, ?) > 0";  // the column's collation: case-insensitive
    params.emplace_back(*filter.reason_contains);
  }
  if (filter.waiting_only) w += " AND r.replayed_at IS NULL";
  if (paging && !filter.newest_first && filter.after_id > 0) {
    w += " AND r.id > ?";
    params.emplace_back(filter.after_id);
  }
  return w;
}

}  // namespace

MySqlFlowAdmin::MySqlFlowAdmin(const Settings& settings, std::shared_ptr<DatabaseNode> node)
    : db_(std::make_unique<MySqlSession>(settings, std::move(node))) {
  try {
    std::unique_ptr<sql::Statement> st(db_->conn().createStatement());
    st->execute("SET time_zone = '+00:00'");
    std::unique_ptr<sql::ResultSet> rs(st->executeQuery(
        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND "
        "((TABLE_NAME = 'rejected_messages' AND COLUMN_NAME = 'replayed_msg_id') OR "
        "(TABLE_NAME = 'flows' AND COLUMN_NAME = 'write_mode'))"));
    const int found = rs->next() ? rs->getInt(1) : 0;
    rs.reset();
    db_->conn().commit();
    if (found < 2) {
      throw Error(
          "the schema is older than this version (rejected_messages without replayed_at and "
          "replayed_msg_id, or flows without target_table, column_map and write_mode): run "
          "mqtt-gateway --init-db to upgrade the schema");
    }
  } catch (const sql::SQLException& e) {
    rethrow(e, "check the schema");
  }
}

MySqlFlowAdmin::~MySqlFlowAdmin() = default;

std::vector<FlowStatus> MySqlFlowAdmin::list_flows() {
  try {
    auto& stmt = db_->prepare(std::string(kFlowColumns) + "FROM flows f ORDER BY f.code");
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::vector<FlowStatus> flows;
    while (rs->next()) flows.push_back(read_status(*rs, false));
    rs.reset();
    db_->conn().commit();
    return flows;
  } catch (const sql::SQLException& e) {
    rethrow(e, "list flows");
  }
}

std::optional<FlowStatus> MySqlFlowAdmin::find_flow(std::string_view code) {
  try {
    auto& stmt =
        db_->prepare(std::string(kFlowColumns) + kWaitingCount + "FROM flows f WHERE f.code = ?");
    stmt.setString(1, sql::SQLString(code.data(), code.size()));
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::optional<FlowStatus> found;
    if (rs->next()) found = read_status(*rs, true);
    rs.reset();
    db_->conn().commit();
    return found;
  } catch (const sql::SQLException& e) {
    rethrow(e, "read flow");
  }
}

namespace {

void set_nullable(sql::PreparedStatement& stmt, int i, const std::optional<std::string>& value) {
  if (value) {
    stmt.setString(i, *value);
  } else {
    stmt.setNull(i, sql::DataType::VARCHAR);
  }
}

// code, name, topic, action, endpoint_url, payload_schema, enabled, target_table, column_map,
// write_mode: parameters 1..10.
void bind_definition(sql::PreparedStatement& stmt, const FlowDefinition& f) {
  stmt.setString(1, f.code);
  set_nullable(stmt, 2, f.name);
  stmt.setString(3, f.topic);
  stmt.setString(4, f.action);
  set_nullable(stmt, 5, f.endpoint_url);
  set_nullable(stmt, 6, f.payload_schema);
  stmt.setInt(7, f.enabled ? 1 : 0);
  set_nullable(stmt, 8, f.target_table);
  set_nullable(stmt, 9, f.column_map);
  stmt.setString(10, f.write_mode);
}

}  // namespace

std::int64_t MySqlFlowAdmin::insert_flow(const FlowDefinition& flow) {
  try {
    auto& stmt = db_->prepare(
        "INSERT INTO flows (code, name, topic, action, endpoint_url, payload_schema, enabled, "
        "target_table, column_map, write_mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    bind_definition(stmt, flow);
    stmt.executeUpdate();
    std::unique_ptr<sql::Statement> st(db_->conn().createStatement());
    std::unique_ptr<sql::ResultSet> rs(st->executeQuery("SELECT LAST_INSERT_ID()"));
    const std::int64_t id = rs->next() ? rs->getInt64(1) : 0;
    rs.reset();
    db_->conn().commit();
    return id;
  } catch (const sql::SQLException& e) {
    db_->rollback_quietly();
    rethrow(e, "insert flow " + flow.code);
  }
}

bool MySqlFlowAdmin::update_flow(std::int64_t id, const FlowDefinition& flow) {
  try {
    // Waits for a flow transaction holding the row; last_msg_id is never written here.
    auto& stmt = db_->prepare(
        "UPDATE flows SET code = ?, name = ?, topic = ?, action = ?, endpoint_url = ?, "
        "payload_schema = ?, enabled = ?, target_table = ?, column_map = ?, write_mode = ? "
        "WHERE id = ?");
    bind_definition(stmt, flow);
    stmt.setInt64(11, id);
    stmt.executeUpdate();
    // Matched rather than changed rows: an update to the same values still found the row.
    std::unique_ptr<sql::Statement> st(db_->conn().createStatement());
    std::unique_ptr<sql::ResultSet> rs(
        st->executeQuery("SELECT COUNT(*) FROM flows WHERE id = " + std::to_string(id)));
    const bool found = rs->next() && rs->getInt(1) > 0;
    rs.reset();
    db_->conn().commit();
    return found;
  } catch (const sql::SQLException& e) {
    db_->rollback_quietly();
    rethrow(e, "update flow " + flow.code);
  }
}

TableInfo MySqlFlowAdmin::describe_table(std::string_view table) {
  try {
    TableInfo info = gateway::describe_table(*db_, table);
    db_->conn().commit();
    return info;
  } catch (const sql::SQLException& e) {
    rethrow(e, "describe table " + std::string(table));
  }
}

std::vector<DeadLetter> MySqlFlowAdmin::list_rejected(const RejectedFilter& filter) {
  try {
    std::vector<Param> params;
    std::string sql = dead_letter_select(filter.with_payload) + where(filter, params, true) +
                      (filter.newest_first ? " ORDER BY r.id DESC" : " ORDER BY r.id") + " LIMIT " +
                      std::to_string(filter.limit);
    auto& stmt = db_->prepare(sql);
    bind_params(stmt, params);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::vector<DeadLetter> letters;
    while (rs->next()) letters.push_back(read_dead_letter(*rs));
    rs.reset();
    db_->conn().commit();
    return letters;
  } catch (const sql::SQLException& e) {
    rethrow(e, "list rejected_messages");
  }
}

std::int64_t MySqlFlowAdmin::count_rejected(const RejectedFilter& filter) {
  try {
    std::vector<Param> params;
    auto& stmt =
        db_->prepare("SELECT COUNT(*) FROM rejected_messages r" + where(filter, params, false));
    bind_params(stmt, params);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    const std::int64_t n = rs->next() ? rs->getInt64(1) : 0;
    rs.reset();
    db_->conn().commit();
    return n;
  } catch (const sql::SQLException& e) {
    rethrow(e, "count rejected_messages");
  }
}

std::optional<DeadLetter> MySqlFlowAdmin::find_rejected(std::int64_t id) {
  try {
    auto& stmt = db_->prepare(dead_letter_select(true) + " WHERE r.id = ?");
    stmt.setInt64(1, id);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::optional<DeadLetter> found;
    if (rs->next()) found = read_dead_letter(*rs);
    rs.reset();
    db_->conn().commit();
    return found;
  } catch (const sql::SQLException& e) {
    rethrow(e, "read rejected_messages");
  }
}

}  // namespace gateway
