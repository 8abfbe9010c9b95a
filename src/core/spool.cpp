#include "gateway/spool.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <spdlog/logger.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "gateway/atomic_file.h"
#include "gateway/errors.h"
#include "gateway/thread_name.h"
#include "spool_reader.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;
using spool_detail::errno_text;
using spool_detail::File;
using spool_detail::open_or_throw;
using spool_detail::parse_segment_name;
using spool_detail::SpoolReader;
using spool_detail::throw_io;

// Where release_below() keeps its seq for the next open (see Impl::released_below_).
constexpr const char* kReleasedFile = "released-below";

// The write buffer keeps its capacity between appends, unless one huge message inflated it.
constexpr std::size_t kKeepBufferBytes = 4 << 20;

std::uint64_t content_hash(std::string_view topic, std::string_view payload) {
  const std::uint64_t t = std::hash<std::string_view>{}(topic);
  const std::uint64_t p = std::hash<std::string_view>{}(payload);
  return t ^ (p + 0x9e3779b97f4a7c15ull + (t << 6) + (t >> 2));
}

// How far ahead of the active segment's end append() preallocates and maps (see AppendWindow).
constexpr std::uint64_t kWindowBytes = 1 << 20;

// Writes all of `size` bytes at `offset`. Returns 0 or the errno of the failed write.
int pwrite_all(int fd, const char* data, std::size_t size, std::uint64_t offset) {
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    data += n;
    offset += static_cast<std::uint64_t>(n);
    size -= static_cast<std::size_t>(n);
  }
  return 0;
}

// Whether the bytes [from, to) of the file at `path` are all zero: the preallocated, never
// written tail an AppendWindow leaves when the process dies. Throws SpoolError on read errors.
bool zero_tail(const fs::path& path, std::uint64_t from, std::uint64_t to) {
  const File file = open_or_throw(path, O_RDONLY, "cannot open");
  std::vector<char> chunk(64 << 10);
  while (from < to) {
    const ssize_t n =
        ::pread(file.get(), chunk.data(),
                static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), to - from)),
                static_cast<off_t>(from));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_io("cannot read", path, errno);
    if (n == 0) return true;  // shorter than thought: nothing more to look at
    if (std::any_of(chunk.begin(), chunk.begin() + n, [](char c) { return c != 0; })) return false;
    from += static_cast<std::uint64_t>(n);
  }
  return true;
}

// A shared, writable mapping of the bytes just past the active segment's records, preallocated
// (posix_fallocate) so that a write into it needs no block allocation. Why: an append is then a
// memcpy into the page cache instead of a write(2) per message on Paho's receive thread; the
// bytes are in the page cache the moment they are copied, so they survive kill -9 exactly as a
// write(2) does, and fdatasync() flushes them as it flushes written pages. The cost: the
// segment file is longer than its records while it is active (a zero tail that recovery and
// roll cut off), and a file shrunk behind the spool's back would make a copy fault (SIGBUS).
// Only where fallocate reserves the blocks (fallocate_reserves_blocks()): elsewhere (ZFS, NFS,
// FUSE) it may succeed without them, and a full disk would show at writeback, after the ack.
class AppendWindow {
 public:
  AppendWindow() = default;
  ~AppendWindow() { reset(); }
  AppendWindow(const AppendWindow&) = delete;
  AppendWindow& operator=(const AppendWindow&) = delete;

  // Whether [offset, offset + n) of the file lies in the window.
  bool covers(std::uint64_t offset, std::size_t n) const {
    return addr_ != nullptr && offset >= begin_ && offset + n <= end_;
  }
  // Where file offset `offset` (covered) is in memory.
  char* at(std::uint64_t offset) const { return static_cast<char*>(addr_) + (offset - begin_); }

  // Allocates [from, from + n) at least, and up to kWindowBytes past `from` but not beyond
  // `limit` (the segment's roll size), and maps it. Returns 0 or an errno; on failure the window
  // is empty and the file may have grown (a zero tail).
  int open(int fd, std::uint64_t from, std::size_t n, std::uint64_t limit) {
    reset();
    static const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t begin = from / page * page;
    std::uint64_t end = std::max(from + n, std::min(begin + kWindowBytes, limit));
    int err = ::posix_fallocate(fd, static_cast<off_t>(from), static_cast<off_t>(end - from));
    if (err != 0 && end > from + n) {
      // Not room for a whole window (a full disk, a file size limit): exactly this record.
      end = from + n;
      err = ::posix_fallocate(fd, static_cast<off_t>(from), static_cast<off_t>(n));
    }
    if (err != 0) return err;
    void* addr = ::mmap(nullptr, static_cast<std::size_t>(end - begin), PROT_READ | PROT_WRITE,
                        MAP_SHARED, fd, static_cast<off_t>(begin));
    if (addr == MAP_FAILED) return errno;
    addr_ = addr;
    begin_ = begin;
    end_ = end;
    return 0;
  }

