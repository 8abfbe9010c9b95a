// The operator's subcommands of the same binary (issue 14), as core logic behind the FlowAdmin
// port and the Processor: `flows list|show|add|set|enable|disable` and
// `rejected list|show|replay`. Validation (one line per problem, exit status 1), the replay loop
// and the human / JSON output live here; src/app/command_line.cpp parses the command line into an
// AdminRequest and src/app/admin_cli.cpp wires the MySQL adapters.
//
// Replay (`rejected replay --flow CODE`): the flow's dead letters that match, not replayed yet,
// in id order (their original order), in batches of `batch`, each batch one flow transaction
// (Processor::replay()). A dead letter is stored / queued with a new msg_id and marked replayed,
// or keeps its row with the new reason and attempts + 1. A dead letter whose payload was cut to
// REJECTED_PAYLOAD_MAX_BYTES is refused (untouched). Killed at any point and run again, nothing
// is stored twice: the marks commit with the rows. A dry run does the same work and rolls it back.
//
// Not thread-safe; one instance per command.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/flow_admin.h"
#include "gateway/payload.h"
#include "gateway/pid_file.h"
#include "gateway/processor.h"

namespace gateway {

enum class AdminCommand {
  kFlowsList,
  kFlowsShow,
  kFlowsAdd,
  kFlowsSet,
  kFlowsEnable,
  kFlowsDisable,
  kRejectedList,
  kRejectedShow,
  kRejectedReplay,
};

// "flows add", "rejected replay", ...: the name error lines start with.
std::string_view to_string(AdminCommand command);

// The options of `flows add` / `flows set` as given; std::nullopt: not given. For set, an empty
// --name, --endpoint, --schema or --table, or --column-map (or "null" for --schema and
// --column-map) clears the column; --write-mode insert puts write_mode back to its default.
struct FlowEdit {
  std::optional<std::string> code;
  std::optional<std::string> name;
  std::optional<std::string> topic;
  std::optional<std::string> action;
  std::optional<std::string> endpoint;
  std::optional<std::string> schema;
  std::optional<std::string> table;       // STORE_TABLE: flows.target_table
  std::optional<std::string> column_map;  // STORE_TABLE: JSON object, column -> source
  std::optional<std::string> write_mode;  // STORE_TABLE: insert or upsert
  bool disabled = false;                  // add --disabled
};

struct AdminRequest {
  AdminCommand command = AdminCommand::kFlowsList;
  bool json = false;
  std::string code;     // flows show/set/enable/disable CODE; --flow of rejected list/replay
  std::int64_t id = 0;  // rejected show ID
  FlowEdit edit;
  // flows add/set/enable/disable --reload [--pid N | --pid-file PATH]
  bool reload = false;
  DaemonTarget daemon;
  // rejected list / replay
  std::vector<std::int64_t> ids;  // replay --id
  std::optional<std::string> since;
  std::optional<std::string> reason;
  std::int64_t limit = 50;  // list: 1..10000
  bool all = false;         // list --all: replayed ones too
  bool dry_run = false;
  std::int64_t batch = 100;  // replay: dead letters per transaction, 1..10000
};

struct AdminOptions {
  // Replayed payloads are parsed as the daemon parses them (MAX_PAYLOAD_BYTES, MAX_JSON_DEPTH).
  PayloadLimits limits;
  // --reload: signals the daemon and returns its pid, or throws Error (send_reload() in the
  // binary; a stub in tests).
  std::function<pid_t(const DaemonTarget&)> reload;
};

class AdminCommands {
 public:
  // `processor` works on its own FlowRepository (its own connection) with post_inline false:
  // replayed POST_ENDPOINT messages are queued in the outbox for the daemon's delivery workers.
  AdminCommands(FlowAdmin& admin, Processor& processor, AdminOptions options, std::ostream& out,
                std::ostream& err);

