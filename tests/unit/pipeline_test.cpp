// The pipeline's error handling, against a real spool in a temporary directory and an in-memory
// repository that fails on command: which errors hold a flow (and lose nothing), which make a
// dead letter, and that a held flow does not stop the others.
#include "gateway/pipeline.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <set>
#include <span>
#include <thread>

#include "fakes/fake_flow_repository.h"
#include "fakes/fake_http_poster.h"
#include "fakes/shared_fake_database.h"
#include "gateway/clock.h"
#include "gateway/errors.h"
#include "gateway/flow_starts.h"
#include "support/eventually.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::eventually;
using testing::FakeFlowRepository;
using testing::FakeHttpPoster;
using testing::SharedFakeConnection;

// The workers' database: connect_errors makes the next connections fail with these codes.
struct SharedDatabase : testing::SharedFakeDatabase {
  std::deque<int> connect_errors;  // guarded by mu
  int connects = 0;                // guarded by mu
};

class PipelineTest : public ::testing::Test {
 protected:
  PipelineTest() {
    std::string pattern = (fs::temp_directory_path() / "gw_pipeline_XXXXXX").string();
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    SpoolOptions so;
    so.dir = dir_;
    so.fsync = SpoolFsync::kNever;
    spool_ = std::make_unique<Spool>(so, nullptr);
    add_flow(1, "alpha", "a/#");
    add_flow(2, "beta", "b/#");
  }
  ~PipelineTest() override {
    if (pipeline_) pipeline_->stop(5s);
    pipeline_.reset();
    spool_.reset();
    fs::remove_all(dir_);
  }

  void add_flow(std::int64_t id, const std::string& code, const std::string& topic) {
    Flow f;
    f.id = id;
    f.code = code;
    f.topic = topic;
    f.action = "STORE_DB";
    db_.repo.flows[id] = f;
  }

  void start(PipelineOptions o = {}) {
    flows_.replace(db_.repo.load_flows());
    o.retry_initial = 5ms;
    o.retry_max = 20ms;
    if (o.workers == 4) o.workers = 2;
    if (o.max_batch == 2000) o.max_batch = 16;
    pipeline_ = std::make_unique<Pipeline>(
        *spool_, flows_,
        [this]() -> std::unique_ptr<FlowRepository> {
          std::lock_guard lock(db_.mu);
          ++db_.connects;
          if (!db_.connect_errors.empty()) {
            const int code = db_.connect_errors.front();
            db_.connect_errors.pop_front();
            throw DbRefused("connect refused (MySQL error " + std::to_string(code) + ")", code);
          }
          return std::make_unique<SharedFakeConnection>(db_);
        },
        [] { return std::make_unique<FakeHttpPoster>(); }, std::move(o), metrics_, log_);
    pipeline_->start();
  }

  // Appends {"seq": first..last} on `topic`.
  void publish(const std::string& topic, int first, int last) {
    for (int i = first; i <= last; ++i) {
      const std::string payload = R"({"seq": )" + std::to_string(i) + "}";
      ASSERT_TRUE(spool_->append(topic, payload, 0, false, unix_now_us()));
    }
  }

  template <typename F>
  auto with_db(F f) {
    std::lock_guard lock(db_.mu);
    return f(db_.repo);
  }

  // The seq values stored for `flow_id`, in msg_id order.
  std::vector<int> stored(std::int64_t flow_id) {
    return with_db([&](FakeFlowRepository& r) {
      std::vector<std::pair<std::int64_t, int>> rows;
      for (const auto& rec : r.records) {
        if (rec.flow_id == flow_id && rec.field_name == "seq")
          rows.emplace_back(rec.msg_id, std::stoi(rec.field_value));
      }
      std::sort(rows.begin(), rows.end());
      std::vector<int> out;
      for (const auto& [id, seq] : rows) out.push_back(seq);
      return out;
    });
  }

  std::size_t rejected() {
    return with_db([](FakeFlowRepository& r) { return r.rejections.size(); });
  }

