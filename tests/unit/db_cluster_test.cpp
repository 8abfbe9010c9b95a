// A clustered database (issue 15) without a server: the process's database node record, and a
// Galera certification conflict (1213 at COMMIT, DbRetryable) retried as a whole transaction by
// the pipeline, against a real spool and an in-memory repository. The real cluster:
// tests/galera/.
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include "fakes/fake_flow_repository.h"
#include "fakes/fake_http_poster.h"
#include "fakes/shared_fake_database.h"
#include "gateway/clock.h"
#include "gateway/errors.h"
#include "gateway/metrics.h"
#include "gateway/pipeline.h"
#include "support/eventually.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::eventually;
using testing::FakeFlowRepository;
using testing::FakeHttpPoster;
using testing::SharedFakeConnection;
using testing::SharedFakeDatabase;

TEST(DatabaseNodeTest, ReportsEachChangeOnceNotEachConnection) {
  DatabaseNode node;
  std::vector<std::string> lines;
  node.set_on_change([&](const std::string& line) { lines.push_back(line); });
  EXPECT_EQ(node.address(), "");
  EXPECT_TRUE(node.reached("127.0.0.1:3381", "node1"));
  EXPECT_FALSE(node.reached("127.0.0.1:3381", "node1"));
  EXPECT_FALSE(node.reached("127.0.0.1:3381", "node1"));
  EXPECT_TRUE(node.reached("127.0.0.1:3382", "node2"));
  EXPECT_TRUE(node.reached("[::1]:3306", ""));
  // The same node, now over TLS (DB_SSL_MODE=preferred and a server that gained a certificate).
  EXPECT_TRUE(node.reached("[::1]:3306", "", "TLSv1.3 TLS_AES_256_GCM_SHA384"));
  EXPECT_FALSE(node.reached("[::1]:3306", "", "TLSv1.3 TLS_AES_256_GCM_SHA384"));
  EXPECT_EQ(lines, (std::vector<std::string>{
                       "database node 127.0.0.1:3381 (node1), not encrypted",
                       "database node 127.0.0.1:3382 (node2), not encrypted",
                       "database node [::1]:3306, not encrypted",
                       "database node [::1]:3306, TLS TLSv1.3 TLS_AES_256_GCM_SHA384"}));
  EXPECT_EQ(node.address(), "[::1]:3306");
  EXPECT_EQ(node.tls(), "TLSv1.3 TLS_AES_256_GCM_SHA384");
  node.forget();
  EXPECT_EQ(node.address(), "");
  EXPECT_EQ(node.name(), "");
  EXPECT_EQ(node.tls(), "");
}

// What Galera says when another node committed a write to the same row first.
[[noreturn]] void certification_failure() {
  throw DbRetryable(
      "Deadlock found when trying to get lock; try restarting transaction (MySQL error 1213)",
      1213);
}

class ConflictRetryTest : public ::testing::Test {
 protected:
  ConflictRetryTest() {
    std::string pattern = (fs::temp_directory_path() / "gw_conflict_XXXXXX").string();
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    SpoolOptions so;
    so.dir = dir_;
    so.fsync = SpoolFsync::kNever;
    spool_ = std::make_unique<Spool>(so, nullptr);
    for (std::int64_t id = 1; id <= 4; ++id) {
      Flow f;
      f.id = id;
      f.code = "f" + std::to_string(id);
      f.topic = "t" + std::to_string(id) + "/#";
      f.action = "STORE_DB";
      shared_.repo.flows[id] = f;
    }
  }
  ~ConflictRetryTest() override {
    if (pipeline_) pipeline_->stop(5s);
    pipeline_.reset();
    spool_.reset();
    fs::remove_all(dir_);
  }

  void start(std::size_t max_group_flows) {
    flows_.replace(shared_.repo.load_flows());
    PipelineOptions o;
    o.workers = 1;
    o.max_batch = 64;
    o.max_group_flows = max_group_flows;
    o.retry_initial = 5ms;
    o.retry_max = 20ms;
    pipeline_ = std::make_unique<Pipeline>(
        *spool_, flows_,
        [this]() -> std::unique_ptr<FlowRepository> {
          return std::make_unique<SharedFakeConnection>(shared_);
        },
        [] { return std::make_unique<FakeHttpPoster>(); }, std::move(o), metrics_, log_);
    pipeline_->start();
  }

  void publish(const std::string& topic, int first, int last) {
    for (int i = first; i <= last; ++i) {
      ASSERT_TRUE(
          spool_->append(topic, R"({"seq": )" + std::to_string(i) + "}", 0, false, unix_now_us()));
    }
  }