  // Runs one subcommand. Returns the exit status: 0 when done (a replay also when some stay
  // rejected); 1 for invalid input (one line per problem on `err`, nothing written), a --reload
  // that failed (the change is written), or a replay stopped by an error (its summary so far on
  // `out`, then the exception propagates: database errors as the repositories throw them).
  int run(const AdminRequest& request);

 private:
  int flows_list(const AdminRequest& r);
  int flows_show(const AdminRequest& r);
  int flows_add(const AdminRequest& r);
  int flows_set(const AdminRequest& r);
  int flows_enable(const AdminRequest& r, bool enable);
  int rejected_list(const AdminRequest& r);
  int rejected_show(const AdminRequest& r);
  int rejected_replay(const AdminRequest& r);
  // One batch, retried as the pipeline does: a deadlock again (3 times), a refused row by
  // splitting the batch down to the dead letter the database refuses alone.
  void replay_batch(std::int64_t flow_id, std::vector<ReplayItem>& items, bool commit,
                    std::vector<ReplayOutcome>& outcomes);
  // After a change: --reload, or the hint that a running gateway picks it up at its next reload.
  // Returns the exit status.
  int after_change(const AdminRequest& r, const FlowStatus& flow, std::string_view what,
                   const std::vector<std::string>& changes);
  int problems(const AdminRequest& r, const std::vector<std::string>& lines);
  // flow_table_problems() of a STORE_TABLE definition against FlowAdmin::describe_table() of its
  // target_table; empty for other actions.
  std::vector<std::string> table_problems(const FlowDefinition& f);
  // `lines` with "; " and `hint` appended to the one saying that the table does not exist.
  static std::vector<std::string> with_hint(std::vector<std::string> lines,
                                            const std::string& hint);
  // The table problems of a disabled flow that was saved anyway, as warnings on `err`.
  void warn(const AdminRequest& r, const FlowDefinition& f, const std::vector<std::string>& lines);

  FlowAdmin& admin_;
  Processor& processor_;
  AdminOptions options_;
  std::ostream& out_;
  std::ostream& err_;
};

// Problems of a flow definition, one line each (empty when valid): code (1..100 of letters,
// digits, '_', '-', '.'), name (up to 255), topic (an MQTT filter, validate_topic_filter()),
// action (STORE_DB, POST_ENDPOINT or STORE_TABLE), endpoint (an http:// or https:// URL with a
// host, required by POST_ENDPOINT), payload_schema (a JSON object of known types: one line per
// bad field); for STORE_TABLE a target_table (1..64 letters, digits and '_', not only digits, not
// one of the gateway's own tables), a column_map (a JSON object of column -> source that
// parse_column_source() accepts: one line per bad entry) and a write_mode (insert or upsert);
// target_table, column_map or a write_mode other than insert on another action is a problem too.
// Needs no database: flow_table_problems() checks the mapping against the table.
std::vector<std::string> validate_flow_definition(const FlowDefinition& flow);

// Problems of a STORE_TABLE definition that validate_flow_definition() accepts, against its
// table as the database describes it now (FlowAdmin::describe_table()), one line each as the
// gateway would report them at a reload (compile_flow_mapping()): the table does not exist, a
// mapped column does not exist, is generated or has a type STORE_TABLE cannot write. Empty for
// other actions. An enabled flow with such problems is refused (the gateway would not activate
// it); a disabled one is saved with them as warnings.
std::vector<std::string> flow_table_problems(const FlowDefinition& flow, const TableInfo& table);

// --since: "YYYY-MM-DD", "YYYY-MM-DD HH:MM", "YYYY-MM-DD HH:MM:SS" ('T' also separates, a
// trailing 'Z' is allowed; UTC), or an age: a positive integer with s, m, h or d ("90m", "7d").
struct SinceTime {
  std::optional<std::string> utc;  // "YYYY-MM-DD HH:MM:SS"
  std::optional<std::int64_t> seconds_ago;
};
std::optional<SinceTime> parse_since(std::string_view text);

}  // namespace gateway
