// The durable on-disk spool: an append-only log of received MQTT messages, split into segment
// files.
//
// Why: Paho sends the QoS 1 PUBACK when the message callback returns. The callback appends the
// message here first, so it survives kill -9 (it is in the page cache) before the broker forgets
// it. The worker thread reads records in seq order, stores them, and calls release_below() so that
// fully processed segments are deleted. After a crash the spool is replayed from the last
// release_below(); the consumer skips what it already committed by the record's seq.
//
// Thread-safety: append(), ensure_seq_above(), cursor(), release_below(), stop_back_pressure(),
// close(), stats() and id() may be called from any thread. read_next() is for a single consumer
// thread; each SpoolCursor for one thread at a time. The destructor must not race other calls.
//
// On disk, in `dir`:
//   <first seq, 20 digits>.seg  segments, in seq order; a new empty segment's name carries the
//                               next seq, so seq survives restarts even when all else was released.
//                               Except with kAlways, on ext4, XFS and tmpfs (whose fallocate
//                               reserves the blocks), the active one is written through a mapped
//                               window preallocated up to 1 MiB past its records: on disk it is
//                               that much longer (zeros) until it is finished or the spool closes.
//                               Recovery cuts such a zero tail off the last segment (logged, not
//                               counted as damage) and skips the seqs it could have held
//   spool.id                    this spool's identity (see id())
//   spool.lock                  flock()ed while open, so two processes never share a spool
//   released-below              "<id> <seq>": the last release_below(), where the next open's
//                               read_next() starts (not synced: a stale one replays more)
// The records in a segment: see spool_format.h.
#pragma once

#include <spdlog/fwd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "gateway/spool_cursor.h"
#include "gateway/spool_format.h"

namespace gateway {

// How hard append() works to get records onto stable storage. The page cache alone survives
// kill -9 but not a power loss; what each policy can lose on a power loss:
enum class SpoolFsync {
  kNever,   // whatever the kernel had not written back yet (by default dirty pages may wait
            // about 30 s)
  kBatch,   // a background thread fdatasyncs every fsync_interval while there are new records;
            // loses up to fsync_interval of acknowledged messages
  kAlways,  // append() fdatasyncs before it returns, and read_next() sees a record only after
            // that: loses nothing acknowledged (slow: one disk flush per message)
};
// kNever and kBatch acknowledge before the fsync, so their records are readable as soon as they
// are written; the database may then hold a seq that a power loss takes from the spool (see
// Spool::ensure_seq_above()).

struct SpoolOptions {
  std::filesystem::path dir;                  // created if missing
  std::uint64_t segment_bytes = 64ull << 20;  // roll to a new segment file past this size
  std::uint64_t max_bytes = 1ull << 30;       // append() blocks while the spool holds this much
  SpoolFsync fsync = SpoolFsync::kBatch;
  std::chrono::milliseconds fsync_interval{5};  // kBatch: how long new records may stay unsynced
  std::size_t redelivery_window = 1024;  // recent QoS>0 records remembered to spot redeliveries
  // kNever and kBatch: copy records into a mapped window of the segment (no system call per
  // record) where the file system reserves fallocate'd blocks (ext4, XFS, tmpfs); false, or any
  // other file system: a write(2) per record.
  bool map_appends = true;
  // fdatasync(2); tests replace it to make a sync fail.
  std::function<int(int fd)> sync_data;
};

struct AppendResult {
  std::uint64_t seq;  // the new record's seq, or the already spooled one's when redelivery is true
  bool redelivery;    // dup was set and the same (packet_id, topic, payload) is in the window:
                      // nothing was appended
};

class Spool {
 public:
  // Opens or creates the spool and recovers it: a record cut short at the end of the last segment
  // (torn write) is truncated away, records failing their checksum are skipped, and an unreadable
  // rest of a segment is left behind (corrupt content is logged and counted, never thrown). If the
  // last segment was damaged, appends go to a new segment whose seq leaves room for every record
  // the damaged bytes could have held, so a seq that may already be in the database is never
  // reused. Throws SpoolError (with the path and strerror) if the directory cannot be used, or if
  // another Spool (in any process) has it open. A null `log` means no logging.
  Spool(SpoolOptions options, std::shared_ptr<spdlog::logger> log);
  // Closes, stops the fsync thread, does a final fdatasync unless kNever, closes the files.
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;

  // A stable identity (32 lowercase hex chars), persisted in dir/spool.id (written atomically on
  // first open). A fresh spool directory gets a fresh id, so database offsets of an old spool
  // never apply to it.
  const std::string& id() const;

