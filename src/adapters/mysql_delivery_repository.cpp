#include "gateway/adapters/mysql_delivery_repository.h"

#include "mysql_session.h"

namespace gateway {

MySqlDeliveryRepository::MySqlDeliveryRepository(const Settings& settings,
                                                 std::shared_ptr<DatabaseNode> node)
    : db_(std::make_unique<MySqlSession>(settings, std::move(node))) {}
MySqlDeliveryRepository::~MySqlDeliveryRepository() = default;

std::vector<DueFlow> MySqlDeliveryRepository::pending_flows(std::string_view owner) {
  try {
    auto& stmt = db_->prepare(
        "SELECT d.flow_id, d.next_attempt_ms FROM deliveries d JOIN (SELECT flow_id, MIN(msg_id) "
        "AS head FROM deliveries GROUP BY flow_id) h ON h.flow_id = d.flow_id AND h.head = "
        "d.msg_id LEFT JOIN delivery_leases l ON l.flow_id = d.flow_id WHERE l.flow_id IS NULL "
        "OR l.owner = ? OR l.expires_ms < ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000)");
    stmt.setString(1, sql::SQLString(owner.data(), owner.size()));
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::vector<DueFlow> due;
    while (rs->next()) due.push_back(DueFlow{rs->getInt64(1), rs->getInt64(2)});
    rs.reset();
    db_->conn().commit();
    return due;
  } catch (const sql::SQLException& e) {
    rethrow(e, "list pending deliveries");
  }
}

bool MySqlDeliveryRepository::claim(std::int64_t flow_id, std::string_view owner,
                                    std::int64_t ttl_ms) {
  try {
    // The assignments run left to right: `owner` is decided first, then the expiry follows the
    // (possibly new) owner.
    auto& upsert = db_->prepare(
        "INSERT INTO delivery_leases (flow_id, owner, expires_ms) VALUES (?, ?, "
        "ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000) + ?) ON DUPLICATE KEY UPDATE owner = IF(owner = "
        "VALUES(owner) OR expires_ms < ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000), VALUES(owner), "
        "owner), expires_ms = IF(owner = VALUES(owner), VALUES(expires_ms), expires_ms)");
    upsert.setInt64(1, flow_id);
    upsert.setString(2, sql::SQLString(owner.data(), owner.size()));
    upsert.setInt64(3, ttl_ms);
    upsert.executeUpdate();
    auto& holder = db_->prepare("SELECT owner FROM delivery_leases WHERE flow_id = ?");
    holder.setInt64(1, flow_id);
    std::unique_ptr<sql::ResultSet> rs(holder.executeQuery());
    const bool mine = rs->next() && std::string(rs->getString(1)) == owner;
    rs.reset();
    db_->conn().commit();
    return mine;
  } catch (const sql::SQLException& e) {
    db_->rollback_quietly();
    rethrow(e, "claim delivery lease");
  }
}

void MySqlDeliveryRepository::release(std::int64_t flow_id, std::string_view owner) {
  try {
    auto& stmt = db_->prepare("DELETE FROM delivery_leases WHERE flow_id = ? AND owner = ?");
    stmt.setInt64(1, flow_id);
    stmt.setString(2, sql::SQLString(owner.data(), owner.size()));
    stmt.executeUpdate();
    db_->conn().commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "release delivery lease");
  }
}

std::optional<DeliveryTarget> MySqlDeliveryRepository::delivery_target(std::int64_t flow_id) {
  try {
    auto& stmt = db_->prepare("SELECT code, endpoint_url FROM flows WHERE id = ?");
    stmt.setInt64(1, flow_id);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    std::optional<DeliveryTarget> target;
    if (rs->next()) target = DeliveryTarget{rs->getString(1), nullable_string(*rs, 2)};
    rs.reset();
    db_->conn().commit();
    return target;
  } catch (const sql::SQLException& e) {
    rethrow(e, "read delivery target");
  }
}

std::vector<PendingDelivery> MySqlDeliveryRepository::next_deliveries(std::int64_t flow_id,
                                                                      std::int64_t after_msg_id,
                                                                      std::size_t limit) {
  try {
    auto& stmt = db_->prepare(
        "SELECT msg_id, topic, payload, attempts, created_ms, next_attempt_ms FROM deliveries "
        "WHERE flow_id = ? AND msg_id > ? ORDER BY msg_id LIMIT ?");
    stmt.setInt64(1, flow_id);
    stmt.setInt64(2, after_msg_id);
    stmt.setInt64(3, static_cast<std::int64_t>(limit));
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
    db_->conn().commit();
    return out;
  } catch (const sql::SQLException& e) {
    rethrow(e, "read deliveries");
  }
}

void MySqlDeliveryRepository::delivered(std::int64_t flow_id, std::int64_t first_msg_id,
                                        std::int64_t last_msg_id) {
  try {
    auto& stmt =
        db_->prepare("DELETE FROM deliveries WHERE flow_id = ? AND msg_id BETWEEN ? AND ?");
    stmt.setInt64(1, flow_id);
    stmt.setInt64(2, first_msg_id);
    stmt.setInt64(3, last_msg_id);
    stmt.executeUpdate();
    db_->conn().commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "delete delivered");
  }
}

void MySqlDeliveryRepository::retry_later(const PendingDelivery& d, int status,
                                          std::string_view error) {
  try {
    auto& stmt = db_->prepare(
        "UPDATE deliveries SET attempts = ?, next_attempt_ms = ?, last_status = ?, last_error = ? "
        "WHERE flow_id = ? AND msg_id = ?");
    stmt.setInt(1, d.attempts);
    stmt.setInt64(2, d.next_attempt_ms);
    stmt.setInt(3, status);
    stmt.setString(4, std::string(utf8_prefix(error, 1024)));
    stmt.setInt64(5, d.flow_id);
    stmt.setInt64(6, d.msg_id);
    stmt.executeUpdate();
    db_->conn().commit();
  } catch (const sql::SQLException& e) {
    rethrow(e, "record delivery attempt");
  }
}

void MySqlDeliveryRepository::give_up(const PendingDelivery& d, int status,
                                      std::string_view reason) {
  try {
    // The row first: gone means another owner delivered or gave it up after our lease ran out,
    // and a dead letter now would stand beside a delivered message.
    auto& del = db_->prepare("DELETE FROM deliveries WHERE flow_id = ? AND msg_id = ?");
    del.setInt64(1, d.flow_id);
    del.setInt64(2, d.msg_id);
    if (del.executeUpdate() == 0) {
      db_->conn().rollback();
      return;
    }
    auto& ins = db_->prepare(
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
    db_->conn().commit();
  } catch (const sql::SQLException& e) {
    db_->rollback_quietly();
    rethrow(e, "give up delivery");
  }
}

}  // namespace gateway
