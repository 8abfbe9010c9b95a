// The operator's flow subcommands against the in-memory repository: validation (one line per
// problem, exit status 1, nothing written), the changes they write, --reload, JSON output, and
// --since parsing.
#include "gateway/admin_commands.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "support/admin_commands_fixture.h"

namespace gateway {
namespace {

using testing::AdminCommandsFixture;

std::size_t lines(const std::string& text) {
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

// A table as describe_table() reports it: device VARCHAR(32) NOT NULL, temp DOUBLE NULL,
// at DATETIME(6) NULL.
TableInfo readings_table() {
  TableInfo t;
  t.name = "readings";
  ColumnInfo device;
  device.name = "device";
  device.data_type = "varchar";
  device.column_type = "varchar(32)";
  device.nullable = false;
  device.max_chars = 32;
  ColumnInfo temp;
  temp.name = "temp";
  temp.data_type = "double";
  temp.column_type = "double";
  ColumnInfo at;
  at.name = "at";
  at.data_type = "datetime";
  at.column_type = "datetime(6)";
  t.columns = {device, temp, at};
  return t;
}

constexpr const char* kReadingsMap = R"({"device": "$topic[1]", "temp": "/temperature"})";

FlowDefinition store_table_flow() {
  FlowDefinition f;
  f.code = "latest";
  f.topic = "plant/+/temp";
  f.action = "STORE_TABLE";
  f.target_table = "readings";
  f.column_map = kReadingsMap;
  f.write_mode = "upsert";
  return f;
}

// The line for a table that does not exist, as compile_flow_mapping() words it.
std::string no_table(const std::string& table) {
  FlowDefinition f = store_table_flow();
  f.target_table = table;
  return flow_table_problems(f, TableInfo{table, {}}).at(0);
}

FlowDefinition valid_flow() {
  FlowDefinition f;
  f.code = "temps";
  f.topic = "sensors/+/temp";
  f.action = "STORE_DB";
  f.payload_schema = R"({"temperature": "number"})";
  return f;
}

TEST(ValidateFlowDefinition, AValidFlowHasNoProblems) {
  EXPECT_TRUE(validate_flow_definition(valid_flow()).empty());
  FlowDefinition post = valid_flow();
  post.action = "POST_ENDPOINT";
  post.endpoint_url = "https://hooks.example.com:8443/in?x=1";
  post.payload_schema.reset();
  EXPECT_TRUE(validate_flow_definition(post).empty());
}

TEST(ValidateFlowDefinition, EachProblemIsOneLine) {
  FlowDefinition f = valid_flow();
  f.topic = "a/#/b";
  auto p = validate_flow_definition(f);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0], "topic: invalid MQTT filter 'a/#/b': '#' must be the last level");

  f = valid_flow();
  f.payload_schema = R"({"temperature": "decimal"})";
  p = validate_flow_definition(f);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NE(p[0].find("field 'temperature' has unknown type 'decimal'"), std::string::npos) << p[0];

  f = valid_flow();
  f.action = "POST_ENDPOINT";
  f.endpoint_url = "ftp://files.example.com/in";
  p = validate_flow_definition(f);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0],
            "endpoint: 'ftp://files.example.com/in' has scheme 'ftp' (expected http:// or "
            "https://)");
}

TEST(ValidateFlowDefinition, ReportsEveryProblemAtOnce) {
  FlowDefinition f;
  f.code = "bad code";
  f.topic = "a+";
  f.action = "STORE_TABLES";
  f.endpoint_url = "http://";
  f.payload_schema = R"({"a": "decimal", "b": "int", "c": 5})";
  const auto p = validate_flow_definition(f);
  ASSERT_EQ(p.size(), 6u) << ::testing::PrintToString(p);
  EXPECT_NE(p[0].find("code:"), std::string::npos);
  EXPECT_NE(p[1].find("topic:"), std::string::npos);
  EXPECT_EQ(p[2],
            "action: unknown action 'STORE_TABLES' (expected STORE_DB, POST_ENDPOINT or "
            "STORE_TABLE)");
  EXPECT_EQ(p[3], "endpoint: 'http://' has no host");
  EXPECT_NE(p[4].find("field 'a'"), std::string::npos);
  EXPECT_NE(p[5].find("field 'c'"), std::string::npos);
}

