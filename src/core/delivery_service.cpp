#include "gateway/delivery_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <exception>
#include <optional>
#include <random>
#include <utility>

#include "gateway/backoff.h"
#include "gateway/clock.h"
#include "gateway/errors.h"
#include "gateway/redact.h"
#include "gateway/thread_name.h"

namespace gateway {
namespace {

// 32 hex digits, new for every service instance (process start).
std::string random_owner_id() {
  std::random_device rd;
  std::uniform_int_distribution<int> hex(0, 15);
  std::string id(32, '0');
  for (char& c : id) c = "0123456789abcdef"[hex(rd)];
  return id;
}

std::string describe(const HttpResult& r) {
  if (r.status == 0) return r.error;
  return "HTTP " + std::to_string(r.status);
}

}  // namespace

DeliveryVerdict classify(const HttpResult& r) {
  if (r.ok()) return DeliveryVerdict::kDelivered;
  if (r.status == 0 || r.status == 408 || r.status == 429 || r.status >= 500) {
    return DeliveryVerdict::kRetry;
  }
  return DeliveryVerdict::kPermanent;
}

std::chrono::milliseconds retry_delay(int attempts, const std::string& retry_after,
                                      const DeliveryOptions& o, double jitter) {
  using std::chrono::milliseconds;
  long long seconds = 0;
  const char* end = retry_after.data() + retry_after.size();
  if (!retry_after.empty() && std::from_chars(retry_after.data(), end, seconds).ptr == end &&
      seconds >= 0) {
    return std::min(milliseconds(seconds * 1000), o.retry_max);
  }
  // initial * 2^(attempts-1), capped; the shift is bounded so it cannot overflow.
  const int shift = std::clamp(attempts - 1, 0, 30);
  const long long full = std::min<long long>(o.retry_max.count(), o.retry_initial.count() << shift);
  const long long half = full / 2;
  return milliseconds(half + static_cast<long long>(jitter * static_cast<double>(half)));
}

// A worker's second database connection, on a thread of its own: it removes the rows the worker
// delivered and reads the flow's next rows ahead, while the worker POSTs. Removals run in the
// order handed over; a read ahead goes before the removals still queued (it reads after the
// worker's last row, so it does not depend on them).
// Ranges handed over between two settle() calls belong to one pass over one flow, in which every
// row between two delivered ones was delivered too or given up (committed by the worker before
// it went on): the sidecar may merge them and delete from the first to the last in one statement.
// Thread-safe: every public method from the worker.
class DeliveryService::Sidecar {
  // A removal deletes at most this many rows (unless one group is larger): few commits while the
  // database is slow, yet a read ahead never waits long behind a removal.
  static constexpr std::size_t kMaxMergedRows = 256;

