// The spool's reader side, private to the spool's sources: a buffered decoder over one segment
// file (SegmentDecoder), a reader's place among the segments (SpoolReader), and the port through
// which a reader asks the spool for more (SegmentIndex). The consumer (Spool::read_next) and every
// SpoolCursor own a SpoolReader each; a SpoolReader is used by one thread at a time. Also the
// segment file names and file helpers that the writer (spool.cpp) shares.
#pragma once

#include <spdlog/fwd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/spool_format.h"

namespace gateway::spool_detail {

// An owned file descriptor.
class File {
 public:
  File() = default;
  explicit File(int fd) : fd_(fd) {}
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset();

 private:
  int fd_ = -1;
};

std::string errno_text(int err);
// Throws SpoolError("spool: <what> <path>: <strerror(err)>").
[[noreturn]] void throw_io(std::string_view what, const std::filesystem::path& path, int err);
// open(2) with O_CLOEXEC (mode 0600: segments hold payloads); throws SpoolError on failure.
File open_or_throw(const std::filesystem::path& path, int flags, std::string_view what);
// dir/<first seq, 20 digits>.seg
std::filesystem::path segment_path(const std::filesystem::path& dir, std::uint64_t first_seq);
// The first seq in a segment file's name, or std::nullopt if `name` is not a segment's.
std::optional<std::uint64_t> parse_segment_name(std::string_view name);

// Buffered sequential decoding of one segment file, from its start.
class SegmentDecoder {
 public:
  SegmentDecoder();
  void reset(File file, std::filesystem::path path);
  const std::filesystem::path& path() const { return path_; }
  // The file offset of the next byte to decode.
  std::uint64_t offset() const { return file_pos_ - (end_ - begin_); }
  // Decodes the next record among the file's bytes below `limit`. kIncomplete once those bytes
  // hold no further whole record. Throws SpoolError on read errors.
  DecodeResult next(std::uint64_t limit);

 private:
  File file_;
  std::filesystem::path path_;
  std::vector<char> buffer_;
  std::size_t begin_ = 0;       // first undecoded byte in buffer_
  std::size_t end_ = 0;         // end of the loaded bytes in buffer_
  std::uint64_t file_pos_ = 0;  // file offset of buffer_[end_]
};

// A reader's place in the spool: the segment it reads, how much of it may be decoded, and the
// decoder over its file.
class SpoolReader {
 public:
  // Records with a seq below `from_seq` are passed over silently.
  explicit SpoolReader(std::uint64_t from_seq) : from_seq_(from_seq) {}

  // The next record among the bytes below limit(), in file order. Skips records that fail their
  // checksum (recovery logged them) and records whose seq is not above the last one returned
  // (logged); after lost framing (bad magic or length, logged) it gives up on the segment.
  // std::nullopt: nothing more below the limit; then SegmentIndex::advance() moves it on.
  // Throws SpoolError on read errors.
  std::optional<SpoolRecord> next(spdlog::logger& log);

  // For SegmentIndex::advance(), under the spool's lock.
  std::uint64_t from_seq() const { return from_seq_; }
  // The first seq (name) of the segment being read; std::nullopt before the first one.
  const std::optional<std::uint64_t>& segment() const { return segment_; }
  std::uint64_t limit() const { return limit_; }
  bool stuck() const { return stuck_; }  // framing was lost: the rest of the segment is skipped
  void open(File file, std::filesystem::path path, std::uint64_t segment, std::uint64_t limit);
  void raise_limit(std::uint64_t limit) { limit_ = limit; }

 private:
  const std::uint64_t from_seq_;
  SegmentDecoder decoder_;
  std::optional<std::uint64_t> segment_;
  std::uint64_t limit_ = 0;  // bytes of the segment that readers may decode
  bool stuck_ = false;
  std::uint64_t last_seq_ = 0;  // of the last record returned
};

// The spool's segment list, as readers see it (implemented by Spool's implementation).
class SegmentIndex {
 public:
  // Called when reader.next() returned std::nullopt: raises the reader's limit if its segment
  // grew, or opens the next segment once its own is finished (or released, or unreadable); the
  // first call opens the segment that holds reader.from_seq(), or the oldest. Returns whether
  // there is something new to decode. Thread-safe: holds the spool's lock only for the segment
  // list and an open(2). Throws SpoolError if a segment file cannot be opened.
  virtual bool advance(SpoolReader& reader) = 0;

 protected:
  ~SegmentIndex() = default;
};

}  // namespace gateway::spool_detail
