// Port to the database: the queries of the reference and the flow transaction. The processor and
// the MQTT client see only these interfaces; MySqlFlowRepository is the real adapter and
// tests/fakes has an in-memory one.
//
// Errors (errors.h, db_error_class.h): DbDataError when the server refused the rows' data (the
// message's fault); DbUnavailable when the connection is gone, DbRetryable for a deadlock,
// DbRefused for anything else the server refused: the caller drops this repository, backs off
// and retries; the messages wait.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/column_map.h"
#include "gateway/errors.h"
#include "gateway/flow.h"

namespace gateway {

// The flow id under which messages that match no flow are tracked (real ids start at 1).
inline constexpr std::int64_t kNoFlow = 0;

// One data_records row. Views point into the message; they live until the transaction ends.
struct DataRecord {
  std::int64_t msg_id = 0;
  std::string_view topic;
  std::string_view field_name;
  std::string field_value;  // the JSON encoding of the value
};

// One rejected_messages row.
struct RejectedMessage {
  std::string_view topic;
  std::string_view payload;  // already cut to the configured limit
  bool payload_truncated = false;
  std::string reason;
  std::uint64_t spool_seq = 0;
};

// One deliveries row: a POST_ENDPOINT message numbered by the flow transaction, POSTed later.
struct OutboxEntry {
  std::int64_t msg_id = 0;
  std::string_view topic;
  std::string_view payload;     // the payload as received
  std::int64_t created_ms = 0;  // Unix ms; also the first attempt's due time
};

// STORE_TABLE rows of one flow for its target table: each row holds one cell per column of
// `map`, in that order (map_row()). With kUpsert a row whose key exists updates the mapped columns.
struct TableRows {
  std::string_view table;
  const CompiledColumnMap* map = nullptr;
  WriteMode mode = WriteMode::kInsert;
  std::span<const std::vector<CellValue>> rows;
};

// One flow row, locked in an open transaction: what the flow transaction reads and writes.
class LockedFlow {
 public:
  virtual ~LockedFlow() = default;
  // The flow row as locked (fresh from the database, not from the last reload).
  virtual const Flow& flow() const = 0;
  // The highest spool seq this flow committed for the spool given to lock_flow(); 0 if none.
  // Records at or below it were stored before a crash and must be skipped.
  virtual std::uint64_t committed_seq() const = 0;
  virtual void insert_records(std::span<const DataRecord> rows) = 0;
  virtual void insert_rejected(std::span<const RejectedMessage> rows) = 0;
  virtual void insert_deliveries(std::span<const OutboxEntry> rows) = 0;
  // STORE_TABLE. A row the table refuses for its data (a duplicate key with kInsert, a foreign key
  // or CHECK it fails) is DbDataError, as for data_records; a table or column that is gone is
  // DbRefused (the operator's to fix: the messages wait).
  virtual void insert_table_rows(const TableRows& rows) = 0;
  // The payload hash of the last retained message this flow stored for `topic`, if any.
  virtual std::optional<std::uint64_t> retained_payload(std::string_view topic) = 0;
  // Records the retained message just stored for `topic` (committed with the rest).
  virtual void remember_retained(std::string_view topic, std::uint64_t payload_hash,
                                 std::int64_t msg_id) = 0;
  // Sets flows.last_msg_id and, when last_seq > 0, the flow's spool offset.
  virtual void advance(std::int64_t last_msg_id, std::uint64_t last_seq) = 0;

