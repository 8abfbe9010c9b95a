// POST_ENDPOINT delivery through the outbox, against real HTTP servers on 127.0.0.1 that go
// down, fail, refuse and crawl.
#include <signal.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <set>

#include "e2e/e2e_fixture.h"
#include "support/http_sink.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

class DeliveryE2e : public GatewayE2eTest {
 protected:
  DeliveryE2e() {
    extra_env_["HTTP_RETRY_MAX_SECONDS"] = "1";
    extra_env_["HTTP_TIMEOUT_SECONDS"] = "5";
  }

  void publish_seq(const std::string& topic, int from, int to) {
    std::vector<std::pair<std::string, std::string>> msgs;
    for (int i = from; i <= to; ++i)
      msgs.emplace_back(topic, "{\"seq\": " + std::to_string(i) + "}");
    publisher().publish_many(msgs);
  }

  // msg_ids in the order the sink first saw them, and how many requests there were per msg_id.
  static std::pair<std::vector<std::int64_t>, std::map<std::int64_t, int>> received(
      const HttpSink& sink) {
    std::vector<std::int64_t> order;
    std::map<std::int64_t, int> times;
    for (const auto& r : sink.requests()) {
      if (r.status_sent < 200 || r.status_sent >= 300) continue;
      const auto id = std::stoll(r.header("X-Gateway-Msg-Id").value_or("0"));
      if (times[id]++ == 0) order.push_back(id);
    }
    return {order, times};
  }
};

TEST_F(DeliveryE2e, EndpointDownForTenSecondsThenEverythingArrivesInOrder) {
  auto sink = std::make_unique<HttpSink>();
  const int port = sink->port();
  const std::string url = sink->url("/in");
  sink->stop();
  db_.insert_flow("hook", prefix_ + "/hook", "POST_ENDPOINT", std::nullopt, url);
  extra_env_["HTTP_MAX_ATTEMPTS"] = "1000";  // retries are capped at 1 s here
  start_gateway();
  const auto down_since = std::chrono::steady_clock::now();
  publish_seq(prefix_ + "/hook", 1, 1000);
  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE code = 'hook'", 1000));
  std::this_thread::sleep_until(down_since + 10s);
  sink = std::make_unique<HttpSink>(port);
  ASSERT_TRUE(wait_until([&] { return received(*sink).first.size() >= 1000; }, 60s))
      << received(*sink).first.size();
  ASSERT_TRUE(wait_for_count("SELECT 1000 - COUNT(*) FROM deliveries", 1000));
  const auto [order, times] = received(*sink);
  EXPECT_TRUE(std::is_sorted(order.begin(), order.end()));
  EXPECT_EQ(order.front(), 1);
  EXPECT_EQ(order.back(), 1000);
  int repeats = 0;
  for (const auto& [id, n] : times) repeats += n - 1;
  std::cout << "[delivery] endpoint down 10 s: published 1000 delivered " << order.size()
            << " lost " << 1000 - static_cast<int>(order.size()) << " duplicated " << repeats
            << "\n";
  EXPECT_EQ(repeats, 0);  // the endpoint was down: no POST reached it twice
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0);
  EXPECT_TRUE(gateway_->wait_for_output("recovered after", 5s)) << gateway_->output();
}

TEST_F(DeliveryE2e, TwoServerErrorsThenSuccessRetriesWithTheSameIdempotencyKey) {
  HttpSink sink;
  sink.push_statuses({500, 500, 200});
  db_.insert_flow("hook", prefix_ + "/hook", "POST_ENDPOINT", std::nullopt, sink.url("/in"));
  start_gateway();
  publisher().publish(prefix_ + "/hook", R"({"a": 1})");
  ASSERT_TRUE(sink.wait_for_count(3, 20s));
  ASSERT_TRUE(wait_for_count("SELECT 1 - COUNT(*) FROM deliveries", 1));
  std::this_thread::sleep_for(500ms);
  const auto reqs = sink.requests();
  ASSERT_EQ(reqs.size(), 3u);
  for (const auto& r : reqs) {
    EXPECT_EQ(r.header("Idempotency-Key").value_or(""), "hook:1");
    EXPECT_EQ(r.body, R"({"a": 1})");
  }
  EXPECT_EQ(reqs[2].status_sent, 200);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0);
  EXPECT_NE(gateway_->output().find("delivery failed: flow hook msg_id 1 attempt 2: HTTP 500"),
            std::string::npos)
      << gateway_->output();
}

