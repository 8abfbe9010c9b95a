// The whole daemon, end to end: the real binary, mosquitto, MariaDB and an HTTP server.
#include <signal.h>

#include <nlohmann/json.hpp>

#include "e2e/e2e_fixture.h"
#include "support/http_sink.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

class GatewayE2e : public GatewayE2eTest {};

TEST_F(GatewayE2e, StoresPostsAndRejectsPublishedMessages) {
  HttpSink sink;
  const auto store = db_.insert_flow("store", prefix_ + "/+/temp", "STORE_DB",
                                     R"({"temperature": "number", "unit": "string"})");
  const auto post =
      db_.insert_flow("post", prefix_ + "/hook/#", "POST_ENDPOINT", std::nullopt, sink.url("/in"));
  start_gateway();

  publisher().publish(prefix_ + "/dev1/temp", R"({"temperature": 21.5, "unit": "C"})");
  publisher().publish(prefix_ + "/dev2/temp", R"({"temperature": 22, "unit": "C", "rssi": -70})");
  publisher().publish(prefix_ + "/hook/a", R"({"hello": "world"})");
  // Bad input: not JSON, not an object, invalid UTF-8, missing field, wrong type.
  publisher().publish(prefix_ + "/dev3/temp", "not json");
  publisher().publish(prefix_ + "/dev3/temp", "[1, 2]");
  publisher().publish(prefix_ + "/dev3/temp", std::string("{\"temperature\": \"\xff\xfe\"}"));
  publisher().publish(prefix_ + "/dev3/temp", R"({"unit": "C"})");
  publisher().publish(prefix_ + "/dev3/temp", R"({"temperature": true, "unit": "C"})");
  publisher().publish(prefix_ + "/dev1/temp", R"({"temperature": 23, "unit": "C"})");

  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'store'", 3));
  ASSERT_TRUE(sink.wait_for_count(1, 10s));
  ASSERT_TRUE(wait_for_count("SELECT COUNT(*) FROM rejected_messages", 5));

  EXPECT_EQ(count("SELECT last_msg_id FROM flows WHERE code = 'store'"), 3);
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE flow_id = " + std::to_string(store)), 7);
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE msg_id = 2 AND field_name = 'rssi' AND "
                  "topic = '" +
                  prefix_ + "/dev2/temp'"),
            1);
  EXPECT_EQ(count("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(post)), 1);
  EXPECT_EQ(nlohmann::json::parse(sink.requests()[0].body), nlohmann::json({{"hello", "world"}}));
  auto reasons = db_.query("SELECT reason FROM rejected_messages ORDER BY id");
  ASSERT_EQ(reasons.size(), 5u);
  EXPECT_NE(reasons[0][0]->find("JSON"), std::string::npos) << *reasons[0][0];
  EXPECT_NE(reasons[1][0]->find("object"), std::string::npos) << *reasons[1][0];
  EXPECT_NE(reasons[2][0]->find("UTF-8"), std::string::npos) << *reasons[2][0];
  EXPECT_NE(reasons[3][0]->find("missing field 'temperature'"), std::string::npos)
      << *reasons[3][0];
  EXPECT_NE(reasons[4][0]->find("expected number, got bool"), std::string::npos) << *reasons[4][0];
  EXPECT_TRUE(gateway_->running());

  // SIGTERM: a clean exit, status 0.
  gateway_->kill(SIGTERM);
  EXPECT_EQ(gateway_->wait_exit(20s), 0) << gateway_->output();
  EXPECT_NE(gateway_->output().find("stopped"), std::string::npos);
}

TEST_F(GatewayE2e, FlowChangesTakeEffectAfterAReload) {
  const auto a = db_.insert_flow("a", prefix_ + "/a", "STORE_DB", std::nullopt);
  start_gateway();
  publisher().publish(prefix_ + "/a", R"({"n": 1})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'a'", 1));

  // Added: a new flow on a new topic gets subscribed.
  db_.insert_flow("b", prefix_ + "/b/#", "STORE_DB", std::nullopt);
  ASSERT_TRUE(gateway_->wait_for_output("added [b]", 10s)) << gateway_->output();
  // The MQTT thread subscribes right after the reload; a publish before the SUBACK would find no
  // subscriber at the broker.
  ASSERT_TRUE(gateway_->wait_for_output("subscribed to " + prefix_ + "/b/#", 10s))
      << gateway_->output();
  publisher().publish(prefix_ + "/b/x", R"({"n": 2})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'b'", 1));

  // Changed: flow a moves to another topic; the old one is no longer routed.
  db_.execute("UPDATE flows SET topic = '" + prefix_ + "/a2' WHERE id = " + std::to_string(a));
  ASSERT_TRUE(gateway_->wait_for_output("changed [a]", 10s)) << gateway_->output();
  ASSERT_TRUE(gateway_->wait_for_output("subscribed to " + prefix_ + "/a2", 10s))
      << gateway_->output();
  publisher().publish(prefix_ + "/a", R"({"n": 3})");
  publisher().publish(prefix_ + "/a2", R"({"n": 4})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'a'", 2));
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE flow_id = " + std::to_string(a) +
                  " AND topic = '" + prefix_ + "/a2'"),
            1);

  // Disabled: nothing more is stored.
  db_.execute("UPDATE flows SET enabled = 0 WHERE code = 'b'");
  ASSERT_TRUE(gateway_->wait_for_output("removed [b]", 10s)) << gateway_->output();
  publisher().publish(prefix_ + "/b/x", R"({"n": 5})");
  publisher().publish(prefix_ + "/a2", R"({"n": 6})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'a'", 3));
  EXPECT_EQ(count("SELECT last_msg_id FROM flows WHERE code = 'b'"), 1);
}

