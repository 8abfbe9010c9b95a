// HTTP_DELIVERY=inline still delivers what an earlier outbox run left in the outbox: the delivery
// service runs in both modes (src/app/main.cpp), so switching modes never strands a deliveries row.
#include <chrono>
#include <string>

#include "e2e/e2e_fixture.h"
#include "support/http_sink.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

class InlineDeliveryE2e : public GatewayE2eTest {
 protected:
  InlineDeliveryE2e() { extra_env_["HTTP_DELIVERY"] = "inline"; }
};

TEST_F(InlineDeliveryE2e, OutboxRowsLeftByAnEarlierOutboxRunAreDelivered) {
  HttpSink sink;
  const auto flow_id =
      db_.insert_flow("hook", prefix_ + "/hook", "POST_ENDPOINT", std::nullopt, sink.url("/in"));
  // What an outbox run that stopped before its delivery workers got to it leaves behind.
  const std::string id = std::to_string(flow_id);
  db_.execute("UPDATE flows SET last_msg_id = 2 WHERE id = " + id);
  db_.execute(
      "INSERT INTO deliveries (flow_id, msg_id, topic, payload, created_ms, next_attempt_ms) "
      "VALUES (" +
      id + ", 1, '" + prefix_ +
      "/hook', '{\"left\": 1}', "
      "UNIX_TIMESTAMP(NOW(3)) * 1000, 0), (" +
      id + ", 2, '" + prefix_ +
      "/hook', "
      "'{\"left\": 2}', UNIX_TIMESTAMP(NOW(3)) * 1000, 0)");

  start_gateway();
  ASSERT_TRUE(sink.wait_for_count(2, 20s)) << gateway_->output();
  ASSERT_TRUE(wait_for_count("SELECT 1 - COUNT(*) FROM deliveries", 1)) << gateway_->output();
  const auto reqs = sink.requests();
  ASSERT_EQ(reqs.size(), 2u);
  EXPECT_EQ(reqs[0].header("Idempotency-Key").value_or(""), "hook:1");
  EXPECT_EQ(reqs[0].body, R"({"left": 1})");
  EXPECT_EQ(reqs[1].header("Idempotency-Key").value_or(""), "hook:2");

  // New messages are still POSTed inline (under the row lock, never through the outbox).
  publisher().publish(prefix_ + "/hook", R"({"new": 3})");
  ASSERT_TRUE(sink.wait_for_count(3, 20s)) << gateway_->output();
  EXPECT_EQ(sink.requests()[2].body, R"({"new": 3})");
  EXPECT_EQ(sink.requests()[2].header("Idempotency-Key").value_or(""), "hook:3");
  EXPECT_EQ(count("SELECT COUNT(*) FROM deliveries"), 0);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0);
}

}  // namespace
}  // namespace gateway::testing
