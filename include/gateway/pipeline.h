// The path from the spool to the database. One dispatcher thread reads the spool in order, parses
// each payload once, routes it to the flows whose filter matches and queues it per flow. A pool of
// workers, each with its own database connection, takes whole runs of a flow's queue and commits
// each run in one transaction (group commit). When the run is short and other flows are waiting
// too, the worker takes theirs as well and commits them all in one transaction (flow rows locked
// in id order); if that transaction fails, each flow is retried alone. A flow is worked on by
// one worker at a time, so its messages keep their arrival order; other flows proceed in
// parallel on the other workers.
//
// A message leaves the spool only when every flow it matched committed it: as data, as an outbox
// row or as a dead letter. What happens on an error is decided by its type (errors.h,
// db_error_class.h):
//   - DbDataError (the message's own data): a batch is retried one message at a time; the single
//     message the server refuses becomes a dead letter, written in a transaction of its own.
//   - DbRetryable (deadlock): the transaction is retried at once, a few times, then as below.
//   - anything else, known or not (connection lost, read-only, disk full, access denied, lock
//     wait timeout, a dead letter that cannot be written): the flow is *held*. Its messages are
//     dropped from memory and stay in the spool; the flow is retried after a capped, jittered
//     backoff, and then re-reads them from the spool in order. A held flow keeps neither a worker
//     nor memory, so the other flows go on.
//
// Memory stays bounded: the dispatcher stops reading the spool while max_in_flight messages (or
// max_in_flight_bytes) are queued; a held flow re-reads at most max_batch messages at a time.
//
// Thread-safe: start() and stop() from the owner's thread; everything else runs on its own threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gateway/backoff.h"
#include "gateway/flow_repository.h"
#include "gateway/flow_starts.h"
#include "gateway/flow_table.h"
#include "gateway/http_poster.h"
#include "gateway/metrics.h"
#include "gateway/payload.h"
#include "gateway/processor.h"
#include "gateway/spool.h"

namespace spdlog {
class logger;
}

namespace gateway {

struct PipelineOptions {
  std::size_t workers = 4;                      // DB_POOL_SIZE
  std::size_t max_batch = 2000;                 // MAX_BATCH: messages per transaction
  std::size_t max_in_flight = 20000;            // read from the spool but not yet committed
  std::size_t max_in_flight_bytes = 32u << 20;  // ... and their payload bytes
  // BATCH_LINGER_MS: a worker that finds fewer than max_batch messages of a flow waits until the
  // oldest of them is this old before it opens the transaction (0: never). Fewer, larger
  // transactions at steady rates; never applied when a full batch is waiting.
  std::chrono::milliseconds batch_linger{0};
  // A worker whose flow has fewer than max_batch messages waiting takes the waiting messages of
  // up to this many flows in all (max_batch messages at most) into one transaction (1: never).
  // Not with post_inline.
  std::size_t max_group_flows = 32;
  PayloadLimits limits;  // MAX_PAYLOAD_BYTES, MAX_JSON_DEPTH
  ProcessorOptions processor;
  std::chrono::milliseconds retry_initial{200};  // first retry of a held flow
  std::chrono::milliseconds retry_max{30000};    // DB_RETRY_MAX_SECONDS
  // Per-thread set-up around each worker's life (the MySQL driver's thread state); may be empty.
  std::function<std::shared_ptr<void>()> thread_scope;
  // From which record on each flow is routed (flow_starts.h), so that the records an earlier run
  // left in the spool are routed as they were then. Null: by the flows of the day (tests).
  FlowStarts* flow_starts = nullptr;
};

class Pipeline {
 public:
  using RepositoryFactory = std::function<std::unique_ptr<FlowRepository>()>;
  using PosterFactory = std::function<std::unique_ptr<HttpPoster>()>;