 public:
  Sidecar(DeliveryService& service, std::size_t index)
      : service_(service),
        limit_(std::max(service.options_.max_unremoved, 2 * service.options_.remove_every) -
               service.options_.remove_every),
        thread_([this, index] {
          set_thread_name("gw-remove-" + std::to_string(index + 1));
          run();
        }) {}
  ~Sidecar() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
    }
    work_cv_.notify_one();
    thread_.join();
  }
  Sidecar(const Sidecar&) = delete;
  Sidecar& operator=(const Sidecar&) = delete;

  // Queues the removal of `rows` delivered messages first..last of the flow. Waits while more
  // than the limit are queued or being removed, so that with the worker's open group at most
  // max_unremoved rows the endpoint took are still in the outbox. Throws the failure of an
  // earlier removal instead (then nothing is queued).
  void remove(std::int64_t flow_id, const std::string& flow_code, std::int64_t first,
              std::int64_t last, std::size_t rows) {
    std::unique_lock lock(mu_);
    done_cv_.wait(lock, [&] { return failure_ || unremoved_ == 0 || unremoved_ + rows <= limit_; });
    rethrow_failure();
    queued_.push_back(Job{Job::kRemove, flow_id, first, last, rows, flow_code});
    unremoved_ += rows;
    ++jobs_;
    work_cv_.notify_one();
  }
  // Throws the failure of an earlier removal, if there was one (once).
  void check() {
    std::lock_guard lock(mu_);
    rethrow_failure();
  }
  // Starts reading the flow's next rows after `after_msg_id`, at most `limit`, for take_ahead().
  void read_ahead(std::int64_t flow_id, std::int64_t after_msg_id, std::size_t limit) {
    std::lock_guard lock(mu_);
    ahead_.reset();
    ahead_failure_ = nullptr;
    queued_.push_front(Job{Job::kRead, flow_id, after_msg_id, 0, limit, {}});
    ++jobs_;
    work_cv_.notify_one();
  }
  // The rows read_ahead() asked for, once read; throws if reading them failed. std::nullopt if
  // the read is still queued behind a removal: it is cancelled, and the worker reads itself.
  std::optional<std::vector<PendingDelivery>> take_ahead() {
    std::unique_lock lock(mu_);
    if (const auto n = std::erase_if(queued_, [](const Job& j) { return j.kind == Job::kRead; })) {
      jobs_ -= n;
      return std::nullopt;
    }
    done_cv_.wait(lock, [this] { return ahead_ || ahead_failure_; });
    if (ahead_failure_) std::rethrow_exception(std::exchange(ahead_failure_, nullptr));
    std::optional<std::vector<PendingDelivery>> rows = std::move(ahead_);
    ahead_.reset();
    return rows;
  }
  // Waits until the removals handed over are done (rows read ahead and not taken are dropped);
  // throws if one failed.
  void settle() {
    std::unique_lock lock(mu_);
    drain(lock);
    rethrow_failure();
  }
  // settle() after the pass failed anyway: the flow is handed out again only after its removals
  // are over, and a removal failure has nothing more to stop.
  void abandon() noexcept {
    std::unique_lock lock(mu_);
    drain(lock);
    failure_ = nullptr;
  }

 private:
  struct Job {
    enum Kind { kRemove, kRead } kind;
    std::int64_t flow_id;
    std::int64_t first;  // kRead: after this msg_id
    std::int64_t last;
    std::size_t rows;  // kRead: at most this many
    std::string flow_code;
  };

  void rethrow_failure() {  // requires mu_
    if (!failure_) return;
    std::rethrow_exception(std::exchange(failure_, nullptr));
  }
  void drain(std::unique_lock<std::mutex>& lock) {
    jobs_ -= std::erase_if(queued_, [](const Job& j) { return j.kind == Job::kRead; });
    done_cv_.wait(lock, [this] { return jobs_ == 0; });
    ahead_.reset();
    ahead_failure_ = nullptr;
  }

  void run() {
    const std::shared_ptr<void> thread_scope =
        service_.options_.thread_scope ? service_.options_.thread_scope() : nullptr;
    std::unique_ptr<DeliveryRepository> repo;  // opened at the first job
    std::unique_lock lock(mu_);
    for (;;) {
      work_cv_.wait(lock, [this] { return closing_ || !queued_.empty(); });
      if (queued_.empty()) return;
      Job job = std::move(queued_.front());
      queued_.pop_front();
      std::size_t merged = 1;
      while (job.kind == Job::kRemove && !queued_.empty() && queued_.front().kind == Job::kRemove &&
             queued_.front().flow_id == job.flow_id &&
             job.rows + queued_.front().rows <= kMaxMergedRows) {
        job.last = queued_.front().last;
        job.rows += queued_.front().rows;
        queued_.pop_front();
        ++merged;
      }
      lock.unlock();
      std::exception_ptr failure;
      std::vector<PendingDelivery> rows;
      try {
        if (!repo) repo = service_.repositories_();
        if (job.kind == Job::kRead) {
          rows = repo->next_deliveries(job.flow_id, job.first, job.rows);
        } else {
          repo->delivered(job.flow_id, job.first, job.last);
          service_.metrics_.posted.fetch_add(job.rows, std::memory_order_relaxed);
          service_.metrics_.add_flow(job.flow_code, FlowCounters{0, 0, job.rows, 0});
        }
      } catch (...) {
        failure = std::current_exception();
        repo.reset();
      }
      lock.lock();
      jobs_ -= merged;
      if (job.kind == Job::kRead) {
        if (failure) {
          ahead_failure_ = failure;
        } else {
          ahead_ = std::move(rows);
        }
      } else if (failure) {
        // The rows stay in the outbox; so do those queued after them (dropped here): the worker
        // stops the flow and the next pass POSTs them again, with the same Idempotency-Keys.
        failure_ = failure;
        const auto dropped =
            std::erase_if(queued_, [](const Job& j) { return j.kind == Job::kRemove; });
        jobs_ -= dropped;
        unremoved_ = 0;
      } else {
        unremoved_ -= job.rows;
      }
      done_cv_.notify_all();
    }
  }

  DeliveryService& service_;
  const std::size_t limit_;  // rows queued or being removed before remove() waits

  std::mutex mu_;
  std::condition_variable work_cv_;  // the sidecar: a job queued, or closing
  std::condition_variable done_cv_;  // the worker: a job ended
  std::deque<Job> queued_;           // guarded by mu_
  std::size_t jobs_ = 0;             // guarded by mu_; queued or running
  std::size_t unremoved_ = 0;        // guarded by mu_; rows queued or being removed
  std::exception_ptr failure_;       // guarded by mu_; a removal failed
  std::optional<std::vector<PendingDelivery>> ahead_;  // guarded by mu_; rows read ahead
  std::exception_ptr ahead_failure_;                   // guarded by mu_; reading them failed
  bool closing_ = false;                               // guarded by mu_
  std::thread thread_;                                 // last: starts once the members above exist
};

