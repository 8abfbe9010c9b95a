#include "gateway/flow_starts.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "gateway/atomic_file.h"
#include "gateway/errors.h"

namespace gateway {
namespace {
constexpr int kVersion = 1;
}  // namespace

void FlowStarts::Starts::filter(std::uint64_t seq, std::vector<std::int64_t>& flow_ids) const {
  std::erase_if(flow_ids, [&](std::int64_t id) {
    const auto it = from_.find(id);
    return it != from_.end() && seq < it->second;
  });
}

FlowStarts::FlowStarts(const std::filesystem::path& spool_dir, std::uint64_t first_new_seq)
    : path_(spool_dir / kFileName), first_new_seq_(first_new_seq), start_all_at_zero_(true) {
  const std::optional<std::string> text = read_file_if_exists(path_, "flow starts");
  if (!text) return;
  try {
    const nlohmann::json j = nlohmann::json::parse(*text);
    if (j.at("version").get<int>() != kVersion) {
      throw Error("flow starts " + path_.string() + ": unknown version " + j.at("version").dump());
    }
    for (const nlohmann::json& f : j.at("flows")) {
      // Never above this run's first seq: after a power loss the spool may restart below a start
      // the file (synced) kept, and this run's records must reach the flow.
      entries_[f.at("id").get<std::int64_t>()] =
          Entry{f.at("topic").get<std::string>(),
                std::min(f.at("from").get<std::uint64_t>(), first_new_seq_)};
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error("flow starts " + path_.string() + ": cannot parse: " + e.what());
  }
  start_all_at_zero_ = false;
}

std::shared_ptr<const FlowStarts::Starts> FlowStarts::update(const FlowSnapshot& snapshot,
                                                             std::uint64_t next_seq) {
  const std::uint64_t start = start_all_at_zero_ ? 0 : std::max(next_seq, first_new_seq_);
  // Only an id seen for the first time gets a start; a known one keeps its first, also when it
  // was disabled or given another topic meanwhile: records it may still owe were routed to it
  // from there on, and moving its start would lose them.
  std::map<std::int64_t, Entry> next = entries_;
  for (const Flow& f : snapshot.flows()) {
    auto [it, added] = next.try_emplace(f.id, Entry{f.topic, start});
    if (!added) it->second.topic = f.topic;  // for the reader of the file only
  }
  if (current_ && next == entries_) return current_;
  std::swap(entries_, next);
  try {
    save();
  } catch (...) {
    std::swap(entries_, next);  // as before: the next update() tries again
    throw;
  }
  start_all_at_zero_ = false;
  auto starts = std::make_shared<Starts>();
  for (const auto& [id, e] : entries_) starts->from_.emplace(id, e.from);
  current_ = std::move(starts);
  return current_;
}

void FlowStarts::save() const {
  nlohmann::json flows = nlohmann::json::array();
  for (const auto& [id, e] : entries_) {
    flows.push_back({{"id", id}, {"topic", e.topic}, {"from", e.from}});
  }
  const nlohmann::json j{{"version", kVersion}, {"flows", flows}};
  replace_file_atomically(path_,
                          j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n",
                          0600, "flow starts");
}

}  // namespace gateway