  // (msg_id, seq) of a flow's "seq" rows, by msg_id.
  std::vector<std::pair<std::int64_t, int>> rows(std::int64_t flow_id) {
    std::lock_guard lock(shared_.mu);
    std::vector<std::pair<std::int64_t, int>> out;
    for (const auto& r : shared_.repo.records) {
      if (r.flow_id == flow_id && r.field_name == "seq") {
        out.emplace_back(r.msg_id, std::stoi(r.field_value));
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  fs::path dir_;
  std::unique_ptr<Spool> spool_;
  SharedFakeDatabase shared_;
  FlowTable flows_;
  Metrics metrics_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  std::unique_ptr<Pipeline> pipeline_;
};

// Another node committed 5 messages of the flow (another gateway) while this transaction ran: its
// COMMIT fails certification. Retrying only the COMMIT, or reusing the msg_ids it had numbered,
// would collide with the other node's rows; the retry must lock the row again, read the new
// last_msg_id and number after it.
TEST_F(ConflictRetryTest, CertificationFailureAtCommitRetriesTheWholeTransaction) {
  shared_.repo.fail_next_commit = [this] {
    // Called with shared_.mu held by the transaction.
    for (std::int64_t id = 1; id <= 5; ++id) {
      shared_.repo.records.push_back({1, id, "t1/other", "seq", std::to_string(100 + id)});
    }
    shared_.repo.flows[1].last_msg_id = 5;
    certification_failure();
  };
  publish("t1/x", 1, 10);
  start(1);
  ASSERT_TRUE(eventually([&] { return rows(1).size() >= 15; })) << rows(1).size();
  const auto r = rows(1);
  ASSERT_EQ(r.size(), 15u);
  for (std::size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i].first, static_cast<std::int64_t>(i + 1)) << "msg_ids gap-free and unique";
    EXPECT_EQ(r[i].second, i < 5 ? 101 + static_cast<int>(i) : static_cast<int>(i) - 4);
  }
  std::lock_guard lock(shared_.mu);
  EXPECT_EQ(shared_.repo.flows[1].last_msg_id, 15);
  EXPECT_GE(shared_.repo.rollbacks, 1) << "the failed transaction was rolled back, not reused";
  EXPECT_EQ(metrics_.db_conflicts.load(), 1u);
  EXPECT_EQ(metrics_.flows_held.load(), 0u) << "one conflict is retried at once, not held";
}

// Conflicts on every try: after the immediate retries the flow is held and retried with backoff
// until the conflicts stop; every conflict is counted and nothing is lost or doubled.
TEST_F(ConflictRetryTest, RepeatedConflictsHoldTheFlowThenItRecovers) {
  std::atomic<int> conflicts{0};
  std::atomic<bool> conflicting{true};
  // At COMMIT, where Galera's certification fails.
  shared_.repo.on_commit = [&] {
    if (conflicting) {
      ++conflicts;
      certification_failure();
    }
  };
  publish("t1/x", 1, 20);
  start(1);
  ASSERT_TRUE(eventually([&] { return metrics_.flows_held.load() == 1 && conflicts > 6; }));
  {
    std::lock_guard lock(shared_.mu);
    shared_.repo.on_commit = nullptr;
  }
  conflicting = false;
  ASSERT_TRUE(eventually([&] { return rows(1).size() >= 20; }));
  const auto r = rows(1);
  ASSERT_EQ(r.size(), 20u);
  for (std::size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i].first, static_cast<std::int64_t>(i + 1));
    EXPECT_EQ(r[i].second, static_cast<int>(i) + 1);
  }
  EXPECT_EQ(metrics_.db_conflicts.load(), static_cast<std::uint64_t>(conflicts.load()));
  EXPECT_TRUE(eventually([&] { return metrics_.flows_held.load() == 0; }));
}

// A group transaction (several flows, one COMMIT) that fails certification: counted, and every
// flow retried alone, each stored once.
TEST_F(ConflictRetryTest, CertificationFailureOfAGroupRetriesEachFlowAndIsCounted) {
  shared_.repo.fail_next_commit = [] { certification_failure(); };
  for (int round = 1; round <= 3; ++round) {
    for (int flow = 1; flow <= 4; ++flow) {
      publish("t" + std::to_string(flow) + "/x", round, round);
    }
  }
  start(32);
  ASSERT_TRUE(eventually([&] {
    for (int flow = 1; flow <= 4; ++flow) {
      if (rows(flow).size() < 3) return false;
    }
    return true;
  }));
  for (int flow = 1; flow <= 4; ++flow) {
    EXPECT_EQ(rows(flow), (std::vector<std::pair<std::int64_t, int>>{{1, 1}, {2, 2}, {3, 3}}))
        << "flow " << flow;
  }
  std::lock_guard lock(shared_.mu);
  ASSERT_FALSE(shared_.repo.groups.empty()) << "the flows did not share a transaction";
  EXPECT_EQ(metrics_.db_conflicts.load(), 1u);
}

}  // namespace
}  // namespace gateway
