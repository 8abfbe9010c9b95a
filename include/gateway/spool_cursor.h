// SpoolCursor: a second reader of the spool, which re-reads its records from a given seq. The
// pipeline uses one to read again the messages of a flow that it had to drop from memory while
// the flow was held. Made by Spool::cursor().
//
// Thread-safety: a cursor is used by one thread at a time, concurrently with append(),
// read_next(), release_below() and other cursors on other threads. It holds the spool's lock only
// to look at the segment list (and to open a segment file), never while it reads records. It
// keeps its own file descriptor and offset, so next() costs one record (amortised). A cursor must
// not outlive the Spool that made it.
#pragma once

#include <spdlog/fwd.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "gateway/spool_format.h"

namespace gateway {

namespace spool_detail {
class SegmentIndex;
}

class SpoolCursor {
 public:
  ~SpoolCursor();
  SpoolCursor(const SpoolCursor&) = delete;
  SpoolCursor& operator=(const SpoolCursor&) = delete;

  // Returns the next record with from_seq <= seq < below, in seq order, or std::nullopt when
  // there is none (yet): a later call may return one once more records are written or `below` is
  // larger. A record becomes visible here when it does to read_next(). Skips corrupt records as
  // read_next() does and follows segment rolls, including ensure_seq_above()'s. The caller must
  // not call release_below() with a seq above this cursor's position (from_seq, then the seq
  // after the last record returned), or the segments it still needs are deleted. Throws
  // SpoolError on read errors.
  std::optional<SpoolRecord> next(std::uint64_t below);

 private:
  friend class Spool;
  class Impl;  // in src/core/spool_cursor.cpp
  SpoolCursor(spool_detail::SegmentIndex& index, std::shared_ptr<spdlog::logger> log,
              std::uint64_t from_seq);
  std::unique_ptr<Impl> impl_;
};

}  // namespace gateway