  void reset() {
    if (addr_ != nullptr) ::munmap(addr_, static_cast<std::size_t>(end_ - begin_));
    addr_ = nullptr;
    begin_ = end_ = 0;
  }

 private:
  void* addr_ = nullptr;
  std::uint64_t begin_ = 0;  // file offset of addr_ (page-aligned)
  std::uint64_t end_ = 0;    // end of the allocated, mapped bytes
};

// Copies an encoded record to `out` with the magic, its first bytes, last: a copy cut short by
// kill -9 has no magic, so recovery never frames it as a record (it reads as damage at the end
// of the last segment: logged, its seqs skipped). Power loss is the checksum's business.
void copy_record(char* out, const std::string& record) {
  constexpr std::size_t kMagic = 4;
  std::copy_n(record.data() + kMagic, record.size() - kMagic, out + kMagic);
  // A signal stops a thread between instructions, so only the compiler could reorder the two.
  std::atomic_signal_fence(std::memory_order_release);
  std::copy_n(record.data(), kMagic, out);
}

int sync_directory(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int rc = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return rc;
}

// Whether posix_fallocate() on `dir`'s file system allocates real blocks, so that writing into
// them cannot fail for want of space later: ext4, XFS and tmpfs. Not ZFS (a sparse file after a
// free-space check), NFS or FUSE (glibc writes a byte per block), nor btrfs (copy-on-write).
// Sets `err` (and returns false) when the file system cannot be asked.
bool fallocate_reserves_blocks(const fs::path& dir, int& err) {
  struct statfs st {};
  err = ::statfs(dir.c_str(), &st) == 0 ? 0 : errno;
  if (err != 0) return false;
  switch (static_cast<unsigned long>(st.f_type)) {
    case EXT4_SUPER_MAGIC:  // also ext2 and ext3
    case XFS_SUPER_MAGIC:
    case TMPFS_MAGIC:
      return true;
    default:
      return false;
  }
}

bool is_hex_id(std::string_view id) {
  return id.size() == 32 && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

}  // namespace

class Spool::Impl final : private spool_detail::SegmentIndex {
 public:
  Impl(SpoolOptions options, std::shared_ptr<spdlog::logger> log);
  ~Impl();

  const std::string& id() const { return id_; }
  std::optional<AppendResult> append(std::string_view topic, std::string_view payload,
                                     std::uint16_t packet_id, bool dup, std::int64_t arrival_us,
                                     bool retained, std::uint64_t original_size,
                                     const SpoolPropertiesView& properties);
  void ensure_seq_above(std::uint64_t seq, std::string_view why);
  std::optional<SpoolRecord> read_next(std::chrono::milliseconds timeout);
  std::unique_ptr<SpoolCursor> cursor(std::uint64_t from_seq);
  void release_below(std::uint64_t seq);
  void new_broker_connection(bool session_present, const std::string& broker);
  void stop_back_pressure();
  void close();
  Stats stats() const;