TEST(ValidateFlowDefinition, RequiredFieldsAndOtherShapes) {
  auto p = validate_flow_definition(FlowDefinition{});
  EXPECT_EQ(p.size(), 3u);  // code, topic, action
  FlowDefinition f = valid_flow();
  f.action = "POST_ENDPOINT";
  EXPECT_EQ(
      validate_flow_definition(f),
      std::vector<std::string>{"endpoint: required for POST_ENDPOINT (--endpoint http://...)"});
  f = valid_flow();
  f.payload_schema = "[1]";
  EXPECT_EQ(validate_flow_definition(f).size(), 1u);
  f.payload_schema = "{nope";
  EXPECT_EQ(validate_flow_definition(f),
            std::vector<std::string>{"payload_schema: not valid JSON"});
  f.payload_schema = "null";
  EXPECT_TRUE(validate_flow_definition(f).empty());
  f.action = "store_db";
  EXPECT_EQ(validate_flow_definition(f).size(), 1u);  // action names are exact
  f = valid_flow();
  f.endpoint_url = "http://host/with space";
  EXPECT_EQ(validate_flow_definition(f).size(), 1u);
}

TEST(ValidateFlowDefinition, StoreTableNeedsATableAColumnMapAndAWriteMode) {
  EXPECT_TRUE(validate_flow_definition(store_table_flow()).empty());
  FlowDefinition f = store_table_flow();
  f.write_mode = "insert";
  EXPECT_TRUE(validate_flow_definition(f).empty());

  f.target_table.reset();
  f.column_map.reset();
  f.write_mode = "merge";
  EXPECT_EQ(validate_flow_definition(f),
            (std::vector<std::string>{
                "target_table: required for STORE_TABLE (--table NAME, a table of the gateway's "
                "database)",
                "column_map: required for STORE_TABLE (--column-map '{\"column\": \"/pointer\", "
                "...}')",
                "write_mode: 'merge' is not insert or upsert (--write-mode)"}));

  // target_table: a plain name of the gateway's database, never one of its own tables.
  f = store_table_flow();
  for (const char* bad : {"", "db.readings", "read-ings", "read ings", "123", "`x`", "tablé"}) {
    f.target_table = bad;
    const auto p = validate_flow_definition(f);
    ASSERT_EQ(p.size(), 1u) << bad;
    EXPECT_TRUE(p[0].starts_with("target_table: '")) << p[0];
    EXPECT_NE(p[0].find("is not a plain table name"), std::string::npos) << p[0];
  }
  f.target_table = std::string(65, 'x');
  EXPECT_EQ(validate_flow_definition(f),
            std::vector<std::string>{"target_table: longer than 64 characters"});
  f.target_table = std::string(64, 'x');
  EXPECT_TRUE(validate_flow_definition(f).empty());
  f.target_table = "_2026_readings";
  EXPECT_TRUE(validate_flow_definition(f).empty());
  for (const char* own : {"flows", "data_records", "Rejected_Messages", "deliveries"}) {
    f.target_table = own;
    EXPECT_EQ(validate_flow_definition(f),
              std::vector<std::string>{"target_table: '" + std::string(own) +
                                       "' is one of the gateway's own tables"});
  }

  // column_map: a JSON object; one line per bad entry.
  f = store_table_flow();
  f.column_map = "{nope";
  EXPECT_EQ(validate_flow_definition(f), std::vector<std::string>{"column_map: not valid JSON"});
  for (const char* shape : {"[]", "{}", "\"/t\"", "null"}) {
    f.column_map = shape;
    const auto p = validate_flow_definition(f);
    ASSERT_EQ(p.size(), 1u) << shape;
    EXPECT_TRUE(p[0].starts_with("column_map: expected a JSON object")) << p[0];
  }
  f.column_map = R"({"a": "/ok", "b": "temperature", "c": 5, "d": "$topic[x]", "e": "$msg_id",
                     "f": "/a~2b", "": "/x"})";
  const auto p = validate_flow_definition(f);
  ASSERT_EQ(p.size(), 5u) << ::testing::PrintToString(p);
  EXPECT_EQ(p[0], "column_map: column '': a column name has 1..64 characters");
  EXPECT_EQ(p[1],
            "column_map: column 'b': source 'temperature' is not a JSON Pointer (\"/field\") nor "
            "one of $topic, $topic[N], $msg_id, $flow_code, $received_at, $payload, "
            "$user_property:NAME");
  EXPECT_EQ(p[2], "column_map: column 'c': the source must be a string");
  EXPECT_EQ(p[3],
            "column_map: column 'd': source '$topic[x]': the level must be a number from 0 to "
            "1000");
  EXPECT_NE(p[4].find("column_map: column 'f': source '/a~2b' is not a valid JSON Pointer"),
            std::string::npos)
      << p[4];
}

