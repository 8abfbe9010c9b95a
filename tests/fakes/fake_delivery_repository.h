// An in-memory outbox (table deliveries) for unit tests of DeliveryService, shared by every
// worker's "connection", with hooks that inject the failures and delays the real database
// produces. Thread-safe (one mutex); a hook runs before its call takes the mutex, so it may throw
// or block (a slow commit) without blocking the other connections.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "gateway/clock.h"
#include "gateway/delivery_repository.h"
#include "gateway/metrics.h"

namespace gateway::testing {

class FakeDeliveryRepository final : public DeliveryRepository {
 public:
  struct Rejection {
    std::int64_t flow_id;
    std::int64_t msg_id;
    std::string reason;
  };

  // Adds an outbox row due now.
  void add(std::int64_t flow_id, std::int64_t msg_id, std::string payload) {
    std::lock_guard lock(mu_);
    PendingDelivery d;
    d.flow_id = flow_id;
    d.msg_id = msg_id;
    d.topic = "t/" + std::to_string(flow_id);
    d.payload = std::move(payload);
    rows_[{flow_id, msg_id}] = std::move(d);
  }
  void set_target(std::int64_t flow_id, DeliveryTarget target) {
    std::lock_guard lock(mu_);
    targets_[flow_id] = std::move(target);
  }
  // Persistent faults, called at the start of every call with the method's name until reset.
  void on_call(std::function<void(const std::string& method)> hook) {
    std::lock_guard lock(mu_);
    hook_ = std::make_shared<const Hook>(std::move(hook));
  }

  std::size_t pending() const {
    std::lock_guard lock(mu_);
    return rows_.size();
  }
  std::vector<Rejection> rejections() const {
    std::lock_guard lock(mu_);
    return rejections_;
  }

  std::vector<DueFlow> pending_flows(std::string_view owner) override {
    fire("pending_flows");
    std::lock_guard lock(mu_);
    std::map<std::int64_t, DueFlow> due;
    for (const auto& [key, d] : rows_) {
      if (leased_by_other(key.first, owner)) continue;
      due.try_emplace(key.first, DueFlow{key.first, d.next_attempt_ms});
    }
    std::vector<DueFlow> out;
    for (const auto& [id, f] : due) out.push_back(f);
    return out;
  }
  bool claim(std::int64_t flow_id, std::string_view owner, std::int64_t ttl_ms) override {
    fire("claim");
    std::lock_guard lock(mu_);
    if (leased_by_other(flow_id, owner)) return false;
    leases_[flow_id] = Lease{std::string(owner), unix_now_ms() + ttl_ms};
    return true;
  }
  void release(std::int64_t flow_id, std::string_view owner) override {
    fire("release");
    std::lock_guard lock(mu_);
    auto it = leases_.find(flow_id);
    if (it != leases_.end() && it->second.owner == owner) leases_.erase(it);
  }
  // The lease holder of a flow, or empty.
  std::string lease_owner(std::int64_t flow_id) const {
    std::lock_guard lock(mu_);
    auto it = leases_.find(flow_id);
    return it == leases_.end() ? std::string() : it->second.owner;
  }

  std::optional<DeliveryTarget> delivery_target(std::int64_t flow_id) override {
    fire("delivery_target");
    std::lock_guard lock(mu_);
    auto it = targets_.find(flow_id);
    if (it == targets_.end()) return std::nullopt;
    return it->second;
  }
  std::vector<PendingDelivery> next_deliveries(std::int64_t flow_id, std::int64_t after_msg_id,
                                               std::size_t limit) override {
    fire("next_deliveries");
    std::lock_guard lock(mu_);
    std::vector<PendingDelivery> out;
    for (auto it = rows_.upper_bound({flow_id, after_msg_id});
         it != rows_.end() && it->first.first == flow_id && out.size() < limit; ++it) {
      out.push_back(it->second);
    }
    return out;
  }
  void delivered(std::int64_t flow_id, std::int64_t first, std::int64_t last) override {
    fire("delivered");
    std::lock_guard lock(mu_);
    rows_.erase(rows_.lower_bound({flow_id, first}), rows_.upper_bound({flow_id, last}));
  }
  void retry_later(const PendingDelivery& d, int, std::string_view) override {
    fire("retry_later");
    std::lock_guard lock(mu_);
    auto it = rows_.find({d.flow_id, d.msg_id});
    if (it != rows_.end()) {
      it->second.attempts = d.attempts;
      it->second.next_attempt_ms = d.next_attempt_ms;
    }
  }
  void give_up(const PendingDelivery& d, int, std::string_view reason) override {
    fire("give_up");
    std::lock_guard lock(mu_);
    if (rows_.erase({d.flow_id, d.msg_id}) > 0) {
      rejections_.push_back(Rejection{d.flow_id, d.msg_id, std::string(reason)});
    }
  }

 private:
  struct Lease {
    std::string owner;
    std::int64_t expires_ms;
  };

  using Hook = std::function<void(const std::string&)>;

  void fire(const std::string& method) {
    std::shared_ptr<const Hook> hook;
    {
      std::lock_guard lock(mu_);
      hook = hook_;
    }
    if (hook && *hook) (*hook)(method);
  }
  bool leased_by_other(std::int64_t flow_id, std::string_view owner) const {
    auto it = leases_.find(flow_id);
    return it != leases_.end() && it->second.owner != owner &&
           it->second.expires_ms >= unix_now_ms();
  }

  mutable std::mutex mu_;
  std::map<std::pair<std::int64_t, std::int64_t>, PendingDelivery> rows_;  // guarded by mu_
  std::map<std::int64_t, DeliveryTarget> targets_;                         // guarded by mu_
  std::vector<Rejection> rejections_;                                      // guarded by mu_
  std::shared_ptr<const Hook> hook_;                                       // guarded by mu_
  std::map<std::int64_t, Lease> leases_;                                   // guarded by mu_
};

}  // namespace gateway::testing
