#include "gateway/pipeline.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "gateway/backoff.h"
#include "gateway/errors.h"
#include "gateway/mysql_flow_repository.h"

namespace gateway {
namespace {

using Clock = std::chrono::steady_clock;
using MessagePtr = std::shared_ptr<const InboundMessage>;

}  // namespace

Pipeline::Pipeline(Spool& spool, const FlowTable& flows, RepositoryFactory repositories,
                   PosterFactory posters, PipelineOptions options, Metrics& metrics,
                   std::shared_ptr<spdlog::logger> log)
    : spool_(spool),
      flows_(flows),
      repositories_(std::move(repositories)),
      posters_(std::move(posters)),
      options_(options),
      metrics_(metrics),
      log_(std::move(log)) {}

Pipeline::~Pipeline() { stop(std::chrono::seconds(5)); }

void Pipeline::start() {
  dispatcher_ = std::thread([this] { dispatch_loop(); });
  for (std::size_t i = 0; i < options_.workers; ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
  }
}

void Pipeline::stop(std::chrono::milliseconds deadline) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !dispatcher_.joinable()) return;
    stopping_ = true;
  }
  work_cv_.notify_all();
  space_cv_.notify_all();
  if (dispatcher_.joinable()) dispatcher_.join();
  // Workers finish the transaction in hand; one stuck in a slow POST or a dead database is
  // bounded by the HTTP timeout and the driver's read timeout.
  const auto until = Clock::now() + deadline;
  for (auto& w : workers_) {
    if (w.joinable()) w.join();
  }
  if (Clock::now() > until)
    log_->warn("pipeline: stopping took longer than {} ms", deadline.count());
  workers_.clear();
}

bool Pipeline::sleep_unless_stopping(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  return !work_cv_.wait_for(lock, d, [this] { return stopping_; });
}

void Pipeline::dispatch_loop() {
  // Under load the dispatcher takes records in groups: one wake-up and one lock per group
  // instead of per message (a context switch per message cost more CPU than the message).
  constexpr std::size_t kMaxGroup = 256;
  constexpr auto kLinger = std::chrono::microseconds(500);  // added latency at low rates
  struct Routed {
    std::shared_ptr<InboundMessage> message;
    std::vector<std::int64_t> flows;
  };
  std::vector<Routed> group;
  auto last_release = Clock::now();
  for (;;) {
    std::size_t room;
    {
      std::unique_lock lock(mu_);
      // Waiting for room is progress too (the workers are retrying the database): keep the
      // watchdog fed while the dispatcher itself is alive.
      while (!space_cv_.wait_for(lock, std::chrono::seconds(1), [this] {
        return stopping_ || (in_flight_.size() < options_.max_in_flight &&
                             in_flight_bytes_ < options_.max_in_flight_bytes);
      })) {
        metrics_.last_progress_ms.store(steady_now_ms(), std::memory_order_relaxed);
      }
      if (stopping_) return;
      room = std::min(kMaxGroup, options_.max_in_flight - in_flight_.size());
    }
    std::optional<SpoolRecord> record = spool_.read_next(std::chrono::milliseconds(0));
    if (!record) {
      record = spool_.read_next(std::chrono::milliseconds(100));
      // It had to wait: let the records arriving right behind it join the group.
      if (record) std::this_thread::sleep_for(kLinger);
    }
    metrics_.last_progress_ms.store(steady_now_ms(), std::memory_order_relaxed);
    if (Clock::now() - last_release > std::chrono::milliseconds(100)) {
      release_spool();
      last_release = Clock::now();
    }
    group.clear();
    while (record) {
      Routed r{std::make_shared<InboundMessage>(), {}};
      r.message->seq = record->seq;
      r.message->arrival_us = record->arrival_us;
      r.message->topic = std::move(record->topic);
      r.message->payload = std::move(record->payload);
      flows_.snapshot()->match(r.message->topic, r.flows);
      if (!r.flows.empty()) r.message->parsed = parse_payload(r.message->payload, options_.limits);
      group.push_back(std::move(r));
      if (group.size() >= room) break;
      record = spool_.read_next(std::chrono::milliseconds(0));
    }
    if (group.empty()) continue;

    std::lock_guard lock(mu_);
    next_seq_ = group.back().message->seq + 1;
    for (Routed& r : group) {
      const InboundMessage& m = *r.message;
      if (r.flows.empty()) {
        metrics_.unrouted.fetch_add(1, std::memory_order_relaxed);
        log_->debug("no flow matches topic {}; seq {} dropped", m.topic, m.seq);
        continue;
      }
      in_flight_.emplace(m.seq, InFlight{static_cast<std::uint32_t>(r.flows.size()),
                                         static_cast<std::uint32_t>(m.payload.size())});
      in_flight_bytes_ += m.payload.size();
      for (std::int64_t id : r.flows) {
        FlowQueue& q = queues_[id];
        q.pending.push_back(r.message);
        ++queued_messages_;
        if (!q.busy && !q.queued) {
          q.queued = true;
          ready_.push_back(id);
          work_cv_.notify_one();
        }
      }
    }
    metrics_.backlog.store(in_flight_.size(), std::memory_order_relaxed);
  }
}

