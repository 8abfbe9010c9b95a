#include "gateway/admin_commands.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <ostream>
#include <utility>

#include "gateway/clock.h"
#include "gateway/column_map.h"
#include "gateway/constants.h"
#include "gateway/errors.h"
#include "gateway/metrics.h"
#include "gateway/payload_schema.h"
#include "gateway/redact.h"
#include "gateway/topic_filter.h"

namespace gateway {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxCode = 100;         // flows.code VARCHAR(100)
constexpr std::size_t kMaxName = 255;         // flows.name VARCHAR(255)
constexpr std::size_t kMaxTopic = 1024;       // flows.topic VARCHAR(1024)
constexpr std::size_t kMaxEndpoint = 2048;    // flows.endpoint_url VARCHAR(2048)
constexpr std::size_t kMaxIdentifier = 64;    // flows.target_table VARCHAR(64); MariaDB names
constexpr std::size_t kListReasonChars = 72;  // reason column of `rejected list`
constexpr int kDeadlockRetries = 3;

// Text from the database or the command line, made fit for one terminal line.
std::string shown(std::string_view text, std::size_t max = 4096) {
  return printable_excerpt(text, max);
}

std::string in_quotes(std::string_view text) { return "'" + shown(text, 200) + "'"; }

std::string or_dash(const std::optional<std::string>& s) { return s ? shown(*s) : "-"; }

std::string yes_no(bool b) { return b ? "yes" : "no"; }

// Characters on screen: UTF-8 continuation bytes take no column.
std::size_t width(std::string_view s) {
  return static_cast<std::size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

void print_table(std::ostream& out, const std::vector<std::string>& headers,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  widths.reserve(headers.size());
  for (const auto& h : headers) widths.push_back(width(h));
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], width(row[i]));
  }
  const auto line = [&](const std::vector<std::string>& cells) {
    std::string text;
    for (std::size_t i = 0; i < cells.size(); ++i) {
      text += cells[i];
      if (i + 1 < cells.size()) text += std::string(widths[i] - width(cells[i]) + 2, ' ');
    }
    out << text << "\n";
  };
  line(headers);
  for (const auto& row : rows) line(row);
}

std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

json opt(const std::optional<std::string>& s) { return s ? json(*s) : json(nullptr); }
json opt(const std::optional<std::int64_t>& n) { return n ? json(*n) : json(nullptr); }

// An endpoint URL as the subcommands show it: without the password it may carry.
std::optional<std::string> redacted(const std::optional<std::string>& url) {
  if (!url) return std::nullopt;
  return redact_url_credentials(*url);
}

// payload_schema (or column_map) as JSON when it parses, else as its text.
json schema_json(const std::optional<std::string>& schema) {
  if (!schema) return nullptr;
  json parsed = json::parse(*schema, nullptr, false);
  return parsed.is_discarded() ? json(*schema) : parsed;
}

json flow_json(const FlowStatus& s) {
  const Flow& f = s.flow;
  return json{{"id", f.id},
              {"code", f.code},
              {"name", opt(s.name)},
              {"topic", f.topic},
              {"action", f.action},
              {"endpoint_url", opt(redacted(f.endpoint_url))},
              {"payload_schema", schema_json(f.payload_schema)},
              {"enabled", f.enabled},
              {"target_table", opt(f.target_table)},
              {"column_map", schema_json(f.column_map)},
              {"write_mode", f.write_mode},
              {"last_msg_id", f.last_msg_id},
              {"updated_at", s.updated_at},
              {"pending_deliveries", s.pending_deliveries},
              {"rejected_last_24h", s.rejected_last_24h},
              {"dead_letters_waiting", s.dead_letters_waiting}};
}

std::string hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out += kDigits[b >> 4];
    out += kDigits[b & 0xF];
  }
  return out;
}

json dead_letter_json(const DeadLetter& d, bool with_payload) {
  json j{{"id", d.id},
         {"flow_id", opt(d.flow_id)},
         {"flow", opt(d.flow_code)},
         {"topic", d.topic},
         {"created_at", d.created_at},
         {"reason", redact_url_credentials(d.reason)},  // rows older than the redaction
         {"payload_bytes", d.payload_bytes},
         {"payload_truncated", d.payload_truncated},
         {"msg_id", opt(d.msg_id)},
         {"attempts", opt(d.attempts)},
         {"last_status", opt(d.last_status)},
         {"replayed_at", opt(d.replayed_at)},
         {"replayed_msg_id", opt(d.replayed_msg_id)}};
  if (with_payload) {
    // Scripts get the exact bytes: as text when they are UTF-8, else in hex.
    if (find_invalid_utf8(d.payload)) {
      j["payload_hex"] = hex(d.payload);
    } else {
      j["payload"] = d.payload;
    }
  }
  return j;
}

std::string flow_of(const DeadLetter& d) {
  if (d.flow_code) return shown(*d.flow_code);
  return d.flow_id ? "#" + std::to_string(*d.flow_id) : "-";
}

// The reason a dead letter cannot be replayed at all, or empty.
std::string unreplayable(const DeadLetter& d) {
  if (!d.payload_truncated) return {};
  return "payload was cut to " + std::to_string(d.payload_bytes) +
         " bytes when it was rejected (REJECTED_PAYLOAD_MAX_BYTES); the whole message is not "
         "available";
}

bool valid_code_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-' || c == '.';
}

bool digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