  static std::vector<int> range(int first, int last) {
    std::vector<int> v;
    for (int i = first; i <= last; ++i) v.push_back(i);
    return v;
  }

  fs::path dir_;
  std::unique_ptr<Spool> spool_;
  SharedDatabase db_;
  FlowTable flows_;
  Metrics metrics_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  std::unique_ptr<Pipeline> pipeline_;
};

TEST_F(PipelineTest, StoresEveryMessageOnceInOrder) {
  start();
  publish("a/x", 1, 100);
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 100; }));
  EXPECT_EQ(stored(1), range(1, 100));
  EXPECT_EQ(rejected(), 0u);
}

// The flow-starts file cannot be written (a directory holds its temporary name; root ignores
// permissions): routing waits and drops nothing, and the watchdog's progress clock is fed
// meanwhile, as while the database is down; once the file can be written the message is stored.
TEST_F(PipelineTest, RoutingWaitsForAnUnwritableFlowStartsFileAndFeedsTheWatchdog) {
  const fs::path blocker = dir_ / "flow-starts.json.tmp";
  fs::create_directories(blocker / "in-the-way");
  FlowStarts starts(dir_, 1);
  PipelineOptions o;
  o.flow_starts = &starts;
  start(o);
  publish("a/1", 1, 1);
  const std::int64_t before = steady_now_ms();
  ASSERT_TRUE(eventually([&] { return metrics_.last_progress_ms.load() > before + 1500; }, 5s))
      << "the progress clock stood still while routing waited";
  EXPECT_TRUE(stored(1).empty());
  fs::remove_all(blocker);
  ASSERT_TRUE(eventually([&] { return stored(1) == range(1, 1); }));
}

// What a failover to a replica looks like: every write fails with 1290 for a while.
TEST_F(PipelineTest, ReadOnlyDatabaseHoldsTheFlowAndLosesNothing) {
  std::atomic<int> refusals{0};
  db_.repo.on_lock = [&](std::int64_t) {
    ++refusals;
    throw DbRefused("The MariaDB server is running with the --read-only option (MySQL error 1290)",
                    1290);
  };
  start();
  publish("a/x", 1, 50);
  ASSERT_TRUE(eventually([&] { return metrics_.flows_held.load() == 1 && refusals > 3; }));
  EXPECT_EQ(metrics_.held().count("alpha"), 1u);
  EXPECT_EQ(stored(1).size(), 0u);
  publish("a/x", 51, 80);  // arrive while held: they wait in the spool
  with_db([](FakeFlowRepository& r) { r.on_lock = nullptr; });
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 80; }));
  EXPECT_EQ(stored(1), range(1, 80));
  EXPECT_EQ(rejected(), 0u) << "an environment error must never make a dead letter";
  EXPECT_TRUE(eventually([&] { return metrics_.flows_held.load() == 0; }));
  EXPECT_TRUE(metrics_.held().empty());
}

// An exception nobody listed is the environment's fault too.
TEST_F(PipelineTest, UnknownErrorHoldsTheMessagesInsteadOfRejectingThem) {
  std::atomic<int> failures{0};
  db_.repo.on_insert_record = [&](const DataRecord&) {
    if (failures++ < 5) throw std::runtime_error("something nobody expected");
  };
  start();
  publish("a/x", 1, 20);
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 20; }));
  EXPECT_EQ(stored(1), range(1, 20));
  EXPECT_EQ(rejected(), 0u);
  EXPECT_GE(failures.load(), 5);
}

TEST_F(PipelineTest, DataErrorDeadLettersOnlyTheMessageTheServerRefuses) {
  db_.repo.on_insert_record = [](const DataRecord& r) {
    if (r.field_value == "7")
      throw DbDataError("Out of range value for column (MySQL error 1264)", 1264);
  };
  start();
  publish("a/x", 1, 12);
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 11 && rejected() >= 1; }));
  std::vector<int> expected = range(1, 12);
  expected.erase(expected.begin() + 6);
  EXPECT_EQ(stored(1), expected);
  with_db([](FakeFlowRepository& r) {
    ASSERT_EQ(r.rejections.size(), 1u);
    EXPECT_EQ(r.rejections[0].payload, R"({"seq": 7})");
    EXPECT_NE(r.rejections[0].reason.find("1264"), std::string::npos) << r.rejections[0].reason;
  });
}

