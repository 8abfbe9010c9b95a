// FlowAdmin over MySQL Connector/C++ 1.1: the operator's subcommands' reads and writes of flows
// and rejected_messages (`mqtt-gateway flows ...`, `rejected list|show`). One connection, in UTC
// (time_zone '+00:00': the times it reads and the --since times it is given). Not thread-safe.
#pragma once

#include <memory>

#include "gateway/adapters/mysql_driver.h"
#include "gateway/database_node.h"
#include "gateway/flow_admin.h"
#include "gateway/settings.h"

namespace gateway {

class MySqlSession;

class MySqlFlowAdmin final : public FlowAdmin {
 public:
  // Connects at once (throws as MySqlFlowRepository's constructor). Throws Error when the schema
  // lacks columns of this version (rejected_messages' replay columns, flows' STORE_TABLE
  // columns): "run mqtt-gateway --init-db".
  // `node`: shared by the gateway's connections (see database_node.h); null: one of its own.
  explicit MySqlFlowAdmin(const Settings& settings, std::shared_ptr<DatabaseNode> node = nullptr);
  ~MySqlFlowAdmin() override;

  std::vector<FlowStatus> list_flows() override;
  std::optional<FlowStatus> find_flow(std::string_view code) override;
  std::int64_t insert_flow(const FlowDefinition& flow) override;
  bool update_flow(std::int64_t id, const FlowDefinition& flow) override;
  std::vector<DeadLetter> list_rejected(const RejectedFilter& filter) override;
  std::int64_t count_rejected(const RejectedFilter& filter) override;
  std::optional<DeadLetter> find_rejected(std::int64_t id) override;
  TableInfo describe_table(std::string_view table) override;

 private:
  std::unique_ptr<MySqlSession> db_;
};

}  // namespace gateway