int to_int(std::string_view s) {
  int n = 0;
  for (const char c : s) n = n * 10 + (c - '0');
  return n;
}

// A FlowDefinition from a status row, for set / enable / disable.
FlowDefinition definition_of(const FlowStatus& s) {
  return FlowDefinition{s.flow.code,         s.name,
                        s.flow.topic,        s.flow.action,
                        s.flow.endpoint_url, s.flow.payload_schema,
                        s.flow.enabled,      s.flow.target_table,
                        s.flow.column_map,   s.flow.write_mode};
}

// The gateway's own tables (config/schema.sql): never a STORE_TABLE target.
constexpr std::string_view kGatewayTables[] = {
    "mqtt_servers",  "flows",      "data_records",    "rejected_messages",
    "spool_offsets", "deliveries", "delivery_leases", "retained_messages"};

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

// The STORE_TABLE lines of validate_flow_definition(), appended to `problems`.
void validate_store_table(const FlowDefinition& f, std::optional<FlowAction> action,
                          std::vector<std::string>& problems) {
  if (action != FlowAction::kStoreTable) {
    if (!action) return;  // the action's own line says enough
    if (f.target_table) {
      problems.emplace_back("target_table: only STORE_TABLE flows have one (--table '' clears it)");
    }
    if (f.column_map) {
      problems.emplace_back(
          "column_map: only STORE_TABLE flows have one (--column-map '' clears it)");
    }
    if (f.write_mode != "insert") {
      problems.emplace_back(
          "write_mode: only STORE_TABLE flows have one (--write-mode insert resets it)");
    }
    return;
  }
  if (!f.target_table) {
    problems.emplace_back(
        "target_table: required for STORE_TABLE (--table NAME, a table of the gateway's "
        "database)");
  } else {
    const std::string& t = *f.target_table;
    const bool plain = std::all_of(t.begin(), t.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    });
    if (t.size() > kMaxIdentifier) {
      problems.push_back("target_table: longer than " + std::to_string(kMaxIdentifier) +
                         " characters");
    } else if (t.empty() || !plain || digits(t)) {
      problems.push_back("target_table: " + in_quotes(t) +
                         " is not a plain table name (letters, digits and '_', not only digits; "
                         "a table of the gateway's database)");
    } else if (std::any_of(std::begin(kGatewayTables), std::end(kGatewayTables),
                           [&](std::string_view own) { return equal_ignoring_case(own, t); })) {
      problems.push_back("target_table: " + in_quotes(t) + " is one of the gateway's own tables");
    }
  }
  if (!f.column_map) {
    problems.emplace_back(
        "column_map: required for STORE_TABLE (--column-map '{\"column\": \"/pointer\", ...}')");
  } else if (const json map = json::parse(*f.column_map, nullptr, false); map.is_discarded()) {
    problems.emplace_back("column_map: not valid JSON");
  } else if (!map.is_object() || map.empty()) {
    problems.emplace_back(
        "column_map: expected a JSON object of column name -> source, e.g. {\"temp\": "
        "\"/temperature\", \"device\": \"$topic[1]\"}");
  } else {
    // One line per bad entry.
    for (const auto& [column, source] : map.items()) {
      const std::string head = "column_map: column " + in_quotes(column) + ": ";
      if (column.empty() || width(column) > kMaxIdentifier) {  // characters, as MariaDB
        problems.push_back(head + "a column name has 1.." + std::to_string(kMaxIdentifier) +
                           " characters");
      } else if (!source.is_string()) {
        problems.push_back(head + "the source must be a string");
      } else if (auto parsed = parse_column_source(source.get<std::string>());
                 const auto* why = std::get_if<std::string>(&parsed)) {
        problems.push_back(head + shown(*why));
      }
    }
  }
  if (!parse_write_mode(f.write_mode)) {
    problems.push_back("write_mode: " + in_quotes(f.write_mode) +
                       " is not insert or upsert (--write-mode)");
  }
}

// An empty value (or, for the schema, "null") clears a nullable column.
std::optional<std::string> cleared_or(const std::string& value, bool null_word = false) {
  if (value.empty() || (null_word && value == "null")) return std::nullopt;
  return value;
}

}  // namespace

std::string_view to_string(AdminCommand command) {
  switch (command) {
    case AdminCommand::kFlowsList:
      return "flows list";
    case AdminCommand::kFlowsShow:
      return "flows show";
    case AdminCommand::kFlowsAdd:
      return "flows add";
    case AdminCommand::kFlowsSet:
      return "flows set";
    case AdminCommand::kFlowsEnable:
      return "flows enable";
    case AdminCommand::kFlowsDisable:
      return "flows disable";
    case AdminCommand::kRejectedList:
      return "rejected list";
    case AdminCommand::kRejectedShow:
      return "rejected show";
    case AdminCommand::kRejectedReplay:
      return "rejected replay";
  }
  return "?";
}