  // Dead-letter replay (`mqtt-gateway rejected replay`, Processor::replay()). The marks commit
  // with the rows the replay stored, so a replay killed and run again never stores twice.
  // Repositories that do not replay keep these defaults, which throw Error.
  //
  // Of the rejected_messages `ids`, those not replayed yet (replayed_at NULL), ascending, locked
  // until the transaction ends: a replay that committed meanwhile (or concurrently, waiting on
  // the flow row) has taken the others.
  virtual std::vector<std::int64_t> lock_rejected(std::span<const std::int64_t> ids) {
    (void)ids;
    throw Error("this repository cannot replay dead letters");
  }
  // Marks dead letter `rejected_id` replayed as `msg_id` of this flow: replayed_at (now),
  // replayed_msg_id, and flow_id this flow (it was NULL for a message no flow took).
  virtual void mark_replayed(std::int64_t rejected_id, std::int64_t msg_id) {
    (void)rejected_id, (void)msg_id;
    throw Error("this repository cannot replay dead letters");
  }
  // A replay the flow refused again: the dead letter's reason becomes `reason` (cut to 1024
  // characters) and attempts + 1 (NULL counts as the 1 first attempt).
  virtual void update_rejected(std::int64_t rejected_id, std::string_view reason) {
    (void)rejected_id, (void)reason;
    throw Error("this repository cannot replay dead letters");
  }
};

// A transaction holding the lock on one flow row. Destroying it without commit() rolls back.
class FlowTransaction : public LockedFlow {
 public:
  virtual void commit() = 0;
};

// One transaction holding the locks on several flow rows (issue 17: many flows with a few
// messages each share one commit). The parts' insert_records() and advance() may be deferred to
// commit() (the MySQL adapter sends them as one statement each for the group), so the rows their
// views point into must live until commit() returns; the other writes happen at once. An error
// (a refused row among them) may therefore surface at commit() and cannot be told apart by flow:
// the caller retries the flows one by one. Destroying it without commit() rolls back everything.
class FlowGroupTransaction {
 public:
  virtual ~FlowGroupTransaction() = default;
  // The flow at index i of the ids given to lock_flows(); nullptr when its row is gone.
  virtual LockedFlow* flow(std::size_t i) = 0;
  virtual void commit() = 0;
};

// One database session. Not thread-safe: every worker owns its own.
class FlowRepository {
 public:
  virtual ~FlowRepository() = default;
  // SELECT * FROM mqtt_servers WHERE enabled = 1 ORDER BY is_default DESC, id ASC LIMIT 1.
  // std::nullopt when there is none.
  virtual std::optional<MqttServer> load_mqtt_server() = 0;
  // Every enabled broker, in the same order (is_default first, then by id): the failover
  // candidates. Empty when there is none. The default serves repositories that know one broker.
  virtual std::vector<MqttServer> load_mqtt_servers() {
    std::vector<MqttServer> out;
    if (auto s = load_mqtt_server()) out.push_back(std::move(*s));
    return out;
  }
  // SELECT * FROM flows WHERE enabled = 1, by id.
  virtual std::vector<Flow> load_flows() = 0;
  // A table of the gateway's database as information_schema describes it (STORE_TABLE): its
  // columns in ordinal order, JSON columns (MariaDB: LONGTEXT with a json_valid CHECK) with
  // data_type "json". No columns when the table does not exist. Neither starts nor ends a
  // transaction of its own: callable inside an open flow transaction.
  virtual TableInfo describe_table(std::string_view table) = 0;
  // Begins a transaction with SELECT ... FOR UPDATE on the flow. std::nullptr when the row is gone.
  // The caller owns the result and must destroy it before the next lock_flow().
  virtual std::unique_ptr<FlowTransaction> lock_flow(std::int64_t flow_id,
                                                     std::string_view spool_id) = 0;
  // A transaction for messages that no flow takes any more (their flow was disabled, removed or
  // re-topicked after they arrived), to record them as dead letters with flow_id NULL. It locks
  // no row; flow() is a placeholder with id kNoFlow, and committed_seq()/advance() use the spool
  // offset kept under flow id kNoFlow. Same ownership rules as lock_flow().
  virtual std::unique_ptr<FlowTransaction> begin_unrouted(std::string_view spool_id) = 0;
  // Begins one transaction that locks every flow of `ids` (distinct, ascending: every worker and
  // every gateway locks in the same order, so none waits on another in a cycle). Same ownership
  // rules as lock_flow().
  virtual std::unique_ptr<FlowGroupTransaction> lock_flows(std::span<const std::int64_t> ids,
                                                           std::string_view spool_id) = 0;
  // Cheap liveness probe (SELECT 1); false when the connection is gone.
  virtual bool ping() = 0;
  // The highest spool seq any flow committed for `spool_id` (0 if none). At start-up the spool's
  // next seq must be above it: a spool that came back shorter than the database (power loss,
  // restored copy) would otherwise reuse seqs that every flow skips as already committed.
  virtual std::uint64_t last_committed_seq(std::string_view spool_id) = 0;
};

}  // namespace gateway
