// FlowStarts: from which spool record on each flow is routed, kept in SPOOL_DIR/flow-starts.json,
// so that a restart routes the records still in the spool as they were routed when they arrived.
// The spool keeps processed records until their segment is released (up to SPOOL_SEGMENT_BYTES
// of them), and after a restart the dispatcher reads it from its last release (Spool::
// release_below()), which may be older than those records (a stale file, an upgrade). Routed by
// the flows of the day, a flow created since would then store them, maybe weeks old.
//
// The dispatcher calls update() with each new flow snapshot before it routes any record with it,
// giving the seq of the next record it routes. A flow id seen for the first time starts there,
// or at the spool's first new seq of this run if that is later (records of earlier runs arrived
// before this gateway knew the flow). A known id keeps its first start, also after it was
// disabled or given another topic: it may still owe records routed to it from there on (held,
// parked), and a later start would lose them; such a flow is routed the spool's older records
// by its topic of the day, as before this file existed. Without a file (a new spool, or the
// first start of a version that keeps it), the first update() starts every flow at 0, so that an
// upgrade routes a spooled backlog as before. The file is replaced atomically and synced before
// update() returns, so a record routed to a new flow is never routed otherwise after a crash.
//
// Thread-safety: update() from one thread (the dispatcher); a Starts is immutable.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "gateway/flow_table.h"

namespace gateway {

class FlowStarts {
 public:
  static constexpr const char* kFileName = "flow-starts.json";

  // Which flows a record may be routed to, as of one update().
  class Starts {
   public:
    // Removes from `flow_ids` the flows that start after `seq`.
    void filter(std::uint64_t seq, std::vector<std::int64_t>& flow_ids) const;

   private:
    friend class FlowStarts;
    std::unordered_map<std::int64_t, std::uint64_t> from_;  // flow id -> first seq routed to it
  };

  // Reads the file if there is one; throws Error naming it when it cannot be read or parsed.
  // `first_new_seq`: the seq the spool gives the first record appended in this run.
  FlowStarts(const std::filesystem::path& spool_dir, std::uint64_t first_new_seq);

  // The starts for `snapshot`, the next record routed being `next_seq`; persisted (see above)
  // when they changed. Throws Error when the file cannot be written: nothing may be routed with
  // this snapshot until a retry succeeds.
  std::shared_ptr<const Starts> update(const FlowSnapshot& snapshot, std::uint64_t next_seq);

 private:
  struct Entry {
    std::string topic;
    std::uint64_t from = 0;
    bool operator==(const Entry&) const = default;
  };
  void save() const;

  std::filesystem::path path_;
  std::uint64_t first_new_seq_;
  bool start_all_at_zero_;  // no file at open: the first update() keeps today's routing
  std::map<std::int64_t, Entry> entries_;
  std::shared_ptr<const Starts> current_;
};

}  // namespace gateway