std::vector<std::string> validate_flow_definition(const FlowDefinition& f) {
  std::vector<std::string> problems;
  if (f.code.empty()) {
    problems.emplace_back("code: required (--code)");
  } else if (f.code.size() > kMaxCode) {
    problems.push_back("code: longer than " + std::to_string(kMaxCode) + " characters");
  } else if (!std::all_of(f.code.begin(), f.code.end(), valid_code_char)) {
    problems.push_back("code: " + in_quotes(f.code) +
                       " may hold only letters, digits, '_', '-' and '.'");
  }
  if (f.name && f.name->size() > kMaxName) {
    problems.push_back("name: longer than " + std::to_string(kMaxName) + " bytes");
  }
  if (f.topic.empty()) {
    problems.emplace_back("topic: required (--topic)");
  } else if (f.topic.size() > kMaxTopic) {
    problems.push_back("topic: longer than " + std::to_string(kMaxTopic) + " bytes");
  } else if (auto why = validate_topic_filter(f.topic)) {
    problems.push_back("topic: invalid MQTT filter " + in_quotes(f.topic) + ": " + *why);
  }
  const auto action = parse_flow_action(f.action);
  if (f.action.empty()) {
    problems.emplace_back("action: required (--action STORE_DB, POST_ENDPOINT or STORE_TABLE)");
  } else if (!action) {
    problems.push_back("action: unknown action " + in_quotes(f.action) +
                       " (expected STORE_DB, POST_ENDPOINT or STORE_TABLE)");
  }
  if (f.endpoint_url) {
    const std::string& url = *f.endpoint_url;
    const std::string url_shown = redact_url_credentials(url);
    const auto scheme_end = url.find("://");
    const std::string scheme = scheme_end == std::string::npos ? "" : url.substr(0, scheme_end);
    std::string lower = scheme;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (url.size() > kMaxEndpoint) {
      problems.push_back("endpoint: longer than " + std::to_string(kMaxEndpoint) + " bytes");
    } else if (lower != "http" && lower != "https") {
      problems.push_back(
          "endpoint: " + in_quotes(url_shown) +
          (scheme.empty() ? " is not a URL" : " has scheme '" + shown(scheme, 40) + "'") +
          " (expected http:// or https://)");
    } else if (url.size() == scheme_end + 3 || url[scheme_end + 3] == '/' ||
               url[scheme_end + 3] == ':' || url[scheme_end + 3] == '?') {
      problems.push_back("endpoint: " + in_quotes(url_shown) + " has no host");
    } else if (std::any_of(url.begin(), url.end(), [](unsigned char c) { return c <= ' '; })) {
      problems.push_back("endpoint: " + in_quotes(url_shown) +
                         " contains spaces or control characters");
    }
  } else if (action == FlowAction::kPostEndpoint) {
    problems.emplace_back("endpoint: required for POST_ENDPOINT (--endpoint http://...)");
  }
  if (f.payload_schema) {
    const json schema = json::parse(*f.payload_schema, nullptr, false);
    if (schema.is_discarded()) {
      problems.emplace_back("payload_schema: not valid JSON");
    } else if (!schema.is_object() && !schema.is_null()) {
      problems.push_back(compile_payload_schema(schema).error);
    } else if (schema.is_object()) {
      // One line per bad field (compile_payload_schema() stops at the first).
      for (const auto& [field, type] : schema.items()) {
        SchemaResult one = compile_payload_schema(json{{field, type}});
        if (!one.ok()) problems.push_back(std::move(one.error));
      }
    }
  }
  validate_store_table(f, action, problems);
  return problems;
}

std::vector<std::string> flow_table_problems(const FlowDefinition& f, const TableInfo& table) {
  if (parse_flow_action(f.action) != FlowAction::kStoreTable) return {};
  const FlowMapping m = compile_flow_mapping(f.target_table, f.column_map, f.write_mode, table);
  std::vector<std::string> lines;
  for (const std::string& p : m.map.problems) {
    // "table 'x' does not exist", "column 'c' ...": named after the option that sets them.
    const std::string_view option = p.starts_with("table ")    ? "target_table: "
                                    : p.starts_with("column ") ? "column_map: "
                                                               : "";
    lines.push_back(std::string(option) + shown(p));
  }
  return lines;
}

std::optional<SinceTime> parse_since(std::string_view text) {
  if (text.size() >= 2 && digits(text.substr(0, text.size() - 1))) {
    const char unit = text.back();
    const std::int64_t per = unit == 's'   ? 1
                             : unit == 'm' ? 60
                             : unit == 'h' ? 3600
                             : unit == 'd' ? 86400
                                           : 0;
    if (per == 0 || text.size() > 8) return std::nullopt;
    const std::int64_t n = std::stoll(std::string(text.substr(0, text.size() - 1)));
    if (n <= 0) return std::nullopt;
    return SinceTime{std::nullopt, n * per};
  }
  std::string t(text);
  if (!t.empty() && (t.back() == 'Z' || t.back() == 'z')) t.pop_back();
  if (t.size() > 10 && (t[10] == 'T' || t[10] == 't')) t[10] = ' ';
  if (t.size() == 10) t += " 00:00:00";
  if (t.size() == 16) t += ":00";
  // YYYY-MM-DD HH:MM:SS, checked field by field.
  if (t.size() != 19 || t[4] != '-' || t[7] != '-' || t[10] != ' ' || t[13] != ':' ||
      t[16] != ':') {
    return std::nullopt;
  }
  const std::string_view v(t);
  for (const auto& [pos, len] : {std::pair{0, 4}, {5, 2}, {8, 2}, {11, 2}, {14, 2}, {17, 2}}) {
    if (!digits(v.substr(pos, len))) return std::nullopt;
  }
  const int month = to_int(v.substr(5, 2)), day = to_int(v.substr(8, 2));
  const int hour = to_int(v.substr(11, 2)), minute = to_int(v.substr(14, 2));
  const int second = to_int(v.substr(17, 2));
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 59) {
    return std::nullopt;
  }
  return SinceTime{t, std::nullopt};
}