  // Returns once the record is in the page cache (a memcpy into the mapped window or a
  // pwrite(2), either of which survives kill -9; kAlways: pwrite(2) and fdatasync'ed).
  // `retained` is the MQTT RETAIN flag; original_size > 0 says that `payload` is only the first
  // bytes of a payload of that many bytes; `properties` are the MQTT 5 fields (see SpoolRecord).
  // With dup set, packet_id != 0 and an identical (packet_id, topic, payload) among the last
  // redelivery_window QoS>0 records (also from before a restart), appends nothing and returns
  // that record's seq with redelivery = true. Blocks while the spool holds >= max_bytes until
  // release_below() frees space; returns std::nullopt if close() is called meanwhile or before.
  // Throws std::invalid_argument where encode_record() would (limits, original_size,
  // properties), SpoolError on I/O errors (ENOSPC, EIO, EFBIG; with the window: when no room for
  // the record can be allocated): nothing of the record then stays in the segment, so the spool
  // stays readable, no reader ever sees it, and a later append succeeds once the disk takes
  // writes again. kBatch: also while the fsync thread's last sync failed (the disk does not take
  // the records it was given), until a new segment (its file and name) is synced: the failed
  // writeback's pages are marked clean and never retried, so no record goes behind them. The
  // records before the failure stay readable while their pages are cached. A page of the window
  // that cannot be read or written (a segment file truncated behind the spool's back, an I/O error
  // reading a window's first, partly written page) ends the process with SIGBUS instead: the
  // message is then not acknowledged either.
  std::optional<AppendResult> append(std::string_view topic, std::string_view payload,
                                     std::uint16_t packet_id, bool dup, std::int64_t arrival_us,
                                     bool retained = false, std::uint64_t original_size = 0,
                                     const SpoolPropertiesView& properties = {});

  // After it returns, every later append() gets a seq above `seq`, also after a restart. Call it
  // at start-up with the highest seq the database has committed for this spool id (or a bound
  // of it). If the next seq is above `seq` already, does nothing. Otherwise (the spool came back
  // shorter than what the database has: a power loss with kBatch or kNever, or a directory
  // restored from an older copy) logs a warning ending in `why` and continues in a new segment
  // named seq + 1, fsyncing the directory so that the name survives a restart even if nothing
  // is appended; the records already in the spool stay readable, in order, before it.
  // Thread-safe. Throws std::invalid_argument if `seq` is the largest uint64, SpoolError if the
  // new segment cannot be created or made durable (the floor then still holds for this process).
  void ensure_seq_above(std::uint64_t seq, std::string_view why);

  // Single consumer thread. Returns records in seq order, starting (after open) with the oldest
  // record in the spool at or above the last run's release_below() seq; a record becomes visible
  // once its append() has written it (kAlways: and fdatasync'ed it). Waits up to `timeout` for one;
  // std::nullopt on timeout or after close(). Throws SpoolError on read errors.
  std::optional<SpoolRecord> read_next(std::chrono::milliseconds timeout);

  // A second reader that re-reads the records with seq >= from_seq (see spool_cursor.h); if
  // from_seq is below the oldest record it starts there, if beyond the last one it waits for
  // later ones. Opens no file until its first next(). Thread-safe. The cursor must not outlive
  // this Spool.
  std::unique_ptr<SpoolCursor> cursor(std::uint64_t from_seq);

  // Every record with seq < `seq` is fully processed: deletes the segment files that hold only
  // such records, never the one being written (except that a full spool whose records are all
  // released rolls to a new segment so the old one can go, otherwise max_bytes < segment_bytes
  // would block forever). Wakes blocked appenders. A file that cannot be deleted is logged as an
  // error, not thrown: the worker must go on, and a replay of it is harmless. The seq is kept in
  // dir/released-below: after a restart read_next() starts there, so that records already done
  // are not routed again by the flows of that day (a flow disabled meanwhile would make them
  // dead letters); appends stay above it even if a power loss took those records.
  void release_below(std::uint64_t seq);

  // For shutdown: append() stops waiting for space, so a blocked append (and any later one) writes
  // past max_bytes. Why: Paho runs the message callback under its client lock, so while the
  // callback waits for space no other Paho call (disconnect, publish) can proceed; returning
  // without spooling would acknowledge a message that was not stored. The overshoot is bounded
  // by what the broker still has in flight to us. Idempotent.
  void stop_back_pressure();

  // A broker connection was made; limits redelivery recognition to what can really be a
  // redelivery. Without the session (session_present false) the broker redelivers nothing and
  // its packet ids start again, so the window is emptied: an old record could only make a new
  // message look like one already spooled, and it would be dropped. With the session the window
  // stays (what any earlier connection of the session left unacknowledged may come again).
  // `broker` names the broker (failover, issue 15): each has its own window, so a move to
  // another broker and back still recognises what the first one redelivers. Thread-safe.
  void new_broker_connection(bool session_present, const std::string& broker = {});

  // Wakes every blocked append()/read_next(); they (and later calls) return std::nullopt.
  // Idempotent.
  void close();

  struct Stats {
    std::uint64_t bytes = 0;  // all segments' (the active one's records only: with a window
                              // its file is longer, zeros)
    std::uint64_t segments = 0;
    std::uint64_t next_seq = 0;
    std::uint64_t appended = 0;                 // since open
    std::uint64_t redeliveries_dropped = 0;     // since open
    std::uint64_t corrupt_records_skipped = 0;  // during recovery (an unreadable rest counts as 1)
    bool full = false;                          // an append is blocked on max_bytes right now
    bool mapped_appends = false;  // records are copied into a mapped window (see SpoolOptions)
  };
  Stats stats() const;

 private:
  class Impl;  // in src/core/spool.cpp
  std::unique_ptr<Impl> impl_;
};

}  // namespace gateway