TEST(ValidateFlowDefinition, StoreTableOptionsOnAnotherActionAreProblems) {
  FlowDefinition f = valid_flow();
  f.target_table = "readings";
  f.column_map = kReadingsMap;
  f.write_mode = "upsert";
  EXPECT_EQ(validate_flow_definition(f),
            (std::vector<std::string>{
                "target_table: only STORE_TABLE flows have one (--table '' clears it)",
                "column_map: only STORE_TABLE flows have one (--column-map '' clears it)",
                "write_mode: only STORE_TABLE flows have one (--write-mode insert resets it)"}));
}

TEST(FlowTableProblems, OneLinePerMissingTableOrColumn) {
  const FlowDefinition f = store_table_flow();
  EXPECT_TRUE(flow_table_problems(f, readings_table()).empty());
  EXPECT_TRUE(flow_table_problems(valid_flow(), TableInfo{}).empty());  // not STORE_TABLE
  const auto missing = flow_table_problems(f, TableInfo{"readings", {}});
  ASSERT_EQ(missing.size(), 1u) << ::testing::PrintToString(missing);
  EXPECT_TRUE(missing[0].starts_with("target_table: table 'readings' does not exist"))
      << missing[0];
  FlowDefinition unset = f;  // a row written without the command
  unset.target_table.reset();
  EXPECT_EQ(flow_table_problems(unset, TableInfo{}),
            std::vector<std::string>{"target_table is not set"});
  FlowDefinition typo = f;
  typo.column_map = R"({"device": "$topic[1]", "tmp": "/temperature", "site": "/site"})";
  EXPECT_EQ(
      flow_table_problems(typo, readings_table()),
      (std::vector<std::string>{"column_map: column 'site' does not exist in table 'readings'",
                                "column_map: column 'tmp' does not exist in table 'readings'"}));
  TableInfo generated = readings_table();
  generated.columns[1].generated = true;
  EXPECT_EQ(flow_table_problems(f, generated),
            std::vector<std::string>{
                "column_map: column 'temp' is a generated column and cannot be written"});
}

