// Two gateways on one shared subscription, each writing through a different Galera node (the
// worst case: their FOR UPDATE locks do not see each other, so they conflict at COMMIT), while
// one of those nodes is killed with -9 and brought back (issue 15). Every message must be stored
// once, msg_ids 1..N without a gap, the conflicts counted in /metrics. Real processes: the
// gateway binary, mosquitto (scripts/services.sh), the 3-node cluster (scripts/galera.sh).
//
// Load scales with GW_FAULT_SCALE (default 1: 5,000 messages). Skipped without GW_TEST_GALERA_*.
// Prints "[galera] <test>: published P stored S lost L duplicated D (gaps G, conflicts C ...)".
#include <signal.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "e2e/fault_helpers.h"
#include "galera/galera_fixture.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

// The node="..." of gateway_db_node_info in a /metrics text; "" when absent.
std::string node_in(const std::string& metrics) {
  const std::string key = "gateway_db_node_info{node=\"";
  const auto at = metrics.find(key);
  if (at == std::string::npos) return {};
  const auto start = at + key.size();
  return metrics.substr(start, metrics.find('"', start) - start);
}

// The scenario, on FaultFixture's helpers. Built only once the cluster is known to be there: its
// constructor makes the test database (on node 1, which this test never kills) and needs the
// services.
class TwoGatewaysOnTwoNodes : public FaultFixture {
 public:
  explicit TwoGatewaysOnTwoNodes(const GaleraCluster& cluster) : cluster_(&cluster) {
    summary_tag_ = "galera";
  }
  void TestBody() override {}  // not a test of its own: run() is
  void run();

 private:
  // SIGTERM and the exit code (std::nullopt: still running after 30 s, then SIGKILLed).
  static std::optional<int> stop(GatewayProcess& gw) {
    if (!gw.running()) return gw.wait_exit(0ms);
    gw.kill(SIGTERM);
    auto code = gw.wait_exit(30s);
    if (!code) {
      gw.kill(SIGKILL);
      gw.wait_exit(10s);
    }
    return code;
  }

  const GaleraCluster* cluster_;
};

class GaleraE2e : public ::testing::Test, protected GaleraChoice {
 protected:
  GaleraE2e() : GaleraChoice(1) {}
  void SetUp() override {
    if (!cluster_) GTEST_SKIP() << why_not_;
  }
};

TEST_F(GaleraE2e, TwoGatewaysOnTwoNodesStoreOnceWhileANodeIsKilled) {
  TwoGatewaysOnTwoNodes(*cluster_).run();
}

void TwoGatewaysOnTwoNodes::run() {
  const int total = scaled(5000);
  const double rate = 400.0 * std::min(fault_scale(), 1.0);  // ~12 s at full load
  add_flow("galera");
  extra_env_["MQTT_SHARED_GROUP"] = "galera";
  const int port_a = free_port();
  const int port_b = free_port();
  extra_env_["DB_HOST"] = cluster_->db_host({1, 2, 3});
  extra_env_["METRICS_ADDRESS"] = "127.0.0.1:" + std::to_string(port_a);
  TempDir dir_a("gw_galera_a_");
  TempDir dir_b("gw_galera_b_");
  start_gateway(dir_a.path());
  auto env_b = env();
  env_b["MQTT_CLIENT_ID"] = client_id_ + "-b";
  env_b["DB_HOST"] = cluster_->db_host({2, 3, 1});
  env_b["METRICS_ADDRESS"] = "127.0.0.1:" + std::to_string(port_b);
  GatewayProcess b(GATEWAY_BINARY, {}, env_b, dir_b.path());
  ASSERT_TRUE(b.wait_for_output("[main] ready", 20s)) << b.output();
  ASSERT_TRUE(gateway_->running()) << gateway_->output();
  const std::string a_node_before = node_in(http_get(port_a, "/metrics").body);
  const std::string b_node_before = node_in(http_get(port_b, "/metrics").body);
  EXPECT_EQ(a_node_before, cluster_->node(1).address());
  EXPECT_EQ(b_node_before, cluster_->node(2).address());

  ChunkedPublisher pub(topic_, total, 50, 0ms, 16, rate);
  ASSERT_TRUE(wait_until([&] { return pub.published() >= total / 3 || pub.done(); }, 60s));
  const int published_at_kill = pub.published();
  const std::int64_t stored_at_kill = count(seq_rows_sql());
  std::int64_t rejoin_ms = 0;
  {
    KilledNode killed(*cluster_, 2);  // B's node; A keeps writing through node 1
    std::this_thread::sleep_for(2s);  // B fails over meanwhile, under load
    const auto restart = Clock::now();
    killed.start();  // back through an incremental transfer, Synced
    rejoin_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - restart).count();
  }
  ASSERT_TRUE(pub.wait_done(180s));
  ASSERT_EQ(pub.error(), "");

  const std::string metrics_a = http_get(port_a, "/metrics").body;
  const std::string metrics_b = http_get(port_b, "/metrics").body;
  const double conflicts_a = metric_sum(metrics_a, "gateway_db_conflicts_total").value_or(-1);
  const double conflicts_b = metric_sum(metrics_b, "gateway_db_conflicts_total").value_or(-1);
  const std::string out = gateway_->output() + b.output();
  std::ostringstream extra;
  extra << " (node 2 killed -9 after " << published_at_kill << " published, " << stored_at_kill
        << " stored, back and Synced " << rejoin_ms << " ms after its restart; A on "
        << a_node_before << " -> " << node_in(metrics_a) << ", B on " << b_node_before << " -> "
        << node_in(metrics_b) << "; conflicts A " << conflicts_a << " B " << conflicts_b
        << "; 'held' lines " << lines_with(out, {"held:"}).size() << ", 'database unavailable' "
        << lines_with(out, {"database unavailable"}).size() << ")";
  const Tally t = drain_and_tally("TwoGatewaysOnTwoNodesStoreOnceWhileANodeIsKilled",
                                  pub.published(), total, 180s, extra.str());
  const std::int64_t gaps = (t.max_msg_id - t.min_msg_id + 1) - t.msg_ids;
  const double conflicts = conflicts_a + conflicts_b;
  std::cout << "[galera]   gaps " << gaps << ", conflicts " << conflicts << "\n";
  for (const std::string& line : lines_with(out, {"database node"})) {
    std::cout << "[galera]   " << line << "\n";
  }
  expect_exactly_once(t, total);
  EXPECT_EQ(gaps, 0);
  EXPECT_EQ(count("SELECT COUNT(*) FROM rejected_messages"), 0);
  EXPECT_GE(conflicts_a, 0) << "no gateway_db_conflicts_total in A's /metrics:\n" << metrics_a;
  EXPECT_GE(conflicts_b, 0) << "no gateway_db_conflicts_total in B's /metrics:\n" << metrics_b;
  EXPECT_GT(conflicts, 0) << "two nodes wrote one flow row and never conflicted?";
  EXPECT_EQ(node_in(metrics_a), cluster_->node(1).address()) << "A left a node that never failed";
  EXPECT_NE(node_in(metrics_b), cluster_->node(2).address()) << "B did not move off node 2";
  EXPECT_FALSE(node_in(metrics_b).empty()) << metrics_b;
  EXPECT_TRUE(gateway_->running()) << gateway_->output();
  EXPECT_TRUE(b.running()) << b.output();
  EXPECT_EQ(stop(b), 0) << b.output();
  stop_gateway_cleanly();
}

}  // namespace
}  // namespace gateway::testing