AdminCommands::AdminCommands(FlowAdmin& admin, Processor& processor, AdminOptions options,
                             std::ostream& out, std::ostream& err)
    : admin_(admin), processor_(processor), options_(std::move(options)), out_(out), err_(err) {}

int AdminCommands::problems(const AdminRequest& r, const std::vector<std::string>& lines) {
  for (const auto& line : lines)
    err_ << "mqtt-gateway " << to_string(r.command) << ": " << line << "\n";
  return 1;
}

std::vector<std::string> AdminCommands::table_problems(const FlowDefinition& f) {
  if (parse_flow_action(f.action) != FlowAction::kStoreTable) return {};
  const bool named = f.target_table && !f.target_table->empty();
  return flow_table_problems(f, named ? admin_.describe_table(*f.target_table) : TableInfo{});
}

std::vector<std::string> AdminCommands::with_hint(std::vector<std::string> lines,
                                                  const std::string& hint) {
  for (auto& line : lines) {
    if (line.starts_with("target_table: table ")) line += "; " + hint;
  }
  return lines;
}

void AdminCommands::warn(const AdminRequest& r, const FlowDefinition& f,
                         const std::vector<std::string>& lines) {
  if (lines.empty()) return;
  for (const auto& line : lines) {
    err_ << "mqtt-gateway " << to_string(r.command) << ": warning: " << line << "\n";
  }
  err_ << "mqtt-gateway " << to_string(r.command) << ": warning: saved disabled; flows enable "
       << shown(f.code) << " refuses it until the table and its columns exist\n";
}

int AdminCommands::run(const AdminRequest& r) {
  switch (r.command) {
    case AdminCommand::kFlowsList:
      return flows_list(r);
    case AdminCommand::kFlowsShow:
      return flows_show(r);
    case AdminCommand::kFlowsAdd:
      return flows_add(r);
    case AdminCommand::kFlowsSet:
      return flows_set(r);
    case AdminCommand::kFlowsEnable:
      return flows_enable(r, true);
    case AdminCommand::kFlowsDisable:
      return flows_enable(r, false);
    case AdminCommand::kRejectedList:
      return rejected_list(r);
    case AdminCommand::kRejectedShow:
      return rejected_show(r);
    case AdminCommand::kRejectedReplay:
      return rejected_replay(r);
  }
  return 1;
}

// ---- flows ------------------------------------------------------------------------------------

