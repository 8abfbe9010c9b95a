// Port to the POST_ENDPOINT outbox (table deliveries) for the delivery workers. Same error
// contract as flow_repository.h: DbUnavailable means reconnect and retry.
// Not thread-safe: one per thread (the scanner, each delivery worker and its sidecar).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gateway {

// One row of deliveries (a message waiting to be POSTed).
struct PendingDelivery {
  std::int64_t flow_id = 0;
  std::int64_t msg_id = 0;
  std::string topic;
  std::string payload;
  int attempts = 0;
  std::int64_t created_ms = 0;       // Unix ms when the flow transaction committed it
  std::int64_t next_attempt_ms = 0;  // Unix ms before which it must not be tried
};

// Where a flow's messages go, read from the flows row at delivery time.
struct DeliveryTarget {
  std::string flow_code;
  std::optional<std::string> endpoint_url;
};

// A flow that has pending deliveries, and when its first one is due.
struct DueFlow {
  std::int64_t flow_id = 0;
  std::int64_t next_attempt_ms = 0;
};

class DeliveryRepository {
 public:
  virtual ~DeliveryRepository() = default;
  // Every flow with something in the outbox that no other live owner's lease covers; the due
  // time is that of its lowest msg_id.
  virtual std::vector<DueFlow> pending_flows(std::string_view owner) = 0;
  // Takes or renews the lease on the flow's outbox for `owner` for `ttl_ms` (database clock).
  // True when `owner` holds it now (it was free, expired or already its own); false when another
  // owner's lease is still running.
  virtual bool claim(std::int64_t flow_id, std::string_view owner, std::int64_t ttl_ms) = 0;
  // Gives the lease up, if `owner` still holds it.
  virtual void release(std::int64_t flow_id, std::string_view owner) = 0;
  // std::nullopt when the flow row is gone.
  virtual std::optional<DeliveryTarget> delivery_target(std::int64_t flow_id) = 0;
  // The flow's oldest pending deliveries with a msg_id above `after_msg_id` (0: from the first),
  // in msg_id order, at most `limit`.
  virtual std::vector<PendingDelivery> next_deliveries(std::int64_t flow_id,
                                                       std::int64_t after_msg_id,
                                                       std::size_t limit) = 0;
  // The endpoint took msg_ids first..last of the flow: remove them (one commit).
  virtual void delivered(std::int64_t flow_id, std::int64_t first_msg_id,
                         std::int64_t last_msg_id) = 0;
  // Records a failed attempt and when to try again.
  virtual void retry_later(const PendingDelivery& d, int status, std::string_view error) = 0;
  // Moves the delivery to rejected_messages with the reason, in one transaction; nothing when its
  // row is gone (another owner delivered or gave it up meanwhile).
  virtual void give_up(const PendingDelivery& d, int status, std::string_view reason) = 0;
};

}  // namespace gateway