DeliveryService::DeliveryService(RepositoryFactory repositories, PosterFactory posters,
                                 DeliveryOptions options, Metrics& metrics,
                                 std::shared_ptr<spdlog::logger> log)
    : repositories_(std::move(repositories)),
      posters_(std::move(posters)),
      options_(std::move(options)),
      metrics_(metrics),
      log_(std::move(log)),
      owner_(random_owner_id()) {}

DeliveryService::~DeliveryService() { stop(); }

void DeliveryService::start() {
  scanner_ = std::thread([this] { scan_loop(); });
  for (std::size_t i = 0; i < options_.workers; ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
  }
}

void DeliveryService::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  stop_cv_.notify_all();
  if (scanner_.joinable()) scanner_.join();
  for (auto& w : workers_) {
    if (w.joinable()) w.join();
  }
  workers_.clear();
}

bool DeliveryService::sleep_unless_stopping(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  return !stop_cv_.wait_for(lock, d, [this] { return stopping_; });
}

void DeliveryService::scan_loop() {
  set_thread_name("gw-outbox-scan");
  const std::shared_ptr<void> thread_scope =
      options_.thread_scope ? options_.thread_scope() : nullptr;
  std::unique_ptr<DeliveryRepository> repo;
  Backoff backoff(options_.db_retry_initial, options_.db_retry_max);
  auto delay = options_.poll;
  while (sleep_unless_stopping(delay)) {
    delay = options_.poll;
    std::vector<DueFlow> due;
    try {
      if (!repo) repo = repositories_();
      due = repo->pending_flows(owner_);
      backoff.reset();
    } catch (const std::exception& e) {
      log_->debug("delivery scan: {}", e.what());
      repo.reset();
      delay = backoff.next();
      continue;
    }
    const std::int64_t now = unix_now_ms();
    std::lock_guard lock(mu_);
    for (const DueFlow& f : due) {
      if (f.next_attempt_ms > now || claimed_.count(f.flow_id)) continue;
      claimed_.insert(f.flow_id);
      ready_.push_back(f.flow_id);
      work_cv_.notify_one();
    }
  }
}