  Pipeline(Spool& spool, const FlowTable& flows, RepositoryFactory repositories,
           PosterFactory posters, PipelineOptions options, Metrics& metrics,
           std::shared_ptr<spdlog::logger> log);
  ~Pipeline();  // stop()s if still running
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  void start();
  // Stops reading the spool and joins the threads; a worker finishes the transaction in hand
  // (bounded by the driver's read timeout and the HTTP timeout). Queued messages stay in the spool
  // for the next start. Logs a warning when that took longer than `deadline`.
  void stop(std::chrono::milliseconds deadline);

 private:
  using MessagePtr = std::shared_ptr<const InboundMessage>;
  using Clock = std::chrono::steady_clock;

  struct FlowQueue {
    std::deque<MessagePtr> pending;
    bool busy = false;       // a worker holds a batch of this flow
    bool queued = false;     // in ready_
    bool lingering = false;  // its worker waits for a fuller batch (linger_cv_)
    // Its last group transaction found a row busy: its next batch has a transaction of its own,
    // so that it neither waits behind another flow's locked row nor bounces between groups.
    bool alone = false;
    // Held: the last attempt failed for a reason that is not the message's; no worker takes the
    // flow before retry_at.
    bool held = false;
    Clock::time_point retry_at{};
    Clock::time_point held_since{};
    bool held_by_connection = false;  // the reason is a lost connection (reported globally)
    std::string held_name;            // its code when held (the flow may be renamed meanwhile)
    std::size_t waited = 0;           // messages that arrived for it while held
    std::optional<Backoff> backoff;   // made on the first hold
    // Parked: the flow's messages from seq parked_from on are not in memory; they are re-read
    // from the spool (cursor) by the worker that takes the flow. 0 when not parked.
    std::uint64_t parked_from = 0;
    std::unique_ptr<SpoolCursor> cursor;  // used only by the worker that has the flow busy
  };

  // One worker's connection and helpers.
  struct Worker {
    std::size_t index = 0;
    std::unique_ptr<FlowRepository> repo;
    std::unique_ptr<HttpPoster> http;
    std::unique_ptr<Processor> processor;
  };

  // How a batch ended: the first `committed` messages are done; when `held` is set, the rest
  // waits in the spool.
  struct BatchOutcome {
    std::size_t committed = 0;
    std::optional<std::string> held;
    bool by_connection = false;
    bool requeue = false;  // not run: the batch goes back to the front of its flow's queue
  };