TEST(ParseSince, AcceptsDatesTimesAndAges) {
  EXPECT_EQ(parse_since("2026-12-01")->utc, "2026-12-01 00:00:00");
  EXPECT_EQ(parse_since("2026-12-01 10:30")->utc, "2026-12-01 10:30:00");
  EXPECT_EQ(parse_since("2026-12-01T10:30:05Z")->utc, "2026-12-01 10:30:05");
  EXPECT_EQ(parse_since("90m")->seconds_ago, 5400);
  EXPECT_EQ(parse_since("2h")->seconds_ago, 7200);
  EXPECT_EQ(parse_since("7d")->seconds_ago, 604800);
  EXPECT_EQ(parse_since("30s")->seconds_ago, 30);
  for (const char* bad : {"", "yesterday", "2026-13-01", "2026-12-01 25:00", "0h", "5w", "h",
                          "2026/12/01", "2026-12-01 10:30:05.5", "999999999d"}) {
    EXPECT_FALSE(parse_since(bad).has_value()) << bad;
  }
}

class AdminCommandsTest : public AdminCommandsFixture {
 protected:
  AdminCommandsTest() {
    Flow f;
    f.id = 1;
    f.code = "temps";
    f.topic = "sensors/+/temp";
    f.action = "STORE_DB";
    f.payload_schema = R"({"temperature": "int"})";
    f.last_msg_id = 41;
    repo_.flows[1] = f;
  }
};

TEST_F(AdminCommandsTest, InvalidFlowsAddIsRefusedWithOneLinePerProblemAndWritesNothing) {
  AdminRequest r;
  r.command = AdminCommand::kFlowsAdd;
  r.edit.code = "bad";
  r.edit.topic = "a/#/b";
  r.edit.action = "POST_ENDPOINT";
  r.edit.endpoint = "ftp://x.example/in";
  r.edit.schema = R"({"t": "decimal"})";
  r.reload = true;
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(lines(err_.str()), 3u) << err_.str();
  EXPECT_NE(err_.str().find("mqtt-gateway flows add: topic: invalid MQTT filter 'a/#/b'"),
            std::string::npos);
  EXPECT_NE(err_.str().find("mqtt-gateway flows add: endpoint: 'ftp://x.example/in'"),
            std::string::npos);
  EXPECT_NE(err_.str().find("mqtt-gateway flows add: payload_schema: field 't'"),
            std::string::npos);
  EXPECT_EQ(admin_.inserts, 0);
  EXPECT_EQ(reloads_, 0);
  EXPECT_EQ(out_.str(), "");
}

TEST_F(AdminCommandsTest, StoreTableOptionsOnAnotherActionAreRefused) {
  AdminRequest r;
  r.command = AdminCommand::kFlowsAdd;
  r.edit.code = "t2";
  r.edit.topic = "t/#";
  r.edit.action = "STORE_DB";
  r.edit.table = "readings";
  r.edit.write_mode = "insert";
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway flows add: target_table: only STORE_TABLE flows have one (--table '' "
            "clears it)\n"
            "mqtt-gateway flows add: write_mode: only STORE_TABLE flows have one\n");
  EXPECT_EQ(admin_.inserts, 0);
  EXPECT_EQ(admin_.describes, 0);
}

AdminRequest add_latest() {
  AdminRequest r;
  r.command = AdminCommand::kFlowsAdd;
  r.edit.code = "latest";
  r.edit.topic = "plant/+/temp";
  r.edit.action = "STORE_TABLE";
  r.edit.table = "readings";
  r.edit.column_map = kReadingsMap;
  r.edit.write_mode = "upsert";
  return r;
}

