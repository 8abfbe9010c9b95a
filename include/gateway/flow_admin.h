// Port to the database for the operator's subcommands (`mqtt-gateway flows ...`, `rejected ...`;
// AdminCommands in admin_commands.h): reading and writing flow definitions and reading dead
// letters. Replaying dead letters is not here: it runs in the flow transaction
// (Processor::replay() over FlowRepository). MySqlFlowAdmin is the real adapter, tests/fakes has
// an in-memory one.
//
// Times are UTC text, "YYYY-MM-DD HH:MM:SS.ffffff". Errors: what MySqlSession throws
// (DbUnavailable, DbRefused, ...; errors.h). Not thread-safe: one instance per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/column_map.h"
#include "gateway/flow.h"

namespace gateway {

// The columns of a flow an operator sets (never last_msg_id, which only flow transactions move).
struct FlowDefinition {
  std::string code;
  std::optional<std::string> name;
  std::string topic;
  std::string action;
  std::optional<std::string> endpoint_url;
  std::optional<std::string> payload_schema;  // JSON text as given; NULL accepts any object
  bool enabled = true;
  // STORE_TABLE (column_map.h): the table its rows go to, the column_map JSON text as given, and
  // "insert" or "upsert". NULL / "insert" for the other actions.
  std::optional<std::string> target_table;
  std::optional<std::string> column_map;
  std::string write_mode = "insert";
};

// A flows row with what `flows list` / `flows show` report about it.
struct FlowStatus {
  Flow flow;
  std::optional<std::string> name;
  std::string updated_at;
  std::int64_t pending_deliveries = 0;    // outbox rows not delivered yet (POST_ENDPOINT)
  std::int64_t rejected_last_24h = 0;     // dead letters created in the last 24 hours
  std::int64_t dead_letters_waiting = 0;  // dead letters not replayed (any age)
};

// A rejected_messages row.
struct DeadLetter {
  std::int64_t id = 0;
  std::optional<std::int64_t> flow_id;  // NULL: no flow took the message
  std::optional<std::string> flow_code;
  std::string topic;
  std::string payload;  // empty unless asked for (RejectedFilter::with_payload, find_rejected)
  std::int64_t payload_bytes = 0;  // the stored payload's length
  bool payload_truncated = false;  // cut to REJECTED_PAYLOAD_MAX_BYTES: cannot be replayed
  std::string reason;
  std::optional<std::int64_t> msg_id;  // POST_ENDPOINT messages given up: their msg_id
  std::optional<std::int64_t> attempts;
  std::optional<std::int64_t> last_status;
  std::string created_at;
  std::optional<std::string> replayed_at;
  std::optional<std::int64_t> replayed_msg_id;
};

// Which dead letters list_rejected() returns.
struct RejectedFilter {
  // That flow's dead letters; with `ids`, also those of the ids that have no flow.
  std::optional<std::int64_t> flow_id;
  std::vector<std::int64_t> ids;                  // only these ids (empty: any)
  std::optional<std::string> since;               // created_at >= this UTC time
  std::optional<std::int64_t> since_seconds_ago;  // created_at >= now - this
  std::optional<std::string> reason_contains;     // case-insensitive substring of the reason
  bool waiting_only = true;                       // replayed_at NULL
  std::int64_t after_id = 0;                      // id > this (paging in id order)
  bool newest_first = false;                      // id descending (after_id is then ignored)
  std::size_t limit = 100;
  bool with_payload = false;
};

class FlowAdmin {
 public:
  virtual ~FlowAdmin() = default;
  // Every flow, enabled or not, by code.
  virtual std::vector<FlowStatus> list_flows() = 0;
  virtual std::optional<FlowStatus> find_flow(std::string_view code) = 0;
  // Returns the new id. The caller validates first (validate_flow_definition()).
  virtual std::int64_t insert_flow(const FlowDefinition& flow) = 0;
  // Writes the definition columns of flow `id` (code included); false when the row is gone.
  virtual bool update_flow(std::int64_t id, const FlowDefinition& flow) = 0;
  virtual std::vector<DeadLetter> list_rejected(const RejectedFilter& filter) = 0;
  // How many rows the filter matches, ignoring after_id and limit.
  virtual std::int64_t count_rejected(const RejectedFilter& filter) = 0;
  // With its payload.
  virtual std::optional<DeadLetter> find_rejected(std::int64_t id) = 0;
  // A table of the gateway's database as information_schema describes it now (what the gateway
  // checks a STORE_TABLE flow's column_map against at every reload): its columns in ordinal
  // order; no columns when the table does not exist.
  virtual TableInfo describe_table(std::string_view table) = 0;
};

}  // namespace gateway