// Two bad messages in one batch of 400: the batch is split in halves to find each, a few dozen
// transactions instead of one per message, and everything else is stored in order.
TEST_F(PipelineTest, ARefusedBatchIsSplitInHalvesNotRetriedMessageByMessage) {
  std::atomic<int> attempts{0};
  db_.repo.on_lock = [&](std::int64_t) { ++attempts; };
  db_.repo.on_insert_record = [](const DataRecord& r) {
    if (r.field_value == "77" || r.field_value == "301")
      throw DbDataError("Out of range value for column (MySQL error 1264)", 1264);
  };
  publish("a/x", 1, 400);  // all waiting before the pipeline starts: one batch of 400
  PipelineOptions o;
  o.max_batch = 400;
  start(o);
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 398 && rejected() >= 2; }));
  std::vector<int> expected = range(1, 400);
  expected.erase(expected.begin() + 300);
  expected.erase(expected.begin() + 76);
  EXPECT_EQ(stored(1), expected);
  EXPECT_EQ(rejected(), 2u);
  // Halving finds each bad message in ~9 failed and ~9 committed parts (plus its dead letter);
  // one by one would be 400.
  EXPECT_LT(attempts.load(), 60) << attempts.load() << " transactions";
}

TEST_F(PipelineTest, DeadLetterThatCannotBeWrittenKeepsItsMessageUntilItCan) {
  db_.repo.on_insert_record = [](const DataRecord& r) {
    if (r.field_value == "3") throw DbDataError("Data too long (MySQL error 1406)", 1406);
  };
  std::atomic<int> refused_dead_letters{0};
  db_.repo.on_insert_rejected = [&](const RejectedMessage&) {
    ++refused_dead_letters;
    throw DbRefused("disk full (MySQL error 1021)", 1021);
  };
  start();
  publish("a/x", 1, 5);
  ASSERT_TRUE(eventually([&] { return refused_dead_letters > 3; }));
  EXPECT_EQ(rejected(), 0u);
  EXPECT_EQ(metrics_.flows_held.load(), 1u) << "a failed dead letter holds the flow";
  with_db([](FakeFlowRepository& r) { r.on_insert_rejected = nullptr; });
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 4 && rejected() >= 1; }));
  EXPECT_EQ(stored(1), (std::vector<int>{1, 2, 4, 5}));
  EXPECT_EQ(rejected(), 1u) << "written once, never dropped";
}

TEST_F(PipelineTest, ReconnectRefusedWith1040And1045IsRetriedNotFatal) {
  db_.connect_errors = {1040, 1045, 1040};
  start();
  publish("a/x", 1, 30);
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 30; }));
  EXPECT_EQ(stored(1), range(1, 30));
  EXPECT_EQ(rejected(), 0u);
  EXPECT_GE(with_db([this](FakeFlowRepository&) { return db_.connects; }), 4);
}

TEST_F(PipelineTest, DeadlockIsRetriedAndCommitsOnce) {
  std::atomic<int> deadlocks{0};
  db_.repo.on_lock = [&](std::int64_t) {
    if (deadlocks++ < 2) throw DbRetryable("Deadlock found (MySQL error 1213)", 1213);
  };
  start();
  publish("a/x", 1, 10);
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 10; }));
  EXPECT_EQ(stored(1), range(1, 10));
  EXPECT_EQ(rejected(), 0u);
}

