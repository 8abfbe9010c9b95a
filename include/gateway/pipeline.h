// The path from the spool to the database. One dispatcher thread reads the spool in order, parses
// each payload once, routes it to the flows whose filter matches and queues it per flow. A pool of
// workers, each with its own database connection, takes whole runs of a flow's queue and commits
// each run in one transaction (group commit). A flow is worked on by one worker at a time, so its
// messages keep their arrival order; other flows proceed in parallel on the other workers.
//
// Memory stays bounded: the dispatcher stops reading the spool while max_in_flight messages are
// queued. What is fully processed is released from the spool; what is not survives a crash and is
// replayed (the flow transaction skips what it already committed).
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
#include <thread>
#include <unordered_map>
#include <vector>

#include "gateway/backoff.h"
#include "gateway/flow_repository.h"
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
  std::size_t max_batch = 500;                  // MAX_BATCH: messages per transaction
  std::size_t max_in_flight = 20000;            // read from the spool but not yet committed
  std::size_t max_in_flight_bytes = 32u << 20;  // ... and their payload bytes
  PayloadLimits limits;                         // MAX_PAYLOAD_BYTES, MAX_JSON_DEPTH
  ProcessorOptions processor;
  std::chrono::milliseconds retry_max{30000};  // DB_RETRY_MAX_SECONDS
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
  // Stops reading the spool and waits, up to `deadline`, for the transactions in progress to
  // finish. Queued messages stay in the spool for the next start.
  void stop(std::chrono::milliseconds deadline);

 private:
  struct FlowQueue {
    std::deque<std::shared_ptr<const InboundMessage>> pending;
    bool busy = false;    // a worker holds a batch of this flow
    bool queued = false;  // in ready_
  };

  void dispatch_loop();
  void worker_loop(std::size_t index);
  // Runs one batch to completion, retrying through database outages. False if stopped first.
  bool run_batch(std::int64_t flow_id,
                 const std::vector<std::shared_ptr<const InboundMessage>>& batch,
                 std::unique_ptr<FlowRepository>& repo, std::unique_ptr<HttpPoster>& http,
                 std::unique_ptr<Processor>& processor, Backoff& backoff, std::size_t worker);
  void release_spool();
  // Sleeps up to `d` unless stopping; false when stopping.
  bool sleep_unless_stopping(std::chrono::milliseconds d);

  Spool& spool_;
  const FlowTable& flows_;
  RepositoryFactory repositories_;
  PosterFactory posters_;
  PipelineOptions options_;
  Metrics& metrics_;
  std::shared_ptr<spdlog::logger> log_;

  std::mutex mu_;
  std::condition_variable work_cv_;   // workers: a flow became ready, or stopping
  std::condition_variable space_cv_;  // dispatcher: in-flight dropped below the limit
  std::unordered_map<std::int64_t, FlowQueue> queues_;  // guarded by mu_
  std::deque<std::int64_t> ready_;  // guarded by mu_; flows with work, no worker
  struct InFlight {
    std::uint32_t flows_left;  // flows that have not committed the message yet
    std::uint32_t payload_bytes;
  };
  std::map<std::uint64_t, InFlight> in_flight_;  // guarded by mu_; by spool seq
  std::size_t in_flight_bytes_ = 0;              // guarded by mu_
  std::uint64_t next_seq_ = 0;                   // guarded by mu_; after the last read record
  std::size_t queued_messages_ = 0;              // guarded by mu_
  bool stopping_ = false;                        // guarded by mu_

  std::thread dispatcher_;
  std::vector<std::thread> workers_;
};

}  // namespace gateway
