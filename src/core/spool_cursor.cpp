#include "gateway/spool_cursor.h"

#include <spdlog/logger.h>

#include <utility>

#include "spool_reader.h"

namespace gateway {

class SpoolCursor::Impl {
 public:
  Impl(spool_detail::SegmentIndex& index, std::shared_ptr<spdlog::logger> log,
       std::uint64_t from_seq)
      : index_(index), log_(std::move(log)), reader_(from_seq), from_seq_(from_seq) {}

  std::optional<SpoolRecord> next(std::uint64_t below) {
    if (below <= from_seq_) return std::nullopt;
    while (!ahead_) {
      ahead_ = reader_.next(*log_);
      if (!ahead_ && !index_.advance(reader_)) return std::nullopt;
    }
    // The reader may run ahead of `below`; the record waits here for a later call.
    if (ahead_->seq >= below) return std::nullopt;
    return std::exchange(ahead_, std::nullopt);
  }

 private:
  spool_detail::SegmentIndex& index_;
  const std::shared_ptr<spdlog::logger> log_;
  spool_detail::SpoolReader reader_;
  const std::uint64_t from_seq_;
  std::optional<SpoolRecord> ahead_;  // decoded, not yet returned: its seq was >= below
};

SpoolCursor::SpoolCursor(spool_detail::SegmentIndex& index, std::shared_ptr<spdlog::logger> log,
                         std::uint64_t from_seq)
    : impl_(std::make_unique<Impl>(index, std::move(log), from_seq)) {}
SpoolCursor::~SpoolCursor() = default;
std::optional<SpoolRecord> SpoolCursor::next(std::uint64_t below) { return impl_->next(below); }

}  // namespace gateway