// One flow's row is locked by someone else for good; the other flow must not wait behind it,
// even with far more messages than the in-flight cap.
TEST_F(PipelineTest, HeldFlowDoesNotBlockTheOthersBehindTheInFlightCap) {
  db_.repo.on_lock = [](std::int64_t flow_id) {
    if (flow_id == 1) throw DbRefused("Lock wait timeout exceeded (MySQL error 1205)", 1205);
  };
  PipelineOptions o;
  o.max_in_flight = 40;
  start(std::move(o));
  publish("a/x", 1, 200);  // all for the held flow first
  publish("b/x", 1, 300);
  ASSERT_TRUE(eventually([&] { return stored(2).size() >= 300; }))
      << "flow beta stored only " << stored(2).size();
  EXPECT_EQ(stored(2), range(1, 300));
  EXPECT_EQ(stored(1).size(), 0u);
  EXPECT_EQ(metrics_.flows_held.load(), 1u);
  EXPECT_GE(metrics_.held_messages.load(), 1u);

  publish("a/x", 201, 220);
  with_db([](FakeFlowRepository& r) { r.on_lock = nullptr; });
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 220; }));
  EXPECT_EQ(stored(1), range(1, 220)) << "re-read from the spool in order, each once";
  EXPECT_EQ(rejected(), 0u);
}

// The whole spool is released once everything is committed, and not before.
TEST_F(PipelineTest, SpoolIsReleasedOnlyAfterTheHeldFlowCommits) {
  db_.repo.on_lock = [](std::int64_t flow_id) {
    if (flow_id == 1) throw DbRefused("read-only (MySQL error 1290)", 1290);
  };
  start();
  publish("a/x", 1, 5);
  publish("b/x", 1, 5);
  ASSERT_TRUE(eventually([&] { return stored(2).size() >= 5; }));
  std::this_thread::sleep_for(300ms);  // several release rounds
  // Reopening the spool elsewhere is not possible (it is locked); the cursor shows what is left.
  auto cursor = spool_->cursor(0);
  std::optional<SpoolRecord> first = cursor->next(spool_->stats().next_seq);
  ASSERT_TRUE(first) << "the held flow's records must still be in the spool";
  EXPECT_EQ(first->topic, "a/x");
  with_db([](FakeFlowRepository& r) { r.on_lock = nullptr; });
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 5; }));
  EXPECT_EQ(stored(1), range(1, 5));
}

// A flow disabled (or re-topicked) after its messages arrived: those not yet dispatched match no
// flow any more; they become dead letters (flow NULL), once, never dropped silently.
// A clean stop records how far the workers got: the spool opened again hands out none of the
// stored records (a flow disabled meanwhile would make them dead letters), only what comes next.
TEST_F(PipelineTest, AfterAStopTheSpoolResumesAfterWhatWasStored) {
  start();
  publish("a/x", 1, 20);
  ASSERT_TRUE(eventually([&] { return stored(1).size() == 20; }));
  pipeline_->stop(5s);
  pipeline_.reset();
  SpoolOptions so;
  so.dir = dir_;
  so.fsync = SpoolFsync::kNever;
  spool_.reset();
  spool_ = std::make_unique<Spool>(so, nullptr);
  EXPECT_FALSE(spool_->read_next(100ms)) << "a stored record is handed out again";
  publish("a/x", 21, 21);
  const auto next = spool_->read_next(1s);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->seq, 21u);
}

TEST_F(PipelineTest, MessagesOfARemovedFlowBecomeDeadLettersOnce) {
  start();
  flows_.replace({db_.repo.flows[2]});  // flow alpha (a/#) is gone from the routing table
  publish("a/x", 1, 5);
  publish("b/x", 1, 5);
  ASSERT_TRUE(eventually([&] { return rejected() >= 5 && stored(2).size() >= 5; }));
  std::this_thread::sleep_for(200ms);
  with_db([](FakeFlowRepository& r) {
    ASSERT_EQ(r.rejections.size(), 5u);
    for (const auto& rej : r.rejections) {
      EXPECT_EQ(rej.flow_id, kNoFlow);
      EXPECT_EQ(rej.topic, "a/x");
      EXPECT_NE(rej.reason.find("no enabled flow"), std::string::npos) << rej.reason;
    }
  });
  EXPECT_EQ(metrics_.unrouted.load(), 5u);
}