 private:
  struct Segment {
    std::uint64_t size = 0;  // bytes on disk
    // Readers decode up to here: whole records that append() finished (kAlways: and synced).
    // Below size when framing was lost, or when a failed append could not be cut back.
    std::uint64_t readable_end = 0;
    // Every record in it has a smaller seq (set when it stops being the active segment; the
    // active one's bound is next_seq_). Tighter than the next segment's name when seqs were
    // skipped, so release_below() can still delete it.
    std::uint64_t end_seq = 0;
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
  // The seq the consumer starts at: the last run's release_below() (0 without a usable file).
  std::uint64_t load_released_below();
  void save_released_below();
  void create_active_segment_locked(std::uint64_t first_seq);
  void finish_active_locked();
  int append_mapped_locked();
  void roll_locked(std::uint64_t first_seq);
  void cut_back_locked(std::uint64_t seq);
  void remember_locked(std::uint64_t hash, std::uint64_t seq, std::uint16_t packet_id);
  std::optional<std::uint64_t> find_redelivery_locked(std::uint64_t hash,
                                                      std::uint16_t packet_id) const;
  bool advance(SpoolReader& reader) override;
  bool advance_locked(SpoolReader& reader);
  void sync_directory_or_log() const;
  int sync_data(int fd) const {
    return options_.sync_data ? options_.sync_data(fd) : ::fdatasync(fd);
  }
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
  bool sync_idle_ = false;                     // guarded by mu_; the fsync thread waits for dirty_
  bool uncapped_ = false;                      // guarded by mu_; stop_back_pressure() was called
  std::map<std::uint64_t, Segment> segments_;  // guarded by mu_; by first seq; last = active
  std::uint64_t active_first_ = 0;             // guarded by mu_
  Segment* active_ = nullptr;  // guarded by mu_; segments_[active_first_] (map nodes are stable)
  std::shared_ptr<File> active_file_;  // guarded by mu_; shared with the fsync thread
  bool mapped_ = false;     // appends go through window_ (kNever and kBatch, a file system that
                            // reserves fallocate'd blocks, map_appends)
  AppendWindow window_;     // guarded by mu_; mapped_: where the active file's next bytes go
  bool must_roll_ = false;  // guarded by mu_; the active file has a bad tail
  std::vector<std::shared_ptr<File>> unsynced_;  // guarded by mu_; rolled but not yet synced
  bool dirty_ = false;                           // guarded by mu_; kBatch: something to sync
  bool directory_dirty_ = false;                 // guarded by mu_; kBatch: dir needs fsync
  // guarded by mu_; kBatch: why the fsync thread's last fdatasync failed ("" if it did not);
  // appends are refused while it is set
  std::string sync_failure_;
  std::uint64_t next_seq_ = 1;                 // guarded by mu_
  std::uint64_t bytes_ = 0;                    // guarded by mu_
  std::uint64_t appended_ = 0;                 // guarded by mu_
  std::uint64_t redeliveries_dropped_ = 0;     // guarded by mu_
  std::uint64_t corrupt_records_skipped_ = 0;  // guarded by mu_
  int blocked_appenders_ = 0;                  // guarded by mu_
  std::string buffer_;                         // guarded by mu_; the record being written
  struct Window {
    std::vector<WindowEntry> ring;
    std::size_t next = 0;  // the slot to overwrite next
  };
  // guarded by mu_; one ring per broker (failover: each broker numbers its packets and keeps its
  // session on its own); "" holds the records recovered at open, of unknown broker.
  std::map<std::string, Window> windows_;
  std::string broker_;  // guarded by mu_; the broker of the current connection

  // release_below()'s seq, kept in dir/released-below ("<spool id> <seq>") for the next open:
  // its read_next() starts there, so that records already done are not routed again by the
  // flows of the day (a flow disabled since would make them dead letters). Written without
  // fsync: a lost or older file only replays more, which the consumer skips by committed seq.
  std::uint64_t released_below_ = 0;   // guarded by mu_
  std::mutex released_file_mu_;        // serialises writers of the file; taken before mu_
  std::uint64_t released_saved_ = 0;   // guarded by released_file_mu_
  bool released_file_failed_ = false;  // guarded by released_file_mu_; logged once

