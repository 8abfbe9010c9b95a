// The flow transaction: what happens to messages once a worker has them (reference:
// src/processor.py). Lock the flow row, skip what an earlier run already committed, validate,
// number the valid messages consecutively, store one data_records row per field (STORE_DB), one
// row of the flow's own table (STORE_TABLE, column_map.h) or POST the payload (POST_ENDPOINT),
// record rejects as dead letters, advance last_msg_id and the spool offset, commit; all in one
// transaction.
//
// Not thread-safe: one Processor per worker, over that worker's own repository and HTTP poster.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gateway/column_map.h"
#include "gateway/constants.h"
#include "gateway/flow_repository.h"
#include "gateway/http_poster.h"
#include "gateway/payload.h"
#include "gateway/payload_schema.h"

namespace spdlog {
class logger;
}

namespace gateway {

struct ProcessorOptions {
  std::chrono::milliseconds http_timeout{10000};   // HTTP_TIMEOUT_SECONDS
  std::size_t rejected_payload_max_bytes = 65536;  // longer payloads are cut in rejected_messages
  std::size_t max_field_name_length = 255;         // data_records.field_name
  std::size_t max_topic_length = 1024;             // data_records.topic
  // POST_ENDPOINT: false records the message in the outbox (deliveries) for the delivery workers;
  // true POSTs while the flow row is locked, one try (the reference; HTTP_DELIVERY=inline).
  bool post_inline = false;
  // Counts flow reloads (Metrics::flow_reloads); when it moves, STORE_TABLE mappings read their
  // tables again (an ALTER that widened a column then takes effect). nullptr: never re-read.
  const std::atomic<std::uint64_t>* reloads = nullptr;
};

// A spooled message, parsed once and shared by every flow it matches.
struct InboundMessage {
  std::uint64_t seq = 0;  // spool sequence number; 0 when not spooled (tests, reference API)
  std::string topic;
  std::string payload;
  std::int64_t arrival_us = 0;
  // > 0: the payload was larger than MAX_PAYLOAD_BYTES and only its first bytes were kept (it can
  // only become a dead letter); this is its size as published.
  std::uint64_t original_size = 0;
  // The RETAIN flag: the broker's stored copy, sent because we subscribed. Such a re-send equal
  // to the last retained message the flow stored for the topic is skipped, not stored again.
  bool retained = false;
  // MQTT 5 (empty on 3.1.1), as spooled (see SpoolRecord). expiry_deadline_us: the wall clock
  // (as arrival_us) at which the message expires (arrival + Message Expiry Interval); 0 = never.
  // A message processed at or after it must not be stored.
  std::int64_t expiry_deadline_us = 0;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> user_properties;  // (name, value), in order
  ParsedPayload parsed;
};

// Reference: ProcessResult(flow_code, msg_id, action).
struct ProcessResult {
  std::string flow_code;
  std::int64_t msg_id = 0;
  FlowAction action = FlowAction::kStoreDb;
};

// What one batch transaction did. accepted + rejected + skipped + retained_resends is the batch
// size.
struct BatchResult {
  std::string flow_code;
  std::size_t accepted = 0;          // stored or posted, numbered first_msg_id..last_msg_id
  std::size_t rejected = 0;          // written to rejected_messages
  std::size_t skipped = 0;           // committed by an earlier run (replay after a crash)
  std::size_t retained_resends = 0;  // retained re-sends equal to the last one stored (skipped)
  std::size_t expired = 0;  // of the rejected: MQTT 5 messages past their expiry when processed
  std::size_t posted = 0;   // of the accepted ones, delivered by POST (inline)
  std::size_t queued = 0;   // of the accepted ones, recorded in the outbox for delivery
  std::int64_t first_msg_id = 0;
  std::int64_t last_msg_id = 0;
  bool flow_missing = false;            // the flow row is gone: nothing was done
  std::vector<std::string> rejections;  // one line per rejected message, for the log
};

// One dead letter to run through its flow again: its rejected_messages id and the message
// rebuilt from the row (seq 0: no spool offset is involved; parsed with the daemon's limits).
struct ReplayItem {
  std::int64_t rejected_id = 0;
  InboundMessage message;
};

// What a replay did (or, uncommitted, would do) with one dead letter.
struct ReplayOutcome {
  std::int64_t rejected_id = 0;
  std::int64_t msg_id = 0;        // > 0: stored (STORE_DB) or queued for POST with this msg_id
  std::string reason;             // not empty: the flow refused it again, for this reason
  bool already_replayed = false;  // another replay took it first: nothing done
};

struct ReplayResult {
  std::string flow_code;
  bool flow_missing = false;            // the flow row is gone: nothing was done
  std::vector<ReplayOutcome> outcomes;  // one per item, in the items' order
};

class Processor {
 public:
  Processor(FlowRepository& repo, HttpPoster& http, ProcessorOptions options,
            std::shared_ptr<spdlog::logger> log);

  // One transaction for `batch` (messages of one flow, in arrival order). A message the flow
  // cannot take is rejected without failing the others. Throws what the repository throws
  // (DbUnavailable, DbRetryable, Error); nothing is committed then and the batch may be retried.
  BatchResult process_batch(std::int64_t flow_id, std::span<const InboundMessage* const> batch,
                            std::string_view spool_id);