// A flow row deleted while its messages wait: dead letters, not dropped.
TEST_F(PipelineTest, MessagesOfADeletedFlowRowBecomeDeadLetters) {
  const Flow alpha = db_.repo.flows[1];
  db_.repo.flows.erase(1);
  start();
  flows_.replace({alpha});  // the routing table still has it (no reload yet)
  publish("a/x", 1, 3);
  ASSERT_TRUE(eventually([&] { return rejected() >= 3; }));
  with_db([](FakeFlowRepository& r) {
    for (const auto& rej : r.rejections) {
      EXPECT_NE(rej.reason.find("no longer exists"), std::string::npos) << rej.reason;
    }
  });
}

// At a steady trickle, the linger makes one transaction of several messages instead of one each.
TEST_F(PipelineTest, LingerGroupsATrickleIntoFewerTransactions) {
  PipelineOptions o;
  o.batch_linger = 50ms;
  start(std::move(o));
  for (int i = 1; i <= 10; ++i) {
    publish("a/x", i, i);
    std::this_thread::sleep_for(2ms);
  }
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 10; }));
  EXPECT_EQ(stored(1), range(1, 10));
  EXPECT_LE(with_db([](FakeFlowRepository& r) { return r.commits; }), 3)
      << "10 messages 2 ms apart within a 50 ms linger";
}

// A full batch waiting never lingers.
TEST_F(PipelineTest, FullBatchDoesNotLinger) {
  PipelineOptions o;
  o.batch_linger = 5s;
  o.max_batch = 8;
  start(std::move(o));
  publish("a/x", 1, 8);
  EXPECT_TRUE(eventually([&] { return stored(1).size() >= 8; }, 2s))
      << "a full batch waited for the linger";
}

// A held flow re-reads its messages as they were routed when they arrived, even if the flows
// changed meanwhile (here: removed from the routing table by a reload while it was held).
TEST_F(PipelineTest, HeldFlowReReadsWhatWasRoutedToItEvenAfterAReload) {
  db_.repo.on_lock = [](std::int64_t flow_id) {
    if (flow_id == 1) throw DbRefused("read-only (MySQL error 1290)", 1290);
  };
  start();
  publish("a/x", 1, 10);
  ASSERT_TRUE(eventually([&] { return metrics_.flows_held.load() == 1; }));
  std::this_thread::sleep_for(50ms);    // all ten dispatched (and parked)
  flows_.replace({db_.repo.flows[2]});  // alpha leaves the routing table
  with_db([](FakeFlowRepository& r) { r.on_lock = nullptr; });
  ASSERT_TRUE(eventually([&] { return stored(1).size() >= 10; }))
      << "stored " << stored(1).size() << ", rejected " << rejected();
  EXPECT_EQ(stored(1), range(1, 10));
  EXPECT_EQ(rejected(), 0u);
  EXPECT_TRUE(eventually([&] { return metrics_.held().empty(); }));
}

// Issue 17: flows with a few messages each share one transaction, locked in id order; each flow
// keeps its order and consecutive msg_ids.
class PipelineGroupTest : public PipelineTest {
 protected:
  static constexpr int kFlows = 40;
  static constexpr int kEach = 5;

  PipelineGroupTest() {
    for (int i = 3; i < 3 + kFlows; ++i) add_flow(i, "m" + std::to_string(i), topic(i) + "/#");
  }
  static std::string topic(int flow) { return "m/" + std::to_string(flow); }