TEST_F(AdminCommandsTest, StoreTableFlowsAddWritesTheMappingCheckedAgainstTheTable) {
  repo_.tables["readings"] = readings_table();
  EXPECT_EQ(run(add_latest()), 0) << err_.str();
  EXPECT_EQ(admin_.describes, 1);
  ASSERT_EQ(repo_.flows.size(), 2u);
  const Flow& f = repo_.flows[2];
  EXPECT_EQ(f.action, "STORE_TABLE");
  EXPECT_EQ(f.target_table.value_or(""), "readings");
  EXPECT_EQ(f.column_map.value_or(""), kReadingsMap);
  EXPECT_EQ(f.write_mode, "upsert");
  EXPECT_TRUE(f.enabled);
  EXPECT_EQ(out_.str(),
            "flow latest added (id 2)\n"
            "  topic: plant/+/temp\n"
            "  action: STORE_TABLE\n"
            "  target_table: readings\n"
            "  column_map: {\"device\": \"$topic[1]\", \"temp\": \"/temperature\"}\n"
            "  write_mode: upsert\n"
            "a running gateway applies it at its next flow reload (FLOWS_RELOAD_INTERVAL_SECONDS), "
            "or at once with --reload\n");
  EXPECT_EQ(err_.str(), "");
  // The gateway's own reload accepts what was written.
  const FlowMapping m =
      compile_flow_mapping(f.target_table, f.column_map, f.write_mode, repo_.tables["readings"]);
  EXPECT_TRUE(m.ok()) << m.map.error;
  EXPECT_EQ(m.mode, WriteMode::kUpsert);
}

TEST_F(AdminCommandsTest, StoreTableFlowsAddRefusesAMissingTableOrColumnUnlessDisabled) {
  // A mapped column the table lacks: one line each, nothing written.
  repo_.tables["readings"] = readings_table();
  AdminRequest r = add_latest();
  r.edit.column_map = R"({"device": "$topic[1]", "tmp": "/temperature", "site": "/site"})";
  r.reload = true;
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway flows add: column_map: column 'site' does not exist in table "
            "'readings'\n"
            "mqtt-gateway flows add: column_map: column 'tmp' does not exist in table "
            "'readings'\n");
  EXPECT_EQ(admin_.inserts, 0);
  EXPECT_EQ(reloads_, 0);
  EXPECT_EQ(out_.str(), "");

  // A table that does not exist (yet).
  repo_.tables.clear();
  r = add_latest();
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(err_.str(), "mqtt-gateway flows add: " + no_table("readings") +
                            "; create it first, or add the flow with --disabled and enable it "
                            "once the table exists\n");
  EXPECT_EQ(admin_.inserts, 0);

  // Disabled, it is saved, with the problems as warnings; enabling it waits for the table.
  r.edit.disabled = true;
  EXPECT_EQ(run(r), 0);
  EXPECT_EQ(admin_.inserts, 1);
  ASSERT_EQ(repo_.flows.size(), 2u);
  EXPECT_FALSE(repo_.flows[2].enabled);
  EXPECT_NE(out_.str().find("flow latest added (id 2)"), std::string::npos) << out_.str();
  EXPECT_EQ(err_.str(), "mqtt-gateway flows add: warning: " + no_table("readings") +
                            "\n"
                            "mqtt-gateway flows add: warning: saved disabled; flows enable latest "
                            "refuses it until the table and its columns exist\n");
  AdminRequest enable;
  enable.command = AdminCommand::kFlowsEnable;
  enable.code = "latest";
  EXPECT_EQ(run(enable), 1);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway flows enable: " + no_table("readings") + "; create it first\n");
  EXPECT_FALSE(repo_.flows[2].enabled);
  repo_.tables["readings"] = readings_table();
  EXPECT_EQ(run(enable), 0) << err_.str();
  EXPECT_TRUE(repo_.flows[2].enabled);
}

TEST_F(AdminCommandsTest, ReplayRefusesAStoreTableFlowThatDoesNotFitItsTable) {
  repo_.tables["readings"] = readings_table();
  ASSERT_EQ(run(add_latest()), 0) << err_.str();
  repo_.tables.clear();
  AdminRequest r;
  r.command = AdminCommand::kRejectedReplay;
  r.code = "latest";
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(err_.str(), "mqtt-gateway rejected replay: flow 'latest': " + no_table("readings") +
                            " (fix it first)\n");
  repo_.tables["readings"] = readings_table();
  EXPECT_EQ(run(r), 0) << err_.str();
  EXPECT_EQ(out_.str(), "replayed 0, still rejected 0 (flow latest)\n");
}