void Pipeline::release_spool() {
  std::uint64_t low;
  {
    std::lock_guard lock(mu_);
    low = in_flight_.empty() ? next_seq_ : in_flight_.begin()->first;
  }
  if (low > 0) spool_.release_below(low);
  metrics_.spool_bytes.store(spool_.stats().bytes, std::memory_order_relaxed);
}

void Pipeline::worker_loop(std::size_t index) {
  MySqlThreadScope mysql_thread;
  std::unique_ptr<FlowRepository> repo;
  std::unique_ptr<HttpPoster> http = posters_();
  std::unique_ptr<Processor> processor;
  // One per worker: seeding a Backoff per batch cost ~25 µs (std::random_device) per transaction.
  Backoff backoff(std::chrono::milliseconds(200), options_.retry_max);
  std::vector<MessagePtr> batch;
  for (;;) {
    std::int64_t flow_id;
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [this] { return stopping_ || !ready_.empty(); });
      if (stopping_) return;
      flow_id = ready_.front();
      ready_.pop_front();
      FlowQueue& q = queues_[flow_id];
      q.queued = false;
      q.busy = true;
      batch.clear();
      while (!q.pending.empty() && batch.size() < options_.max_batch) {
        batch.push_back(std::move(q.pending.front()));
        q.pending.pop_front();
      }
      queued_messages_ -= batch.size();
    }

    const bool done = run_batch(flow_id, batch, repo, http, processor, backoff, index);

    std::lock_guard lock(mu_);
    FlowQueue& q = queues_[flow_id];
    q.busy = false;
    if (!done) return;  // stopping: the batch stays in the spool for the next run
    if (!q.pending.empty() && !q.queued) {
      q.queued = true;
      ready_.push_back(flow_id);
      work_cv_.notify_one();
    }
    for (const MessagePtr& m : batch) {
      auto it = in_flight_.find(m->seq);
      if (it != in_flight_.end() && --it->second.flows_left == 0) {
        in_flight_bytes_ -= it->second.payload_bytes;
        in_flight_.erase(it);
      }
    }
    metrics_.backlog.store(in_flight_.size(), std::memory_order_relaxed);
    space_cv_.notify_one();
  }
}