  // kEach messages per flow, round-robin over the flows: {"seq": round * 1000 + flow}.
  void publish_round_robin() {
    for (int round = 1; round <= kEach; ++round) {
      for (int i = 3; i < 3 + kFlows; ++i) {
        const std::string payload = R"({"seq": )" + std::to_string(round * 1000 + i) + "}";
        ASSERT_TRUE(spool_->append(topic(i) + "/x", payload, 0, false, unix_now_us()));
      }
    }
  }
  // What each flow should have: its seqs in publish order.
  static std::vector<int> expected(int flow) {
    std::vector<int> v;
    for (int round = 1; round <= kEach; ++round) v.push_back(round * 1000 + flow);
    return v;
  }
  bool all_stored() {
    for (int i = 3; i < 3 + kFlows; ++i) {
      if (stored(i).size() < static_cast<std::size_t>(kEach)) return false;
    }
    return true;
  }
  // msg_ids of a flow's rows, ascending and distinct.
  std::vector<std::int64_t> msg_ids(std::int64_t flow_id) {
    return with_db([&](FakeFlowRepository& r) {
      std::set<std::int64_t> ids;
      for (const auto& rec : r.records) {
        if (rec.flow_id == flow_id) ids.insert(rec.msg_id);
      }
      return std::vector<std::int64_t>(ids.begin(), ids.end());
    });
  }
  PipelineOptions one_worker() {
    PipelineOptions o;
    o.workers = 1;
    o.max_batch = 64;
    return o;
  }
};

TEST_F(PipelineGroupTest, SmallBatchesOfManyFlowsShareOneTransaction) {
  publish_round_robin();  // all in the spool before the start: every flow is waiting at once
  start(one_worker());
  ASSERT_TRUE(eventually([&] { return all_stored(); }));
  for (int i = 3; i < 3 + kFlows; ++i) {
    EXPECT_EQ(stored(i), expected(i)) << "flow " << i;
    EXPECT_EQ(msg_ids(i), (std::vector<std::int64_t>{1, 2, 3, 4, 5})) << "flow " << i;
  }
  with_db([](FakeFlowRepository& r) {
    ASSERT_FALSE(r.groups.empty());
    std::size_t largest = 0;
    for (const auto& ids : r.groups) {
      EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end())) << "rows locked in id order";
      EXPECT_EQ(std::set<std::int64_t>(ids.begin(), ids.end()).size(), ids.size());
      largest = std::max(largest, ids.size());
    }
    EXPECT_GT(largest, 1u);
    EXPECT_LT(r.commits, kFlows) << "fewer transactions than flows";
  });
  EXPECT_EQ(rejected(), 0u);
}

TEST_F(PipelineGroupTest, NoGroupsWhenTurnedOff) {
  publish_round_robin();
  PipelineOptions o = one_worker();
  o.max_group_flows = 1;
  start(std::move(o));
  ASSERT_TRUE(eventually([&] { return all_stored(); }));
  EXPECT_TRUE(with_db([](FakeFlowRepository& r) { return r.groups.empty(); }));
}

// A row the server refuses fails the whole group: each flow is then retried alone, and only the
// refused message becomes a dead letter.
TEST_F(PipelineGroupTest, RefusedRowFailsTheGroupAndOnlyItsMessageIsDeadLettered) {
  const int bad = 3 * 1000 + 20;  // flow 20, third round
  db_.repo.on_insert_record = [bad](const DataRecord& r) {
    if (r.field_value == std::to_string(bad))
      throw DbDataError("Out of range value for column (MySQL error 1264)", 1264);
  };
  publish_round_robin();
  start(one_worker());
  ASSERT_TRUE(eventually([&] {
    for (int i = 3; i < 3 + kFlows; ++i) {
      if (stored(i).size() < static_cast<std::size_t>(i == 20 ? kEach - 1 : kEach)) return false;
    }
    return rejected() >= 1;
  }));
  for (int i = 3; i < 3 + kFlows; ++i) {
    std::vector<int> want = expected(i);
    if (i == 20) want.erase(std::find(want.begin(), want.end(), bad));
    EXPECT_EQ(stored(i), want) << "flow " << i;
  }
  with_db([bad](FakeFlowRepository& r) {
    ASSERT_EQ(r.rejections.size(), 1u);
    EXPECT_EQ(r.rejections[0].flow_id, 20);
    EXPECT_EQ(r.rejections[0].payload, R"({"seq": )" + std::to_string(bad) + "}");
  });
  EXPECT_EQ(msg_ids(20), (std::vector<std::int64_t>{1, 2, 3, 4}));
  EXPECT_TRUE(with_db([](FakeFlowRepository& r) {
    return std::any_of(r.groups.begin(), r.groups.end(), [](const auto& ids) {
      return std::find(ids.begin(), ids.end(), 20) != ids.end();
    });
  })) << "flow 20 went through a group transaction";
}

