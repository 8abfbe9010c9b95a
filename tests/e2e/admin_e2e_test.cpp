// The operator's subcommands through the real binary, next to a running gateway: invalid
// `flows add` input, messages rejected by a too-strict schema, fixed with `flows set --reload`
// and replayed (in order, consecutive msg_ids, marked, only once), a replay killed with kill -9
// and run again, a replay while the gateway stores live traffic on the same flow, and STORE_TABLE
// flows checked against their table and run by the gateway.
#include <signal.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "e2e/e2e_fixture.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

struct CliResult {
  std::optional<int> code;  // std::nullopt: still running at the timeout
  std::string output;       // stdout and stderr
};

class AdminE2e : public GatewayE2eTest {
 protected:
  AdminE2e() {
    // Flow changes reach the gateway only through --reload (SIGHUP) in these tests.
    extra_env_["FLOWS_RELOAD_INTERVAL_SECONDS"] = "3600";
    extra_env_["RUNTIME_DIRECTORY"] = runtime_dir_.path().string();
  }

  // `mqtt-gateway args...` with the gateway's settings, to completion (bounded).
  CliResult cli(std::vector<std::string> args, std::chrono::seconds timeout = 60s) {
    GatewayProcess p(GATEWAY_BINARY, std::move(args), env());
    CliResult r;
    r.code = p.wait_exit(timeout);
    r.output = p.output();
    return r;
  }
  std::unique_ptr<GatewayProcess> start_cli(std::vector<std::string> args) {
    return std::make_unique<GatewayProcess>(GATEWAY_BINARY, std::move(args), env());
  }

  // `n` dead letters of flow `flow` with payloads {"src": "<src>", "n": i}, i = 1..n, inserted
  // as the gateway writes them (faster than publishing them through a strict schema).
  void insert_dead_letters(std::int64_t flow, int n, const std::string& src) {
    for (int from = 1; from <= n; from += 500) {
      std::string values;
      for (int i = from; i < from + 500 && i <= n; ++i) {
        values += std::string(values.empty() ? "" : ",") + "(" + std::to_string(flow) + ", '" +
                  prefix_ + "/x', '{\"src\": \"" + src + "\", \"n\": " + std::to_string(i) +
                  "}', 'field ''t'': expected int, got number')";
      }
      db_.execute("INSERT INTO rejected_messages (flow_id, topic, payload, reason) VALUES " +
                  values);
    }
  }

  // Every dead letter of the flow is marked with the msg_id whose rows hold its payload's "n" and
  // "src": the replay stored each exactly there.
  std::int64_t marked_consistently(std::int64_t flow) {
    return count(
        "SELECT COUNT(*) FROM rejected_messages r JOIN data_records n ON n.flow_id = r.flow_id AND "
        "n.msg_id = r.replayed_msg_id AND n.field_name = 'n' AND n.field_value = "
        "CAST(JSON_EXTRACT(r.payload, '$.n') AS CHAR) JOIN data_records s ON s.flow_id = "
        "r.flow_id AND s.msg_id = r.replayed_msg_id AND s.field_name = 'src' AND s.field_value = "
        // MariaDB compares a JSON_EXTRACT result as JSON, not as the text stored.
        "CAST(JSON_EXTRACT(r.payload, '$.src') AS CHAR) WHERE r.flow_id = " +
        std::to_string(flow));
  }

  TempDir runtime_dir_{"gw_runtime_"};
};

