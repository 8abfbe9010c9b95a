#include "gateway/delivery_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <random>

#include "gateway/backoff.h"
#include "gateway/errors.h"

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
  const std::shared_ptr<void> thread_scope =
      options_.thread_scope ? options_.thread_scope() : nullptr;
  std::unique_ptr<DeliveryRepository> repo;
  std::unique_ptr<HttpPoster> http = posters_();
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
      deliver_flow(flow_id, *repo, *http);
      backoff.reset();
    } catch (const std::exception& e) {
      // Whatever failed, known or not: the outbox rows are untouched (a row leaves only in the
      // commit that deletes it after a 2xx or moves it to rejected_messages), and the next scan
      // hands the flow out again.
      log_->warn("delivery worker {}: {}", index, e.what());
      repo.reset();
      sleep_unless_stopping(backoff.next());
    }
    std::lock_guard lock(mu_);
    claimed_.erase(flow_id);
  }
}

void DeliveryService::deliver_flow(std::int64_t flow_id, DeliveryRepository& repo,
                                   HttpPoster& http) {
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
  deliver_leased(flow_id, repo, http, keep_lease);
  repo.release(flow_id, owner_);
}

void DeliveryService::deliver_leased(std::int64_t flow_id, DeliveryRepository& repo,
                                     HttpPoster& http, const std::function<bool()>& keep_lease) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  const auto target = repo.delivery_target(flow_id);
  for (;;) {
    std::vector<PendingDelivery> batch = repo.next_deliveries(flow_id, options_.batch);
    if (batch.empty()) return;
    std::int64_t first_done = 0, last_done = 0;
    auto flush = [&] {
      if (first_done == 0) return;
      repo.delivered(flow_id, first_done, last_done);
      metrics_.posted.fetch_add(static_cast<std::uint64_t>(last_done - first_done + 1),
                                std::memory_order_relaxed);
      if (target) {
        metrics_.add_flow(
            target->flow_code,
            FlowCounters{0, 0, static_cast<std::uint64_t>(last_done - first_done + 1), 0});
      }
      first_done = last_done = 0;
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
        if (first_done == 0) first_done = d.msg_id;
        last_done = d.msg_id;
        // Removed in small groups: one commit per group, and a crash (or a lease taken over)
        // repeats at most this many POSTs, each with its Idempotency-Key.
        if (last_done - first_done + 1 >= static_cast<std::int64_t>(options_.remove_every)) {
          flush();
        }
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
        const std::string why = "POST " + req.url + " failed: " + describe(r) +
                                (verdict == DeliveryVerdict::kPermanent
                                     ? " (permanent)"
                                     : " after " + std::to_string(d.attempts) + " attempt(s)" +
                                           (too_old ? " (message too old)" : ""));
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
      log_->warn("delivery failed: flow {} msg_id {} attempt {}: {}; next try in {} ms",
                 target->flow_code, d.msg_id, d.attempts, describe(r), delay.count());
      repo.retry_later(d, r.status, r.error.empty() ? describe(r) : r.error);
      return;  // the flow waits: later messages must not overtake this one
    }
    flush();
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
    }
  }
}

}  // namespace gateway
