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
// same on every retry: a crash between a POST and its removal from the outbox repeats that POST,
// and the receiver can drop it.
//
// Thread-safe: start()/stop() from the owner; work runs on the service's own threads.
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
  std::chrono::milliseconds poll{100};            // how often the outbox is scanned
  std::size_t batch = 200;                        // deliveries read at a time
  // Delivered rows are removed in groups of this many (one commit each): the most POSTs a crash
  // or a lease taken over can repeat.
  std::size_t remove_every = 16;
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
  // Finishes the POST in hand (bounded by the HTTP timeout) and joins. Pending messages stay in
  // the outbox for the next start.
  void stop();

 private:
  struct Streak {  // consecutive failures of one flow, for the recovery summary
    int failures = 0;
    std::chrono::steady_clock::time_point since;
  };

  void scan_loop();
  void worker_loop(std::size_t index);
  // Takes the flow's lease, delivers what is due, gives the lease back; returns when the flow is
  // empty, blocked until a retry, leased by another instance, or stopping.
  void deliver_flow(std::int64_t flow_id, DeliveryRepository& repo, HttpPoster& http);
  // deliver_flow()'s work while the lease is held; keep_lease() renews it when due and says
  // whether it is still ours.
  void deliver_leased(std::int64_t flow_id, DeliveryRepository& repo, HttpPoster& http,
                      const std::function<bool()>& keep_lease);
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
