#include "gateway/flow_table.h"

#include <algorithm>
#include <map>
#include <set>

#include "gateway/topic_filter.h"

namespace gateway {

FlowSnapshot::FlowSnapshot(std::vector<Flow> flows) : flows_(std::move(flows)) {
  for (const Flow& f : flows_) routes_.insert(f.topic, f.id);
}

std::vector<std::string> FlowSnapshot::filters() const {
  std::set<std::string> distinct;
  for (const Flow& f : flows_) distinct.insert(f.topic);
  return {distinct.begin(), distinct.end()};
}

FlowDiff FlowTable::replace(std::vector<Flow> flows) {
  FlowDiff diff;
  std::vector<Flow> valid;
  for (Flow& f : flows) {
    if (auto why = validate_topic_filter(f.topic)) {
      diff.invalid.emplace_back(f, *why);
    } else {
      valid.push_back(std::move(f));
    }
  }
  std::sort(valid.begin(), valid.end(), [](const Flow& a, const Flow& b) { return a.id < b.id; });
  auto next = std::make_shared<const FlowSnapshot>(std::move(valid));

  std::lock_guard lock(mu_);
  std::map<std::int64_t, const Flow*> before;
  for (const Flow& f : current_->flows()) before[f.id] = &f;
  for (const Flow& f : next->flows()) {
    auto it = before.find(f.id);
    if (it == before.end()) {
      diff.added.push_back(f);
    } else {
      if (!it->second->same_definition(f)) diff.changed.emplace_back(*it->second, f);
      before.erase(it);
    }
  }
  for (const auto& [id, f] : before) diff.removed.push_back(*f);

  const auto old_filters = current_->filters();
  const auto new_filters = next->filters();
  std::set_difference(new_filters.begin(), new_filters.end(), old_filters.begin(),
                      old_filters.end(), std::back_inserter(diff.subscribe));
  std::set_difference(old_filters.begin(), old_filters.end(), new_filters.begin(),
                      new_filters.end(), std::back_inserter(diff.unsubscribe));
  current_ = std::move(next);
  return diff;
}

std::shared_ptr<const FlowSnapshot> FlowTable::snapshot() const {
  std::lock_guard lock(mu_);
  return current_;
}

}  // namespace gateway