TEST_F(AdminE2e, InvalidFlowsAddIsRefusedWithOneLinePerProblem) {
  CliResult r = cli({"flows", "add", "--code", "bad", "--topic", "a/#/b", "--action", "STORE_DB"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.output,
            "mqtt-gateway flows add: topic: invalid MQTT filter 'a/#/b': '#' must be the last "
            "level\n");
  r = cli({"flows", "add", "--code", "bad", "--topic", "a/+", "--action", "STORE_DB", "--schema",
           R"({"temperature": "decimal"})"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(line_count(r.output), 1u) << r.output;
  EXPECT_NE(r.output.find("payload_schema: field 'temperature' has unknown type 'decimal'"),
            std::string::npos)
      << r.output;
  r = cli({"flows", "add", "--code", "bad", "--topic", "a/+", "--action", "POST_ENDPOINT",
           "--endpoint", "ftp://files.example.com/in"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.output,
            "mqtt-gateway flows add: endpoint: 'ftp://files.example.com/in' has scheme 'ftp' "
            "(expected http:// or https://)\n");
  // All three at once: three lines.
  r = cli({"flows", "add", "--code", "bad", "--topic", "a/#/b", "--action", "POST_ENDPOINT",
           "--endpoint", "ftp://x/", "--schema", R"({"t": "decimal"})", "--json"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(line_count(r.output), 3u) << r.output;
  r = cli({"flows", "add", "--code", "ok", "--topic", "a/+", "--action", "STORE_DB", "--table",
           "readings"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.output,
            "mqtt-gateway flows add: target_table: only STORE_TABLE flows have one (--table '' "
            "clears it)\n");
  r = cli({"flows", "add", "--code", "ok", "--topic", "a/+", "--action", "STORE_TABLE", "--table",
           "flows", "--column-map", R"({"a": "temp", "b": "/b"})", "--write-mode", "merge"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.output,
            "mqtt-gateway flows add: target_table: 'flows' is one of the gateway's own tables\n"
            "mqtt-gateway flows add: column_map: column 'a': source 'temp' is not a JSON Pointer "
            "(\"/field\") nor one of $topic, $topic[N], $msg_id, $flow_code, $received_at, "
            "$payload, $user_property:NAME\n"
            "mqtt-gateway flows add: write_mode: 'merge' is not insert or upsert (--write-mode)\n");
  EXPECT_EQ(count("SELECT COUNT(*) FROM flows"), 0);
  // A usage error stays exit status 2.
  EXPECT_EQ(cli({"flows", "add", "--bogus"}).code, 2);
}

// STORE_TABLE through the commands: a mapping checked against the table as it is (a typo is
// refused, a table that does not exist yet is saved only disabled), upserts by a running gateway
// after --reload, and a flow enabled once its table exists.
TEST_F(AdminE2e, StoreTableFlowsCheckedAgainstTheirTableAndRunByTheGateway) {
  db_.execute(
      "CREATE TABLE device_state (device VARCHAR(32) NOT NULL PRIMARY KEY, temp DOUBLE NULL, "
      "at DATETIME(6) NULL)");
  const std::string topic = prefix_ + "/+/temp";  // $topic[2] is the device
  CliResult r = cli({"flows", "add", "--code", "latest", "--topic", topic, "--action",
                     "STORE_TABLE", "--table", "device_state", "--column-map",
                     R"({"device": "$topic[2]", "tmp": "/temperature", "site": "/site"})"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.output,
            "mqtt-gateway flows add: column_map: column 'site' does not exist in table "
            "'device_state'\n"
            "mqtt-gateway flows add: column_map: column 'tmp' does not exist in table "
            "'device_state'\n");
  EXPECT_EQ(count("SELECT COUNT(*) FROM flows"), 0);

  r = cli({"flows", "add", "--code", "latest", "--topic", topic, "--action", "STORE_TABLE",
           "--table", "device_state", "--write-mode", "upsert", "--column-map",
           R"({"device": "$topic[2]", "temp": "/temperature", "at": "$received_at"})"});
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("  target_table: device_state\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("  write_mode: upsert\n"), std::string::npos) << r.output;

  // A flow for a table that does not exist yet: refused enabled, saved disabled with warnings.
  const std::vector<std::string> plant = {
      "flows",        "add",
      "--code",       "plant",
      "--topic",      prefix_ + "/+/plant",
      "--action",     "STORE_TABLE",
      "--table",      "plant_log",
      "--column-map", R"({"device": "$topic[2]", "payload": "$payload", "msg_id": "$msg_id"})"};
  r = cli(plant);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(line_count(r.output), 1u) << r.output;
  EXPECT_TRUE(r.output.starts_with(
      "mqtt-gateway flows add: target_table: table 'plant_log' does not exist"))
      << r.output;
  EXPECT_TRUE(
      r.output.ends_with("; create it first, or add the flow with --disabled and enable "
                         "it once the table exists\n"))
      << r.output;
  auto disabled = plant;
  disabled.emplace_back("--disabled");
  r = cli(disabled);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("mqtt-gateway flows add: warning: target_table: table 'plant_log' does "
                          "not exist"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(count("SELECT COUNT(*) FROM flows WHERE code = 'plant' AND enabled = 0"), 1);

  r = cli({"flows", "list"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("STORE_TABLE  device_state (upsert)  yes"), std::string::npos)
      << r.output;
  r = cli({"flows", "show", "latest", "--json"});
  EXPECT_EQ(r.code, 0);
  const auto shown = nlohmann::json::parse(r.output);
  EXPECT_EQ(shown["target_table"], "device_state");
  EXPECT_EQ(shown["column_map"]["temp"], "/temperature");
  EXPECT_EQ(shown["write_mode"], "upsert");
  EXPECT_EQ(shown["table_problems"], nlohmann::json::array());

  // The gateway runs what the command wrote: one row per device, the latest values.
  start_gateway();
  publisher().publish(prefix_ + "/dev1/temp", R"({"temperature": 20.5})");
  publisher().publish(prefix_ + "/dev2/temp", R"({"temperature": 30})");
  publisher().publish(prefix_ + "/dev1/temp", R"({"temperature": 21.25})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'latest'", 3))
      << gateway_->output();
  EXPECT_EQ(count("SELECT COUNT(*) FROM device_state"), 2);
  EXPECT_EQ(
      db_.query("SELECT temp FROM device_state WHERE device = 'dev1'").at(0).at(0).value_or(""),
      "21.25");
  EXPECT_EQ(count("SELECT COUNT(*) FROM device_state WHERE at IS NULL"), 0);

  // Enabling waits for the table; once it exists, --reload activates the flow.
  r = cli({"flows", "enable", "plant", "--reload"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(line_count(r.output), 1u) << r.output;
  EXPECT_TRUE(r.output.starts_with(
      "mqtt-gateway flows enable: target_table: table 'plant_log' does not exist"))
      << r.output;
  EXPECT_TRUE(r.output.ends_with("; create it first\n")) << r.output;
  db_.execute(
      "CREATE TABLE plant_log (id BIGINT AUTO_INCREMENT PRIMARY KEY, device VARCHAR(32) NOT "
      "NULL, payload JSON NOT NULL, msg_id BIGINT NOT NULL)");
  r = cli({"flows", "enable", "plant", "--reload"});
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(gateway_->wait_for_output("added [plant]", 10s)) << gateway_->output();
  publisher().publish(prefix_ + "/p9/plant", R"({"ph": 6.5})");
  ASSERT_TRUE(wait_for_count("SELECT COUNT(*) FROM plant_log", 1)) << gateway_->output();
  EXPECT_EQ(count("SELECT COUNT(*) FROM plant_log WHERE device = 'p9' AND msg_id = 1 AND "
                  "JSON_VALUE(payload, '$.ph') = 6.5"),
            1);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0);
}

TEST_F(AdminE2e, RejectedMessagesFixedAndReplayedInOrderOnce) {
  CliResult r = cli({"flows", "add", "--code", "temps", "--topic", prefix_ + "/+/temp", "--action",
                     "STORE_DB", "--schema", R"({"n": "int", "temperature": "int"})"});
  ASSERT_EQ(r.code, 0) << r.output;
  const std::int64_t flow = count("SELECT id FROM flows WHERE code = 'temps'");
  start_gateway();
  {
    std::ifstream in(runtime_dir_.path() / "mqtt-gateway.pid");
    pid_t pid = 0;
    in >> pid;
    EXPECT_EQ(pid, gateway_->pid());
  }
  // n = 1..12; the odd ones have a fraction, which the schema refuses.
  for (int n = 1; n <= 12; ++n) {
    publisher().publish(
        prefix_ + "/dev" + std::to_string(n % 3) + "/temp",
        R"({"n": )" + std::to_string(n) + R"(, "temperature": )" + (n % 2 ? "21.5" : "21") + "}");
  }
  ASSERT_TRUE(wait_for_count("SELECT COUNT(*) FROM rejected_messages", 6));
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows", 6));

  r = cli({"rejected", "list", "--flow", "temps"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("6 of 6 waiting dead letter(s)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("field 'temperature': expected int, got number"), std::string::npos);

  r = cli({"flows", "set", "temps", "--schema", R"({"n": "int", "temperature": "number"})",
           "--reload"});
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(
      r.output.find("reload: SIGHUP sent to mqtt-gateway pid " + std::to_string(gateway_->pid())),
      std::string::npos)
      << r.output;
  EXPECT_TRUE(gateway_->wait_for_output("changed [temps]", 10s)) << gateway_->output();

  r = cli({"rejected", "replay", "--flow", "temps", "--dry-run"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("dry run: would replay 6, would stay rejected 0 (flow temps, msg_id "
                          "7..12); nothing written\n"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(count("SELECT last_msg_id FROM flows"), 6);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages WHERE replayed_at IS NOT NULL"), 0);

  r = cli({"rejected", "replay", "--flow", "temps"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.output, "replayed 6, still rejected 0 (flow temps, msg_id 7..12)\n");
  // In their original order: msg_id 7..12 hold n = 1, 3, 5, 7, 9, 11.
  const auto rows = db_.query(
      "SELECT msg_id, field_value FROM data_records WHERE field_name = 'n' AND msg_id > 6 ORDER "
      "BY msg_id");
  ASSERT_EQ(rows.size(), 6u);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i][0].value_or(""), std::to_string(7 + i));
    EXPECT_EQ(rows[i][1].value_or(""), std::to_string(2 * i + 1));
  }
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages WHERE replayed_at IS NOT NULL AND "
                  "replayed_msg_id BETWEEN 7 AND 12"),
            6);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages r JOIN data_records d ON d.msg_id = "
                  "r.replayed_msg_id AND d.field_name = 'n' AND d.field_value = "
                  "JSON_EXTRACT(r.payload, '$.n')"),
            6);
  EXPECT_EQ(count("SELECT COUNT(DISTINCT msg_id) FROM data_records WHERE flow_id = " +
                  std::to_string(flow)),
            12);

  // The same replay again does nothing.
  r = cli({"rejected", "replay", "--flow", "temps"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.output, "replayed 0, still rejected 0 (flow temps)\n");
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records"), 24);
  EXPECT_EQ(count("SELECT last_msg_id FROM flows"), 12);
  r = cli({"rejected", "list", "--flow", "temps", "--json"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("\"total\": 0"), std::string::npos) << r.output;

  // A clean stop removes the pid file.
  gateway_->kill(SIGTERM);
  EXPECT_EQ(gateway_->wait_exit(20s), 0);
  EXPECT_FALSE(std::filesystem::exists(runtime_dir_.path() / "mqtt-gateway.pid"));
  r = cli({"flows", "disable", "temps", "--reload"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("the change is saved, but --reload failed"), std::string::npos)
      << r.output;
}

// kill -9 in the middle of a replay (one dead letter per transaction, so that it is halfway
// after a fraction of a second), then the same replay again: every message stored exactly once.
TEST_F(AdminE2e, ReplayKilledHalfwayAndRunAgainStoresEveryMessageOnce) {
  constexpr int kLetters = 3000;
  const auto flow = db_.insert_flow("bulk", prefix_ + "/#", "STORE_DB", std::nullopt);
  insert_dead_letters(flow, kLetters, "replay");
  auto replay = start_cli({"rejected", "replay", "--flow", "bulk", "--batch", "1"});
  const auto marked = [&] {
    return count("SELECT COUNT(*) FROM rejected_messages WHERE replayed_at IS NOT NULL");
  };
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (marked() < kLetters / 10 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(2ms);
  }
  replay->kill(SIGKILL);
  ASSERT_EQ(replay->wait_exit(10s), -SIGKILL) << replay->output();
  const std::int64_t done = marked();
  ASSERT_GE(done, kLetters / 10);
  ASSERT_LT(done, kLetters) << "the replay finished before it could be killed";
  // What committed is whole: each marked dead letter's rows, nothing else.
  EXPECT_EQ(count("SELECT COUNT(DISTINCT msg_id) FROM data_records"), done);
  EXPECT_EQ(count("SELECT last_msg_id FROM flows"), done);
  EXPECT_EQ(marked_consistently(flow), done);

  CliResult r = cli({"rejected", "replay", "--flow", "bulk", "--batch", "50"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.output, "replayed " + std::to_string(kLetters - done) +
                          ", still rejected 0 (flow bulk, msg_id " + std::to_string(done + 1) +
                          ".." + std::to_string(kLetters) + ")\n");
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE field_name = 'n'"), kLetters);
  EXPECT_EQ(count("SELECT COUNT(DISTINCT field_value) FROM data_records WHERE field_name = 'n'"),
            kLetters);
  EXPECT_EQ(count("SELECT COUNT(DISTINCT msg_id) FROM data_records"), kLetters);
  EXPECT_EQ(count("SELECT MAX(msg_id) FROM data_records"), kLetters);
  EXPECT_EQ(marked(), kLetters);
  EXPECT_EQ(marked_consistently(flow), kLetters);
}

// The row lock keeps msg_ids unique and gap-free when a replay and the gateway's own workers
// write the same flow at once.
TEST_F(AdminE2e, ReplayWhileTheGatewayStoresLiveTrafficKeepsMsgIdsGapFree) {
  constexpr int kLetters = 600, kLive = 300;
  const auto flow = db_.insert_flow("mixed", prefix_ + "/#", "STORE_DB", std::nullopt);
  insert_dead_letters(flow, kLetters, "replay");
  start_gateway();
  publisher();  // connected before the replay starts, so that both run at once
  auto replay = start_cli({"rejected", "replay", "--flow", "mixed", "--batch", "5"});
  std::vector<std::pair<std::string, std::string>> live;
  for (int i = 1; i <= kLive; ++i) {
    live.emplace_back(prefix_ + "/live", R"({"src": "live", "n": )" + std::to_string(i) + "}");
  }
  publisher().publish_many(live, 1, 5);
  ASSERT_EQ(replay->wait_exit(60s), 0) << replay->output();
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows", kLetters + kLive));
  EXPECT_NE(replay->output().find("replayed " + std::to_string(kLetters) + ", still rejected 0"),
            std::string::npos)
      << replay->output();
  EXPECT_EQ(count("SELECT last_msg_id FROM flows"), kLetters + kLive);
  EXPECT_EQ(count("SELECT COUNT(DISTINCT msg_id) FROM data_records"), kLetters + kLive);
  EXPECT_EQ(count("SELECT MIN(msg_id) FROM data_records"), 1);
  EXPECT_EQ(count("SELECT MAX(msg_id) FROM data_records"), kLetters + kLive);
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE field_name = 'src' AND field_value = "
                  "'\"live\"'"),
            kLive);
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE field_name = 'src' AND field_value = "
                  "'\"replay\"'"),
            kLetters);
  EXPECT_EQ(count("SELECT COUNT(*) FROM (SELECT msg_id FROM data_records GROUP BY msg_id HAVING "
                  "COUNT(*) <> 2) bad"),
            0);
  EXPECT_EQ(marked_consistently(flow), kLetters);
}

}  // namespace
}  // namespace gateway::testing
