// DeliveryRepository over MySQL Connector/C++ 1.1: the POST outbox (deliveries), its per-flow
// leases (delivery_leases) and the dead letters of deliveries given up. One connection per
// instance; not thread-safe.
#pragma once

#include <memory>

#include "gateway/adapters/mysql_driver.h"
#include "gateway/database_node.h"
#include "gateway/delivery_repository.h"
#include "gateway/settings.h"

namespace gateway {

class MySqlSession;

class MySqlDeliveryRepository final : public DeliveryRepository {
 public:
  // Connects at once; throws as MySqlFlowRepository's constructor.
  // `node`: shared by the gateway's connections (see database_node.h); null: one of its own.
  explicit MySqlDeliveryRepository(const Settings& settings,
                                   std::shared_ptr<DatabaseNode> node = nullptr);
  ~MySqlDeliveryRepository() override;

  std::vector<DueFlow> pending_flows(std::string_view owner) override;
  bool claim(std::int64_t flow_id, std::string_view owner, std::int64_t ttl_ms) override;
  void release(std::int64_t flow_id, std::string_view owner) override;
  std::optional<DeliveryTarget> delivery_target(std::int64_t flow_id) override;
  std::vector<PendingDelivery> next_deliveries(std::int64_t flow_id, std::int64_t after_msg_id,
                                               std::size_t limit) override;
  void delivered(std::int64_t flow_id, std::int64_t first_msg_id,
                 std::int64_t last_msg_id) override;
  void retry_later(const PendingDelivery& d, int status, std::string_view error) override;
  void give_up(const PendingDelivery& d, int status, std::string_view reason) override;

 private:
  std::unique_ptr<MySqlSession> db_;
};

}  // namespace gateway
