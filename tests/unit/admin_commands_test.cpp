// The operator's flow subcommands against the in-memory repository: validation (one line per
// problem, exit status 1, nothing written), the changes they write, --reload, JSON output, and
// --since parsing.
#include "gateway/admin_commands.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <sstream>

#include "fakes/fake_flow_admin.h"
#include "fakes/fake_flow_repository.h"
#include "fakes/fake_http_poster.h"
#include "gateway/errors.h"

namespace gateway {
namespace {

using testing::FakeFlowAdmin;
using testing::FakeFlowRepository;
using testing::FakeHttpPoster;

std::size_t lines(const std::string& text) {
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
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
  f.action = "STORE_TABLE";
  f.endpoint_url = "http://";
  f.payload_schema = R"({"a": "decimal", "b": "int", "c": 5})";
  const auto p = validate_flow_definition(f);
  ASSERT_EQ(p.size(), 6u) << ::testing::PrintToString(p);
  EXPECT_NE(p[0].find("code:"), std::string::npos);
  EXPECT_NE(p[1].find("topic:"), std::string::npos);
  EXPECT_EQ(p[2], "action: STORE_TABLE is not available yet (issue 13)");
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

class AdminCommandsTest : public ::testing::Test {
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

  int run(AdminRequest r) {
    out_.str("");
    err_.str("");
    AdminOptions options;
    options.reload = [this](const DaemonTarget& target) -> pid_t {
      ++reloads_;
      if (reload_fails_) throw Error("no process 4242 (the gateway is not running?)");
      return target.pid.value_or(4242);
    };
    AdminCommands commands(admin_, processor_, options, out_, err_);
    return commands.run(r);
  }

  FakeFlowRepository repo_;
  FakeFlowAdmin admin_{repo_};
  FakeHttpPoster http_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  Processor processor_{repo_, http_, ProcessorOptions{}, log_};
  std::ostringstream out_, err_;
  int reloads_ = 0;
  bool reload_fails_ = false;
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

TEST_F(AdminCommandsTest, StoreTableOptionsAreRefusedAsNotAvailableYet) {
  AdminRequest r;
  r.command = AdminCommand::kFlowsAdd;
  r.edit.code = "t2";
  r.edit.topic = "t/#";
  r.edit.action = "STORE_DB";
  r.edit.unavailable = {"--table", "--column-map"};
  EXPECT_EQ(run(r), 1);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway flows add: --table: not available yet (STORE_TABLE, issue 13)\n"
            "mqtt-gateway flows add: --column-map: not available yet (STORE_TABLE, issue 13)\n");
  EXPECT_EQ(admin_.inserts, 0);
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
            "CODE   TOPIC           ACTION    ENABLED  LAST_MSG_ID  PENDING  REJECTED_24H\n"
            "temps  sensors/+/temp  STORE_DB  yes      41           0        0\n"
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
