// Delivery of POST_ENDPOINT messages from the outbox (table deliveries), after the flow
// transaction committed them: the flow's row lock is never held during a POST, so a slow endpoint
// slows only its own flow.
//
// Per flow, one worker in the whole cluster (a lease row in delivery_leases) POSTs the pending
// messages in msg_id order and removes them once the endpoint answered 2xx. A connection error, a
// timeout, 408, 429 (Retry-After honoured) or 5xx stops the flow until the next attempt (capped
// exponential backoff with jitter), so a later message never overtakes an earlier one. Other
// answers are permanent: the message goes to rejected_messages, as it does after HTTP_MAX_ATTEMPTS
// tries or HTTP_MAX_AGE_SECONDS. Every POST carries Idempotency-Key "<flow code>:<msg_id>", the
// same on every retry, so the receiver can drop a repeat.
//
// The database stays off the POST path: each worker has a sidecar (a thread with its own
// database connection) that deletes the delivered rows, in groups (one commit each), and reads
// the flow's next rows ahead, while the worker POSTs. The next rows are those after the last one
// the worker handled, and the worker waits for its removals to commit before it gives the lease
// back, so nothing is POSTed twice in normal operation. A POST is repeated (same
// Idempotency-Key; a message not yet delivered still never overtakes an earlier one) only when
// rows the endpoint took are still in the outbox:
//   - a removal fails: the worker stops the flow at its next POST, and the next pass POSTs the
//     rows still in the outbox again (at most max_unremoved);
//   - a crash, or the lease taken over by another instance: at most max_unremoved POSTs.
// A worker whose flow ran dry looks again for up to `poll` before it gives the flow back, unless
// another flow is waiting for a worker.
//
// Threads: start()/stop() from the owner; one scanner thread, `workers` delivery threads and one
// sidecar thread per worker (its connection is opened at its first job). Database errors on any
// of them are logged and retried; none is fatal.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "gateway/delivery_repository.h"
#include "gateway/http_poster.h"
#include "gateway/metrics.h"

namespace spdlog {
class logger;
}

namespace gateway {

struct DeliveryOptions {
  std::size_t workers = 4;                        // flows delivered in parallel
  std::chrono::milliseconds http_timeout{10000};  // HTTP_TIMEOUT_SECONDS
  int max_attempts = 10;                          // HTTP_MAX_ATTEMPTS
  std::chrono::seconds max_age{86400};            // HTTP_MAX_AGE_SECONDS
  std::chrono::milliseconds retry_initial{500};   // first retry delay
  std::chrono::milliseconds retry_max{300000};    // HTTP_RETRY_MAX_SECONDS
  // How often the outbox is scanned, and how long a worker looks again at a flow that ran dry.
  std::chrono::milliseconds poll{100};
  std::size_t batch = 200;  // deliveries read at a time
  // Delivered rows are handed to the sidecar in groups of this many (fewer at the end of a pass);
  // it deletes what it has been handed (up to 256 rows) in one commit, so groups merge while a
  // commit is slow.
  std::size_t remove_every = 16;
  // The most rows the endpoint took that may still be in the outbox (handed to the sidecar or
  // not yet): the worker pauses its POSTs while its sidecar is this far behind. The most POSTs a
  // crash or a lease taken over can repeat. At least 2 * remove_every (raised to that if lower).
  std::size_t max_unremoved = 1024;
  std::chrono::milliseconds db_retry_initial{200};  // after a database error: first pause
  std::chrono::milliseconds db_retry_max{10000};    // ... and its cap
  // How long a flow's outbox stays with this instance without renewal (see delivery_leases in
  // config/schema.sql). Renewed every third of it, before a POST; it must exceed the longest
  // POST (http_timeout) three times over, or a slow POST could outlive it.
  std::chrono::milliseconds lease{30000};
  // Per-thread set-up around each thread's life (the MySQL driver's thread state); may be empty.
  std::function<std::shared_ptr<void>()> thread_scope;
};

// How an HTTP outcome is handled (pure; exposed for tests).
enum class DeliveryVerdict { kDelivered, kRetry, kPermanent };
DeliveryVerdict classify(const HttpResult& result);
// The delay before attempt number `attempts + 1`, honouring a Retry-After of delta-seconds;
// `jitter` in [0, 1] picks a point in [d/2, d].
std::chrono::milliseconds retry_delay(int attempts, const std::string& retry_after,
                                      const DeliveryOptions& options, double jitter);

class DeliveryService {
 public:
  using RepositoryFactory = std::function<std::unique_ptr<DeliveryRepository>()>;
  using PosterFactory = std::function<std::unique_ptr<HttpPoster>()>;

  DeliveryService(RepositoryFactory repositories, PosterFactory posters, DeliveryOptions options,
                  Metrics& metrics, std::shared_ptr<spdlog::logger> log);
  ~DeliveryService();  // stop()s
  DeliveryService(const DeliveryService&) = delete;
  DeliveryService& operator=(const DeliveryService&) = delete;

  void start();
  // Finishes the POST in hand (bounded by the HTTP timeout), waits for the removals handed over
  // (bounded by the database timeouts; one that fails leaves its rows to be POSTed again after
  // the next start), gives the leases back and joins. Pending messages stay in the outbox for
  // the next start.
  void stop();

 private:
  struct Streak {  // consecutive failures of one flow, for the recovery summary
    int failures = 0;
    std::chrono::steady_clock::time_point since;
  };
  class Sidecar;  // a worker's second connection and thread (delivery_service.cpp)

  void scan_loop();
  void worker_loop(std::size_t index);
  // Takes the flow's lease, delivers what is due, waits for its removals, gives the lease back;
  // returns when the flow is empty, blocked until a retry, leased by another instance, or
  // stopping. Throws on a database error (its own or the sidecar's).
  void deliver_flow(std::int64_t flow_id, DeliveryRepository& repo, HttpPoster& http,
                    Sidecar& sidecar);
  // deliver_flow()'s work while the lease is held; keep_lease() renews it when due and says
  // whether it is still ours.
  void deliver_leased(std::int64_t flow_id, DeliveryRepository& repo, HttpPoster& http,
                      Sidecar& sidecar, const std::function<bool()>& keep_lease);
  // The flow's rows after `after_msg_id`, looking again for up to `poll` while there are none;
  // empty when there are still none, another flow waits for a worker, or stopping.
  std::vector<PendingDelivery> await_rows(std::int64_t flow_id, std::int64_t after_msg_id,
                                          DeliveryRepository& repo);
  bool sleep_unless_stopping(std::chrono::milliseconds d);

  RepositoryFactory repositories_;
  PosterFactory posters_;
  DeliveryOptions options_;
  Metrics& metrics_;
  std::shared_ptr<spdlog::logger> log_;

  const std::string owner_;  // this instance's lease owner id

  std::mutex mu_;
  std::condition_variable work_cv_;                   // workers: a flow became ready, or stopping
  std::condition_variable stop_cv_;                   // backoff sleeps: stopping
  std::deque<std::int64_t> ready_;                    // guarded by mu_; due flows, no worker yet
  std::set<std::int64_t> claimed_;                    // guarded by mu_; queued or being delivered
  std::unordered_map<std::int64_t, Streak> streaks_;  // guarded by mu_
  bool stopping_ = false;                             // guarded by mu_
  std::thread scanner_;
  std::vector<std::thread> workers_;
};

}  // namespace gateway