  // The consumer thread's own state; it takes mu_ only to look at the segments. Set at open.
  std::optional<SpoolReader> reader_;

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
  // A directory made here is the owner's only, as its segments are; an existing one is left as
  // the operator set it up.
  if (fs::create_directories(options_.dir, ec) && !ec) {
    fs::permissions(options_.dir, fs::perms::owner_all, fs::perm_options::replace, ec);
  }
  if (ec) {
    throw SpoolError("spool: cannot create " + options_.dir.string() + ": " + ec.message());
  }
  lock_directory();
  if (options_.fsync != SpoolFsync::kAlways && options_.map_appends) {
    int err = 0;
    mapped_ = fallocate_reserves_blocks(options_.dir, err);
    if (err != 0) {
      log_->warn("spool: cannot statfs {}: {}; appends use write(2)", options_.dir.string(),
                 errno_text(err));
    } else if (!mapped_) {
      log_->info("spool: {} is not on ext4, XFS or tmpfs: appends use write(2)",
                 options_.dir.string());
    }
  }
  load_or_create_id();
  recover();
  const std::uint64_t released = load_released_below();
  reader_.emplace(released);
  // Segments already done go now: the consumer will not read them, so nothing else would release
  // them before a new record is done, and a full spool would block every append meanwhile.
  if (released > 0) release_below(released);
  if (options_.fsync == SpoolFsync::kBatch) {
    fsync_thread_ = std::thread([this] {
      set_thread_name("gw-fsync");
      fsync_loop();
    });
  }
}

Spool::Impl::~Impl() {
  close();
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  sync_cv_.notify_all();
  if (fsync_thread_.joinable()) fsync_thread_.join();
  {
    std::lock_guard lock(mu_);
    if (active_) finish_active_locked();
  }
  if (options_.fsync == SpoolFsync::kNever) return;
  for (const auto& file : unsynced_) {
    if (sync_data(file->get()) != 0) log_->error("spool: fdatasync: {}", errno_text(errno));
  }
  if (active_file_ && sync_data(active_file_->get()) != 0) {
    const int err = errno;
    log_->error("spool: fdatasync {}: {}", segment_path(active_first_).string(), errno_text(err));
  }
  if (directory_dirty_) sync_directory_or_log();
}

fs::path Spool::Impl::segment_path(std::uint64_t first_seq) const {
  return spool_detail::segment_path(options_.dir, first_seq);
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
  try {
    replace_file_atomically(path, id_ + "\n", 0644, "spool:");
  } catch (const Error& e) {
    throw SpoolError(e.what());
  }
  id_created_ = true;
}

std::uint64_t Spool::Impl::load_released_below() {
  const fs::path path = options_.dir / kReleasedFile;
  std::optional<std::string> text;
  try {
    text = read_file_if_exists(path, "spool:");
  } catch (const Error& e) {
    log_->warn("{}; the spool is read from its oldest record", e.what());
    return 0;
  }
  if (!text) return 0;
  std::string id;
  std::uint64_t seq = 0;
  std::istringstream in(*text);
  if (!(in >> id >> seq)) {
    // A crash of the machine right after an unsynced rename can leave it empty.
    log_->warn("spool: {} is unreadable; the spool is read from its oldest record", path.string());
    return 0;
  }
  if (id != id_) return 0;  // left by another spool (a new spool.id): its records replay as new
  if (next_seq_ < seq) {
    // Released records that the spool no longer has (a power loss): never hand out their seqs.
    ensure_seq_above(seq - 1, "records below it were done before the restart");
  }
  {
    std::lock_guard lock(mu_);
    released_below_ = seq;
  }
  {
    std::lock_guard file_lock(released_file_mu_);  // not inside mu_ (lock order)
    released_saved_ = seq;
  }
  if (seq > 1) log_->info("spool: records below seq {} were done before the restart", seq);
  return seq;
}

void Spool::Impl::save_released_below() {
  std::lock_guard file_lock(released_file_mu_);
  std::uint64_t seq;
  {
    std::lock_guard lock(mu_);
    seq = released_below_;
  }
  if (seq == released_saved_) return;
  try {
    replace_file_unsynced(options_.dir / kReleasedFile, id_ + " " + std::to_string(seq) + "\n",
                          0600, "spool:");
    released_saved_ = seq;
    released_file_failed_ = false;
  } catch (const Error& e) {
    // Not fatal: the next start replays more of the spool, and skips it by committed seq.
    if (!std::exchange(released_file_failed_, true)) log_->warn("{}", e.what());
  }
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
  std::uint64_t zero_tail_bytes = 0;     // of those, a window's zeros cut off
  spool_detail::SegmentDecoder decoder;
  for (std::size_t i = 0; i < firsts.size(); ++i) {
    const bool last = i + 1 == firsts.size();
    const fs::path path = segment_path(firsts[i]);
    File file = open_or_throw(path, O_RDONLY, "cannot open");
    struct stat st {};
    if (::fstat(file.get(), &st) != 0) throw_io("cannot stat", path, errno);
    const auto size = static_cast<std::uint64_t>(st.st_size);
    Segment segment{size, size, 0};
    std::uint64_t good_end = 0;
    std::uint64_t segment_max_seq = 0;
    decoder.reset(std::move(file), path);
    for (;;) {
      const std::uint64_t offset = decoder.offset();
      DecodeResult r = decoder.next(size);
      if (r.status == DecodeStatus::kOk) {
        segment_max_seq = std::max(segment_max_seq, r.record.seq);
        good_end = decoder.offset();
        if (r.record.packet_id != 0) {
          remember_locked(content_hash(r.record.topic, r.record.payload), r.record.seq,
                          r.record.packet_id);
        }
        continue;
      }
      if (r.status == DecodeStatus::kCorrupt && r.consumed == 0 && last &&
          size - offset <= kWindowBytes && zero_tail(path, offset, size)) {
        // The unused rest of an append window: the process ended without cutting it off. The
        // records end here; past a power loss the zeros may also stand for records that never
        // reached the disk, so their seqs are skipped (below) as a damaged tail's are.
        log_->warn(
            "spool: {}: {} bytes of zeros after the last record (the gateway did not stop "
            "cleanly); cut off",
            path.string(), size - offset);
        if (::truncate(path.c_str(), static_cast<off_t>(offset)) != 0) {
          throw_io("cannot truncate", path, errno);
        }
        segment.size = segment.readable_end = offset;
        zero_tail_bytes = size - offset;
        break;
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
    max_seq = std::max(max_seq, segment_max_seq);
    segment.end_seq = std::max(firsts[i], segment_max_seq + 1);
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
    next_seq_ += (damaged_tail_bytes + kSpoolRecordHeaderBytes - 1) / kSpoolRecordHeaderBytes;
    log_->warn("spool: the last segment {}; appends continue in a new segment at seq {}",
               damaged_tail_bytes == zero_tail_bytes ? "ended in zeros" : "was damaged", next_seq_);
    create_active_segment_locked(next_seq_);
  } else {
    active_first_ = firsts.back();
    active_ = &segments_.at(active_first_);
    active_file_ =
        std::make_shared<File>(open_or_throw(segment_path(active_first_), O_RDWR, "cannot open"));
  }
  log_->info(
      "spool: opened {} (id {}): {} segments, {} bytes, next seq {}, {} corrupt records "
      "skipped",
      options_.dir.string(), id_, segments_.size(), bytes_, next_seq_, corrupt_records_skipped_);
}

void Spool::Impl::create_active_segment_locked(std::uint64_t first_seq) {
  const fs::path path = segment_path(first_seq);
  // O_EXCL: a file of that name would hold records we know nothing about.
  auto file =
      std::make_shared<File>(open_or_throw(path, O_RDWR | O_CREAT | O_EXCL, "cannot create"));
  active_ = &segments_.emplace(first_seq, Segment{}).first->second;
  active_first_ = first_seq;
  active_file_ = std::move(file);
  must_roll_ = false;
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

// Copies buffer_ to the end of the active segment through window_, opening a new window when
// it does not fit. Returns 0 or the errno of the failed allocation or mapping.
int Spool::Impl::append_mapped_locked() {
  const std::uint64_t at = active_->size;
  if (!window_.covers(at, buffer_.size())) {
    const int err = window_.open(active_file_->get(), at, buffer_.size(),
                                 std::max(options_.segment_bytes, at + buffer_.size()));
    if (err != 0) return err;
  }
  copy_record(window_.at(at), buffer_);
  return 0;
}

// Before the active segment stops being written: unmaps its window and cuts the window's zero
// tail off, so that a finished segment file holds exactly its records. A failure is only logged:
// nothing is lost, but if the segment is not the last one at the next start, recovery reports
// its zeros as damage (an error, a corrupt record counted).
void Spool::Impl::finish_active_locked() {
  window_.reset();
  if (!active_file_ || !mapped_) return;
  if (::ftruncate(active_file_->get(), static_cast<off_t>(active_->size)) != 0) {
    const int err = errno;
    log_->error("spool: cannot cut {} to its {} bytes of records: {}",
                segment_path(active_first_).string(), active_->size, errno_text(err));
  }
}

void Spool::Impl::roll_locked(std::uint64_t first_seq) {
  finish_active_locked();
  const std::shared_ptr<File> finished = active_file_;
  active_->end_seq = next_seq_;
  create_active_segment_locked(first_seq);
  // kBatch: the fsync thread syncs the finished segment; kAlways synced every record already.
  if (options_.fsync == SpoolFsync::kBatch) unsynced_.push_back(finished);
  log_->debug("spool: rolled to segment {}", segment_path(first_seq).string());
}

// After a failed write or fdatasync of record `seq`: takes whatever part of it reached the file
// back off, so that the next record follows the last good one.
void Spool::Impl::cut_back_locked(std::uint64_t seq) {
  const int fd = active_file_->get();
  if (::ftruncate(fd, static_cast<off_t>(active_->size)) == 0) return;
  const int err = errno;
  log_->error("spool: cannot cut {} back to {} bytes: {}; appends continue in a new segment",
              segment_path(active_first_).string(), active_->size, errno_text(err));
  // The record may be on disk, whole or in part. Readers stop before it (readable_end), the next
  // append goes to a new segment, and its seq is never used again.
  next_seq_ = seq + 1;
  must_roll_ = true;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && static_cast<std::uint64_t>(st.st_size) > active_->size) {
    bytes_ += static_cast<std::uint64_t>(st.st_size) - active_->size;
    active_->size = static_cast<std::uint64_t>(st.st_size);
  }
}

void Spool::Impl::new_broker_connection(bool session_present, const std::string& broker) {
  std::lock_guard lock(mu_);
  broker_ = broker;
  // Without the session the broker redelivers nothing, and its packet ids start again: an old
  // entry could only make a new message look like a redelivery. With it, anything not yet
  // acknowledged may come again, also after several quick reconnects: keep the window. Another
  // broker's window stays as it is: its session waits for us there.
  if (session_present) return;
  windows_.erase(broker);
  windows_.erase("");
}

void Spool::Impl::remember_locked(std::uint64_t hash, std::uint64_t seq, std::uint16_t packet_id) {
  if (options_.redelivery_window == 0) return;
  Window& w = windows_[broker_];
  if (w.ring.empty()) w.ring.resize(options_.redelivery_window);
  w.ring[w.next] = WindowEntry{hash, seq, packet_id};
  w.next = (w.next + 1) % w.ring.size();
}

std::optional<std::uint64_t> Spool::Impl::find_redelivery_locked(std::uint64_t hash,
                                                                 std::uint16_t packet_id) const {
  // The current broker's records, then those of unknown broker (recovered at open).
  for (const std::string& key : {broker_, std::string()}) {
    const auto it = windows_.find(key);
    if (it == windows_.end()) continue;
    const auto& ring = it->second.ring;
    // Newest first: if the same message was spooled twice, the later copy is the one to report.
    for (std::size_t i = 0; i < ring.size(); ++i) {
      const WindowEntry& e = ring[(it->second.next + ring.size() - 1 - i) % ring.size()];
      if (e.packet_id == packet_id && e.hash == hash) return e.seq;
    }
    if (key.empty()) break;
  }
  return std::nullopt;
}

std::optional<AppendResult> Spool::Impl::append(std::string_view topic, std::string_view payload,
                                                std::uint16_t packet_id, bool dup,
                                                std::int64_t arrival_us, bool retained,
                                                std::uint64_t original_size,
                                                const SpoolPropertiesView& properties) {
  check_record_limits(topic, payload, original_size, properties);
  const bool remember = packet_id != 0 && options_.redelivery_window > 0;
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

  if (!sync_failure_.empty()) {
    // The disk did not take what it was given: no more acknowledgements until it does.
    throw SpoolError("spool: " + sync_failure_ + "; appends wait for a sync to succeed");
  }
  // Rolling keeps next_seq_, so the record can be encoded first and sized from its bytes.
  const std::uint64_t seq = next_seq_;
  encode_record_into(buffer_, SpoolRecordView{seq, arrival_us, packet_id, dup, retained,
                                              original_size, topic, payload, properties});
  const std::uint64_t record_bytes = buffer_.size();
  if (must_roll_ || (active_->size > 0 && active_->size + record_bytes > options_.segment_bytes)) {
    roll_locked(next_seq_);
  }
  if (mapped_) {
    // Nothing reaches the file when this fails: no cut back.
    const int err = append_mapped_locked();
    if (buffer_.capacity() > kKeepBufferBytes) std::string().swap(buffer_);
    if (err != 0) throw_io("cannot allocate", segment_path(active_first_), err);
  } else {
    // write(2), which a failed write or fdatasync can cut back.
    const int fd = active_file_->get();
    std::string_view failed = "cannot write";
    int err = pwrite_all(fd, buffer_.data(), buffer_.size(), active_->size);
    if (err == 0 && options_.fsync == SpoolFsync::kAlways && sync_data(fd) != 0) {
      failed = "cannot fdatasync";
      err = errno;
    }
    if (buffer_.capacity() > kKeepBufferBytes) std::string().swap(buffer_);
    if (err != 0) {
      // Nothing of the record stays visible: readers stop at readable_end, which has not moved,
      // and neither the redelivery window nor the seq counter saw it.
      cut_back_locked(seq);
      throw_io(failed, segment_path(active_first_), err);
    }
  }
  ++next_seq_;
  active_->size += record_bytes;
  // Only now may readers decode it (kAlways: it is on stable storage).
  active_->readable_end = active_->size;
  bytes_ += record_bytes;
  ++appended_;
  if (remember) remember_locked(hash, seq, packet_id);
  // Only a sync thread waiting for work is woken: one sleeping out its interval would wake for
  // nothing (a context switch per interval at steady rates).
  if (options_.fsync == SpoolFsync::kBatch && !std::exchange(dirty_, true) && sync_idle_) {
    sync_cv_.notify_one();
  }
  lock.unlock();
  data_cv_.notify_one();
  return AppendResult{seq, false};
}

void Spool::Impl::ensure_seq_above(std::uint64_t seq, std::string_view why) {
  if (seq == std::numeric_limits<std::uint64_t>::max()) {
    throw std::invalid_argument("spool: no seq is above " + std::to_string(seq));
  }
  {
    std::lock_guard lock(mu_);
    if (next_seq_ > seq) return;
    const std::uint64_t old_next = next_seq_;
    log_->warn("spool {}: appends continue at seq {} in a new segment (the next seq was {}): {}",
               id_, seq + 1, old_next, why);
    // A new segment, so that its name carries the floor across restarts; the records already
    // here stay below it, in order.
    try {
      roll_locked(seq + 1);
    } catch (...) {
      next_seq_ = seq + 1;  // this process at least never reuses a seq
      throw;
    }
    next_seq_ = seq + 1;
  }
  // The floor lives in a file name; it must survive a power loss even if nothing is appended.
  if (const int err = sync_directory(options_.dir)) throw_io("cannot fsync", options_.dir, err);
}

std::optional<SpoolRecord> Spool::Impl::read_next(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (closed_) return std::nullopt;
    if (auto record = reader_->next(*log_)) return record;
    std::unique_lock lock(mu_);
    for (;;) {
      if (closed_) return std::nullopt;
      if (advance_locked(*reader_)) break;
      if (data_cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
        if (closed_ || !advance_locked(*reader_)) return std::nullopt;
        break;
      }
    }
  }
}

std::unique_ptr<SpoolCursor> Spool::Impl::cursor(std::uint64_t from_seq) {
  // Not make_unique: the constructor is private to Spool.
  return std::unique_ptr<SpoolCursor>(new SpoolCursor(*this, log_, from_seq));
}

bool Spool::Impl::advance(SpoolReader& reader) {
  std::lock_guard lock(mu_);
  return advance_locked(reader);
}

bool Spool::Impl::advance_locked(SpoolReader& reader) {
  auto next = segments_.cend();
  if (!reader.segment()) {
    // The segment that holds from_seq: the last one named at or below it, else the oldest.
    next = segments_.upper_bound(reader.from_seq());
    if (next != segments_.cbegin()) --next;
  } else {
    const auto it = segments_.find(*reader.segment());
    if (it != segments_.end() && !reader.stuck()) {
      if (it->second.readable_end > reader.limit()) {
        reader.raise_limit(it->second.readable_end);
        return true;
      }
      if (it->first == active_first_) return false;
    }
    // Finished (or released, or unreadable): move on.
    next = segments_.upper_bound(*reader.segment());
  }
  if (next == segments_.cend()) return false;
  const fs::path path = segment_path(next->first);
  reader.open(open_or_throw(path, O_RDONLY, "cannot open"), path, next->first,
              next->second.readable_end);
  return true;
}

void Spool::Impl::release_below(std::uint64_t seq) {
  std::vector<fs::path> doomed;
  {
    std::lock_guard lock(mu_);
    released_below_ = std::max(released_below_, std::min(seq, next_seq_));
    if (seq >= next_seq_ && active_->size > 0 && bytes_ >= options_.max_bytes && !closed_) {
      try {
        roll_locked(next_seq_);
      } catch (const SpoolError& e) {
        log_->error("{}", e.what());
      }
    }
    // Never the active segment, which is the last one.
    for (auto it = segments_.begin(); std::next(it) != segments_.end();) {
      if (it->second.end_seq > seq) break;
      doomed.push_back(segment_path(it->first));
      bytes_ -= it->second.size;
      it = segments_.erase(it);
    }
  }
  save_released_below();
  if (doomed.empty()) return;
  for (const auto& path : doomed) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      const int err = errno;
      log_->error("spool: cannot delete {}: {}", path.string(), errno_text(err));
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
  s.mapped_appends = mapped_;
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
    sync_idle_ = true;
    sync_cv_.wait(lock, [this] { return stopping_ || dirty_; });
    sync_idle_ = false;
    // Let a batch of records gather; the destructor does the final sync.
    if (sync_cv_.wait_for(lock, options_.fsync_interval, [this] { return stopping_; })) return;
    std::string failure;
    if (!sync_failure_.empty() && active_->size > 0) {
      // Linux reports a failed writeback once and marks those pages clean: a later fdatasync of
      // the same file says nothing of them. Appends must not go on behind such a hole, so they
      // resume only in a new segment, once its file and name are synced.
      try {
        roll_locked(next_seq_);
      } catch (const SpoolError& e) {
        failure = e.what();
      }
    }
    dirty_ = false;
    const std::shared_ptr<File> active = active_file_;
    std::vector<std::shared_ptr<File>> rolled;
    rolled.swap(unsynced_);
    const bool directory = std::exchange(directory_dirty_, false);
    lock.unlock();
    std::vector<std::shared_ptr<File>> failed;
    for (const auto& file : rolled) {
      if (sync_data(file->get()) != 0) {
        failure = "fdatasync failed: " + errno_text(errno);
        failed.push_back(file);
      }
    }
    if (sync_data(active->get()) != 0) failure = "fdatasync failed: " + errno_text(errno);
    int directory_error = 0;
    if (directory && (directory_error = sync_directory(options_.dir)) != 0) {
      failure = "cannot fsync " + options_.dir.string() + ": " + errno_text(directory_error);
    }
    lock.lock();
    if (!failure.empty()) {
      // Retried every interval until it works; appends wait meanwhile.
      if (sync_failure_.empty()) {
        log_->error("spool: {}; appends wait until a sync succeeds", failure);
      }
      sync_failure_ = failure;
      unsynced_.insert(unsynced_.end(), failed.begin(), failed.end());
      if (directory_error != 0) directory_dirty_ = true;
      dirty_ = true;
    } else if (!sync_failure_.empty()) {
      log_->info("spool: syncs work again; appends resume in segment {}",
                 segment_path(active_first_).string());
      sync_failure_.clear();
    }
  }
}

Spool::Spool(SpoolOptions options, std::shared_ptr<spdlog::logger> log)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(log))) {}
Spool::~Spool() = default;
const std::string& Spool::id() const { return impl_->id(); }
std::optional<AppendResult> Spool::append(std::string_view topic, std::string_view payload,
                                          std::uint16_t packet_id, bool dup,
                                          std::int64_t arrival_us, bool retained,
                                          std::uint64_t original_size,
                                          const SpoolPropertiesView& properties) {
  return impl_->append(topic, payload, packet_id, dup, arrival_us, retained, original_size,
                       properties);
}
void Spool::ensure_seq_above(std::uint64_t seq, std::string_view why) {
  impl_->ensure_seq_above(seq, why);
}
std::optional<SpoolRecord> Spool::read_next(std::chrono::milliseconds timeout) {
  return impl_->read_next(timeout);
}
std::unique_ptr<SpoolCursor> Spool::cursor(std::uint64_t from_seq) {
  return impl_->cursor(from_seq);
}
void Spool::release_below(std::uint64_t seq) { impl_->release_below(seq); }
void Spool::stop_back_pressure() { impl_->stop_back_pressure(); }
void Spool::close() { impl_->close(); }

void Spool::new_broker_connection(bool session_present, const std::string& broker) {
  impl_->new_broker_connection(session_present, broker);
}
Spool::Stats Spool::stats() const { return impl_->stats(); }

}  // namespace gateway