void DeliveryService::worker_loop(std::size_t index) {
  set_thread_name("gw-deliver-" + std::to_string(index + 1));
  const std::shared_ptr<void> thread_scope =
      options_.thread_scope ? options_.thread_scope() : nullptr;
  std::unique_ptr<DeliveryRepository> repo;
  std::unique_ptr<HttpPoster> http = posters_();
  Sidecar sidecar(*this, index);
  Backoff backoff(options_.db_retry_initial, options_.db_retry_max);
  for (;;) {
    std::int64_t flow_id;
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [this] { return stopping_ || !ready_.empty(); });
      if (stopping_) return;
      flow_id = ready_.front();
      ready_.pop_front();
    }
    try {
      if (!repo) repo = repositories_();
      deliver_flow(flow_id, *repo, *http, sidecar);
      backoff.reset();
    } catch (const std::exception& e) {
      // Whatever failed, known or not, here or in the sidecar: the outbox rows are untouched (a
      // row leaves only in the commit that deletes it after a 2xx or moves it to
      // rejected_messages), and the next scan hands the flow out again once the removals in
      // hand are over.
      log_->warn("delivery worker {}: {}", index, e.what());
      sidecar.abandon();
      repo.reset();
      sleep_unless_stopping(backoff.next());
    }
    std::lock_guard lock(mu_);
    claimed_.erase(flow_id);
  }
}

void DeliveryService::deliver_flow(std::int64_t flow_id, DeliveryRepository& repo, HttpPoster& http,
                                   Sidecar& sidecar) {
  // One owner per flow in the whole cluster; the lease is renewed well before it runs out.
  const std::int64_t ttl_ms = options_.lease.count();
  if (!repo.claim(flow_id, owner_, ttl_ms)) return;  // another instance delivers it
  auto renewed = std::chrono::steady_clock::now();
  const auto keep_lease = [&] {
    if (std::chrono::steady_clock::now() - renewed < options_.lease / 3) return true;
    renewed = std::chrono::steady_clock::now();
    if (repo.claim(flow_id, owner_, ttl_ms)) return true;
    log_->warn("delivery: the lease on flow {} passed to another instance; stopping here", flow_id);
    return false;
  };
  deliver_leased(flow_id, repo, http, sidecar, keep_lease);
  // Given back only once nothing the endpoint took is left in the outbox: whoever takes the
  // flow next starts after it.
  sidecar.settle();
  repo.release(flow_id, owner_);
}

