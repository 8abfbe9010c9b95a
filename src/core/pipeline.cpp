#include "gateway/pipeline.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "gateway/clock.h"
#include "gateway/errors.h"
#include "gateway/thread_name.h"

namespace gateway {
namespace {

// A deadlock is retried at once this many times before the flow is held like any other failure.
constexpr int kDeadlockRetries = 3;
constexpr auto kDeadlockPause = std::chrono::milliseconds(20);

}  // namespace

Pipeline::Pipeline(Spool& spool, const FlowTable& flows, RepositoryFactory repositories,
                   PosterFactory posters, PipelineOptions options, Metrics& metrics,
                   std::shared_ptr<spdlog::logger> log)
    : spool_(spool),
      flows_(flows),
      repositories_(std::move(repositories)),
      posters_(std::move(posters)),
      options_(std::move(options)),
      metrics_(metrics),
      log_(std::move(log)) {}

Pipeline::~Pipeline() { stop(std::chrono::seconds(5)); }

void Pipeline::start() {
  dispatcher_ = std::thread([this] {
    set_thread_name("gw-dispatch");
    dispatch_loop();
  });
  for (std::size_t i = 0; i < options_.workers; ++i) {
    workers_.emplace_back([this, i] {
      set_thread_name("gw-worker-" + std::to_string(i + 1));
      worker_loop(i);
    });
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
  linger_cv_.notify_all();
  const auto started = Clock::now();
  if (dispatcher_.joinable()) dispatcher_.join();
  for (auto& w : workers_) {
    if (w.joinable()) w.join();
  }
  if (Clock::now() - started > deadline)
    log_->warn("pipeline: stopping took longer than {} ms", deadline.count());
  workers_.clear();
  // What the workers committed since the dispatcher's last release: the next start resumes
  // after it.
  release_spool();
}

std::string Pipeline::flow_name(std::int64_t flow_id) const {
  if (flow_id == kNoFlow) return "(no flow)";
  for (const Flow& f : flows_.snapshot()->flows()) {
    if (f.id == flow_id) return f.code;
  }
  return "#" + std::to_string(flow_id);
}

std::shared_ptr<InboundMessage> Pipeline::unparsed_message(SpoolRecord&& record) {
  auto m = std::make_shared<InboundMessage>();
  m->seq = record.seq;
  m->arrival_us = record.arrival_us;
  m->topic = std::move(record.topic);
  m->payload = std::move(record.payload);
  m->original_size = record.original_size;
  m->retained = record.retained;
  m->expiry_deadline_us = record.expiry_deadline_us;
  m->content_type = std::move(record.content_type);
  m->user_properties = std::move(record.user_properties);
  return m;
}

Pipeline::MessagePtr Pipeline::to_message(SpoolRecord&& record) const {
  const std::uint64_t original_size = record.original_size;
  std::shared_ptr<InboundMessage> shared = unparsed_message(std::move(record));
  InboundMessage& m = *shared;
  if (original_size > 0) {
    // Only the head of it was spooled (on_message): the whole never reached memory twice.
    m.parsed.error = "payload is " + std::to_string(original_size) + " bytes, limit " +
                     std::to_string(options_.limits.max_bytes);
  } else {
    m.parsed = parse_payload(m.payload, options_.limits);
  }
  return shared;
}

std::optional<SpoolRecord> Pipeline::read_spool(std::chrono::milliseconds timeout) {
  try {
    auto record = spool_.read_next(timeout);
    if (spool_read_failing_) {
      spool_read_failing_ = false;
      log_->info("spool readable again");
    }
    return record;
  } catch (const std::exception& e) {
    // The records stay where they are; reading is retried, never skipped.
    if (!std::exchange(spool_read_failing_, true)) log_->error("spool read failed: {}", e.what());
    std::this_thread::sleep_for(std::chrono::seconds(1));
    return std::nullopt;
  }
}

std::optional<Pipeline::RoutingEpoch> Pipeline::routing_for(
    std::shared_ptr<const FlowSnapshot> snapshot, std::uint64_t next_seq) {
  if (!options_.flow_starts) return RoutingEpoch{std::move(snapshot), nullptr};
  for (bool failing = false;;) {
    try {
      auto starts = options_.flow_starts->update(*snapshot, next_seq);
      if (failing) log_->info("flow starts written; routing goes on");
      return RoutingEpoch{std::move(snapshot), std::move(starts)};
    } catch (const std::exception& e) {
      if (!std::exchange(failing, true)) {
        log_->error("{}; routing waits until it can be written", e.what());
      }
    }
    {
      std::lock_guard lock(mu_);
      if (stopping_) return std::nullopt;
    }
    // Retrying is progress (as waiting out a database outage is): a restart would not make the
    // disk take the file, so the watchdog is fed.
    metrics_.last_progress_ms.store(steady_now_ms(), std::memory_order_relaxed);
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

void Pipeline::dispatch_loop() {
  // Under load the dispatcher takes records in groups: one wake-up and one lock per group
  // instead of per message (a context switch per message cost more CPU than the message).
  constexpr std::size_t kMaxGroup = 256;
  // After a wait, the dispatcher lets the records arriving right behind the first join it. With
  // a batch linger, most of it (10 ms at most: a burst after a pause must not wait long): the
  // workers' linger counts from a message's arrival, so this adds no latency, and at steady rates
  // the dispatcher wakes once per several messages.
  const auto linger = std::clamp<std::chrono::microseconds>(
      options_.batch_linger * 3 / 4, std::chrono::microseconds(500), std::chrono::milliseconds(10));
  struct Routed {
    std::uint64_t seq;
    MessagePtr message;  // null when no flow matched
    std::vector<std::int64_t> flows;
  };
  std::vector<Routed> group;
  RoutingEpoch routing;  // the current snapshot's
  auto last_release = Clock::now();
  for (;;) {
    std::size_t room;
    std::size_t room_bytes;
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
      room_bytes = options_.max_in_flight_bytes - in_flight_bytes_;
    }
    std::optional<SpoolRecord> record = read_spool(std::chrono::milliseconds(0));
    if (!record) {
      record = read_spool(std::chrono::milliseconds(100));
      // It had to wait: let the records arriving right behind it join the group.
      if (record) std::this_thread::sleep_for(linger);
    }
    metrics_.last_progress_ms.store(steady_now_ms(), std::memory_order_relaxed);
    if (Clock::now() - last_release > std::chrono::milliseconds(100)) {
      release_spool();
      last_release = Clock::now();
    }
    group.clear();
    if (auto snapshot = flows_.snapshot(); record && snapshot != routing.flows) {
      auto next = routing_for(std::move(snapshot), record->seq);
      if (!next) return;  // stopping: the record stays in the spool
      routing = std::move(*next);
    }
    while (record) {
      Routed r{record->seq, nullptr, {}};
      routing.route(record->seq, record->topic, r.flows);
      if (r.flows.empty()) {
        // We subscribe only to flows' filters: its flow was disabled, removed or re-topicked
        // after it arrived. It becomes a dead letter (never dropped silently).
        metrics_.unrouted.fetch_add(1, std::memory_order_relaxed);
        r.flows.push_back(kNoFlow);
        r.message = unparsed_message(std::move(*record));
      } else {
        r.message = to_message(std::move(*record));
      }
      const std::size_t bytes = r.message ? r.message->payload.size() : 0;
      group.push_back(std::move(r));
      // Bounded by bytes as well: a group of large payloads stops at the cap (overshooting it by
      // one payload at most), not 256 payloads past it.
      if (group.size() >= room || bytes >= room_bytes) break;
      room_bytes -= bytes;
      record = read_spool(std::chrono::milliseconds(0));
    }
    if (group.empty()) continue;

    std::lock_guard lock(mu_);
    if (epochs_.empty() || epochs_.rbegin()->second.flows != routing.flows) {
      epochs_.emplace(group.front().seq, routing);
    }
    next_seq_ = group.back().seq + 1;
    for (Routed& r : group) {
      std::uint32_t in_memory = 0;
      for (std::int64_t id : r.flows) {
        FlowQueue& q = queues_[id];
        if (q.parked_from != 0) {
          // Its earlier messages are still in the spool only: this one joins them there, so
          // that the flow's order holds. The worker re-reads them.
          if (q.held) {
            ++q.waited;
            ++held_waiting_;
          }
          continue;
        }
        q.pending.push_back(r.message);
        ++in_memory;
        if (q.lingering && q.pending.size() == options_.max_batch) linger_cv_.notify_all();
        if (!q.held) make_ready_locked(id, q);
      }
      if (in_memory > 0) {
        const std::size_t bytes = r.message->payload.size();
        in_flight_.emplace(r.seq, InFlight{in_memory, static_cast<std::uint32_t>(bytes)});
        in_flight_bytes_ += bytes;
      }
    }
    publish_gauges_locked();
  }
}

void Pipeline::make_ready_locked(std::int64_t flow_id, FlowQueue& q) {
  if (q.busy || q.queued) return;
  q.queued = true;
  ready_.push_back(flow_id);
  work_cv_.notify_one();
}

void Pipeline::forget_in_flight_locked(std::uint64_t seq) {
  auto it = in_flight_.find(seq);
  if (it == in_flight_.end() || --it->second.flows_left > 0) return;
  in_flight_bytes_ -= it->second.payload_bytes;
  in_flight_.erase(it);
}

void Pipeline::publish_gauges_locked() {
  metrics_.backlog.store(in_flight_.size() + held_waiting_, std::memory_order_relaxed);
  metrics_.flows_held.store(held_count_, std::memory_order_relaxed);
  metrics_.held_messages.store(held_waiting_, std::memory_order_relaxed);
}

void Pipeline::release_spool() {
  std::uint64_t low;
  {
    std::lock_guard lock(mu_);
    low = in_flight_.empty() ? next_seq_ : std::min(next_seq_, in_flight_.begin()->first);
    // A parked flow still needs everything from parked_from on.
    for (const auto& [id, q] : queues_) {
      if (q.parked_from != 0) low = std::min(low, q.parked_from);
    }
    // Routing epochs wholly below `low` are no longer needed (the one in force at `low` is).
    while (epochs_.size() > 1 && std::next(epochs_.begin())->first <= low) {
      epochs_.erase(epochs_.begin());
    }
  }
  if (low > 0) spool_.release_below(low);
  metrics_.spool_bytes.store(spool_.stats().bytes, std::memory_order_relaxed);
}

void Pipeline::refill(std::int64_t flow_id, FlowQueue& q, std::uint64_t from, std::uint64_t below,
                      const Epochs& epochs, std::vector<MessagePtr>& batch) {
  // Nothing dispatched in [from, below) yet: nothing to re-read. Checked before the cursor
  // moves, so that no record is consumed without being routed.
  if (epochs.empty()) return;
  if (!q.cursor) q.cursor = spool_.cursor(from);
  std::vector<std::int64_t> matched;
  std::size_t epoch = 0;
  while (batch.size() < options_.max_batch) {
    std::optional<SpoolRecord> record = q.cursor->next(below);
    if (!record) return;
    // Routed again exactly as the dispatcher routed it then, not by today's flows.
    while (epoch + 1 < epochs.size() && epochs[epoch + 1].first <= record->seq) ++epoch;
    epochs[epoch].second.route(record->seq, record->topic, matched);
    if (flow_id == kNoFlow) {
      if (matched.empty()) batch.push_back(unparsed_message(std::move(*record)));
      continue;
    }
    if (std::find(matched.begin(), matched.end(), flow_id) == matched.end()) continue;
    batch.push_back(to_message(std::move(*record)));
  }
}

void Pipeline::worker_loop(std::size_t index) {
  const std::shared_ptr<void> thread_scope =
      options_.thread_scope ? options_.thread_scope() : nullptr;
  Worker w;
  w.index = index;
  std::vector<MessagePtr> batch;
  std::unique_lock lock(mu_);
  for (;;) {
    // Held flows whose retry is due become ready again.
    for (auto now = Clock::now(); !due_.empty() && due_.begin()->first <= now;) {
      const std::int64_t id = due_.begin()->second;
      due_.erase(due_.begin());
      FlowQueue& q = queues_[id];
      if (q.held && q.retry_at <= now) make_ready_locked(id, q);
    }
    if (stopping_) return;
    if (ready_.empty()) {
      if (due_.empty()) {
        work_cv_.wait(lock);
      } else {
        // A copy: wait_until reads its argument again after waking, and another worker may have
        // erased this node of due_ meanwhile.
        const Clock::time_point until = due_.begin()->first;
        work_cv_.wait_until(lock, until);
      }
      continue;
    }
    const std::int64_t flow_id = ready_.front();
    ready_.pop_front();
    FlowQueue& q = queues_[flow_id];  // node-based map: stays valid while unlocked
    q.queued = false;
    q.busy = true;
    batch.clear();
    if (options_.batch_linger.count() > 0 && !q.pending.empty() &&
        q.pending.size() < options_.max_batch) {
      // Light load: wait a moment for more of this flow's messages, so that one transaction
      // (lock, INSERT, offset, commit and its redo-log flush) carries several. Never when a full
      // batch is waiting already.
      // The linger counts from the oldest message's arrival: time it spent in the spool counts.
      const auto waited = std::chrono::microseconds(
          std::max<std::int64_t>(0, unix_now_us() - q.pending.front()->arrival_us));
      if (waited < options_.batch_linger) {
        q.lingering = true;
        linger_cv_.wait_for(lock, options_.batch_linger - waited,
                            [&] { return stopping_ || q.pending.size() >= options_.max_batch; });
        q.lingering = false;
      }
    }
    while (!q.pending.empty() && batch.size() < options_.max_batch) {
      batch.push_back(std::move(q.pending.front()));
      q.pending.pop_front();
    }
    const bool alone = std::exchange(q.alone, false);
    if (!batch.empty() && batch.size() < options_.max_batch && flow_id != kNoFlow && !alone &&
        options_.max_group_flows > 1 && !options_.processor.post_inline && !ready_.empty()) {
      // A short run while other flows wait too: one transaction for all of them.
      std::vector<Member> members;
      take_group_locked(batch.size(), members);
      if (!members.empty()) {
        members.push_back(Member{flow_id, &q, std::move(batch), {}});
        std::sort(members.begin(), members.end(),
                  [](const Member& a, const Member& b) { return a.flow_id < b.flow_id; });
        lock.unlock();
        run_group(members, w);
        lock.lock();
        for (Member& m : members) settle_locked(m.flow_id, *m.queue, m.batch, m.outcome);
        publish_gauges_locked();
        space_cv_.notify_one();
        continue;
      }
    }
    if (batch.empty() && q.parked_from != 0) {
      const std::uint64_t from = q.parked_from;
      const std::uint64_t below = next_seq_;
      Epochs epochs;
      auto e = epochs_.upper_bound(from);
      if (e != epochs_.begin()) --e;
      for (; e != epochs_.end() && e->first < below; ++e) epochs.emplace_back(*e);
      lock.unlock();
      try {
        refill(flow_id, q, from, below, epochs, batch);
      } catch (const std::exception& e) {
        // The spool could not be read: leave the flow parked and retry like a held flow.
        log_->error("flow {}: re-reading its messages from the spool failed: {}",
                    flow_name(flow_id), e.what());
        lock.lock();
        q.cursor.reset();
        hold_locked(flow_id, q, std::string("spool: ") + e.what(), false, 0, 0);
        q.busy = false;
        continue;
      }
      lock.lock();
      for (const MessagePtr& m : batch) {
        auto [it, added] = in_flight_.try_emplace(
            m->seq, InFlight{0, static_cast<std::uint32_t>(m->payload.size())});
        if (added) in_flight_bytes_ += m->payload.size();
        ++it->second.flows_left;
      }
      if (!batch.empty()) {
        q.parked_from = batch.back()->seq + 1;
      } else if (next_seq_ == below) {
        // Caught up, and the dispatcher has read nothing since: it queues this flow's next
        // messages in memory again.
        q.parked_from = 0;
        q.cursor.reset();
        if (q.held) recover_locked(q);
        publish_gauges_locked();
      }
      if (batch.empty()) {
        q.busy = false;
        if (q.parked_from != 0 || !q.pending.empty()) make_ready_locked(flow_id, q);
        continue;
      }
    }
    lock.unlock();

    const BatchOutcome outcome = run_batch(flow_id, batch, w);

    lock.lock();
    settle_locked(flow_id, q, batch, outcome);
    publish_gauges_locked();
    space_cv_.notify_one();
  }
}

void Pipeline::settle_locked(std::int64_t flow_id, FlowQueue& q,
                             const std::vector<MessagePtr>& batch, const BatchOutcome& outcome) {
  q.busy = false;
  if (outcome.requeue) {
    // Still in flight, in order: the next worker that takes the flow runs it alone.
    for (auto it = batch.rbegin(); it != batch.rend(); ++it) q.pending.push_front(*it);
    q.alone = true;
    make_ready_locked(flow_id, q);
    return;
  }
  if (outcome.held) {
    const std::size_t uncommitted = batch.size() - outcome.committed;
    hold_locked(flow_id, q, *outcome.held, outcome.by_connection,
                uncommitted > 0 ? batch[outcome.committed]->seq : 0, uncommitted);
  } else if (q.held) {
    // Committed again (it may still be catching up from the spool, but without retries).
    recover_locked(q);
  }
  for (const MessagePtr& m : batch) forget_in_flight_locked(m->seq);
  if (!q.held && (!q.pending.empty() || q.parked_from != 0)) make_ready_locked(flow_id, q);
}

void Pipeline::hold_locked(std::int64_t flow_id, FlowQueue& q, const std::string& reason,
                           bool by_connection, std::uint64_t first_uncommitted_seq,
                           std::size_t uncommitted) {
  const auto now = Clock::now();
  // Nothing of this flow stays in memory: from its first uncommitted message on, it is re-read
  // from the spool when the flow is retried. (When parked already, pending is empty.)
  std::uint64_t from = first_uncommitted_seq;
  if (from == 0 && !q.pending.empty()) from = q.pending.front()->seq;
  const std::size_t dropped = q.pending.size();
  for (const MessagePtr& m : q.pending) forget_in_flight_locked(m->seq);
  q.pending.clear();
  if (from != 0 && (q.parked_from == 0 || from < q.parked_from)) {
    q.parked_from = from;
    q.cursor.reset();
  }
  if (!q.held) {
    q.held = true;
    q.held_since = now;
    q.held_by_connection = by_connection;
    q.waited = dropped + uncommitted;
    held_waiting_ += q.waited;
    ++held_count_;
    if (!q.backoff) q.backoff.emplace(options_.retry_initial, options_.retry_max);
    q.held_name = flow_name(flow_id);
    const std::string& name = q.held_name;
    // A lost connection is reported once for the whole database, not per flow.
    if (!by_connection) {
      metrics_.set_held(name, reason);
      log_->warn("flow {} held: {}; its messages wait in the spool and are retried", name, reason);
    }
  }
  const auto delay = q.backoff->next();
  q.retry_at = now + delay;
  due_.emplace(q.retry_at, flow_id);
  log_->debug("flow {}: retry in {} ms ({})", flow_id, delay.count(), reason);
  work_cv_.notify_one();  // a sleeping worker recomputes its wake-up time
}

void Pipeline::recover_locked(FlowQueue& q) {
  q.held = false;
  --held_count_;
  held_waiting_ -= q.waited;
  if (q.backoff) q.backoff->reset();
  const std::string& name = q.held_name;
  metrics_.clear_held(name);
  if (!q.held_by_connection) {
    const auto secs =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - q.held_since).count();
    log_->info("flow {} recovered after {} s; {} message(s) waited", name, secs, q.waited);
  }
  q.waited = 0;
}

void Pipeline::ensure_session(Worker& w) {
  if (!w.http) w.http = posters_();
  if (w.repo) return;
  w.repo = repositories_();
  ProcessorOptions processor = options_.processor;
  processor.reloads = &metrics_.flow_reloads;
  w.processor = std::make_unique<Processor>(*w.repo, *w.http, processor, log_);
  if (!metrics_.db_connected.exchange(true)) {
    log_->info("database connection restored (worker {})", w.index);
  }
  metrics_.db_down_since_ms.store(0);
}

void Pipeline::drop_session(Worker& w, const std::exception& e, bool by_connection) {
  metrics_.db_errors.fetch_add(1, std::memory_order_relaxed);
  if (by_connection) {
    if (metrics_.db_connected.exchange(false) || w.repo) {
      log_->error("database unavailable (worker {}): {}", w.index, e.what());
    }
    if (metrics_.db_down_since_ms.load() == 0) metrics_.db_down_since_ms.store(steady_now_ms());
  }
  // Whatever state the session is in, a fresh one is the safe start for the retry.
  w.processor.reset();
  w.repo.reset();
}

void Pipeline::account(const BatchResult& r, std::size_t batch_size) {
  const std::size_t stored = r.accepted - r.posted - r.queued;  // queued: posted later
  metrics_.stored.fetch_add(stored, std::memory_order_relaxed);
  metrics_.posted.fetch_add(r.posted, std::memory_order_relaxed);
  metrics_.rejected.fetch_add(r.rejected, std::memory_order_relaxed);
  metrics_.expired.fetch_add(r.expired, std::memory_order_relaxed);
  if (r.expired) {
    log_->info("flow {}: {} message(s) past their MQTT 5 expiry: dead letters, not data",
               r.flow_code, r.expired);
  }
  metrics_.add_flow(r.flow_code,
                    FlowCounters{batch_size - r.skipped, stored, r.posted, r.rejected});
  if (r.retained_resends) {
    log_->info("flow {}: skipped {} retained re-send(s) equal to what it stored last", r.flow_code,
               r.retained_resends);
  }
  for (const std::string& line : r.rejections) log_->warn("rejected: {}", line);
  if (r.skipped) {
    log_->info("flow {}: skipped {} message(s) committed before a restart", r.flow_code, r.skipped);
  }
}

void Pipeline::take_group_locked(std::size_t taken, std::vector<Member>& members) {
  // Only so far into ready_: a long queue of parked or held flows is not scanned per batch.
  std::size_t looked = 0;
  for (auto it = ready_.begin();
       it != ready_.end() && taken < options_.max_batch &&
       members.size() + 1 < options_.max_group_flows && looked < 4 * options_.max_group_flows;
       ++looked) {
    const std::int64_t id = *it;
    FlowQueue& o = queues_[id];
    if (id == kNoFlow || o.held || o.alone || o.parked_from != 0 || o.pending.empty()) {
      ++it;
      continue;
    }
    it = ready_.erase(it);
    o.queued = false;
    o.busy = true;
    Member m{id, &o, {}, {}};
    while (!o.pending.empty() && taken < options_.max_batch) {
      m.batch.push_back(std::move(o.pending.front()));
      o.pending.pop_front();
      ++taken;
    }
    members.push_back(std::move(m));
  }
}

void Pipeline::run_group(std::vector<Member>& members, Worker& w) {
  std::vector<std::int64_t> ids;
  std::vector<std::vector<const InboundMessage*>> views(members.size());
  std::vector<std::span<const InboundMessage* const>> batches;
  ids.reserve(members.size());
  batches.reserve(members.size());
  for (std::size_t i = 0; i < members.size(); ++i) {
    ids.push_back(members[i].flow_id);
    for (const MessagePtr& m : members[i].batch) views[i].push_back(m.get());
    batches.emplace_back(views[i]);
  }
  try {
    ensure_session(w);
    const auto started = Clock::now();
    const std::vector<BatchResult> results = w.processor->process_group(ids, batches, spool_.id());
    metrics_.observe_transaction(std::chrono::duration<double>(Clock::now() - started).count());
    metrics_.transactions.fetch_add(1, std::memory_order_relaxed);
    metrics_.last_progress_ms.store(steady_now_ms(), std::memory_order_relaxed);
    for (std::size_t i = 0; i < members.size(); ++i) {
      Member& m = members[i];
      if (results[i].flow_missing) {
        m.outcome = run_batch(m.flow_id, m.batch, w);  // dead-letters them (run_batch says how)
      } else {
        account(results[i], m.batch.size());
        m.outcome.committed = m.batch.size();
      }
    }
    return;
  } catch (const DbUnavailable& e) {
    drop_session(w, e, true);
    for (Member& m : members) m.outcome = BatchOutcome{0, e.what(), true};
    return;
  } catch (const std::exception& e) {
    // Nothing was committed. Which flow's rows the server refused (or whether it was any flow's
    // fault at all) cannot be told here: each flow is retried alone, under the per-flow rules.
    const auto* db = dynamic_cast<const DbError*>(&e);
    // A row another session holds (the group locks with NOWAIT: 1205 MariaDB, 3572 MySQL) is
    // ordinary with several gateways: not worth a warning each time.
    const bool busy = db != nullptr && (db->code == 1205 || db->code == 3572);
    if (busy) {
      log_->debug("transaction of {} flows: a row is busy ({}); each flow alone", members.size(),
                  e.what());
    } else {
      log_->warn("transaction of {} flows failed ({}); retrying each flow alone", members.size(),
                 e.what());
    }
    if (dynamic_cast<const DbRetryable*>(&e)) {
      metrics_.db_conflicts.fetch_add(1, std::memory_order_relaxed);  // Galera: certification
    }
    if (db != nullptr) {
      // The server answered (refused data, deadlock, busy row, refused statement): the session
      // is fine, and the per-flow runs drop it if it is not.
      metrics_.db_errors.fetch_add(1, std::memory_order_relaxed);
    } else {
      drop_session(w, e, false);
    }
    if (busy) {
      // One of the flows' rows is locked elsewhere, maybe for innodb_lock_wait_timeout: give
      // them all back to run alone, so that the others do not wait here behind the locked one
      // (which then holds one worker, not the whole group).
      for (Member& m : members) m.outcome.requeue = true;
      return;
    }
  }
  for (Member& m : members) {
    // Once the connection is found gone, the others wait for the held flows' retry instead of
    // each waiting out a connect timeout here.
    if (m.outcome.held && m.outcome.by_connection) continue;
    m.outcome = run_batch(m.flow_id, m.batch, w);
    if (m.outcome.held && m.outcome.by_connection) {
      for (Member& rest : members) {
        // Not run yet (a run that is not held commits its whole, non-empty batch).
        if (rest.outcome.committed == 0 && !rest.outcome.held) {
          rest.outcome = BatchOutcome{0, m.outcome.held, true};
        }
      }
    }
  }
}

Pipeline::BatchOutcome Pipeline::run_batch(std::int64_t flow_id,
                                           const std::vector<MessagePtr>& batch, Worker& w) {
  std::vector<const InboundMessage*> view;
  view.reserve(batch.size());
  for (const MessagePtr& m : batch) view.push_back(m.get());
  std::span<const InboundMessage* const> pending(view);
  BatchOutcome out;
  // A batch the server refuses for its data is split in halves until the message it refuses alone
  // is found (about 2 log2(n) transactions, not n), so that one bad message cannot hold back the
  // others; that one becomes a dead letter, and the rest goes on in parts as large as before.
  std::size_t limit = pending.size();  // messages per transaction
  std::string refused;  // set: the message at out.committed is to be written as a dead letter
  int deadlocks = 0;

  const auto hold = [&](const std::exception& e, bool by_connection) {
    drop_session(w, e, by_connection);
    out.held = e.what();
    out.by_connection = by_connection;
    return out;
  };

  while (out.committed < pending.size()) {
    auto part = pending.subspan(out.committed, std::min(limit, pending.size() - out.committed));
    try {
      ensure_session(w);
      if (!refused.empty()) {
        w.processor->reject(flow_id, *part.front(), refused, spool_.id());
        metrics_.rejected.fetch_add(1, std::memory_order_relaxed);
        refused.clear();
        ++out.committed;
        limit = pending.size();
        continue;
      }
      if (flow_id == kNoFlow) {
        const std::size_t n = w.processor->reject_unrouted(
            part, spool_.id(),
            "no enabled flow matches the topic any more (its flow was disabled, removed or "
            "re-topicked after the message arrived)",
            true);
        metrics_.rejected.fetch_add(n, std::memory_order_relaxed);
        if (n > 0) {
          log_->warn(
              "{} message(s) on topics no enabled flow matches any more (first: {}): "
              "dead-lettered",
              n, part.front()->topic);
        }
        out.committed += part.size();
        continue;
      }
      const auto started = Clock::now();
      BatchResult r = w.processor->process_batch(flow_id, part, spool_.id());
      metrics_.observe_transaction(std::chrono::duration<double>(Clock::now() - started).count());
      metrics_.transactions.fetch_add(1, std::memory_order_relaxed);
      metrics_.last_progress_ms.store(steady_now_ms(), std::memory_order_relaxed);
      if (r.flow_missing) {
        // Its messages are already past the kNoFlow offset's order: at least once, not dropped.
        const std::size_t n = w.processor->reject_unrouted(
            part, spool_.id(), "flow " + std::to_string(flow_id) + " no longer exists", false);
        metrics_.rejected.fetch_add(n, std::memory_order_relaxed);
        log_->warn("flow {} no longer exists: {} message(s) dead-lettered", flow_id, n);
      } else {
        account(r, part.size());
      }
      out.committed += part.size();
      deadlocks = 0;
    } catch (const DbDataError& e) {
      metrics_.db_errors.fetch_add(1, std::memory_order_relaxed);
      if (!refused.empty()) {
        // Not even the dead letter could be written: the message stays, the flow is held.
        return hold(Error(std::string("the dead letter was refused too: ") + e.what()), false);
      }
      if (part.size() > 1) {
        if (limit == pending.size()) {
          log_->warn("flow {}: batch of {} refused ({}); retrying in halves to find the message",
                     flow_id, part.size(), e.what());
        }
        limit = (part.size() + 1) / 2;
        continue;
      }
      const InboundMessage& m = *part.front();
      log_->error("flow {}: message seq {} on topic {} refused by the database: {}", flow_id, m.seq,
                  m.topic, e.what());
      refused = std::string("database refused: ") + e.what();
    } catch (const DbRetryable& e) {
      metrics_.db_errors.fetch_add(1, std::memory_order_relaxed);
      metrics_.db_conflicts.fetch_add(1, std::memory_order_relaxed);
      if (++deadlocks > kDeadlockRetries) return hold(e, false);
      log_->warn("flow {}: {}; retrying the transaction", flow_id, e.what());
      std::this_thread::sleep_for(kDeadlockPause);
    } catch (const DbUnavailable& e) {
      return hold(e, true);
    } catch (const std::exception& e) {
      // Anything else, known or not, is the environment's fault: the message waits.
      return hold(e, false);
    }
  }
  return out;
}

}  // namespace gateway
