// FlowRepository over MySQL Connector/C++ 1.1 (MariaDB or MySQL): the reference's queries and the
// flow transaction (one flow, or a group of flows locked in id order). One connection per
// instance; not thread-safe. Only src/adapters/mysql_*.cpp include <cppconn/...>.
#pragma once

#include <memory>

#include "gateway/adapters/mysql_driver.h"
#include "gateway/database_node.h"
#include "gateway/flow_repository.h"
#include "gateway/settings.h"

namespace gateway {

class MySqlSession;

class MySqlFlowRepository final : public FlowRepository {
 public:
  // Connects at once. Throws DbUnavailable when the server cannot be reached, DbRefused for a
  // refused login or missing database (the message names host, port, database and user, never
  // the password).
  // `node`: shared by the gateway's connections (see database_node.h); null: one of its own.
  explicit MySqlFlowRepository(const Settings& settings,
                               std::shared_ptr<DatabaseNode> node = nullptr);
  ~MySqlFlowRepository() override;

  std::optional<MqttServer> load_mqtt_server() override;
  std::vector<MqttServer> load_mqtt_servers() override;
  std::vector<Flow> load_flows() override;
  TableInfo describe_table(std::string_view table) override;
  std::unique_ptr<FlowTransaction> lock_flow(std::int64_t flow_id,
                                             std::string_view spool_id) override;
  std::unique_ptr<FlowTransaction> begin_unrouted(std::string_view spool_id) override;
  std::unique_ptr<FlowGroupTransaction> lock_flows(std::span<const std::int64_t> ids,
                                                   std::string_view spool_id) override;
  bool ping() override;
  std::uint64_t last_committed_seq(std::string_view spool_id) override;

 private:
  // The mqtt_servers rows `sql` selects, at most `limit`. Throws like load_mqtt_server().
  std::vector<MqttServer> read_servers(const char* sql, std::size_t limit);

  std::unique_ptr<MySqlSession> db_;
};

}  // namespace gateway
