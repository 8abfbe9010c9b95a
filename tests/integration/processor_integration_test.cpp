// process_flow_message() and the batch transaction against a real MariaDB and a real HTTP server
// on 127.0.0.1.
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <set>
#include <thread>

#include "gateway/adapters/curl_http_poster.h"
#include "gateway/adapters/mysql_flow_repository.h"
#include "gateway/env_file.h"
#include "gateway/errors.h"
#include "gateway/processor.h"
#include "support/http_sink.h"
#include "support/test_database.h"

namespace gateway {
namespace {

using testing::HttpSink;
using testing::TestDatabase;

std::shared_ptr<spdlog::logger> quiet() {
  return std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
}

Settings settings_for(const TestDatabase& db) {
  EnvMap env;
  for (const auto& [k, v] : db.gateway_env()) env[k] = v;
  return load_settings(env);
}

class ProcessorIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    static CurlGlobal curl;
    mysql_global_init();
  }

  InboundMessage message(std::uint64_t seq, const std::string& topic, const std::string& payload) {
    InboundMessage m;
    m.seq = seq;
    m.topic = topic;
    m.payload = payload;
    m.parsed = parse_payload(m.payload, PayloadLimits{});
    return m;
  }

  std::int64_t last_msg_id(std::int64_t flow) {
    return db_.query_int("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(flow));
  }
  std::int64_t count(const std::string& table) {
    return db_.query_int("SELECT COUNT(*) FROM " + table);
  }

  TestDatabase db_;
  Settings settings_ = settings_for(db_);
  MySqlFlowRepository repo_{settings_};
  CurlHttpPoster http_;
  ProcessorOptions options_{std::chrono::milliseconds(500)};
  Processor processor_{repo_, http_, options_, quiet()};
};

TEST_F(ProcessorIntegrationTest, StoreDbWritesOneRowPerFieldAndEveryTypeRoundTrips) {
  const auto flow = db_.insert_flow("temps", "sensors/+/t", "STORE_DB",
                                    R"({"temperature": "float", "name": "str"})");
  auto r = processor_.process_flow_message(
      flow,
      nlohmann::json::parse(
          R"({"temperature": 23.5, "name": "abc", "on": true, "obj": {"a": 1}, "arr": [1, "x"], "n": null, "big": 12345678901234})"),
      "sensors/dev1/t");
  EXPECT_EQ(r.flow_code, "temps");
  EXPECT_EQ(r.msg_id, 1);
  EXPECT_EQ(r.action, FlowAction::kStoreDb);
  EXPECT_EQ(last_msg_id(flow), 1);
  std::map<std::string, std::string> values;
  for (const auto& row : db_.query(
           "SELECT field_name, field_value, topic, msg_id FROM data_records ORDER BY field_name")) {
    values[*row[0]] = *row[1];
    EXPECT_EQ(*row[2], "sensors/dev1/t");
    EXPECT_EQ(*row[3], "1");
  }
  EXPECT_EQ(values.size(), 7u);
  EXPECT_EQ(nlohmann::json::parse(values["temperature"]), 23.5);
  EXPECT_EQ(nlohmann::json::parse(values["name"]), "abc");
  EXPECT_EQ(nlohmann::json::parse(values["on"]), true);
  EXPECT_EQ(nlohmann::json::parse(values["obj"]), nlohmann::json({{"a", 1}}));
  EXPECT_EQ(nlohmann::json::parse(values["arr"]), nlohmann::json::parse(R"([1, "x"])"));
  EXPECT_TRUE(nlohmann::json::parse(values["n"]).is_null());
  EXPECT_EQ(nlohmann::json::parse(values["big"]), 12345678901234LL);
}

TEST_F(ProcessorIntegrationTest, ValidationFailureRollsBackEverything) {
  const auto flow = db_.insert_flow("temps", "t", "STORE_DB", R"({"temperature": "number"})");
  EXPECT_THROW(processor_.process_flow_message(flow, {{"temperature", "hot"}, {"x", 1}}, "t"),
               MessageRejected);
  EXPECT_THROW(processor_.process_flow_message(flow, {{"x", 1}}, "t"), MessageRejected);
  EXPECT_EQ(last_msg_id(flow), 0);
  EXPECT_EQ(count("data_records"), 0);
}

TEST_F(ProcessorIntegrationTest, DatabaseErrorMidTransactionRollsBack) {
  const auto flow = db_.insert_flow("temps", "t", "STORE_DB", std::nullopt);
  db_.execute("RENAME TABLE data_records TO data_records_moved");
  EXPECT_THROW(processor_.process_flow_message(flow, {{"a", 1}}, "t"), Error);
  db_.execute("RENAME TABLE data_records_moved TO data_records");
  EXPECT_EQ(last_msg_id(flow), 0);
  // The session is still usable after the rollback.
  EXPECT_EQ(processor_.process_flow_message(flow, {{"a", 1}}, "t").msg_id, 1);
}

TEST_F(ProcessorIntegrationTest, PostEndpointDeliversThePayload) {
  HttpSink sink;
  const auto flow = db_.insert_flow("hook", "h/#", "POST_ENDPOINT", std::nullopt, sink.url("/in"));
  auto r = processor_.process_flow_message(flow, {{"a", 1}}, "h/x");
  EXPECT_EQ(r.action, FlowAction::kPostEndpoint);
  EXPECT_EQ(r.msg_id, 1);
  ASSERT_EQ(sink.count(), 1u);
  const auto req = sink.requests()[0];
  EXPECT_EQ(req.path, "/in");
  EXPECT_EQ(nlohmann::json::parse(req.body), nlohmann::json({{"a", 1}}));
  EXPECT_EQ(req.header("Content-Type").value_or(""), "application/json");
  EXPECT_EQ(req.header("Idempotency-Key").value_or(""), "hook:1");
  EXPECT_EQ(last_msg_id(flow), 1);
  EXPECT_EQ(count("data_records"), 0);
}

TEST_F(ProcessorIntegrationTest, PostEndpointErrorAnswerRollsBack) {
  HttpSink sink;
  sink.set_status(500);
  const auto flow = db_.insert_flow("hook", "h/#", "POST_ENDPOINT", std::nullopt, sink.url("/in"));
  EXPECT_THROW(processor_.process_flow_message(flow, {{"a", 1}}, "h/x"), MessageRejected);
  EXPECT_EQ(sink.count(), 1u);
  EXPECT_EQ(last_msg_id(flow), 0);
}

TEST_F(ProcessorIntegrationTest, PostEndpointTimeoutRollsBack) {
  HttpSink sink;
  sink.set_delay(std::chrono::milliseconds(1500));
  const auto flow = db_.insert_flow("hook", "h/#", "POST_ENDPOINT", std::nullopt, sink.url("/in"));
  const auto started = std::chrono::steady_clock::now();
  try {
    processor_.process_flow_message(flow, {{"a", 1}}, "h/x");
    ADD_FAILURE() << "no exception";
  } catch (const MessageRejected& e) {
    EXPECT_NE(std::string(e.what()).find("imeout"), std::string::npos) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(1400));
  EXPECT_EQ(last_msg_id(flow), 0);
}

TEST_F(ProcessorIntegrationTest, PostEndpointWithoutUrlIsAnError) {
  const auto flow = db_.insert_flow("hook", "h/#", "POST_ENDPOINT", std::nullopt);
  EXPECT_THROW(processor_.process_flow_message(flow, {{"a", 1}}, "h/x"), MessageRejected);
  EXPECT_EQ(last_msg_id(flow), 0);
}

TEST_F(ProcessorIntegrationTest, TwoThreadsOnOneFlowGetDistinctConsecutiveIds) {
  const auto flow = db_.insert_flow("temps", "t", "STORE_DB", std::nullopt);
  constexpr int kPerThread = 40;
  std::vector<std::int64_t> ids[2];
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      MySqlThreadScope scope;
      MySqlFlowRepository repo(settings_);
      CurlHttpPoster http;
      Processor p(repo, http, options_, quiet());
      for (int i = 0; i < kPerThread; ++i) {
        ids[t].push_back(p.process_flow_message(flow, {{"i", i}, {"t", t}}, "t").msg_id);
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::int64_t> all(ids[0].begin(), ids[0].end());
  all.insert(ids[1].begin(), ids[1].end());
  ASSERT_EQ(all.size(), 2u * kPerThread);
  EXPECT_EQ(*all.begin(), 1);
  EXPECT_EQ(*all.rbegin(), 2 * kPerThread);
  // Each thread saw its own ids increase.
  for (const auto& v : ids) EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
  EXPECT_EQ(last_msg_id(flow), 2 * kPerThread);
  EXPECT_EQ(count("data_records"), 2 * 2 * kPerThread);
}

TEST_F(ProcessorIntegrationTest, BatchIsOneTransactionAndReplayIsSkipped) {
  const auto flow = db_.insert_flow("temps", "t", "STORE_DB", R"({"v": "int"})");
  std::vector<InboundMessage> msgs;
  for (int i = 1; i <= 300; ++i) {
    msgs.push_back(
        message(100 + i, "t", i == 150 ? R"({"v": 1.5})" : "{\"v\": " + std::to_string(i) + "}"));
  }
  std::vector<const InboundMessage*> view;
  for (const auto& m : msgs) view.push_back(&m);
  auto r = processor_.process_batch(flow, view, "spoolA");
  EXPECT_EQ(r.accepted, 299u);
  EXPECT_EQ(r.rejected, 1u);
  EXPECT_EQ(last_msg_id(flow), 299);
  EXPECT_EQ(count("data_records"), 299);
  EXPECT_EQ(db_.query_int("SELECT COUNT(DISTINCT msg_id) FROM data_records"), 299);
  EXPECT_EQ(db_.query_int("SELECT last_seq FROM spool_offsets WHERE spool_id = 'spoolA'"), 400);
  auto rejected =
      db_.query("SELECT reason, spool_seq, CAST(payload AS CHAR) FROM rejected_messages");
  ASSERT_EQ(rejected.size(), 1u);
  EXPECT_NE(rejected[0][0]->find("'v'"), std::string::npos);
  EXPECT_EQ(*rejected[0][1], "250");
  EXPECT_EQ(*rejected[0][2], R"({"v": 1.5})");
  // Arrival order is msg_id order.
  EXPECT_EQ(
      db_.query_int("SELECT JSON_VALUE(field_value, '$') FROM data_records WHERE msg_id = 200"),
      201);

  // A replay after a crash (same spool) stores nothing twice...
  auto again = processor_.process_batch(flow, view, "spoolA");
  EXPECT_EQ(again.skipped, 300u);
  EXPECT_EQ(count("data_records"), 299);
  EXPECT_EQ(count("rejected_messages"), 1);
  // ...but a different spool's records are new messages.
  std::vector<const InboundMessage*> one = {view[0]};
  EXPECT_EQ(processor_.process_batch(flow, one, "spoolB").accepted, 1u);
  EXPECT_EQ(last_msg_id(flow), 300);
}

}  // namespace
}  // namespace gateway