void DeliveryService::deliver_leased(std::int64_t flow_id, DeliveryRepository& repo,
                                     HttpPoster& http, Sidecar& sidecar,
                                     const std::function<bool()>& keep_lease) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  const auto target = repo.delivery_target(flow_id);
  std::vector<PendingDelivery> batch = repo.next_deliveries(flow_id, 0, options_.batch);
  while (!batch.empty()) {
    // Once the batch is done, every row up to its last was delivered (its removal may still be
    // in hand) or given up: the next rows are those after it, which the sidecar reads while the
    // batch is POSTed.
    const std::int64_t after = batch.back().msg_id;
    sidecar.read_ahead(flow_id, after, options_.batch);
    std::int64_t first_done = 0, last_done = 0;
    std::size_t done = 0;
    // Hands the delivered group to the sidecar; only delivered rows, so before anything else is
    // written for a later one (give_up, retry_later).
    auto flush = [&] {
      if (done == 0) return;
      sidecar.remove(flow_id, target->flow_code, first_done, last_done, done);
      first_done = last_done = 0;
      done = 0;
    };
    for (PendingDelivery& d : batch) {
      if (d.next_attempt_ms > unix_now_ms()) {
        flush();
        return;  // the scanner hands the flow out again when it is due
      }
      {
        std::lock_guard lock(mu_);
        if (stopping_) break;
      }
      if (!keep_lease()) {
        flush();
        return;
      }
      sidecar.check();  // a failed removal stops the flow: its rows are POSTed again later
      if (!target || !target->endpoint_url || target->endpoint_url->empty()) {
        flush();
        repo.give_up(d, 0, target ? "flow has no endpoint_url" : "flow no longer exists");
        metrics_.rejected.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      HttpRequest req;
      req.url = *target->endpoint_url;
      req.body = d.payload;
      req.timeout = options_.http_timeout;
      const std::string id = std::to_string(d.msg_id);
      req.headers = {{"X-Gateway-Flow", target->flow_code},
                     {"X-Gateway-Msg-Id", id},
                     {"X-Gateway-Topic", d.topic},
                     {"Idempotency-Key", target->flow_code + ":" + id}};
      const HttpResult r = http.post(req);
      const DeliveryVerdict verdict = classify(r);
      if (verdict == DeliveryVerdict::kDelivered) {
        if (done++ == 0) first_done = d.msg_id;
        last_done = d.msg_id;
        if (done >= options_.remove_every) flush();
        std::lock_guard lock(mu_);
        if (auto it = streaks_.find(flow_id); it != streaks_.end()) {
          const auto secs = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::steady_clock::now() - it->second.since)
                                .count();
          log_->info("endpoint of flow {} recovered after {} failed attempt(s) over {} s",
                     target->flow_code, it->second.failures, secs);
          streaks_.erase(it);
        }
        continue;
      }
      flush();
      d.attempts += 1;
      {
        std::lock_guard lock(mu_);
        auto& streak = streaks_[flow_id];
        if (streak.failures++ == 0) streak.since = std::chrono::steady_clock::now();
      }
      const bool too_old = unix_now_ms() - d.created_ms > 1000LL * options_.max_age.count();
      if (verdict == DeliveryVerdict::kPermanent || d.attempts >= options_.max_attempts ||
          too_old) {
        const std::string why =
            redact_url_credentials("POST " + req.url + " failed: " + describe(r) +
                                   (verdict == DeliveryVerdict::kPermanent
                                        ? " (permanent)"
                                        : " after " + std::to_string(d.attempts) + " attempt(s)" +
                                              (too_old ? " (message too old)" : "")));
        log_->error("delivery given up: flow {} msg_id {} attempt {}: {}", target->flow_code,
                    d.msg_id, d.attempts, why);
        repo.give_up(d, r.status, why);
        metrics_.rejected.fetch_add(1, std::memory_order_relaxed);
        metrics_.add_flow(target->flow_code, FlowCounters{0, 0, 0, 1});
        continue;
      }
      const auto delay = retry_delay(d.attempts, r.retry_after, options_,
                                     std::uniform_real_distribution<double>(0, 1)(rng));
      d.next_attempt_ms = unix_now_ms() + delay.count();
      const std::string error = redact_url_credentials(describe(r));
      log_->warn("delivery failed: flow {} msg_id {} attempt {}: {}; next try in {} ms",
                 target->flow_code, d.msg_id, d.attempts, error, delay.count());
      repo.retry_later(d, r.status, r.error.empty() ? error : redact_url_credentials(r.error));
      return;  // the flow waits: later messages must not overtake this one
    }
    flush();
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
    }
    if (auto ahead = sidecar.take_ahead()) {
      batch = std::move(*ahead);
    } else {
      batch = repo.next_deliveries(flow_id, after, options_.batch);
    }
    // Read while the batch was POSTed: what came since is looked for before the flow is left.
    if (batch.empty()) batch = await_rows(flow_id, after, repo);
  }
}

std::vector<PendingDelivery> DeliveryService::await_rows(std::int64_t flow_id,
                                                         std::int64_t after_msg_id,
                                                         DeliveryRepository& repo) {
  // A flow that ran dry is often in the middle of a burst the flow transactions are still
  // writing: giving it back would leave it idle until the next scan (up to `poll`).
  // The pause doubles (2, 4, 8 ms ... up to a quarter of `poll`): a burst's next rows are found
  // within milliseconds, and a flow that stays dry costs a handful of queries, not one per 2 ms.
  auto step = std::chrono::milliseconds(2);
  const auto max_step = std::max(step, options_.poll / 4);
  const auto until = std::chrono::steady_clock::now() + options_.poll;
  for (;;) {
    std::vector<PendingDelivery> rows = repo.next_deliveries(flow_id, after_msg_id, options_.batch);
    if (!rows.empty() || std::chrono::steady_clock::now() >= until) return rows;
    std::unique_lock lock(mu_);
    if (stop_cv_.wait_for(lock, step, [this] { return stopping_ || !ready_.empty(); })) return {};
    step = std::min(step * 2, max_step);
  }
}

}  // namespace gateway