// The spool keeps processed records until their segment goes, and a restart reads it from the
// start: a flow created while the gateway was stopped must not store those older records (nor one
// created while it ran, after a restart), only what arrives once it exists (flow_starts.h).
TEST_F(GatewayE2e, ARestartRoutesSpooledRecordsAsTheyWereRouted) {
  db_.insert_flow("old", prefix_ + "/t", "STORE_DB", std::nullopt);
  auto& first = start_gateway();
  for (int i = 1; i <= 5; ++i)
    publisher().publish(prefix_ + "/t", R"({"n": )" + std::to_string(i) + "}");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'old'", 5));
  // Created while it runs: routed from the next record on.
  db_.insert_flow("live", prefix_ + "/t", "STORE_DB", std::nullopt);
  ASSERT_TRUE(first.wait_for_output("added [live]", 10s)) << first.output();
  publisher().publish(prefix_ + "/t", R"({"n": 6})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'live'", 1));
  const auto dir = first.work_dir();
  first.kill(SIGTERM);
  ASSERT_TRUE(first.wait_exit(20s).has_value());

  // Created while it is stopped: only what arrives after the restart.
  db_.insert_flow("new", prefix_ + "/t", "STORE_DB", std::nullopt);
  auto& second = start_gateway(dir);
  publisher().publish(prefix_ + "/t", R"({"n": 7})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'new'", 1));
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'old'", 7));
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'live'", 2));
  std::this_thread::sleep_for(1s);  // anything wrongly replayed would have been stored by now
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records r JOIN flows f ON f.id = r.flow_id "
                  "WHERE f.code = 'old'"),
            7);
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records r JOIN flows f ON f.id = r.flow_id "
                  "WHERE f.code = 'live'"),
            2)
      << second.output();
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records r JOIN flows f ON f.id = r.flow_id "
                  "WHERE f.code = 'new'"),
            1)
      << second.output();
  EXPECT_EQ(count("SELECT MIN(r.field_value + 0) FROM data_records r JOIN flows f "
                  "ON f.id = r.flow_id WHERE f.code = 'live'"),
            6);
  EXPECT_EQ(count("SELECT MIN(r.field_value + 0) FROM data_records r JOIN flows f "
                  "ON f.id = r.flow_id WHERE f.code = 'new'"),
            7);
}

TEST_F(GatewayE2e, InvalidTopicFilterDisablesOnlyThatFlow) {
  db_.insert_flow("bad", prefix_ + "/#/x", "STORE_DB", std::nullopt);
  db_.insert_flow("good", prefix_ + "/good", "STORE_DB", std::nullopt);
  start_gateway();
  EXPECT_NE(gateway_->output().find("flow bad disabled: invalid topic filter"), std::string::npos);
  publisher().publish(prefix_ + "/good", R"({"n": 1})");
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'good'", 1));
}

TEST_F(GatewayE2e, MissingDbHostExitsNonZeroNamingIt) {
  auto e = env();
  e.erase("DB_HOST");
  GatewayProcess gw(GATEWAY_BINARY, {}, e);
  auto code = gw.wait_exit(10s);
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
  EXPECT_NE(gw.output().find("DB_HOST"), std::string::npos) << gw.output();
}

TEST_F(GatewayE2e, NoEnabledServerExitsWithAClearError) {
  db_.execute("UPDATE mqtt_servers SET enabled = 0");
  GatewayProcess gw(GATEWAY_BINARY, {}, env());
  auto code = gw.wait_exit(15s);
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
  EXPECT_NE(gw.output().find("no enabled MQTT server"), std::string::npos) << gw.output();
}

}  // namespace
}  // namespace gateway::testing