  // process_batch() for several flows in one transaction (their rows locked in the order of
  // `flow_ids`: ascending, distinct); batches[i] belongs to flow_ids[i]. A flow whose row is gone
  // has flow_missing set. Throws as process_batch(); a DbDataError cannot be told apart by flow
  // (writes may be deferred to the commit): nothing is committed, retry the flows one by one.
  // Not for POST_ENDPOINT with post_inline (a POST would hold every row of the group).
  std::vector<BatchResult> process_group(
      std::span<const std::int64_t> flow_ids,
      std::span<const std::span<const InboundMessage* const>> batches, std::string_view spool_id);

  // Records `message` as a dead letter of the flow for `why`, in a transaction of its own that
  // also advances the flow's spool offset. For a message the database refused as part of a batch.
  // Throws Error when the flow row is gone (nothing written), and what the repository throws.
  void reject(std::int64_t flow_id, const InboundMessage& message, const std::string& why,
              std::string_view spool_id);

  // Records messages that no flow takes any more (see FlowRepository::begin_unrouted()) as dead
  // letters with flow_id NULL and reason `why`, in one transaction. With track_offset, messages at
  // or below the kNoFlow spool offset are skipped and the offset advances (exactly once); without,
  // nothing is skipped or advanced (at least once: for leftovers of a flow whose row is gone,
  // which arrive out of seq order). Returns how many were written. Throws as process_batch().
  std::size_t reject_unrouted(std::span<const InboundMessage* const> batch,
                              std::string_view spool_id, const std::string& why, bool track_offset);

  // Dead-letter replay: the flow transaction (process_batch's body, under the same row lock, so
  // msg_ids stay consecutive next to a running gateway) over `items` in their order. Each dead
  // letter still waiting is either stored / queued for POST with a new msg_id and marked
  // replayed, or keeps its row with the new reason and attempts + 1, in the same transaction;
  // one that another replay took meanwhile is left alone (already_replayed). POST_ENDPOINT
  // messages go to the outbox unless post_inline. commit false (a dry run) rolls everything back:
  // the outcomes say what would happen. Throws as process_batch(); on DbDataError retry the
  // items one by one and record the one refused alone with replay_refused().
  ReplayResult replay(std::int64_t flow_id, std::span<const ReplayItem> items, bool commit);

  // A dead letter whose replay the database refused (DbDataError): its reason becomes `why`,
  // attempts + 1, under the flow lock. False when it was replayed meanwhile or the flow is gone.
  bool replay_refused(std::int64_t flow_id, std::int64_t rejected_id, const std::string& why,
                      bool commit);

  // The reference's process_flow_message(): one message, one transaction. Throws
  // MessageRejected (nothing written, counter unchanged) when the payload fails validation, the
  // flow has no endpoint_url or the POST fails; Error if the flow does not exist.
  ProcessResult process_flow_message(std::int64_t flow_id, const nlohmann::json& payload,
                                     std::string_view topic = {});

 private:
  // What happened to one message of process_locked(): its msg_id, or why it was rejected (both
  // empty: skipped as committed before or as a retained re-send).
  struct MessageOutcome {
    std::int64_t msg_id = 0;
    std::string reason;
  };
  // The body of the flow transaction on a locked flow: everything but the commit. With
  // `outcomes` (replay), one entry per message is appended and rejected messages are reported
  // there instead of being written as new dead letters.
  BatchResult process_locked(LockedFlow& tx, std::span<const InboundMessage* const> batch,
                             std::vector<MessageOutcome>* outcomes = nullptr);
  // The compiled payload_schema of a flow, recompiled only when the column text changes.
  const SchemaResult& schema_for(const Flow& flow);
  // A STORE_TABLE flow's column map, compiled against its table as it is now (described within
  // the open transaction), again only when the flow's mapping changes: a table altered meanwhile
  // shows as a refused INSERT, which drops this Processor with its session. Throws Error when
  // the mapping is unusable (no table, a missing column): the operator's to fix, so the flow's
  // messages wait; the next reload deactivates the flow.
  struct TableMap {
    std::optional<std::string> table, map;
    std::string mode;
    std::uint64_t reloads = 0;  // options_.reloads when compiled
    CompiledColumnMap compiled;
    WriteMode write_mode = WriteMode::kInsert;
  };
  const TableMap& table_map_for(const Flow& flow);
  // Why `message` cannot go to `flow`, or empty.
  std::string check(const Flow& flow, const InboundMessage& message);
  HttpResult post(const Flow& flow, const InboundMessage& message, std::int64_t msg_id);
  // The rejected_messages row for `message`: payload cut to the configured limit, topic and
  // reason made valid UTF-8 (so that the dead letter itself is never refused for its text).
  // `topic` receives the topic text that the row's view points into.
  RejectedMessage dead_letter(const InboundMessage& message, const std::string& why,
                              std::string& topic) const;

  FlowRepository& repo_;
  HttpPoster& http_;
  ProcessorOptions options_;
  std::shared_ptr<spdlog::logger> log_;
  std::unordered_map<std::int64_t, std::pair<std::optional<std::string>, SchemaResult>> schemas_;
  std::unordered_map<std::int64_t, TableMap> tables_;
};

}  // namespace gateway