TEST_F(AdminCommandsTest, FlowsSetChangesTheMappingAndSwitchesActions) {
  repo_.tables["readings"] = readings_table();
  ASSERT_EQ(run(add_latest()), 0) << err_.str();
  AdminRequest r;
  r.command = AdminCommand::kFlowsSet;
  r.code = "latest";
  r.edit.column_map = R"({"device": "$topic[1]", "temp": "/t", "at": "$received_at"})";
  r.edit.write_mode = "insert";
  EXPECT_EQ(run(r), 0) << err_.str();
  EXPECT_EQ(out_.str(),
            "flow latest updated\n"
            "  column_map: {\"device\": \"$topic[1]\", \"temp\": \"/temperature\"} -> "
            "{\"device\": \"$topic[1]\", \"temp\": \"/t\", \"at\": \"$received_at\"}\n"
            "  write_mode: upsert -> insert\n"
            "a running gateway applies it at its next flow reload (FLOWS_RELOAD_INTERVAL_SECONDS), "
            "or at once with --reload\n");
  EXPECT_EQ(repo_.flows[2].write_mode, "insert");

  // A typo in a column is refused; so is a table dropped meanwhile, for an enabled flow.
  r.edit = FlowEdit{};
  r.edit.column_map = R"({"device": "$topic[1]", "temperature": "/t"})";
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway flows set: column_map: column 'temperature' does not exist in table "
            "'readings'\n");
  repo_.tables.clear();
  r.edit = FlowEdit{};
  r.edit.topic = "plant/+/temperature";
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(err_.str(), "mqtt-gateway flows set: " + no_table("readings") +
                            "; create it first, or disable the flow (flows disable latest) to "
                            "save this before the table exists\n");
  EXPECT_EQ(repo_.flows[2].topic, "plant/+/temp");
  // Disabled, the change is saved with a warning.
  repo_.flows[2].enabled = false;
  EXPECT_EQ(run(r), 0);
  EXPECT_EQ(repo_.flows[2].topic, "plant/+/temperature");
  EXPECT_NE(err_.str().find("mqtt-gateway flows set: warning: " + no_table("readings") + "\n"),
            std::string::npos)
      << err_.str();

  // Another action: the STORE_TABLE columns must be cleared with it.
  r.edit = FlowEdit{};
  r.edit.action = "STORE_DB";
  r.edit.write_mode = "upsert";
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(lines(err_.str()), 3u) << err_.str();
  r.edit.table = "";
  r.edit.column_map = "";
  r.edit.write_mode = "insert";
  EXPECT_EQ(run(r), 0) << err_.str();
  EXPECT_EQ(err_.str(), "");
  const Flow& f = repo_.flows[2];
  EXPECT_EQ(f.action, "STORE_DB");
  EXPECT_FALSE(f.target_table.has_value());
  EXPECT_FALSE(f.column_map.has_value());
  EXPECT_EQ(f.write_mode, "insert");
  EXPECT_NE(out_.str().find("  target_table: readings -> -\n"), std::string::npos) << out_.str();

  // And back: STORE_TABLE needs both again.
  r.edit = FlowEdit{};
  r.edit.action = "STORE_TABLE";
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(lines(err_.str()), 2u) << err_.str();
}