// A lost connection while a group is locked: every flow of it waits and is stored once later.
TEST_F(PipelineGroupTest, LostConnectionDuringAGroupLosesNothing) {
  std::atomic<int> failures{0};
  db_.repo.on_lock = [&](std::int64_t) {
    if (failures++ < 6) throw DbUnavailable("Lost connection to server (MySQL error 2013)", 2013);
  };
  publish_round_robin();
  start(one_worker());
  ASSERT_TRUE(eventually([&] { return all_stored(); }));
  for (int i = 3; i < 3 + kFlows; ++i) {
    EXPECT_EQ(stored(i), expected(i)) << "flow " << i;
    EXPECT_EQ(msg_ids(i), (std::vector<std::int64_t>{1, 2, 3, 4, 5})) << "flow " << i;
  }
  EXPECT_EQ(rejected(), 0u) << "a lost connection never makes a dead letter";
  EXPECT_TRUE(eventually([&] { return metrics_.flows_held.load() == 0; }));
}

// A flow of the group whose row was deleted: its messages become dead letters (flow_id NULL),
// the other flows' are stored.
TEST_F(PipelineGroupTest, FlowRowGoneInAGroupDeadLettersOnlyItsMessages) {
  publish_round_robin();
  flows_.replace(db_.repo.load_flows());  // flow 10 still routed ...
  db_.repo.flows.erase(10);               // ... but its row is gone
  PipelineOptions o = one_worker();
  o.retry_initial = 5ms;
  o.retry_max = 20ms;
  pipeline_ = std::make_unique<Pipeline>(
      *spool_, flows_, [this] { return std::make_unique<SharedFakeConnection>(db_); },
      [] { return std::make_unique<FakeHttpPoster>(); }, std::move(o), metrics_, log_);
  pipeline_->start();
  ASSERT_TRUE(eventually([&] {
    for (int i = 3; i < 3 + kFlows; ++i) {
      if (i != 10 && stored(i).size() < static_cast<std::size_t>(kEach)) return false;
    }
    return rejected() >= static_cast<std::size_t>(kEach);
  }));
  for (int i = 3; i < 3 + kFlows; ++i) {
    if (i != 10) {
      EXPECT_EQ(stored(i), expected(i)) << "flow " << i;
    }
  }
  with_db([](FakeFlowRepository& r) {
    EXPECT_EQ(r.rejections.size(), static_cast<std::size_t>(kEach));
    for (const auto& rej : r.rejections) EXPECT_EQ(rej.flow_id, kNoFlow);
  });
}

