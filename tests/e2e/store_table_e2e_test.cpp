// STORE_TABLE with the real gateway, MariaDB and mosquitto: a flow whose table is missing stays
// inactive (error line, --check) until a reload finds the table; kill -9 under load into a
// STORE_TABLE flow stores every message exactly once.
#include <signal.h>

#include <iostream>
#include <random>
#include <string>

#include "e2e/fault_helpers.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

class StoreTableE2e : public FaultFixture {
 protected:
  // A STORE_TABLE flow on <prefix>/<code> into `table`.
  std::int64_t add_table_flow(const std::string& code, const std::string& table,
                              const std::string& map, const std::string& mode = "insert") {
    topic_ = prefix_ + "/" + code;
    flow_id_ = db_.insert_flow(code, topic_, "STORE_TABLE", std::nullopt);
    db_.execute("UPDATE flows SET target_table = '" + table + "', column_map = '" + map +
                "', write_mode = '" + mode + "' WHERE id = " + std::to_string(flow_id_));
    return flow_id_;
  }

  // `mqtt-gateway --check` against this test's database: (exit status, output).
  std::pair<std::optional<int>, std::string> check() {
    GatewayProcess p(GATEWAY_BINARY, {"--check"}, env());
    const auto status = p.wait_exit(30s);
    return {status, p.output()};
  }
};

TEST_F(StoreTableE2e, InactiveUntilItsTableExistsThenActiveAtTheNextReload) {
  add_table_flow("late", "late_rows", R"({"device": "$topic[2]", "temp": "/t"})");
  const auto [status, out] = check();
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("problem: STORE_TABLE table 'late_rows' does not exist"), std::string::npos)
      << out;

  start_gateway();
  ASSERT_TRUE(
      gateway_->wait_for_output("flow late not activated: STORE_TABLE table 'late_rows' "
                                "does not exist",
                                10s))
      << gateway_->output();
  db_.execute("CREATE TABLE late_rows (device VARCHAR(32) NOT NULL, temp DOUBLE NULL)");
  // FLOWS_RELOAD_INTERVAL_SECONDS is 1 in these tests.
  ASSERT_TRUE(gateway_->wait_for_output("added [late]", 10s)) << gateway_->output();
  // The subscription follows the reload; publish until the first message lands.
  ASSERT_TRUE(wait_until(
      [&] {
        publisher().publish(topic_, R"({"t": 21.5})");
        return count("SELECT COUNT(*) FROM late_rows") > 0;
      },
      10s));
  const auto rows = db_.query("SELECT DISTINCT device, temp FROM late_rows");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0][0], "late");  // level 2 of e2e/<db>/late
  EXPECT_EQ(rows[0][1], "21.5");
  const auto [after, out_after] = check();
  EXPECT_EQ(after, 0) << out_after;
  stop_gateway_cleanly();
}

TEST_F(StoreTableE2e, Kill9UnderLoadStoresEachMessageOnce) {
  const int total = scaled(5000);
  // No unique key: a message stored twice would show as two rows.
  db_.execute(
      "CREATE TABLE seq_rows (id BIGINT AUTO_INCREMENT PRIMARY KEY, seq BIGINT NOT NULL, "
      "msg BIGINT NOT NULL, v VARCHAR(64) NOT NULL, at DATETIME(6) NOT NULL)");
  add_table_flow("kill9t", "seq_rows",
                 R"({"seq": "/seq", "msg": "$msg_id", "v": "/v", "at": "$received_at"})");
  extra_env_["SPOOL_SEGMENT_BYTES"] = "64K";
  TempDir dir("gw_store_table_kill9_");
  start_gateway(dir.path());

  const unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> delay_ms(300, 1500);
  std::cout << "[store-table] kill9: random seed " << seed << "\n";
  ChunkedPublisher pub(topic_, total, 250, 100ms);
  int kills = 0;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while ((kills < 3 || !pub.done()) && kills < 10 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(random)));
    ASSERT_TRUE(gateway_->running()) << gateway_->output();
    ASSERT_TRUE(gateway_->kill(SIGKILL));
    ASSERT_EQ(gateway_->wait_exit(10s), -SIGKILL);
    ++kills;
    start_gateway(dir.path());
  }
  ASSERT_TRUE(pub.wait_done(60s));
  ASSERT_EQ(pub.error(), "");
  ASSERT_TRUE(wait_for_count("SELECT COUNT(DISTINCT seq) FROM seq_rows", total, 90s));
  std::this_thread::sleep_for(1500ms);  // anything stored twice would land by now
  const auto r = db_.query(
      "SELECT COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq), COUNT(DISTINCT msg), MIN(msg), "
      "MAX(msg) FROM seq_rows");
  ASSERT_EQ(r.size(), 1u);
  const std::string n = std::to_string(total);
  std::cout << "[store-table] kill9: published " << pub.published() << " stored " << *r[0][1]
            << " rows " << *r[0][0] << " kills " << kills << "\n";
  const TestDatabase::Row want = {n, n, "1", n, n, "1", n};
  EXPECT_EQ(r[0], want) << "rows, distinct seqs, min/max seq, distinct msg_ids, min/max msg_id";
  EXPECT_EQ(count("SELECT last_msg_id FROM flows WHERE id = " + std::to_string(flow_id_)), total);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0);
  stop_gateway_cleanly();
}

}  // namespace
}  // namespace gateway::testing