TEST_F(AdminCommandsTest, ListAndShowAStoreTableFlow) {
  repo_.tables["readings"] = readings_table();
  ASSERT_EQ(run(add_latest()), 0) << err_.str();
  AdminRequest r;
  r.command = AdminCommand::kFlowsList;
  EXPECT_EQ(run(r), 0);
  EXPECT_EQ(
      out_.str(),
      "CODE    TOPIC           ACTION       TABLE              ENABLED  LAST_MSG_ID  PENDING  "
      "REJECTED_24H\n"
      "latest  plant/+/temp    STORE_TABLE  readings (upsert)  yes      0            0        "
      "0\n"
      "temps   sensors/+/temp  STORE_DB     -                  yes      41           0        "
      "0\n"
      "2 flow(s)\n");
  r.json = true;
  EXPECT_EQ(run(r), 0);
  auto j = nlohmann::json::parse(out_.str());
  EXPECT_EQ(j[0]["target_table"], "readings");
  EXPECT_EQ(j[0]["column_map"]["temp"], "/temperature");
  EXPECT_EQ(j[0]["write_mode"], "upsert");
  EXPECT_TRUE(j[1]["target_table"].is_null());
  EXPECT_TRUE(j[1]["column_map"].is_null());
  EXPECT_EQ(j[1]["write_mode"], "insert");

  r.command = AdminCommand::kFlowsShow;
  r.code = "latest";
  r.json = false;
  EXPECT_EQ(run(r), 0);
  EXPECT_NE(out_.str().find("  action:               STORE_TABLE\n"
                            "  endpoint_url:         -\n"
                            "  payload_schema:       -\n"
                            "  target_table:         readings\n"
                            "  column_map:           {\"device\": \"$topic[1]\", \"temp\": "
                            "\"/temperature\"}\n"
                            "  write_mode:           upsert\n"
                            "  enabled:              yes\n"),
            std::string::npos)
      << out_.str();
  // What keeps the gateway from activating it, as it is now.
  repo_.tables.clear();
  EXPECT_EQ(run(r), 0);
  EXPECT_NE(out_.str().find("  write_mode:           upsert\n"
                            "  table problem:        " +
                            no_table("readings") + "\n"),
            std::string::npos)
      << out_.str();
  r.json = true;
  EXPECT_EQ(run(r), 0);
  j = nlohmann::json::parse(out_.str());
  EXPECT_EQ(j["table_problems"], nlohmann::json::array({no_table("readings")}));
  // Other actions show no STORE_TABLE lines.
  r.code = "temps";
  r.json = false;
  EXPECT_EQ(run(r), 0);
  EXPECT_EQ(out_.str().find("target_table"), std::string::npos) << out_.str();
}

TEST_F(AdminCommandsTest, FlowsAddWritesAValidFlowAndRefusesADuplicateCode) {
  AdminRequest r;
  r.command = AdminCommand::kFlowsAdd;
  r.edit.code = "hook";
  r.edit.topic = "hook/#";
  r.edit.action = "POST_ENDPOINT";
  r.edit.endpoint = "http://127.0.0.1:9000/in";
  r.edit.disabled = true;
  EXPECT_EQ(run(r), 0) << err_.str();
  ASSERT_EQ(repo_.flows.size(), 2u);
  const Flow& f = repo_.flows[2];
  EXPECT_EQ(f.code, "hook");
  EXPECT_EQ(f.endpoint_url.value_or(""), "http://127.0.0.1:9000/in");
  EXPECT_FALSE(f.payload_schema.has_value());
  EXPECT_FALSE(f.enabled);
  EXPECT_NE(out_.str().find("flow hook added (id 2)"), std::string::npos) << out_.str();
  EXPECT_NE(out_.str().find("next flow reload"), std::string::npos);

  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway flows add: code: a flow 'hook' exists already (flows set hook changes "
            "it)\n");
  EXPECT_EQ(admin_.inserts, 1);
}

