// Scale-out: two gateway processes (own client ids, spools and logs) share one flow through an
// MQTT shared subscription ($share/g1/...) against one broker and one database. The broker splits
// the messages between them; the flow row lock keeps the numbering consecutive.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "e2e/e2e_fixture.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

class ScaleOutE2e : public GatewayE2eTest {
 protected:
  ScaleOutE2e() { extra_env_["MQTT_SHARED_GROUP"] = "g1"; }

  // A second instance: same database and group, its own client id and working directory.
  std::unique_ptr<GatewayProcess> start_second_gateway() {
    auto e = env();
    e["MQTT_CLIENT_ID"] = client_id_ + "-b";
    auto gw = std::make_unique<GatewayProcess>(GATEWAY_BINARY, std::vector<std::string>{}, e);
    EXPECT_TRUE(gw->wait_for_output("ready", 20s)) << gw->output();
    return gw;
  }
};

TEST_F(ScaleOutE2e, TwoInstancesInOneSharedGroupStoreEveryMessageOnceWithGapFreeIds) {
  constexpr int kMessages = 4000;
  const auto flow =
      std::to_string(db_.insert_flow("shared", prefix_ + "/+/m", "STORE_DB", R"({"seq": "int"})"));
  start_gateway();
  auto second = start_second_gateway();
  ASSERT_TRUE(gateway_->running());
  ASSERT_TRUE(second->running());

  std::vector<std::pair<std::string, std::string>> messages;
  for (int seq = 1; seq <= kMessages; ++seq) {
    // Two devices, so that the topic is not the same for all messages either.
    messages.emplace_back(prefix_ + "/dev" + std::to_string(seq % 2) + "/m",
                          R"({"seq": )" + std::to_string(seq) + R"(, "v": 1.5})");
  }
  publisher().publish_many(messages);

  ASSERT_TRUE(wait_for_count("SELECT last_msg_id FROM flows WHERE id = " + flow, kMessages, 60s))
      << "stored so far: " << count("SELECT last_msg_id FROM flows WHERE id = " + flow) << "\n"
      << gateway_->output() << second->output();
  // Let anything stray (a duplicate) arrive before counting.
  std::this_thread::sleep_for(1s);

  EXPECT_EQ(count("SELECT last_msg_id FROM flows WHERE id = " + flow), kMessages);
  // Both instances committed batches of this flow: each spool has its own offset row.
  EXPECT_EQ(count("SELECT COUNT(*) FROM spool_offsets WHERE flow_id = " + flow), 2);
  EXPECT_TRUE(gateway_->running());
  EXPECT_TRUE(second->running());

  // Every seq exactly once.
  const std::string seqs = "FROM data_records WHERE flow_id = " + flow + " AND field_name = 'seq'";
  EXPECT_EQ(count("SELECT COUNT(*) " + seqs), kMessages);
  EXPECT_EQ(count("SELECT COUNT(DISTINCT CAST(field_value AS UNSIGNED)) " + seqs), kMessages);
  EXPECT_EQ(count("SELECT MIN(CAST(field_value AS UNSIGNED)) " + seqs), 1);
  EXPECT_EQ(count("SELECT MAX(CAST(field_value AS UNSIGNED)) " + seqs), kMessages);

  // msg_ids 1..4000, each once, no gaps; every message has both of its fields.
  EXPECT_EQ(count("SELECT COUNT(DISTINCT msg_id) " + seqs), kMessages);
  EXPECT_EQ(count("SELECT MIN(msg_id) " + seqs), 1);
  EXPECT_EQ(count("SELECT MAX(msg_id) " + seqs), kMessages);
  EXPECT_EQ(count("SELECT COUNT(*) FROM data_records WHERE flow_id = " + flow), 2 * kMessages);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0);
}

}  // namespace
}  // namespace gateway::testing
