// FlowRepository over MySQL Connector/C++ 1.1 (MariaDB or MySQL). One connection per instance.
// Not thread-safe. Only src/adapters/mysql_*.cpp include <cppconn/...>.
#pragma once

#include <memory>

#include "gateway/delivery_repository.h"
#include "gateway/flow_repository.h"
#include "gateway/settings.h"

namespace spdlog {
class logger;
}

namespace gateway {

// config/schema.sql as compiled into the binary (for --init-db and tests).
const char* builtin_schema_sql();

// Process-wide driver set-up; the driver's first use is not thread-safe. Call once in main (and in
// test mains) before any thread opens a connection.
void mysql_global_init();

// RAII per-thread client-library state (driver threadInit/threadEnd). Every thread that opens a
// connection holds one for its lifetime.
class MySqlThreadScope {
 public:
  MySqlThreadScope();
  ~MySqlThreadScope();
  MySqlThreadScope(const MySqlThreadScope&) = delete;
  MySqlThreadScope& operator=(const MySqlThreadScope&) = delete;
};

// One database session serving both ports: the flow transaction and the POST outbox.
class MySqlFlowRepository final : public FlowRepository, public DeliveryRepository {
 public:
  // Connects at once and reads the server's max_allowed_packet. Throws DbUnavailable when the
  // server cannot be reached, DbRefused for a refused login or missing database (the message
  // names host, port, database and user, never the password).
  explicit MySqlFlowRepository(const Settings& settings);
  ~MySqlFlowRepository() override;

  std::optional<MqttServer> load_mqtt_server() override;
  std::vector<Flow> load_flows() override;
  std::unique_ptr<FlowTransaction> lock_flow(std::int64_t flow_id,
                                             std::string_view spool_id) override;
  std::unique_ptr<FlowTransaction> begin_unrouted(std::string_view spool_id) override;
  std::unique_ptr<FlowGroupTransaction> lock_flows(std::span<const std::int64_t> ids,
                                                   std::string_view spool_id) override;
  bool ping() override;
  std::uint64_t last_committed_seq(std::string_view spool_id) override;

  std::vector<DueFlow> pending_flows(std::string_view owner) override;
  bool claim(std::int64_t flow_id, std::string_view owner, std::int64_t ttl_ms) override;
  void release(std::int64_t flow_id, std::string_view owner) override;
  std::optional<DeliveryTarget> delivery_target(std::int64_t flow_id) override;
  std::vector<PendingDelivery> next_deliveries(std::int64_t flow_id, std::size_t limit) override;
  void delivered(std::int64_t flow_id, std::int64_t first_msg_id,
                 std::int64_t last_msg_id) override;
  void retry_later(const PendingDelivery& d, int status, std::string_view error) override;
  void give_up(const PendingDelivery& d, int status, std::string_view reason) override;

  // Runs every statement of an SQL script (config/schema.sql); used by --init-db.
  void apply_script(std::string_view sql);
  // Brings tables made by an older version up to date (what CREATE TABLE IF NOT EXISTS cannot):
  // data_records.field_name compared as bytes (utf8mb4_nopad_bin). Returns one line per change
  // made; empty when there was nothing to do. Idempotent.
  std::vector<std::string> upgrade_schema();
  // The tables the gateway needs that are missing (empty when the schema is complete).
  std::vector<std::string> missing_tables();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gateway