  void dispatch_loop();
  // read_next(), except that a read error is logged (once) and retried after a pause.
  std::optional<SpoolRecord> read_spool(std::chrono::milliseconds timeout);
  void worker_loop(std::size_t index);
  BatchOutcome run_batch(std::int64_t flow_id, const std::vector<MessagePtr>& batch, Worker& w);
  // One flow's share of a group transaction.
  struct Member {
    std::int64_t flow_id;
    FlowQueue* queue;
    std::vector<MessagePtr> batch;
    BatchOutcome outcome;
  };
  // Commits the members' batches in one transaction (members in ascending flow id), or, if that
  // fails for any reason but a lost connection, each one with run_batch(). Sets every outcome.
  void run_group(std::vector<Member>& members, Worker& w);
  // Moves up to max_batch - `taken` waiting messages of other ready flows (at most
  // max_group_flows - 1 flows, in memory, not held) into `members`, marking them busy.
  // Requires mu_.
  void take_group_locked(std::size_t taken, std::vector<Member>& members);
  // Opens the worker's database session and HTTP poster if it has none. Throws what the
  // factories throw.
  void ensure_session(Worker& w);
  // Counts a database error and drops the worker's session (logged once per outage when
  // `by_connection`).
  void drop_session(Worker& w, const std::exception& e, bool by_connection);
  // A batch result into metrics and log lines.
  void account(const BatchResult& r, std::size_t batch_size);
  // Re-reads up to max_batch parked messages of a flow from the spool into `batch`. Called with
  // the flow busy, without mu_.
  // The routing table the dispatcher used from one seq on, with the flows' starts.
  struct RoutingEpoch {
    std::shared_ptr<const FlowSnapshot> flows;
    std::shared_ptr<const FlowStarts::Starts> starts;  // null without options_.flow_starts
    // The flows the record `seq` on `topic` goes to, in `out`.
    void route(std::uint64_t seq, std::string_view topic, std::vector<std::int64_t>& out) const {
      flows->match(topic, out);
      if (starts) starts->filter(seq, out);
    }
  };
  using Epochs = std::vector<std::pair<std::uint64_t, RoutingEpoch>>;
  void refill(std::int64_t flow_id, FlowQueue& q, std::uint64_t from, std::uint64_t below,
              const Epochs& epochs, std::vector<MessagePtr>& batch);
  // The worker's bookkeeping once a batch ended. Requires mu_.
  void settle_locked(std::int64_t flow_id, FlowQueue& q, const std::vector<MessagePtr>& batch,
                     const BatchOutcome& outcome);
  // The flow failed for `reason`: drop its messages from memory (park them from
  // first_uncommitted_seq, or its first pending one) and schedule a retry with its backoff.
  void hold_locked(std::int64_t flow_id, FlowQueue& q, const std::string& reason,
                   bool by_connection, std::uint64_t first_uncommitted_seq,
                   std::size_t uncommitted);
  void recover_locked(FlowQueue& q);
  void make_ready_locked(std::int64_t flow_id, FlowQueue& q);
  void forget_in_flight_locked(std::uint64_t seq);
  void publish_gauges_locked();
  void release_spool();
  std::string flow_name(std::int64_t flow_id) const;
  // The routing for `snapshot` from record `next_seq` on, its flow starts persisted first (an
  // I/O error is retried: the records wait in the spool). std::nullopt once stopping.
  std::optional<RoutingEpoch> routing_for(std::shared_ptr<const FlowSnapshot> snapshot,
                                          std::uint64_t next_seq);
  // The routed record as a message, its payload parsed once.
  MessagePtr to_message(SpoolRecord&& record) const;
  // The record as a message without parsing (for messages no flow takes: kNoFlow).
  static std::shared_ptr<InboundMessage> unparsed_message(SpoolRecord&& record);

  Spool& spool_;
  const FlowTable& flows_;
  RepositoryFactory repositories_;
  PosterFactory posters_;
  PipelineOptions options_;
  Metrics& metrics_;
  std::shared_ptr<spdlog::logger> log_;

  std::mutex mu_;
  std::condition_variable work_cv_;    // workers: a flow became ready or due, or stopping
  std::condition_variable space_cv_;   // dispatcher: in-flight dropped below the limit
  std::condition_variable linger_cv_;  // lingering workers: a full batch is waiting, or stopping
  std::unordered_map<std::int64_t, FlowQueue> queues_;  // guarded by mu_
  std::deque<std::int64_t> ready_;  // guarded by mu_; flows with work, no worker
  std::multimap<Clock::time_point, std::int64_t> due_;  // guarded by mu_; held flows' retries
  std::size_t held_count_ = 0;                          // guarded by mu_; flows with held set
  std::size_t held_waiting_ = 0;  // guarded by mu_; sum of waited over the held flows
  struct InFlight {
    std::uint32_t flows_left;  // flows that have not committed (or parked) the message yet
    std::uint32_t payload_bytes;
  };
  std::map<std::uint64_t, InFlight> in_flight_;  // guarded by mu_; by spool seq
  // The routing table the dispatcher used from each seq on: a parked flow re-reads exactly the
  // messages that were routed to it, even if the flows changed since. Pruned below the spool's
  // release point.
  std::map<std::uint64_t, RoutingEpoch> epochs_;  // guarded by mu_
  std::size_t in_flight_bytes_ = 0;               // guarded by mu_
  std::uint64_t next_seq_ = 0;                    // guarded by mu_; after the last read record
  bool stopping_ = false;                         // guarded by mu_

  bool spool_read_failing_ = false;  // dispatcher thread only
  std::thread dispatcher_;
  std::vector<std::thread> workers_;
};

}  // namespace gateway
