// The enabled flows currently in force, as routed by topic. The MQTT client replaces them on every
// reload; the dispatcher reads immutable snapshots, so a reload never blocks message routing.
// Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/flow.h"
#include "gateway/topic_tree.h"

namespace gateway {

// An immutable set of routable flows (those whose topic filter is valid).
class FlowSnapshot {
 public:
  // `flows` must have valid topic filters (FlowTable::replace() checks them).
  explicit FlowSnapshot(std::vector<Flow> flows);
  const std::vector<Flow>& flows() const { return flows_; }
  // Ids of the flows whose filter matches `topic`, in `out` (cleared first), in id order, each
  // once. O(topic levels), not O(flows): a TopicTree built once per snapshot.
  void match(std::string_view topic, std::vector<std::int64_t>& out) const {
    routes_.match(topic, out);
  }
  // The distinct filters to subscribe to; flows sharing a filter share one subscription.
  std::vector<std::string> filters() const;

 private:
  std::vector<Flow> flows_;
  TopicTree routes_;
};

// What a reload changed, for the log and for the subscriptions.
struct FlowDiff {
  std::vector<Flow> added;
  std::vector<Flow> removed;
  std::vector<std::pair<Flow, Flow>> changed;         // (before, after)
  std::vector<std::pair<Flow, std::string>> invalid;  // left out: (flow, why its filter is bad)
  std::vector<std::string> subscribe;                 // filters that appeared
  std::vector<std::string> unsubscribe;               // filters no flow uses any more
  bool empty() const { return added.empty() && removed.empty() && changed.empty(); }
};

class FlowTable {
 public:
  FlowTable() : current_(std::make_shared<FlowSnapshot>(std::vector<Flow>{})) {}
  // Installs `flows` (the enabled rows), leaving out those with an invalid topic filter, and
  // returns what changed against the previous set.
  FlowDiff replace(std::vector<Flow> flows);
  std::shared_ptr<const FlowSnapshot> snapshot() const;

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const FlowSnapshot> current_;  // guarded by mu_; replaced wholesale
};

}  // namespace gateway
