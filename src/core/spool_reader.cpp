#include "spool_reader.h"

#include <fcntl.h>
#include <spdlog/logger.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <utility>

#include "gateway/errors.h"

namespace gateway::spool_detail {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kReadBufferBytes = 256 << 10;
constexpr std::size_t kSeqDigits = 20;
constexpr std::string_view kSegmentSuffix = ".seg";

}  // namespace

File::File(File&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void File::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string errno_text(int err) { return std::system_category().message(err); }

void throw_io(std::string_view what, const fs::path& path, int err) {
  throw SpoolError("spool: " + std::string(what) + " " + path.string() + ": " + errno_text(err));
}

File open_or_throw(const fs::path& path, int flags, std::string_view what) {
  // Created for the owner only: segments hold the messages' payloads.
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0600);
  if (fd < 0) throw_io(what, path, errno);
  return File(fd);
}

fs::path segment_path(const fs::path& dir, std::uint64_t first_seq) {
  char name[kSeqDigits + 1];
  std::snprintf(name, sizeof(name), "%020llu", static_cast<unsigned long long>(first_seq));
  return dir / (std::string(name) + std::string(kSegmentSuffix));
}

std::optional<std::uint64_t> parse_segment_name(std::string_view name) {
  if (name.size() != kSeqDigits + kSegmentSuffix.size() ||
      name.substr(kSeqDigits) != kSegmentSuffix) {
    return std::nullopt;
  }
  std::uint64_t seq = 0;
  const char* end = name.data() + kSeqDigits;
  const auto [ptr, ec] = std::from_chars(name.data(), end, seq);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  return seq;
}

SegmentDecoder::SegmentDecoder() : buffer_(kReadBufferBytes) {}

void SegmentDecoder::reset(File file, fs::path path) {
  file_ = std::move(file);
  path_ = std::move(path);
  begin_ = end_ = 0;
  file_pos_ = 0;
  if (buffer_.size() > kReadBufferBytes) {
    buffer_.resize(kReadBufferBytes);
    buffer_.shrink_to_fit();
  }
}

DecodeResult SegmentDecoder::next(std::uint64_t limit) {
  for (;;) {
    const std::string_view available(buffer_.data() + begin_, end_ - begin_);
    DecodeResult result = decode_record(available);
    if (result.status != DecodeStatus::kIncomplete) {
      begin_ += result.consumed;
      return result;
    }
    if (file_pos_ >= limit) return result;
    std::uint64_t needed = kSpoolRecordHeaderBytes;
    if (const std::size_t framed = framed_record_size(available); framed > 0) {
      needed = framed;  // at most the format's maximum: decode_record vetted the length
      // Do not load (or allocate for) a record that the readable bytes cannot complete.
      if (offset() + needed > limit) return result;
    }
    std::memmove(buffer_.data(), available.data(), available.size());
    begin_ = 0;
    end_ = available.size();
    if (needed > buffer_.size()) buffer_.resize(needed);
    const std::size_t want =
        static_cast<std::size_t>(std::min<std::uint64_t>(buffer_.size() - end_, limit - file_pos_));
    ssize_t n;
    do {
      n = ::pread(file_.get(), buffer_.data() + end_, want, static_cast<off_t>(file_pos_));
    } while (n < 0 && errno == EINTR);
    if (n < 0) throw_io("cannot read", path_, errno);
    if (n == 0) return result;  // shorter than we were told: nothing more to read
    end_ += static_cast<std::size_t>(n);
    file_pos_ += static_cast<std::uint64_t>(n);
  }
}

std::optional<SpoolRecord> SpoolReader::next(spdlog::logger& log) {
  while (segment_ && !stuck_) {
    const std::uint64_t offset = decoder_.offset();
    DecodeResult r = decoder_.next(limit_);
    if (r.status == DecodeStatus::kIncomplete) return std::nullopt;
    if (r.status == DecodeStatus::kCorrupt) {
      if (r.consumed > 0) continue;  // a bad checksum; recovery logged it
      // Recovery keeps lost framing out of the readable bytes, so the file changed under us.
      log.error("spool: {} offset {}: bad magic or length; skipping the rest of the segment",
                decoder_.path().string(), offset);
      stuck_ = true;
      return std::nullopt;
    }
    if (r.record.seq < from_seq_) continue;
    if (r.record.seq <= last_seq_) {
      log.error("spool: {} offset {}: seq {} out of order (after {}); skipped",
                decoder_.path().string(), offset, r.record.seq, last_seq_);
      continue;
    }
    last_seq_ = r.record.seq;
    return std::move(r.record);
  }
  return std::nullopt;
}

void SpoolReader::open(File file, fs::path path, std::uint64_t segment, std::uint64_t limit) {
  decoder_.reset(std::move(file), std::move(path));
  segment_ = segment;
  limit_ = limit;
  stuck_ = false;
}

}  // namespace gateway::spool_detail