// A group that fails, then a connection found gone while its flows are retried alone: the other
// flows are held at once with it, not each made to wait out a connect attempt of its own.
TEST_F(PipelineGroupTest, ConnectionLostDuringTheFallbackHoldsTheRestAtOnce) {
  std::atomic<bool> down{false};
  std::atomic<int> failed_connects{0};
  std::atomic<bool> group_failed{false};
  db_.repo.on_lock = [&](std::int64_t) {
    if (!group_failed.exchange(true)) {
      // An error nobody listed (the session is dropped), and the database goes away with it.
      down = true;
      throw std::runtime_error("something nobody expected");
    }
  };
  publish_round_robin();
  flows_.replace(db_.repo.load_flows());
  PipelineOptions o = one_worker();
  o.retry_initial = 2s;  // no retry before the test has looked
  o.retry_max = 2s;
  pipeline_ = std::make_unique<Pipeline>(
      *spool_, flows_,
      [&]() -> std::unique_ptr<FlowRepository> {
        if (down) {
          ++failed_connects;
          throw DbUnavailable("Can't connect to server (MySQL error 2003)", 2003);
        }
        return std::make_unique<SharedFakeConnection>(db_);
      },
      [] { return std::make_unique<FakeHttpPoster>(); }, std::move(o), metrics_, log_);
  pipeline_->start();
  ASSERT_TRUE(eventually([&] { return metrics_.flows_held.load() >= 2; }));
  std::this_thread::sleep_for(100ms);  // the rest of the fallback, if it were still running
  // Groups of about 12 flows (64 messages of 5 per flow): one attempt per group, not per flow.
  EXPECT_LE(failed_connects.load(), 5) << "connect attempts while the database was down";
  down = false;
  ASSERT_TRUE(eventually([&] { return all_stored(); }));
  for (int i = 3; i < 3 + kFlows; ++i) EXPECT_EQ(stored(i), expected(i)) << "flow " << i;
  EXPECT_EQ(rejected(), 0u);
}

// A busy row (the group locks with NOWAIT; another gateway holds one flow's row) sends the flows
// to run alone on the same connection: no reconnect for an answer the server gave.
TEST_F(PipelineGroupTest, BusyRowInAGroupKeepsTheConnection) {
  std::atomic<bool> busy_once{false};
  db_.repo.on_lock = [&](std::int64_t) {
    if (!busy_once.exchange(true)) {
      throw DbRefused("Lock wait timeout exceeded; try restarting transaction (MySQL error 1205)",
                      1205);
    }
  };
  publish_round_robin();
  start(one_worker());
  ASSERT_TRUE(eventually([&] { return all_stored(); }));
  for (int i = 3; i < 3 + kFlows; ++i) EXPECT_EQ(stored(i), expected(i)) << "flow " << i;
  EXPECT_EQ(with_db([this](FakeFlowRepository&) { return db_.connects; }), 1);
  EXPECT_EQ(metrics_.flows_held.load(), 0u);
}

// A group that finds one flow's row locked elsewhere (NOWAIT: 1205 at once) runs that flow alone,
// where it waits for the lock, and gives the others back: they are stored by another worker
// meanwhile, not behind the locked one.
TEST_F(PipelineGroupTest, FlowsOfABusyGroupDoNotWaitBehindTheLockedRow) {
  std::mutex mu;
  std::condition_variable cv;
  bool released = false;
  db_.repo.on_lock_group = [](std::span<const std::int64_t> ids) {
    if (std::find(ids.begin(), ids.end(), 3) != ids.end()) {
      throw DbRefused("Lock wait timeout exceeded; try restarting transaction (MySQL error 1205)",
                      1205);
    }
  };
  db_.row_lock_wait = [&](std::int64_t flow_id) {
    if (flow_id != 3) return;
    std::unique_lock lock(mu);
    cv.wait_for(lock, 20s, [&] { return released; });  // the row lock, held elsewhere
  };
  publish_round_robin();
  PipelineOptions o = one_worker();
  o.workers = 2;
  start(std::move(o));
  const auto others_stored = [&] {
    for (int i = 4; i < 3 + kFlows; ++i) {
      if (stored(i).size() < static_cast<std::size_t>(kEach)) return false;
    }
    return true;
  };
  EXPECT_TRUE(eventually(others_stored, 10s)) << "the other flows waited behind flow 3's row";
  EXPECT_TRUE(stored(3).empty());
  {
    std::lock_guard lock(mu);
    released = true;
  }
  cv.notify_all();
  ASSERT_TRUE(eventually([&] { return all_stored(); }));
  for (int i = 3; i < 3 + kFlows; ++i) EXPECT_EQ(stored(i), expected(i)) << "flow " << i;
}

}  // namespace
}  // namespace gateway
