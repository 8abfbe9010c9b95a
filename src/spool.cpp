#include "gateway/spool.h"

#include <fcntl.h>
#include <spdlog/logger.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "gateway/errors.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;

// "GSPL" in the file. Chosen so that zero-filled blocks (what a power loss leaves) never match.
constexpr std::uint32_t kMagic = 0x4C505347;
constexpr std::size_t kPrefixBytes = 8;   // magic + length
constexpr std::size_t kHeaderBytes = 33;  // the fixed part of a record
constexpr std::uint32_t kMinLength = kHeaderBytes - kPrefixBytes;
constexpr std::uint64_t kMaxLength = kMinLength + kSpoolMaxTopicBytes + kSpoolMaxPayloadBytes;
constexpr std::uint8_t kFlagDup = 0x01;
constexpr std::size_t kReadBufferBytes = 256 << 10;
// The write buffer keeps its capacity between appends, unless one huge message inflated it.
constexpr std::size_t kKeepBufferBytes = 4 << 20;
constexpr std::string_view kSegmentSuffix = ".seg";
constexpr std::size_t kSeqDigits = 20;

void put_u16(char* out, std::uint16_t v) {
  out[0] = static_cast<char>(v);
  out[1] = static_cast<char>(v >> 8);
}
void put_u32(char* out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(v >> (8 * i));
}
void put_u64(char* out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
}
std::uint64_t get_le(const char* in, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

std::uint32_t checksum(const char* data, std::size_t size) {
  return static_cast<std::uint32_t>(
      crc32_z(0, reinterpret_cast<const Bytef*>(data), static_cast<z_size_t>(size)));
}

void check_limits(std::string_view topic, std::string_view payload) {
  if (topic.size() > kSpoolMaxTopicBytes) {
    throw std::invalid_argument("spool: topic of " + std::to_string(topic.size()) +
                                " bytes exceeds the limit of " +
                                std::to_string(kSpoolMaxTopicBytes));
  }
  if (payload.size() > kSpoolMaxPayloadBytes) {
    throw std::invalid_argument("spool: payload of " + std::to_string(payload.size()) +
                                " bytes exceeds the limit of " +
                                std::to_string(kSpoolMaxPayloadBytes));
  }
}

// Encodes into `out`, reusing its capacity (no allocation on the hot path once warmed up).
// The caller has checked the limits.
void encode_into(std::string& out, std::uint64_t seq, std::int64_t arrival_us,
                 std::uint16_t packet_id, bool dup, std::string_view topic,
                 std::string_view payload) {
  const std::size_t total = kHeaderBytes + topic.size() + payload.size();
  out.resize(total);
  char* d = out.data();
  put_u32(d, kMagic);
  put_u32(d + 4, static_cast<std::uint32_t>(total - kPrefixBytes));
  put_u64(d + 12, seq);
  put_u64(d + 20, static_cast<std::uint64_t>(arrival_us));
  put_u16(d + 28, packet_id);
  d[30] = static_cast<char>(dup ? kFlagDup : 0);
  put_u16(d + 31, static_cast<std::uint16_t>(topic.size()));
  if (!topic.empty()) std::memcpy(d + kHeaderBytes, topic.data(), topic.size());
  if (!payload.empty())
    std::memcpy(d + kHeaderBytes + topic.size(), payload.data(), payload.size());
  put_u32(d + 8, checksum(d + 12, total - 12));
}

std::uint64_t content_hash(std::string_view topic, std::string_view payload) {
  const std::uint64_t t = std::hash<std::string_view>{}(topic);
  const std::uint64_t p = std::hash<std::string_view>{}(payload);
  return t ^ (p + 0x9e3779b97f4a7c15ull + (t << 6) + (t >> 2));
}

std::string errno_text(int err) { return std::system_category().message(err); }

[[noreturn]] void throw_io(std::string_view what, const fs::path& path, int err) {
  throw SpoolError("spool: " + std::string(what) + " " + path.string() + ": " + errno_text(err));
}

// An owned file descriptor.
class File {
 public:
  File() = default;
  explicit File(int fd) : fd_(fd) {}
  File(File&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  File& operator=(File&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

File open_or_throw(const fs::path& path, int flags, std::string_view what) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (fd < 0) throw_io(what, path, errno);
  return File(fd);
}

// Returns 0 or the errno of the failed write.
int write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return 0;
}

int sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int rc = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return rc;
}

std::optional<std::uint64_t> parse_segment_name(const std::string& name) {
  if (name.size() != kSeqDigits + kSegmentSuffix.size() ||
      std::string_view(name).substr(kSeqDigits) != kSegmentSuffix) {
    return std::nullopt;
  }
  std::uint64_t seq = 0;
  const char* end = name.data() + kSeqDigits;
  const auto [ptr, ec] = std::from_chars(name.data(), end, seq);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  return seq;
}

bool is_hex_id(std::string_view id) {
  return id.size() == 32 && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Buffered sequential decoding of one segment file, from its start.
class Cursor {
 public:
  Cursor() : buffer_(kReadBufferBytes) {}

  void reset(File file, fs::path path) {
    file_ = std::move(file);
    path_ = std::move(path);
    begin_ = end_ = 0;
    file_pos_ = 0;
    if (buffer_.size() > kReadBufferBytes) {
      buffer_.resize(kReadBufferBytes);
      buffer_.shrink_to_fit();
    }
  }

  const fs::path& path() const { return path_; }
  // The file offset of the next byte to decode.
  std::uint64_t offset() const { return file_pos_ - (end_ - begin_); }

  // Decodes the next record among the file's bytes below `limit`. kIncomplete once those bytes
  // hold no further whole record. Throws SpoolError on read errors.
  DecodeResult next(std::uint64_t limit) {
    for (;;) {
      const std::string_view available(buffer_.data() + begin_, end_ - begin_);
      DecodeResult result = decode_record(available);
      if (result.status != DecodeStatus::kIncomplete) {
        begin_ += result.consumed;
        return result;
      }
      if (file_pos_ >= limit) return result;
      std::uint64_t needed = kHeaderBytes;
      if (available.size() >= kPrefixBytes) {
        // decode_record vetted the length, so it is at most kMaxLength.
        needed = kPrefixBytes + get_le(available.data() + 4, 4);
        // Do not load (or allocate for) a record that the readable bytes cannot complete.
        if (offset() + needed > limit) return result;
      }
      std::memmove(buffer_.data(), available.data(), available.size());
      begin_ = 0;
      end_ = available.size();
      if (needed > buffer_.size()) buffer_.resize(needed);
      const std::size_t want = static_cast<std::size_t>(
          std::min<std::uint64_t>(buffer_.size() - end_, limit - file_pos_));
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

 private:
  File file_;
  fs::path path_;
  std::vector<char> buffer_;
  std::size_t begin_ = 0;       // first undecoded byte in buffer_
  std::size_t end_ = 0;         // end of the loaded bytes in buffer_
  std::uint64_t file_pos_ = 0;  // file offset of buffer_[end_]
};

}  // namespace

std::string encode_record(const SpoolRecord& record) {
  check_limits(record.topic, record.payload);
  std::string out;
  encode_into(out, record.seq, record.arrival_us, record.packet_id, record.dup, record.topic,
              record.payload);
  return out;
}

DecodeResult decode_record(std::string_view bytes) {
  DecodeResult result{DecodeStatus::kIncomplete, {}, 0};
  if (bytes.empty()) return result;
  // Compare what is there of the magic, so garbage is recognised even when it is short.
  char magic[4];
  put_u32(magic, kMagic);
  if (std::memcmp(bytes.data(), magic, std::min<std::size_t>(4, bytes.size())) != 0) {
    result.status = DecodeStatus::kCorrupt;
    return result;
  }
  if (bytes.size() < kPrefixBytes) return result;
  const std::uint64_t length = get_le(bytes.data() + 4, 4);
  if (length < kMinLength || length > kMaxLength) {
    result.status = DecodeStatus::kCorrupt;
    return result;
  }
  const std::size_t total = kPrefixBytes + static_cast<std::size_t>(length);
  if (bytes.size() < total) return result;

  const char* d = bytes.data();
  result.status = DecodeStatus::kCorrupt;
  result.consumed = total;
  if (get_le(d + 8, 4) != checksum(d + 12, total - 12)) {
    result.record.seq = get_le(d + 12, 8);  // for the log only
    return result;
  }
  const auto flags = static_cast<std::uint8_t>(d[30]);
  const std::size_t topic_len = get_le(d + 31, 2);
  const std::size_t body = total - kHeaderBytes;
  // Content that encode_record would refuse is corrupt, so kOk always round-trips.
  if ((flags & ~kFlagDup) != 0 || topic_len > body || body - topic_len > kSpoolMaxPayloadBytes) {
    return result;
  }
  SpoolRecord& r = result.record;
  r.seq = get_le(d + 12, 8);
  r.arrival_us = static_cast<std::int64_t>(get_le(d + 20, 8));
  r.packet_id = static_cast<std::uint16_t>(get_le(d + 28, 2));
  r.dup = (flags & kFlagDup) != 0;
  r.topic.assign(d + kHeaderBytes, topic_len);
  r.payload.assign(d + kHeaderBytes + topic_len, body - topic_len);
  result.status = DecodeStatus::kOk;
  return result;
}

class Spool::Impl {
 public:
  Impl(SpoolOptions options, std::shared_ptr<spdlog::logger> log);
  ~Impl();

  const std::string& id() const { return id_; }
  std::optional<AppendResult> append(std::string_view topic, std::string_view payload,
                                     std::uint16_t packet_id, bool dup, std::int64_t arrival_us);
  std::optional<SpoolRecord> read_next(std::chrono::milliseconds timeout);
  void release_below(std::uint64_t seq);
  void stop_back_pressure();
  void close();
  Stats stats() const;

 private:
  struct Segment {
    std::uint64_t size = 0;          // bytes on disk
    std::uint64_t readable_end = 0;  // records end here (before size when framing was lost)
  };
  struct WindowEntry {
    std::uint64_t hash = 0;  // of topic and payload
    std::uint64_t seq = 0;
    std::uint16_t packet_id = 0;  // 0: unused slot
  };

  fs::path segment_path(std::uint64_t first_seq) const;
  void lock_directory();
  void load_or_create_id();
  void recover();
  void create_active_segment_locked(std::uint64_t first_seq);
  void roll_locked();
  void remember_locked(std::uint64_t hash, std::uint64_t seq, std::uint16_t packet_id);
  std::optional<std::uint64_t> find_redelivery_locked(std::uint64_t hash,
                                                      std::uint16_t packet_id) const;
  bool advance_reader_locked();
  void open_reader_locked(std::map<std::uint64_t, Segment>::const_iterator it);
  void sync_directory_or_log() const;
  void fsync_loop();

  const SpoolOptions options_;
  const std::shared_ptr<spdlog::logger> log_;
  std::string id_;
  bool id_created_ = false;
  File lock_file_;

  mutable std::mutex mu_;
  std::condition_variable space_cv_;           // appenders waiting for release_below()
  std::condition_variable data_cv_;            // the reader waiting for append()
  std::condition_variable sync_cv_;            // the fsync thread waiting for new records or stop
  std::atomic<bool> closed_{false};            // written under mu_, so waiters never miss it
  bool stopping_ = false;                      // guarded by mu_; ends the fsync thread
  bool uncapped_ = false;                      // guarded by mu_; stop_back_pressure() was called
  std::map<std::uint64_t, Segment> segments_;  // guarded by mu_; by first seq; last = active
  std::uint64_t active_first_ = 0;             // guarded by mu_
  Segment* active_ = nullptr;  // guarded by mu_; segments_[active_first_] (map nodes are stable)
  std::shared_ptr<File> active_file_;            // guarded by mu_; shared with the fsync thread
  std::vector<std::shared_ptr<File>> unsynced_;  // guarded by mu_; rolled but not yet synced
  bool dirty_ = false;                           // guarded by mu_; kBatch: something to sync
  bool directory_dirty_ = false;                 // guarded by mu_; kBatch: dir needs fsync
  std::uint64_t next_seq_ = 1;                   // guarded by mu_
  std::uint64_t bytes_ = 0;                      // guarded by mu_
  std::uint64_t appended_ = 0;                   // guarded by mu_
  std::uint64_t redeliveries_dropped_ = 0;       // guarded by mu_
  std::uint64_t corrupt_records_skipped_ = 0;    // guarded by mu_
  int blocked_appenders_ = 0;                    // guarded by mu_
  std::string buffer_;                           // guarded by mu_; the record being written
  std::vector<WindowEntry> window_;              // guarded by mu_; ring buffer
  std::size_t window_next_ = 0;                  // guarded by mu_; the slot to overwrite next

  // The consumer thread's own state; it takes mu_ only to look at the segments.
  Cursor cursor_;
  std::optional<std::uint64_t> read_first_;  // the segment being read
  std::uint64_t read_limit_ = 0;             // bytes of it known to hold whole records
  bool read_stuck_ = false;                  // framing lost below read_limit_
  std::uint64_t last_read_seq_ = 0;

  std::thread fsync_thread_;  // kBatch only
};

Spool::Impl::Impl(SpoolOptions options, std::shared_ptr<spdlog::logger> log)
    : options_(std::move(options)),
      log_(log ? std::move(log) : std::make_shared<spdlog::logger>("spool")) {
  if (options_.dir.empty()) throw SpoolError("spool: no directory given");
  if (options_.segment_bytes == 0 || options_.max_bytes == 0) {
    throw SpoolError("spool: segment_bytes and max_bytes must be positive");
  }
  std::error_code ec;
  fs::create_directories(options_.dir, ec);
  if (ec) {
    throw SpoolError("spool: cannot create " + options_.dir.string() + ": " + ec.message());
  }
  window_.resize(options_.redelivery_window);
  lock_directory();
  load_or_create_id();
  recover();
  if (options_.fsync == SpoolFsync::kBatch) fsync_thread_ = std::thread([this] { fsync_loop(); });
}

Spool::Impl::~Impl() {
  close();
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  sync_cv_.notify_all();
  if (fsync_thread_.joinable()) fsync_thread_.join();
  if (options_.fsync == SpoolFsync::kNever) return;
  for (const auto& file : unsynced_) {
    if (::fdatasync(file->get()) != 0) log_->error("spool: fdatasync: {}", errno_text(errno));
  }
  if (active_file_ && ::fdatasync(active_file_->get()) != 0) {
    log_->error("spool: fdatasync {}: {}", segment_path(active_first_).string(), errno_text(errno));
  }
  if (directory_dirty_) sync_directory_or_log();
}

fs::path Spool::Impl::segment_path(std::uint64_t first_seq) const {
  char name[kSeqDigits + 1];
  std::snprintf(name, sizeof(name), "%020llu", static_cast<unsigned long long>(first_seq));
  return options_.dir / (std::string(name) + std::string(kSegmentSuffix));
}

void Spool::Impl::lock_directory() {
  const fs::path path = options_.dir / "spool.lock";
  lock_file_ = open_or_throw(path, O_RDWR | O_CREAT, "cannot open");
  if (::flock(lock_file_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      throw SpoolError("spool: " + options_.dir.string() + " is in use by another spool (" +
                       path.string() + " is locked)");
    }
    throw_io("cannot lock", path, errno);
  }
}

void Spool::Impl::load_or_create_id() {
  const fs::path path = options_.dir / "spool.id";
  File file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (file) {
    char text[64];
    ssize_t n;
    do {
      n = ::read(file.get(), text, sizeof(text));
    } while (n < 0 && errno == EINTR);
    if (n < 0) throw_io("cannot read", path, errno);
    std::string_view id(text, static_cast<std::size_t>(n));
    while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.remove_suffix(1);
    // Never silently replace a damaged id: the database offsets depend on it.
    if (!is_hex_id(id)) throw SpoolError("spool: " + path.string() + " is not a 32-hex-digit id");
    id_ = id;
    return;
  }
  if (errno != ENOENT) throw_io("cannot open", path, errno);

  std::random_device random;
  const auto word = [&random] {
    return (static_cast<std::uint64_t>(random()) << 32) | static_cast<std::uint32_t>(random());
  };
  char id[33];
  std::snprintf(id, sizeof(id), "%016llx%016llx", static_cast<unsigned long long>(word()),
                static_cast<unsigned long long>(word()));
  id_ = id;
  const std::string text = id_ + "\n";
  const fs::path temp = options_.dir / "spool.id.tmp";
  {
    File out = open_or_throw(temp, O_WRONLY | O_CREAT | O_TRUNC, "cannot create");
    if (const int err = write_all(out.get(), text.data(), text.size())) {
      throw_io("cannot write", temp, err);
    }
    if (::fsync(out.get()) != 0) throw_io("cannot fsync", temp, errno);
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) throw_io("cannot rename to", path, errno);
  if (const int err = sync_directory(options_.dir)) throw_io("cannot fsync", options_.dir, err);
  id_created_ = true;
}

void Spool::Impl::recover() {
  std::vector<std::uint64_t> firsts;
  std::error_code ec;
  for (fs::directory_iterator it(options_.dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (auto seq = parse_segment_name(it->path().filename().string())) firsts.push_back(*seq);
  }
  if (ec) throw SpoolError("spool: cannot list " + options_.dir.string() + ": " + ec.message());
  std::sort(firsts.begin(), firsts.end());
  if (id_created_ && !firsts.empty()) {
    log_->warn("spool: {} has segments but had no spool.id; the new id {} makes them replay as new",
               options_.dir.string(), id_);
  }

  std::lock_guard lock(mu_);
  std::uint64_t max_seq = 0;
  std::uint64_t damaged_tail_bytes = 0;  // after the last good record of the last segment
  Cursor cursor;
  for (std::size_t i = 0; i < firsts.size(); ++i) {
    const bool last = i + 1 == firsts.size();
    const fs::path path = segment_path(firsts[i]);
    File file = open_or_throw(path, O_RDONLY, "cannot open");
    struct stat st {};
    if (::fstat(file.get(), &st) != 0) throw_io("cannot stat", path, errno);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    Segment segment{size, size};
    std::uint64_t good_end = 0;
    cursor.reset(std::move(file), path);
    for (;;) {
      const std::uint64_t offset = cursor.offset();
      DecodeResult r = cursor.next(size);
      if (r.status == DecodeStatus::kOk) {
        max_seq = std::max(max_seq, r.record.seq);
        good_end = cursor.offset();
        if (r.record.packet_id != 0) {
          remember_locked(content_hash(r.record.topic, r.record.payload), r.record.seq,
                          r.record.packet_id);
        }
        continue;
      }
      if (r.status == DecodeStatus::kCorrupt && r.consumed > 0) {
        log_->error(
            "spool: {} offset {}: record (seq {} as stored) fails its checksum; skipped {} "
            "bytes",
            path.string(), offset, r.record.seq, r.consumed);
        ++corrupt_records_skipped_;
        continue;
      }
      if (r.status == DecodeStatus::kCorrupt) {
        log_->error(
            "spool: {} offset {}: bad magic or length; the remaining {} bytes of the "
            "segment are unreadable",
            path.string(), offset, size - offset);
        ++corrupt_records_skipped_;
        segment.readable_end = offset;
        break;
      }
      if (offset == size) break;  // clean end
      if (last) {
        log_->warn("spool: {}: torn record at offset {}; truncating {} bytes", path.string(),
                   offset, size - offset);
        if (::truncate(path.c_str(), static_cast<off_t>(offset)) != 0) {
          throw_io("cannot truncate", path, errno);
        }
        segment.size = segment.readable_end = offset;
      } else {
        log_->error("spool: {} offset {}: the last {} bytes are a partial record; skipped",
                    path.string(), offset, size - offset);
        ++corrupt_records_skipped_;
        segment.readable_end = offset;
      }
      break;
    }
    if (last) damaged_tail_bytes = size - good_end;
    bytes_ += segment.size;
    segments_.emplace(firsts[i], segment);
  }

  next_seq_ = std::max<std::uint64_t>(1, max_seq + 1);
  if (!firsts.empty()) next_seq_ = std::max(next_seq_, firsts.back());
  if (firsts.empty()) {
    create_active_segment_locked(next_seq_);
  } else if (damaged_tail_bytes > 0) {
    // The damaged bytes may have held records already handed to the database; skip every seq
    // they could have used. The new segment's name keeps that gap across further restarts.
    next_seq_ += (damaged_tail_bytes + kHeaderBytes - 1) / kHeaderBytes;
    log_->warn("spool: the last segment was damaged; appends continue in a new segment at seq {}",
               next_seq_);
    create_active_segment_locked(next_seq_);
  } else {
    active_first_ = firsts.back();
    active_ = &segments_.at(active_first_);
    active_file_ = std::make_shared<File>(
        open_or_throw(segment_path(active_first_), O_WRONLY | O_APPEND, "cannot open"));
  }
  log_->info(
      "spool: opened {} (id {}): {} segments, {} bytes, next seq {}, {} corrupt records "
      "skipped",
      options_.dir.string(), id_, segments_.size(), bytes_, next_seq_, corrupt_records_skipped_);
}

void Spool::Impl::create_active_segment_locked(std::uint64_t first_seq) {
  const fs::path path = segment_path(first_seq);
  // O_EXCL: a file of that name would hold records we know nothing about.
  auto file = std::make_shared<File>(
      open_or_throw(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND, "cannot create"));
  active_ = &segments_.emplace(first_seq, Segment{}).first->second;
  active_first_ = first_seq;
  active_file_ = std::move(file);
  switch (options_.fsync) {
    case SpoolFsync::kNever:
      break;
    case SpoolFsync::kBatch:
      directory_dirty_ = true;
      if (!std::exchange(dirty_, true)) sync_cv_.notify_one();
      break;
    case SpoolFsync::kAlways:
      if (const int err = sync_directory(options_.dir)) throw_io("cannot fsync", options_.dir, err);
      break;
  }
}

void Spool::Impl::roll_locked() {
  // kBatch: the fsync thread syncs the finished segment; kAlways synced every record already.
  if (options_.fsync == SpoolFsync::kBatch) unsynced_.push_back(active_file_);
  create_active_segment_locked(next_seq_);
  log_->debug("spool: rolled to segment {}", segment_path(next_seq_).string());
}

void Spool::Impl::remember_locked(std::uint64_t hash, std::uint64_t seq, std::uint16_t packet_id) {
  if (window_.empty()) return;
  window_[window_next_] = WindowEntry{hash, seq, packet_id};
  window_next_ = (window_next_ + 1) % window_.size();
}

std::optional<std::uint64_t> Spool::Impl::find_redelivery_locked(std::uint64_t hash,
                                                                 std::uint16_t packet_id) const {
  // Newest first: if the same message was spooled twice, the later copy is the one to report.
  for (std::size_t i = 0; i < window_.size(); ++i) {
    const WindowEntry& e = window_[(window_next_ + window_.size() - 1 - i) % window_.size()];
    if (e.packet_id == packet_id && e.hash == hash) return e.seq;
  }
  return std::nullopt;
}

std::optional<AppendResult> Spool::Impl::append(std::string_view topic, std::string_view payload,
                                                std::uint16_t packet_id, bool dup,
                                                std::int64_t arrival_us) {
  check_limits(topic, payload);
  const bool remember = packet_id != 0 && !window_.empty();
  const std::uint64_t hash = remember ? content_hash(topic, payload) : 0;
  const bool maybe_redelivery = remember && dup;

  std::unique_lock lock(mu_);
  if (closed_) return std::nullopt;
  const auto redelivered = [&]() -> std::optional<AppendResult> {
    if (!maybe_redelivery) return std::nullopt;
    const auto seq = find_redelivery_locked(hash, packet_id);
    if (!seq) return std::nullopt;
    ++redeliveries_dropped_;
    log_->debug("spool: redelivery of packet {} on {} is seq {}; not spooled again", packet_id,
                topic, *seq);
    return AppendResult{*seq, true};
  };
  if (auto r = redelivered()) return r;
  if (bytes_ >= options_.max_bytes && !uncapped_) {
    if (blocked_appenders_++ == 0) {
      log_->warn("spool: full ({} bytes, max {}); appends wait for records to be processed", bytes_,
                 options_.max_bytes);
    }
    space_cv_.wait(lock, [&] { return closed_ || uncapped_ || bytes_ < options_.max_bytes; });
    if (--blocked_appenders_ == 0 && !closed_ && !uncapped_) {
      log_->info("spool: room again ({} bytes); appends resume", bytes_);
    }
    if (closed_) return std::nullopt;
    if (auto r = redelivered()) return r;  // the first delivery may have got in meanwhile
  }

  const std::uint64_t record_bytes = kHeaderBytes + topic.size() + payload.size();
  if (active_->size > 0 && active_->size + record_bytes > options_.segment_bytes) roll_locked();
  const std::uint64_t seq = next_seq_;
  encode_into(buffer_, seq, arrival_us, packet_id, dup, topic, payload);
  const int fd = active_file_->get();
  if (const int err = write_all(fd, buffer_.data(), buffer_.size())) {
    // Cut a partly written record back off, so later records stay reachable.
    if (::ftruncate(fd, static_cast<off_t>(active_->size)) != 0) {
      log_->error("spool: cannot cut back {}: {}", segment_path(active_first_).string(),
                  errno_text(errno));
    }
    throw_io("cannot write", segment_path(active_first_), err);
  }
  ++next_seq_;
  active_->size += record_bytes;
  active_->readable_end = active_->size;
  bytes_ += record_bytes;
  ++appended_;
  if (remember) remember_locked(hash, seq, packet_id);
  if (buffer_.capacity() > kKeepBufferBytes) std::string().swap(buffer_);
  if (options_.fsync == SpoolFsync::kAlways) {
    if (::fdatasync(fd) != 0) throw_io("cannot fdatasync", segment_path(active_first_), errno);
  } else if (options_.fsync == SpoolFsync::kBatch && !std::exchange(dirty_, true)) {
    sync_cv_.notify_one();
  }
  lock.unlock();
  data_cv_.notify_one();
  return AppendResult{seq, false};
}

std::optional<SpoolRecord> Spool::Impl::read_next(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (closed_) return std::nullopt;
    if (read_first_ && !read_stuck_) {
      const std::uint64_t offset = cursor_.offset();
      DecodeResult r = cursor_.next(read_limit_);
      if (r.status == DecodeStatus::kOk) {
        if (r.record.seq <= last_read_seq_) {
          log_->error("spool: {} offset {}: seq {} out of order (after {}); skipped",
                      cursor_.path().string(), offset, r.record.seq, last_read_seq_);
          continue;
        }
        last_read_seq_ = r.record.seq;
        return std::move(r.record);
      }
      if (r.status == DecodeStatus::kCorrupt && r.consumed > 0) continue;  // logged by recovery
      if (r.status == DecodeStatus::kCorrupt) {
        // Recovery keeps lost framing out of read_limit_, so the file changed under us.
        log_->error("spool: {} offset {}: bad magic or length; skipping the rest of the segment",
                    cursor_.path().string(), offset);
        read_stuck_ = true;
      }
    }
    std::unique_lock lock(mu_);
    for (;;) {
      if (closed_) return std::nullopt;
      if (advance_reader_locked()) break;
      if (data_cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
        if (closed_ || !advance_reader_locked()) return std::nullopt;
        break;
      }
    }
  }
}

// Called when the cursor has decoded everything below read_limit_. Returns whether there is
// something new to decode: more bytes of this segment, or the next segment.
bool Spool::Impl::advance_reader_locked() {
  if (!read_first_) {
    open_reader_locked(segments_.cbegin());  // the active segment always exists
    return true;
  }
  const auto it = segments_.find(*read_first_);
  if (it != segments_.end() && !read_stuck_) {
    const bool active = it->first == active_first_;
    const std::uint64_t limit = active ? it->second.size : it->second.readable_end;
    if (limit > read_limit_) {
      read_limit_ = limit;
      return true;
    }
    if (active) return false;
  }
  // Finished (or released, or unreadable): move on.
  const auto next = segments_.upper_bound(*read_first_);
  if (next == segments_.end()) return false;
  open_reader_locked(next);
  return true;
}

void Spool::Impl::open_reader_locked(std::map<std::uint64_t, Segment>::const_iterator it) {
  const fs::path path = segment_path(it->first);
  cursor_.reset(open_or_throw(path, O_RDONLY, "cannot open"), path);
  read_first_ = it->first;
  read_limit_ = it->first == active_first_ ? it->second.size : it->second.readable_end;
  read_stuck_ = false;
}

void Spool::Impl::release_below(std::uint64_t seq) {
  std::vector<fs::path> doomed;
  {
    std::lock_guard lock(mu_);
    if (seq >= next_seq_ && active_->size > 0 && bytes_ >= options_.max_bytes && !closed_) {
      try {
        roll_locked();
      } catch (const SpoolError& e) {
        log_->error("{}", e.what());
      }
    }
    // A segment holds only seqs below the next segment's first seq.
    for (auto it = segments_.begin(); std::next(it) != segments_.end();) {
      const auto next = std::next(it);
      if (next->first > seq) break;
      doomed.push_back(segment_path(it->first));
      bytes_ -= it->second.size;
      segments_.erase(it);
      it = next;
    }
  }
  if (doomed.empty()) return;
  for (const auto& path : doomed) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      log_->error("spool: cannot delete {}: {}", path.string(), errno_text(errno));
    }
  }
  if (options_.fsync != SpoolFsync::kNever) sync_directory_or_log();
  log_->debug("spool: released {} segment(s) below seq {}", doomed.size(), seq);
  space_cv_.notify_all();
}

void Spool::Impl::stop_back_pressure() {
  {
    std::lock_guard lock(mu_);
    if (std::exchange(uncapped_, true)) return;
    if (bytes_ >= options_.max_bytes) {
      log_->warn("spool: shutting down; appends no longer wait for space ({} bytes, max {})",
                 bytes_, options_.max_bytes);
    }
  }
  space_cv_.notify_all();
}

void Spool::Impl::close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  space_cv_.notify_all();
  data_cv_.notify_all();
}

