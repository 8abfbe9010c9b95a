// An in-memory FlowAdmin for unit tests, over a FakeFlowRepository's maps (its flows and
// rejections are the "tables"), so that the admin commands and Processor::replay() see the same
// rows. Times: created_at/updated_at are empty and the --since filters are ignored (the MySQL
// adapter's integration tests cover them).
#pragma once

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fakes/fake_flow_repository.h"
#include "gateway/flow_admin.h"

namespace gateway::testing {

class FakeFlowAdmin final : public FlowAdmin {
 public:
  explicit FakeFlowAdmin(FakeFlowRepository& repo) : repo_(repo) {}

  std::map<std::int64_t, std::optional<std::string>> names;  // flows.name by id
  int inserts = 0;
  int updates = 0;
  int describes = 0;  // describe_table() calls

  std::vector<FlowStatus> list_flows() override {
    std::vector<FlowStatus> out;
    for (const auto& [id, f] : repo_.flows) out.push_back(status(f));
    std::sort(out.begin(), out.end(),
              [](const FlowStatus& a, const FlowStatus& b) { return a.flow.code < b.flow.code; });
    return out;
  }
  std::optional<FlowStatus> find_flow(std::string_view code) override {
    for (const auto& [id, f] : repo_.flows) {
      if (f.code == code) return status(f);
    }
    return std::nullopt;
  }
  std::int64_t insert_flow(const FlowDefinition& d) override {
    ++inserts;
    const std::int64_t id = repo_.flows.empty() ? 1 : repo_.flows.rbegin()->first + 1;
    Flow f;
    f.id = id;
    apply(f, d);
    repo_.flows[id] = f;
    return id;
  }
  bool update_flow(std::int64_t id, const FlowDefinition& d) override {
    auto it = repo_.flows.find(id);
    if (it == repo_.flows.end()) return false;
    ++updates;
    apply(it->second, d);
    return true;
  }
  std::vector<DeadLetter> list_rejected(const RejectedFilter& filter) override {
    std::vector<DeadLetter> out;
    for (const auto& r : repo_.rejections) {
      if (!matches(r, filter) || (!filter.newest_first && r.id <= filter.after_id)) continue;
      out.push_back(letter(r, filter.with_payload));
    }
    std::sort(out.begin(), out.end(), [&](const DeadLetter& a, const DeadLetter& b) {
      return filter.newest_first ? a.id > b.id : a.id < b.id;
    });
    if (out.size() > filter.limit) out.resize(filter.limit);
    return out;
  }
  std::int64_t count_rejected(const RejectedFilter& filter) override {
    return std::count_if(repo_.rejections.begin(), repo_.rejections.end(),
                         [&](const StoredRejection& r) { return matches(r, filter); });
  }
  std::optional<DeadLetter> find_rejected(std::int64_t id) override {
    for (const auto& r : repo_.rejections) {
      if (r.id == id) return letter(r, true);
    }
    return std::nullopt;
  }
  // The repository's `tables` (what the gateway's reload sees too).
  TableInfo describe_table(std::string_view table) override {
    ++describes;
    return repo_.describe_table(table);
  }

 private:
  void apply(Flow& f, const FlowDefinition& d) {
    f.code = d.code;
    f.topic = d.topic;
    f.action = d.action;
    f.endpoint_url = d.endpoint_url;
    f.payload_schema = d.payload_schema;
    f.enabled = d.enabled;
    f.target_table = d.target_table;
    f.column_map = d.column_map;
    f.write_mode = d.write_mode;
    names[f.id] = d.name;
  }
  FlowStatus status(const Flow& f) {
    FlowStatus s;
    s.flow = f;
    s.name = names[f.id];
    for (const auto& [flow_id, entry] : repo_.outbox) s.pending_deliveries += flow_id == f.id;
    for (const auto& r : repo_.rejections) {
      if (r.flow_id != f.id) continue;
      ++s.rejected_last_24h;
      s.dead_letters_waiting += !r.replayed_msg_id;
    }
    return s;
  }
  static bool matches(const StoredRejection& r, const RejectedFilter& f) {
    const bool listed = f.ids.empty() || std::find(f.ids.begin(), f.ids.end(), r.id) != f.ids.end();
    if (!listed) return false;
    if (f.flow_id && r.flow_id != *f.flow_id && !(!f.ids.empty() && r.flow_id == kNoFlow)) {
      return false;
    }
    if (f.reason_contains && r.reason.find(*f.reason_contains) == std::string::npos) return false;
    if (f.waiting_only && r.replayed_msg_id) return false;
    return true;
  }
  DeadLetter letter(const StoredRejection& r, bool with_payload) const {
    DeadLetter d;
    d.id = r.id;
    if (r.flow_id != kNoFlow) {
      d.flow_id = r.flow_id;
      if (auto it = repo_.flows.find(r.flow_id); it != repo_.flows.end()) {
        d.flow_code = it->second.code;
      }
    }
    d.topic = r.topic;
    if (with_payload) d.payload = r.payload;
    d.payload_bytes = static_cast<std::int64_t>(r.payload.size());
    d.payload_truncated = r.payload_truncated;
    d.reason = r.reason;
    if (r.attempts > 1) d.attempts = r.attempts;
    d.replayed_msg_id = r.replayed_msg_id;
    if (r.replayed_msg_id) d.replayed_at = "now";
    return d;
  }

  FakeFlowRepository& repo_;
};

}  // namespace gateway::testing