TEST_F(DeliveryE2e, ClientErrorIsRejectedAfterOneTry) {
  HttpSink sink;
  sink.set_status(400);
  db_.insert_flow("hook", prefix_ + "/hook", "POST_ENDPOINT", std::nullopt, sink.url("/in"));
  start_gateway();
  publisher().publish(prefix_ + "/hook", R"({"a": 1})");
  ASSERT_TRUE(wait_for_count("SELECT COUNT(*) FROM rejected_messages", 1));
  std::this_thread::sleep_for(1500ms);
  EXPECT_EQ(sink.count(), 1u);
  auto rows = db_.query("SELECT reason, last_status, msg_id, attempts FROM rejected_messages");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_NE(rows[0][0]->find("HTTP 400"), std::string::npos) << *rows[0][0];
  EXPECT_EQ(*rows[0][1], "400");
  EXPECT_EQ(*rows[0][2], "1");
  EXPECT_EQ(*rows[0][3], "1");
  EXPECT_EQ(count("SELECT COUNT(*) FROM deliveries"), 0);
}

TEST_F(DeliveryE2e, SlowEndpointDoesNotDelayAnotherFlow) {
  HttpSink slow, fast;
  slow.set_delay(2000ms);
  db_.insert_flow("slow", prefix_ + "/slow", "POST_ENDPOINT", std::nullopt, slow.url("/in"));
  db_.insert_flow("fast", prefix_ + "/fast", "POST_ENDPOINT", std::nullopt, fast.url("/in"));
  start_gateway();
  publish_seq(prefix_ + "/slow", 1, 10);
  const auto started = std::chrono::steady_clock::now();
  publish_seq(prefix_ + "/fast", 1, 500);
  ASSERT_TRUE(fast.wait_for_count(500, 15s)) << fast.count();
  const auto took = std::chrono::steady_clock::now() - started;
  std::cout << "[delivery] fast flow: 500 POSTs in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
            << " ms while the slow endpoint had answered " << slow.count() << "\n";
  EXPECT_LT(took, 8s);
  EXPECT_LT(slow.count(), 10u);  // the slow flow is still crawling
}

TEST_F(DeliveryE2e, PendingDeliveriesSurviveKill9) {
  auto sink = std::make_unique<HttpSink>();
  const int port = sink->port();
  const std::string url = sink->url("/in");
  sink->stop();
  db_.insert_flow("hook", prefix_ + "/hook", "POST_ENDPOINT", std::nullopt, url);
  auto& gw = start_gateway();
  const auto dir = gw.work_dir();
  publish_seq(prefix_ + "/hook", 1, 300);
  ASSERT_TRUE(wait_for_count("SELECT COUNT(*) FROM deliveries", 300));
  gw.kill(SIGKILL);
  gw.wait_exit(5s);
  sink = std::make_unique<HttpSink>(port);
  start_gateway(dir);
  ASSERT_TRUE(wait_until([&] { return received(*sink).first.size() >= 300; }, 30s));
  const auto [order, times] = received(*sink);
  EXPECT_TRUE(std::is_sorted(order.begin(), order.end()));
  EXPECT_EQ(order.size(), 300u);
  std::cout << "[delivery] kill -9 with 300 pending: delivered " << order.size() << " lost "
            << 300 - static_cast<int>(order.size()) << "\n";
  EXPECT_TRUE(wait_until([&] { return count("SELECT COUNT(*) FROM deliveries") == 0; }, 10s));
}

}  // namespace
}  // namespace gateway::testing