Spool::Stats Spool::Impl::stats() const {
  std::lock_guard lock(mu_);
  Stats s;
  s.bytes = bytes_;
  s.segments = segments_.size();
  s.next_seq = next_seq_;
  s.appended = appended_;
  s.redeliveries_dropped = redeliveries_dropped_;
  s.corrupt_records_skipped = corrupt_records_skipped_;
  s.full = blocked_appenders_ > 0;
  return s;
}

void Spool::Impl::sync_directory_or_log() const {
  if (const int err = sync_directory(options_.dir)) {
    log_->error("spool: cannot fsync {}: {}", options_.dir.string(), errno_text(err));
  }
}

void Spool::Impl::fsync_loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    sync_cv_.wait(lock, [this] { return stopping_ || dirty_; });
    // Let a batch of records gather; the destructor does the final sync.
    if (sync_cv_.wait_for(lock, options_.fsync_interval, [this] { return stopping_; })) return;
    dirty_ = false;
    const std::shared_ptr<File> active = active_file_;
    std::vector<std::shared_ptr<File>> rolled;
    rolled.swap(unsynced_);
    const bool directory = std::exchange(directory_dirty_, false);
    lock.unlock();
    for (const auto& file : rolled) {
      if (::fdatasync(file->get()) != 0) log_->error("spool: fdatasync: {}", errno_text(errno));
    }
    if (::fdatasync(active->get()) != 0) log_->error("spool: fdatasync: {}", errno_text(errno));
    if (directory) sync_directory_or_log();
    lock.lock();
  }
}

Spool::Spool(SpoolOptions options, std::shared_ptr<spdlog::logger> log)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(log))) {}
Spool::~Spool() = default;
const std::string& Spool::id() const { return impl_->id(); }
std::optional<AppendResult> Spool::append(std::string_view topic, std::string_view payload,
                                          std::uint16_t packet_id, bool dup,
                                          std::int64_t arrival_us) {
  return impl_->append(topic, payload, packet_id, dup, arrival_us);
}
std::optional<SpoolRecord> Spool::read_next(std::chrono::milliseconds timeout) {
  return impl_->read_next(timeout);
}
void Spool::release_below(std::uint64_t seq) { impl_->release_below(seq); }
void Spool::stop_back_pressure() { impl_->stop_back_pressure(); }
void Spool::close() { impl_->close(); }
Spool::Stats Spool::stats() const { return impl_->stats(); }

}  // namespace gateway
