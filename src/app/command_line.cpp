#include "gateway/command_line.h"

#include <CLI/CLI.hpp>
#include <functional>
#include <ostream>
#include <utility>
#include <vector>

namespace gateway {
namespace {

// Where a subcommand's options land before they become an AdminRequest. Optional values are
// taken only when CLI11 counted the option (given, possibly empty), which keeps "not given"
// apart from "given empty".
struct AdminOptionsParsed {
  AdminRequest request;
  std::string code, name, topic, action, endpoint, schema, table, column_map, write_mode;
  std::string pid_file;
  pid_t pid = 0;
  std::string since, reason;
  // (option, what to do when it was given), over every subcommand.
  std::vector<std::pair<CLI::Option*, std::function<void()>>> given;

  void when_given(CLI::Option* opt, std::function<void()> take) {
    given.emplace_back(opt, std::move(take));
  }
  void take_given() {
    for (const auto& [opt, take] : given) {
      if (opt->count() > 0) take();
    }
  }
};

constexpr const char* kReloadHelp =
    "Send SIGHUP to the running gateway afterwards, so that it reloads the flows at once (its pid "
    "from $RUNTIME_DIRECTORY/mqtt-gateway.pid, default /run/mqtt-gateway/mqtt-gateway.pid)";

void add_json(CLI::App* sub, AdminOptionsParsed& p) {
  sub->add_flag("--json", p.request.json, "Print JSON for scripts instead of text");
}

void add_reload(CLI::App* sub, AdminOptionsParsed& p) {
  auto* reload = sub->add_flag("--reload", p.request.reload, kReloadHelp);
  auto* pid =
      sub->add_option("--pid", p.pid, "With --reload: the gateway's process id")->needs(reload);
  auto* pid_file =
      sub->add_option("--pid-file", p.pid_file, "With --reload: read the gateway's pid from here")
          ->needs(reload)
          ->excludes(pid);
  p.when_given(pid, [&p] { p.request.daemon.pid = p.pid; });
  p.when_given(pid_file, [&p] { p.request.daemon.pid_file = p.pid_file; });
}

void add_text(CLI::App* sub, AdminOptionsParsed& p, const std::string& name, std::string& value,
              std::optional<std::string>& to, const std::string& help) {
  auto* opt = sub->add_option(name, value, help);
  p.when_given(opt, [&value, &to] { to = value; });
}

// The definition options shared by `flows add` and `flows set`.
void add_definition(CLI::App* sub, AdminOptionsParsed& p, bool add) {
  FlowEdit& e = p.request.edit;
  add_text(sub, p, "--name", p.name, e.name, add ? "Display name" : "Display name; \"\" clears it");
  add_text(sub, p, "--topic", p.topic, e.topic, "MQTT topic filter (+ and # wildcards)");
  add_text(sub, p, "--action", p.action, e.action, "STORE_DB, POST_ENDPOINT or STORE_TABLE");
  add_text(
      sub, p, "--endpoint", p.endpoint, e.endpoint,
      add ? "http(s) URL to POST to (POST_ENDPOINT)" : "http(s) URL to POST to; \"\" clears it");
  add_text(sub, p, "--schema", p.schema, e.schema,
           std::string("payload_schema: a JSON object of field: type (string, number, int, bool, "
                       "object, array)") +
               (add ? "" : "; \"\" or null clears it (any object)"));
  add_text(sub, p, "--table", p.table, e.table,
           std::string("STORE_TABLE: the table of the gateway's database its rows go to") +
               (add ? "" : "; \"\" clears it"));
  add_text(sub, p, "--column-map", p.column_map, e.column_map,
           std::string("STORE_TABLE: a JSON object of column -> source: a JSON Pointer into the "
                       "payload (\"/temp\"), $topic, $topic[N], $msg_id, $flow_code, "
                       "$received_at, $payload or $user_property:NAME") +
               (add ? "" : "; \"\" clears it"));
  add_text(sub, p, "--write-mode", p.write_mode, e.write_mode,
           "STORE_TABLE: insert (default) or upsert (ON DUPLICATE KEY UPDATE of the mapped "
           "columns)");
}

}  // namespace

std::variant<CommandLine, int> parse_command_line(int argc, const char* const* argv,
                                                  std::ostream& out, std::ostream& err) {
  CommandLine cl;
  CLI::App app{
      "mqtt-gateway: MQTT to MariaDB/HTTP gateway. Settings come from the environment "
      "and a .env file; see .env.example. Without a subcommand it runs the gateway.",
      "mqtt-gateway"};
  // Options of the program (--env-file) may also follow a subcommand.
  app.fallthrough();
  std::string env_file;
  app.add_option("--env-file", env_file, "Read settings from this file instead of ./.env")
      ->check(CLI::ExistingFile);
  auto* check = app.add_flag("--check", cl.check,
                             "Check settings, database, schema, broker row and flows, then exit");
  app.add_flag("--init-db", cl.init_db, "Create the database tables (idempotent), then exit")
      ->excludes(check);
  app.set_version_flag("--version", std::string("mqtt-gateway ") + GATEWAY_VERSION);
  app.footer(
      "Subcommands (each has --help with an example) manage flows and dead letters with the same "
      "settings:\n  mqtt-gateway flows list|show|add|set|enable|disable ...\n  mqtt-gateway "
      "rejected list|show|replay ...\n"
      "Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the flows and reopens the log "
      "file.\nExit status: 0 ok; 1 failure (database, broker, disk, --check found a problem, a "
      "subcommand refused its input); 2 bad command line or settings.");

  AdminOptionsParsed p;
  std::optional<AdminCommand> chosen;
  const auto on = [&chosen](CLI::App* sub, AdminCommand command) {
    sub->callback([&chosen, command] { chosen = command; });
  };

  auto* flows = app.add_subcommand("flows", "Manage flows (the flows table) without SQL");
  flows->require_subcommand(1);
  flows->footer("Changes are validated first: one line per problem, exit status 1.");

  auto* flows_list = flows->add_subcommand(
      "list",
      "Every flow: code, topic, action, enabled, last_msg_id, pending deliveries, "
      "rejected in the last 24 h");
  add_json(flows_list, p);
  flows_list->footer(
      "Example:\n  mqtt-gateway --env-file /etc/mqtt-gateway/mqtt-gateway.env flows list\n");
  on(flows_list, AdminCommand::kFlowsList);

  auto* flows_show = flows->add_subcommand("show", "One flow in full, with its counters");
  flows_show->add_option("code", p.request.code, "The flow's code")->required();
  add_json(flows_show, p);
  flows_show->footer("Example:\n  mqtt-gateway flows show temps --json\n");
  on(flows_show, AdminCommand::kFlowsShow);

  auto* flows_add = flows->add_subcommand("add", "Add a flow (validated before it is written)");
  add_text(flows_add, p, "--code", p.code, p.request.edit.code,
           "Unique code: letters, digits, _ - .");
  add_definition(flows_add, p, true);
  flows_add->add_flag("--disabled", p.request.edit.disabled, "Add it disabled");
  add_reload(flows_add, p);
  add_json(flows_add, p);
  flows_add->footer(
      "Example:\n  mqtt-gateway flows add --code temps --topic 'sensors/+/temp' --action STORE_DB "
      "\\\n      --schema '{\"temperature\": \"number\", \"unit\": \"string\"}' --reload\n"
      "  mqtt-gateway flows add --code latest --topic 'plant/+/temp' --action STORE_TABLE \\\n"
      "      --table device_state --write-mode upsert \\\n"
      "      --column-map '{\"device\": \"$topic[1]\", \"temp\": \"/temperature\", \"at\": "
      "\"$received_at\"}'\n"
      "An enabled STORE_TABLE flow must fit its table as it is now (each missing table or column "
      "is a problem line); with --disabled it is saved anyway, with warnings.\n");
  on(flows_add, AdminCommand::kFlowsAdd);

  auto* flows_set = flows->add_subcommand(
      "set", "Change a flow's definition (validated; last_msg_id is never touched)");
  flows_set->add_option("code", p.request.code, "The flow's code")->required();
  add_definition(flows_set, p, false);
  add_reload(flows_set, p);
  add_json(flows_set, p);
  flows_set->footer(
      "Example:\n  mqtt-gateway flows set temps --schema '{\"temperature\": \"number\"}' "
      "--reload\n  mqtt-gateway flows set latest --column-map '{\"device\": \"$topic[1]\", "
      "\"temp\": \"/t\"}'\n");
  on(flows_set, AdminCommand::kFlowsSet);

  auto* flows_enable = flows->add_subcommand("enable", "Enable a flow (it must be valid)");
  flows_enable->add_option("code", p.request.code, "The flow's code")->required();
  add_reload(flows_enable, p);
  add_json(flows_enable, p);
  flows_enable->footer("Example:\n  mqtt-gateway flows enable temps --reload\n");
  on(flows_enable, AdminCommand::kFlowsEnable);

  auto* flows_disable = flows->add_subcommand(
      "disable", "Disable a flow (its messages become dead letters until it is enabled)");
  flows_disable->add_option("code", p.request.code, "The flow's code")->required();
  add_reload(flows_disable, p);
  add_json(flows_disable, p);
  flows_disable->footer("Example:\n  mqtt-gateway flows disable temps --reload --pid 4242\n");
  on(flows_disable, AdminCommand::kFlowsDisable);

  auto* rejected =
      app.add_subcommand("rejected", "Dead letters (rejected_messages): list, show, replay");
  rejected->require_subcommand(1);
  rejected->footer("Times are UTC.");

  auto* rejected_list = rejected->add_subcommand(
      "list",
      "Dead letters waiting for a replay, newest first: id, flow, topic, time, reason, "
      "payload cut");
  rejected_list->add_option("--flow", p.request.code, "Only this flow's");
  add_text(rejected_list, p, "--since", p.since, p.request.since,
           "Only from this time on: YYYY-MM-DD[ HH:MM[:SS]] (UTC) or an age (90m, 2h, 7d)");
  add_text(rejected_list, p, "--reason", p.reason, p.request.reason,
           "Only those whose reason contains TEXT");
  rejected_list->add_option("--limit", p.request.limit, "At most N (1..10000, default 50)");
  rejected_list->add_flag("--all", p.request.all, "Replayed ones too");
  add_json(rejected_list, p);
  rejected_list->footer(
      "Example:\n  mqtt-gateway rejected list --flow temps --since 2h --reason expected\n");
  on(rejected_list, AdminCommand::kRejectedList);

  auto* rejected_show =
      rejected->add_subcommand("show", "One dead letter in full, with its payload");
  rejected_show->add_option("id", p.request.id, "rejected_messages.id")->required();
  add_json(rejected_show, p);
  rejected_show->footer("Example:\n  mqtt-gateway rejected show 1042\n");
  on(rejected_show, AdminCommand::kRejectedShow);

  auto* replay = rejected->add_subcommand(
      "replay",
      "Run a flow's dead letters through the flow as it is now, in their original order: each "
      "one is stored (or queued for POST) with a new msg_id and marked replayed, in one "
      "transaction, or stays a dead letter with its new reason and attempts + 1. Safe to stop "
      "and run again (nothing is stored twice) and while the gateway runs. Payloads cut to "
      "REJECTED_PAYLOAD_MAX_BYTES are refused. Exit status 0 also when some stay rejected.");
  replay->add_option("--flow", p.request.code, "The flow's code")->required();
  replay->add_option("--id", p.request.ids,
                     "Only these dead letters (repeatable); may name one without a flow whose "
                     "topic matches the flow");
  add_text(replay, p, "--since", p.since, p.request.since,
           "Only from this time on: YYYY-MM-DD[ HH:MM[:SS]] (UTC) or an age");
  add_text(replay, p, "--reason", p.reason, p.request.reason,
           "Only those whose reason contains TEXT");
  replay->add_flag("--dry-run", p.request.dry_run,
                   "Say what would happen to each, write nothing (the work is rolled back)");
  replay->add_option("--batch", p.request.batch,
                     "Dead letters per transaction, 1..10000 (default 100)");
  add_json(replay, p);
  replay->footer(
      "Example:\n  mqtt-gateway rejected replay --flow temps --reason \"expected int\" --dry-run\n"
      "  mqtt-gateway rejected replay --flow temps\n");
  on(replay, AdminCommand::kRejectedReplay);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return 0;
  } catch (const CLI::CallForVersion&) {
    out << "mqtt-gateway " << GATEWAY_VERSION << "\n";
    return 0;
  } catch (const CLI::ParseError& e) {
    err << "mqtt-gateway: " << e.what() << " (see --help)\n";
    return 2;
  }
  if (chosen) {
    if (cl.check || cl.init_db) {
      err << "mqtt-gateway: " << (cl.check ? "--check" : "--init-db")
          << " cannot be combined with a subcommand (see --help)\n";
      return 2;
    }
    p.take_given();
    p.request.command = *chosen;
    cl.admin = std::move(p.request);
  }
  if (!env_file.empty()) cl.env_file = env_file;
  return cl;
}

}  // namespace gateway