TEST_F(AdminCommandsTest, FlowsSetChangesTheDefinitionNeverTheMsgIdAndReloads) {
  AdminRequest r;
  r.command = AdminCommand::kFlowsSet;
  r.code = "temps";
  r.edit.schema = R"({"temperature": "number"})";
  r.reload = true;
  r.daemon.pid = 777;
  EXPECT_EQ(run(r), 0) << err_.str();
  EXPECT_EQ(repo_.flows[1].payload_schema.value_or(""), R"({"temperature": "number"})");
  EXPECT_EQ(repo_.flows[1].last_msg_id, 41);
  EXPECT_EQ(reloads_, 1);
  EXPECT_EQ(out_.str(),
            "flow temps updated\n"
            "  payload_schema: {\"temperature\": \"int\"} -> {\"temperature\": \"number\"}\n"
            "reload: SIGHUP sent to mqtt-gateway pid 777\n");

  // The same again: nothing to change, no signal.
  EXPECT_EQ(run(r), 0);
  EXPECT_EQ(out_.str(), "flow temps: nothing to change\n");
  EXPECT_EQ(reloads_, 1);

  // Clearing, and an invalid value refused without a write.
  r.edit.schema = "null";
  r.reload = false;
  EXPECT_EQ(run(r), 0);
  EXPECT_FALSE(repo_.flows[1].payload_schema.has_value());
  r.edit = FlowEdit{};
  r.edit.topic = "a/#/b";
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(repo_.flows[1].topic, "sensors/+/temp");
  r.code = "nope";
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(err_.str(), "mqtt-gateway flows set: no flow 'nope' (flows add creates one)\n");
}

TEST_F(AdminCommandsTest, AFailedReloadIsExitStatusOneButTheChangeIsSaved) {
  reload_fails_ = true;
  AdminRequest r;
  r.command = AdminCommand::kFlowsDisable;
  r.code = "temps";
  r.reload = true;
  EXPECT_EQ(run(r), 1);
  EXPECT_FALSE(repo_.flows[1].enabled);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway flows disable: the change is saved, but --reload failed: no process 4242 "
            "(the gateway is not running?)\n");
  EXPECT_NE(out_.str().find("flow temps disabled"), std::string::npos);
}

TEST_F(AdminCommandsTest, EnableRefusesAFlowTheGatewayWouldDisableAgain) {
  repo_.flows[1].enabled = false;
  repo_.flows[1].topic = "a+";
  AdminRequest r;
  r.command = AdminCommand::kFlowsEnable;
  r.code = "temps";
  EXPECT_EQ(run(r), 1);
  EXPECT_FALSE(repo_.flows[1].enabled);
  repo_.flows[1].topic = "a/+";
  EXPECT_EQ(run(r), 0);
  EXPECT_TRUE(repo_.flows[1].enabled);
  EXPECT_EQ(run(r), 0);
  EXPECT_EQ(out_.str(), "flow temps: nothing to change\n");
}

TEST_F(AdminCommandsTest, ListAndShowInTextAndJson) {
  AdminRequest r;
  r.command = AdminCommand::kFlowsList;
  EXPECT_EQ(run(r), 0);
  EXPECT_EQ(out_.str(),
            "CODE   TOPIC           ACTION    TABLE  ENABLED  LAST_MSG_ID  PENDING  REJECTED_24H\n"
            "temps  sensors/+/temp  STORE_DB  -      yes      41           0        0\n"
            "1 flow(s)\n");
  r.json = true;
  EXPECT_EQ(run(r), 0);
  const auto j = nlohmann::json::parse(out_.str());
  ASSERT_TRUE(j.is_array());
  EXPECT_EQ(j[0]["code"], "temps");
  EXPECT_EQ(j[0]["payload_schema"]["temperature"], "int");
  EXPECT_EQ(j[0]["last_msg_id"], 41);

  r.command = AdminCommand::kFlowsShow;
  r.code = "temps";
  r.json = false;
  EXPECT_EQ(run(r), 0);
  EXPECT_NE(out_.str().find("flow temps (id 1)"), std::string::npos);
  r.code = "missing";
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(lines(err_.str()), 1u);
}

TEST_F(AdminCommandsTest, RejectedListValidatesItsOptions) {
  AdminRequest r;
  r.command = AdminCommand::kRejectedList;
  r.code = "nope";
  r.since = "yesterday";
  r.limit = 0;
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(lines(err_.str()), 3u) << err_.str();
}

}  // namespace
}  // namespace gateway