bool Pipeline::run_batch(std::int64_t flow_id, const std::vector<MessagePtr>& batch,
                         std::unique_ptr<FlowRepository>& repo, std::unique_ptr<HttpPoster>& http,
                         std::unique_ptr<Processor>& processor, Backoff& backoff,
                         std::size_t worker) {
  std::vector<const InboundMessage*> view;
  view.reserve(batch.size());
  for (const MessagePtr& m : batch) view.push_back(m.get());
  std::span<const InboundMessage* const> pending(view);
  // A batch the server refuses as a whole is retried one message at a time, so one bad message
  // cannot hold back the others (see the Error branch).
  bool one_by_one = false;
  std::size_t next = 0;

  while (next < pending.size()) {
    auto part = one_by_one ? pending.subspan(next, 1) : pending.subspan(next);
    try {
      if (!repo) {
        repo = repositories_();
        processor = std::make_unique<Processor>(*repo, *http, options_.processor, log_);
        if (!metrics_.db_connected.exchange(true)) {
          log_->info("database connection restored (worker {})", worker);
        }
        metrics_.db_down_since_ms.store(0);
      }
      const auto started = Clock::now();
      BatchResult r = processor->process_batch(flow_id, part, spool_.id());
      metrics_.observe_transaction(std::chrono::duration<double>(Clock::now() - started).count());
      metrics_.transactions.fetch_add(1, std::memory_order_relaxed);
      metrics_.last_progress_ms.store(steady_now_ms(), std::memory_order_relaxed);
      if (r.flow_missing) {
        log_->error("flow {} no longer exists; {} message(s) dropped", flow_id, part.size());
      } else {
        const std::size_t stored = r.accepted - r.posted - r.queued;  // queued: posted later
        metrics_.stored.fetch_add(stored, std::memory_order_relaxed);
        metrics_.posted.fetch_add(r.posted, std::memory_order_relaxed);
        metrics_.rejected.fetch_add(r.rejected, std::memory_order_relaxed);
        metrics_.add_flow(r.flow_code,
                          FlowCounters{part.size() - r.skipped, stored, r.posted, r.rejected});
        for (const std::string& line : r.rejections) log_->warn("rejected: {}", line);
        if (r.skipped) {
          log_->info("flow {}: skipped {} message(s) committed before a restart", r.flow_code,
                     r.skipped);
        }
      }
      next += part.size();
      backoff.reset();
    } catch (const DbUnavailable& e) {
      metrics_.db_errors.fetch_add(1, std::memory_order_relaxed);
      if (metrics_.db_connected.exchange(false) || repo) {
        log_->error("database unavailable (worker {}): {}", worker, e.what());
      }
      if (metrics_.db_down_since_ms.load() == 0) metrics_.db_down_since_ms.store(steady_now_ms());
      processor.reset();
      repo.reset();
      const auto delay = backoff.next();
      log_->debug("worker {} retries in {} ms", worker, delay.count());
      if (!sleep_unless_stopping(delay)) return false;
    } catch (const DbRetryable& e) {
      metrics_.db_errors.fetch_add(1, std::memory_order_relaxed);
      log_->warn("flow {}: {}; retrying the transaction", flow_id, e.what());
      if (!sleep_unless_stopping(std::chrono::milliseconds(20))) return false;
    } catch (const Error& e) {
      metrics_.db_errors.fetch_add(1, std::memory_order_relaxed);
      if (!one_by_one && part.size() > 1) {
        log_->warn("flow {}: batch of {} refused ({}); retrying one by one", flow_id, part.size(),
                   e.what());
        one_by_one = true;
        continue;
      }
      // A single message the server refuses on its own data: a dead letter, never retried forever.
      const InboundMessage& m = *part.front();
      log_->error("flow {}: message seq {} on topic {} refused by the database: {}", flow_id, m.seq,
                  m.topic, e.what());
      try {
        processor->reject(flow_id, m, std::string("database refused: ") + e.what(), spool_.id());
      } catch (const Error& again) {
        log_->error(
            "flow {}: message seq {} could not be recorded as rejected either ({}); dropped",
            flow_id, m.seq, again.what());
      }
      metrics_.rejected.fetch_add(1, std::memory_order_relaxed);
      ++next;
    }
  }
  return true;
}

}  // namespace gateway