int AdminCommands::flows_list(const AdminRequest& r) {
  const std::vector<FlowStatus> flows = admin_.list_flows();
  if (r.json) {
    json list = json::array();
    for (const auto& f : flows) list.push_back(flow_json(f));
    out_ << dump(list) << "\n";
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  rows.reserve(flows.size());
  for (const auto& s : flows) {
    // STORE_TABLE's target: "readings", or "readings (upsert)".
    std::string table = or_dash(s.flow.target_table);
    if (s.flow.target_table && s.flow.write_mode != "insert") {
      table += " (" + shown(s.flow.write_mode, 16) + ")";
    }
    rows.push_back({shown(s.flow.code), shown(s.flow.topic), shown(s.flow.action), table,
                    yes_no(s.flow.enabled), std::to_string(s.flow.last_msg_id),
                    std::to_string(s.pending_deliveries), std::to_string(s.rejected_last_24h)});
  }
  print_table(
      out_,
      {"CODE", "TOPIC", "ACTION", "TABLE", "ENABLED", "LAST_MSG_ID", "PENDING", "REJECTED_24H"},
      rows);
  out_ << flows.size() << " flow(s)\n";
  return 0;
}

int AdminCommands::flows_show(const AdminRequest& r) {
  const auto s = admin_.find_flow(r.code);
  if (!s) return problems(r, {"no flow " + in_quotes(r.code) + " (flows list shows them)"});
  // A STORE_TABLE flow against its table as it is now: what keeps the gateway from activating it.
  const FlowDefinition d = definition_of(*s);
  const std::vector<std::string> table_lines =
      validate_flow_definition(d).empty() ? table_problems(d) : std::vector<std::string>{};
  const bool store_table = parse_flow_action(s->flow.action) == FlowAction::kStoreTable;
  if (r.json) {
    json j = flow_json(*s);
    if (store_table) j["table_problems"] = table_lines;
    out_ << dump(j) << "\n";
    return 0;
  }
  const Flow& f = s->flow;
  out_ << "flow " << shown(f.code) << " (id " << f.id << ")\n"
       << "  name:                 " << or_dash(s->name) << "\n"
       << "  topic:                " << shown(f.topic) << "\n"
       << "  action:               " << shown(f.action) << "\n"
       << "  endpoint_url:         " << or_dash(redacted(f.endpoint_url)) << "\n"
       << "  payload_schema:       " << or_dash(f.payload_schema) << "\n";
  if (store_table || f.target_table || f.column_map) {
    out_ << "  target_table:         " << or_dash(f.target_table) << "\n"
         << "  column_map:           " << or_dash(f.column_map) << "\n"
         << "  write_mode:           " << shown(f.write_mode) << "\n";
  }
  for (const auto& line : table_lines) out_ << "  table problem:        " << line << "\n";
  out_ << "  enabled:              " << yes_no(f.enabled) << "\n"
       << "  last_msg_id:          " << f.last_msg_id << "\n"
       << "  updated_at:           " << s->updated_at << " UTC\n"
       << "  pending deliveries:   " << s->pending_deliveries << "\n"
       << "  rejected in 24 h:     " << s->rejected_last_24h << "\n"
       << "  dead letters waiting: " << s->dead_letters_waiting << "\n";
  return 0;
}

int AdminCommands::after_change(const AdminRequest& r, const FlowStatus& flow,
                                std::string_view what, const std::vector<std::string>& changes) {
  std::optional<pid_t> reloaded;
  std::string reload_error;
  if (r.reload && !changes.empty()) {
    try {
      reloaded = options_.reload(r.daemon);
    } catch (const Error& e) {
      reload_error = e.what();
    }
  }
  if (r.json) {
    json j{{"flow", flow_json(flow)}, {"changes", changes}};
    j["reloaded_pid"] = reloaded ? json(*reloaded) : json(nullptr);
    out_ << dump(j) << "\n";
  } else {
    if (changes.empty()) {
      out_ << "flow " << shown(flow.flow.code) << ": nothing to change\n";
    } else {
      out_ << "flow " << shown(flow.flow.code) << " " << what << "\n";
      for (const auto& c : changes) out_ << "  " << c << "\n";
    }
    if (reloaded) {
      out_ << "reload: SIGHUP sent to mqtt-gateway pid " << *reloaded << "\n";
    } else if (!changes.empty() && !r.reload) {
      out_ << "a running gateway applies it at its next flow reload "
              "(FLOWS_RELOAD_INTERVAL_SECONDS), or at once with --reload\n";
    }
  }
  if (!reload_error.empty()) {
    return problems(r, {"the change is saved, but --reload failed: " + reload_error});
  }
  return 0;
}

int AdminCommands::flows_add(const AdminRequest& r) {
  const FlowEdit& e = r.edit;
  FlowDefinition f;
  f.code = e.code.value_or("");
  if (e.name) f.name = cleared_or(*e.name);
  f.topic = e.topic.value_or("");
  f.action = e.action.value_or("");
  if (e.endpoint) f.endpoint_url = cleared_or(*e.endpoint);
  if (e.schema) f.payload_schema = cleared_or(*e.schema, true);
  if (e.table) f.target_table = cleared_or(*e.table);
  if (e.column_map) f.column_map = cleared_or(*e.column_map, true);
  f.write_mode = e.write_mode.value_or("insert");
  f.enabled = !e.disabled;
  std::vector<std::string> lines = validate_flow_definition(f);
  const auto action = parse_flow_action(f.action);
  if (e.write_mode && f.write_mode == "insert" && action && action != FlowAction::kStoreTable) {
    lines.emplace_back("write_mode: only STORE_TABLE flows have one");
  }
  if (lines.empty() && admin_.find_flow(f.code)) {
    lines.push_back("code: a flow " + in_quotes(f.code) + " exists already (flows set " +
                    shown(f.code) + " changes it)");
  }
  if (!lines.empty()) return problems(r, lines);
  // Against the table as it is now: an enabled flow the gateway would not activate is refused;
  // a disabled one may be saved before its table exists.
  const std::vector<std::string> table_lines = table_problems(f);
  if (!table_lines.empty() && f.enabled) {
    return problems(r, with_hint(table_lines,
                                 "create it first, or add the flow with --disabled and enable it "
                                 "once the table exists"));
  }
  admin_.insert_flow(f);
  const auto saved = admin_.find_flow(f.code);
  if (!saved) throw Error("flow " + f.code + " vanished right after it was added");
  std::vector<std::string> changes{"topic: " + shown(f.topic), "action: " + shown(f.action)};
  if (f.endpoint_url) {
    changes.push_back("endpoint_url: " + shown(redact_url_credentials(*f.endpoint_url)));
  }
  if (f.payload_schema) changes.push_back("payload_schema: " + shown(*f.payload_schema));
  if (f.target_table) changes.push_back("target_table: " + shown(*f.target_table));
  if (f.column_map) changes.push_back("column_map: " + shown(*f.column_map));
  if (action == FlowAction::kStoreTable) changes.push_back("write_mode: " + shown(f.write_mode));
  if (!f.enabled) changes.emplace_back("enabled: no");
  const int status =
      after_change(r, *saved, "added (id " + std::to_string(saved->flow.id) + ")", changes);
  warn(r, f, table_lines);
  return status;
}

int AdminCommands::flows_set(const AdminRequest& r) {
  const auto current = admin_.find_flow(r.code);
  if (!current) return problems(r, {"no flow " + in_quotes(r.code) + " (flows add creates one)"});
  const FlowEdit& e = r.edit;
  FlowDefinition f = definition_of(*current);
  if (e.name) f.name = cleared_or(*e.name);
  if (e.topic) f.topic = *e.topic;
  if (e.action) f.action = *e.action;
  if (e.endpoint) f.endpoint_url = cleared_or(*e.endpoint);
  if (e.schema) f.payload_schema = cleared_or(*e.schema, true);
  if (e.table) f.target_table = cleared_or(*e.table);
  if (e.column_map) f.column_map = cleared_or(*e.column_map, true);
  if (e.write_mode) f.write_mode = *e.write_mode;
  if (auto lines = validate_flow_definition(f); !lines.empty()) return problems(r, lines);
  const FlowDefinition before = definition_of(*current);
  std::vector<std::string> changes;
  const auto change = [&](const char* column, const std::optional<std::string>& from,
                          const std::optional<std::string>& to) {
    if (from != to)
      changes.push_back(std::string(column) + ": " + or_dash(from) + " -> " + or_dash(to));
  };
  change("name", before.name, f.name);
  change("topic", before.topic, f.topic);
  change("action", before.action, f.action);
  // Compared as stored, shown without passwords (a changed password shows as *** -> ***).
  if (before.endpoint_url != f.endpoint_url) {
    changes.push_back("endpoint_url: " + or_dash(redacted(before.endpoint_url)) + " -> " +
                      or_dash(redacted(f.endpoint_url)));
  }
  change("payload_schema", before.payload_schema, f.payload_schema);
  change("target_table", before.target_table, f.target_table);
  change("column_map", before.column_map, f.column_map);
  change("write_mode", before.write_mode, f.write_mode);
  // As for add: an enabled flow must fit its table as it is now, a disabled one is warned about.
  const std::vector<std::string> table_lines =
      changes.empty() ? std::vector<std::string>{} : table_problems(f);
  if (!table_lines.empty() && f.enabled) {
    return problems(
        r, with_hint(table_lines, "create it first, or disable the flow (flows disable " +
                                      shown(f.code) + ") to save this before the table exists"));
  }
  if (!changes.empty() && !admin_.update_flow(current->flow.id, f)) {
    return problems(r, {"flow " + in_quotes(r.code) + " was removed meanwhile"});
  }
  const auto saved = admin_.find_flow(r.code);
  const int status = after_change(r, saved.value_or(*current), "updated", changes);
  warn(r, f, table_lines);
  return status;
}

int AdminCommands::flows_enable(const AdminRequest& r, bool enable) {
  const auto current = admin_.find_flow(r.code);
  if (!current) return problems(r, {"no flow " + in_quotes(r.code)});
  std::vector<std::string> changes;
  if (current->flow.enabled != enable) {
    FlowDefinition f = definition_of(*current);
    f.enabled = enable;
    if (enable) {
      // A flow is enabled only as a valid one: the gateway would disable it again at once.
      if (auto lines = validate_flow_definition(f); !lines.empty()) return problems(r, lines);
      if (auto lines = table_problems(f); !lines.empty()) {
        return problems(r, with_hint(lines, "create it first"));
      }
    }
    if (!admin_.update_flow(current->flow.id, f)) {
      return problems(r, {"flow " + in_quotes(r.code) + " was removed meanwhile"});
    }
    changes.emplace_back(enable ? "enabled: no -> yes" : "enabled: yes -> no");
  }
  const auto saved = admin_.find_flow(r.code);
  return after_change(r, saved.value_or(*current), enable ? "enabled" : "disabled", changes);
}

// ---- rejected ---------------------------------------------------------------------------------

namespace {

// --since into the filter, or a problem line.
void apply_since(const AdminRequest& r, RejectedFilter& filter, std::vector<std::string>& lines) {
  if (!r.since) return;
  if (auto since = parse_since(*r.since)) {
    filter.since = since->utc;
    filter.since_seconds_ago = since->seconds_ago;
  } else {
    lines.push_back(
        "--since: expected YYYY-MM-DD[ HH:MM[:SS]] (UTC) or an age like 30m, 2h, 7d; got " +
        in_quotes(*r.since));
  }
}

}  // namespace

int AdminCommands::rejected_list(const AdminRequest& r) {
  RejectedFilter filter;
  std::vector<std::string> lines;
  if (!r.code.empty()) {
    if (auto f = admin_.find_flow(r.code)) {
      filter.flow_id = f->flow.id;
    } else {
      lines.push_back("--flow: no flow " + in_quotes(r.code));
    }
  }
  apply_since(r, filter, lines);
  if (r.limit < 1 || r.limit > 10000) lines.emplace_back("--limit: expected 1..10000");
  if (!lines.empty()) return problems(r, lines);
  filter.reason_contains = r.reason;
  filter.waiting_only = !r.all;
  filter.newest_first = true;
  filter.limit = static_cast<std::size_t>(r.limit);
  const std::vector<DeadLetter> letters = admin_.list_rejected(filter);
  const std::int64_t total = admin_.count_rejected(filter);
  if (r.json) {
    json list = json::array();
    for (const auto& d : letters) list.push_back(dead_letter_json(d, false));
    out_ << dump(json{{"total", total}, {"dead_letters", list}}) << "\n";
    return 0;
  }
  std::vector<std::vector<std::string>> rows;
  rows.reserve(letters.size());
  for (const auto& d : letters) {
    std::vector<std::string> row{std::to_string(d.id),
                                 flow_of(d),
                                 shown(d.topic, 60),
                                 d.created_at,
                                 shown(redact_url_credentials(d.reason), kListReasonChars),
                                 yes_no(d.payload_truncated)};
    if (r.all) {
      row.push_back(d.replayed_msg_id ? "msg_id " + std::to_string(*d.replayed_msg_id) : "-");
    }
    rows.push_back(std::move(row));
  }
  std::vector<std::string> headers{"ID", "FLOW", "TOPIC", "TIME (UTC)", "REASON", "CUT"};
  if (r.all) headers.emplace_back("REPLAYED");
  print_table(out_, headers, rows);
  out_ << letters.size() << " of " << total << " "
       << (r.all ? "dead letter(s)" : "waiting dead letter(s)") << " (newest first)\n";
  return 0;
}

int AdminCommands::rejected_show(const AdminRequest& r) {
  const auto d = admin_.find_rejected(r.id);
  if (!d) return problems(r, {"no dead letter " + std::to_string(r.id)});
  if (r.json) {
    out_ << dump(dead_letter_json(*d, true)) << "\n";
    return 0;
  }
  const auto num = [](const std::optional<std::int64_t>& n) {
    return n ? std::to_string(*n) : std::string("-");
  };
  out_ << "dead letter " << d->id << "\n"
       << "  flow:      " << flow_of(*d) << "\n"
       << "  topic:     " << shown(d->topic) << "\n"
       << "  time:      " << d->created_at << " UTC\n"
       << "  reason:    " << shown(redact_url_credentials(d->reason)) << "\n"
       << "  attempts:  " << d->attempts.value_or(1) << "\n";
  if (d->msg_id) {
    out_ << "  msg_id:    " << *d->msg_id << " (POST given up; last HTTP status "
         << num(d->last_status) << ")\n";
  }
  out_ << "  replayed:  "
       << (d->replayed_at ? *d->replayed_at + " UTC as msg_id " + num(d->replayed_msg_id) : "no")
       << "\n"
       << "  payload:   " << d->payload_bytes << " bytes"
       << (d->payload_truncated ? ", cut to REJECTED_PAYLOAD_MAX_BYTES: cannot be replayed"
                                : ", complete")
       << "\n"
       << shown(d->payload, 1 << 20) << "\n";
  return 0;
}

void AdminCommands::replay_batch(std::int64_t flow_id, std::vector<ReplayItem>& items, bool commit,
                                 std::vector<ReplayOutcome>& outcomes) {
  for (int attempt = 0;; ++attempt) {
    try {
      ReplayResult result = processor_.replay(flow_id, items, commit);
      if (result.flow_missing) throw Error("the flow was removed during the replay");
      for (auto& o : result.outcomes) outcomes.push_back(std::move(o));
      return;
    } catch (const DbRetryable&) {
      if (attempt >= kDeadlockRetries) throw;
    } catch (const DbDataError& e) {
      if (items.size() > 1) {
        for (auto& item : items) {
          std::vector<ReplayItem> one;
          one.push_back(std::move(item));
          replay_batch(flow_id, one, commit, outcomes);
        }
        return;
      }
      // The database refuses this one message's rows: it stays a dead letter, with that reason.
      ReplayOutcome o;
      o.rejected_id = items.front().rejected_id;
      bool refused = false;
      for (int retry = 0;; ++retry) {  // a deadlock here is retried like the replay itself
        try {
          refused = processor_.replay_refused(flow_id, o.rejected_id, e.what(), commit);
          break;
        } catch (const DbRetryable&) {
          if (retry >= kDeadlockRetries) throw;
        }
      }
      if (refused) {
        o.reason = e.what();
      } else {
        o.already_replayed = true;
      }
      outcomes.push_back(std::move(o));
      return;
    }
  }
}

int AdminCommands::rejected_replay(const AdminRequest& r) {
  std::vector<std::string> lines;
  const auto flow = admin_.find_flow(r.code);
  RejectedFilter filter;
  if (!flow) {
    lines.push_back("--flow: no flow " + in_quotes(r.code));
  } else {
    const Flow& f = flow->flow;
    filter.flow_id = f.id;
    if (!f.enabled) {
      lines.push_back("flow " + in_quotes(f.code) + " is disabled: enable it first (flows enable " +
                      shown(f.code) + ")");
    }
    if (!parse_flow_action(f.action)) {
      lines.push_back("flow " + in_quotes(f.code) + " has action " + in_quotes(f.action) +
                      ", which this version cannot run");
    }
    if (f.payload_schema) {
      const json schema = json::parse(*f.payload_schema, nullptr, false);
      const std::string error = schema.is_discarded() ? "payload_schema: not valid JSON"
                                                      : compile_payload_schema(schema).error;
      if (!error.empty()) {
        lines.push_back("flow " + in_quotes(f.code) + ": " + error + " (fix it first: flows set " +
                        shown(f.code) + " --schema ...)");
      }
    }
    // A STORE_TABLE flow whose mapping does not fit its table would fail every batch.
    for (const auto& line : table_problems(definition_of(*flow))) {
      lines.push_back("flow " + in_quotes(f.code) + ": " + line + " (fix it first)");
    }
  }
  apply_since(r, filter, lines);
  if (r.batch < 1 || r.batch > 10000) lines.emplace_back("--batch: expected 1..10000");
  std::size_t already = 0;
  json letters = json::array();
  const auto report = [&](std::int64_t id, const std::string& topic, const std::string& outcome,
                          std::int64_t msg_id, const std::string& reason) {
    if (r.json) {
      json j{{"id", id}, {"outcome", outcome}};
      if (msg_id > 0) j["msg_id"] = msg_id;
      if (!reason.empty()) j["reason"] = reason;
      letters.push_back(std::move(j));
      return;
    }
    const std::string head = "#" + std::to_string(id) + " " + shown(topic, 80) + ": ";
    if (outcome == "replayed") {
      if (r.dry_run) out_ << head << "would be replayed as msg_id " << msg_id << "\n";
    } else if (outcome == "rejected") {
      out_ << head << (r.dry_run ? "would stay rejected: " : "still rejected: ") << shown(reason)
           << "\n";
    } else if (outcome == "refused") {
      out_ << head << "refused: " << shown(reason) << "\n";
    } else {
      out_ << head << "already replayed"
           << (msg_id > 0 ? " as msg_id " + std::to_string(msg_id) : "") << "\n";
    }
  };
  for (const std::int64_t id : r.ids) {
    if (!flow) break;
    const auto d = admin_.find_rejected(id);
    if (!d) {
      lines.push_back("--id " + std::to_string(id) + ": no such dead letter");
    } else if (d->flow_id && *d->flow_id != flow->flow.id) {
      lines.push_back("--id " + std::to_string(id) + ": a dead letter of flow " + flow_of(*d) +
                      ", not of " + shown(flow->flow.code));
    } else if (!d->flow_id && !topic_matches(flow->flow.topic, d->topic)) {
      lines.push_back("--id " + std::to_string(id) + ": its topic " + in_quotes(d->topic) +
                      " does not match the filter " + in_quotes(flow->flow.topic) + " of flow " +
                      shown(flow->flow.code));
    } else if (d->replayed_msg_id && lines.empty()) {
      ++already;
      report(id, d->topic, "already", *d->replayed_msg_id, {});
    }
  }
  if (!lines.empty()) return problems(r, lines);

  filter.ids = r.ids;
  filter.reason_contains = r.reason;
  filter.waiting_only = true;
  filter.with_payload = true;
  filter.limit = static_cast<std::size_t>(r.batch);
  const bool commit = !r.dry_run;
  std::size_t replayed = 0, rejected = 0;
  std::int64_t first_msg_id = 0, last_msg_id = 0;
  // A dry run rolls every transaction back, so each starts from the same last_msg_id: number
  // its messages on from the first one instead.
  std::int64_t dry_base = -1;
  const auto summary = [&](std::ostream& os) {
    if (r.dry_run) {
      os << "dry run: would replay " << replayed << ", would stay rejected " << rejected;
    } else {
      os << "replayed " << replayed << ", still rejected " << rejected;
    }
    if (already > 0) os << ", already replayed " << already;
    os << " (flow " << shown(flow->flow.code);
    if (replayed > 0) os << ", msg_id " << first_msg_id << ".." << last_msg_id;
    os << ")" << (r.dry_run ? "; nothing written" : "") << "\n";
  };
  // What the page's replay committed so far, counted as it comes: also when an error stops it
  // midway (the items split off and committed one by one before it are in the summary).
  std::vector<std::pair<std::int64_t, std::string>> topic_of;
  std::vector<ReplayOutcome> outcomes;
  std::size_t counted = 0;
  const auto account = [&] {
    for (; counted < outcomes.size(); ++counted) {
      const ReplayOutcome& o = outcomes[counted];
      const auto t = std::find_if(topic_of.begin(), topic_of.end(),
                                  [&](const auto& p) { return p.first == o.rejected_id; });
      const std::string topic = t == topic_of.end() ? std::string() : t->second;
      if (o.msg_id > 0) {
        if (dry_base < 0) dry_base = o.msg_id - 1;
        ++replayed;
        const std::int64_t msg_id =
            commit ? o.msg_id : dry_base + static_cast<std::int64_t>(replayed);
        if (first_msg_id == 0) first_msg_id = msg_id;
        last_msg_id = msg_id;
        report(o.rejected_id, topic, "replayed", msg_id, {});
      } else if (!o.reason.empty()) {
        ++rejected;
        report(o.rejected_id, topic, "rejected", 0, o.reason);
      } else if (o.already_replayed) {
        ++already;
        report(o.rejected_id, topic, "already", 0, {});
      }
    }
  };
  try {
    for (;;) {
      const std::vector<DeadLetter> page = admin_.list_rejected(filter);
      if (page.empty()) break;
      filter.after_id = page.back().id;
      std::vector<ReplayItem> items;
      for (const DeadLetter& d : page) {
        if (const std::string why = unreplayable(d); !why.empty()) {
          ++rejected;
          report(d.id, d.topic, "refused", 0, why);
          continue;
        }
        ReplayItem item;
        item.rejected_id = d.id;
        item.message.topic = d.topic;
        item.message.payload = d.payload;
        // $received_at of a STORE_TABLE replay: when the message was first refused (UTC).
        item.message.arrival_us = parse_datetime_us(d.created_at).value_or(unix_now_us());
        item.message.parsed = parse_payload(item.message.payload, options_.limits);
        items.push_back(std::move(item));
      }
      topic_of.clear();
      for (const auto& item : items) topic_of.emplace_back(item.rejected_id, item.message.topic);
      outcomes.clear();
      counted = 0;
      if (!items.empty()) replay_batch(flow->flow.id, items, commit, outcomes);
      account();
    }
  } catch (const std::exception&) {
    account();
    out_ << "stopped by an error after: ";
    summary(out_);
    out_.flush();
    throw;
  }
  if (r.json) {
    json j{{"flow", flow->flow.code},    {"dry_run", r.dry_run},        {"replayed", replayed},
           {"still_rejected", rejected}, {"already_replayed", already}, {"dead_letters", letters}};
    j["first_msg_id"] = replayed > 0 ? json(first_msg_id) : json(nullptr);
    j["last_msg_id"] = replayed > 0 ? json(last_msg_id) : json(nullptr);
    out_ << dump(j) << "\n";
  } else {
    summary(out_);
  }
  return 0;
}

}  // namespace gateway
