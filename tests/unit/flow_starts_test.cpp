// FlowStarts: a new or re-topicked flow is routed from the next record on (or from this run's
// first record, for one that came while the gateway was stopped); the starts survive a restart;
// without a file (an upgrade), every flow starts at 0 so a spooled backlog is routed as before.
#include "gateway/flow_starts.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "gateway/errors.h"

namespace gateway {
namespace {

Flow flow(std::int64_t id, const std::string& topic) {
  Flow f;
  f.id = id;
  f.code = "f" + std::to_string(id);
  f.topic = topic;
  f.action = "STORE_DB";
  return f;
}

// The flows of `ids` that record `seq` may go to.
std::vector<std::int64_t> routed(const FlowStarts::Starts& s, std::uint64_t seq,
                                 std::vector<std::int64_t> ids) {
  s.filter(seq, ids);
  return ids;
}

class FlowStartsTest : public ::testing::Test {
 protected:
  FlowStartsTest() {
    std::string pattern = (std::filesystem::temp_directory_path() / "gw_starts_XXXXXX").string();
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  ~FlowStartsTest() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(FlowStartsTest, WithoutAFileEveryFlowStartsAtZero) {
  FlowStarts starts(dir_, 100);
  auto s = starts.update(FlowSnapshot({flow(1, "a/#"), flow(2, "b")}), 40);
  EXPECT_EQ(routed(*s, 1, {1, 2}), (std::vector<std::int64_t>{1, 2}));
  EXPECT_TRUE(std::filesystem::exists(dir_ / FlowStarts::kFileName));
}

TEST_F(FlowStartsTest, AFlowAddedWhileRunningStartsAtTheNextRecord) {
  FlowStarts starts(dir_, 1);
  starts.update(FlowSnapshot({flow(1, "a/#")}), 1);
  auto s = starts.update(FlowSnapshot({flow(1, "a/#"), flow(2, "a/#")}), 50);
  EXPECT_EQ(routed(*s, 49, {1, 2}), (std::vector<std::int64_t>{1}));
  EXPECT_EQ(routed(*s, 50, {1, 2}), (std::vector<std::int64_t>{1, 2}));
}

TEST_F(FlowStartsTest, StartsSurviveARestartAndNewFlowsSkipEarlierRuns) {
  {
    FlowStarts starts(dir_, 1);
    starts.update(FlowSnapshot({flow(1, "a/#")}), 1);
    starts.update(FlowSnapshot({flow(1, "a/#"), flow(2, "a/#")}), 50);
  }
  // Restart: the spool's next seq is 80; the dispatcher reads it again from 1.
  FlowStarts starts(dir_, 80);
  auto s = starts.update(FlowSnapshot({flow(1, "a/#"), flow(2, "a/#"), flow(3, "a/#")}), 1);
  EXPECT_EQ(routed(*s, 10, {1, 2, 3}), (std::vector<std::int64_t>{1}));
  EXPECT_EQ(routed(*s, 60, {1, 2, 3}), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(routed(*s, 80, {1, 2, 3}), (std::vector<std::int64_t>{1, 2, 3}));
}

// A known flow keeps its first start when it changes topic or comes back after being disabled:
// it may still owe records routed to it since then (held, parked), and a later start would lose
// them.
TEST_F(FlowStartsTest, AKnownFlowKeepsItsFirstStart) {
  FlowStarts starts(dir_, 1);
  starts.update(FlowSnapshot({flow(1, "a/#")}), 1);
  starts.update(FlowSnapshot({flow(1, "a/#"), flow(2, "b")}), 10);
  auto s = starts.update(FlowSnapshot({flow(1, "c/#")}), 30);
  EXPECT_EQ(routed(*s, 5, {1}), (std::vector<std::int64_t>{1}));
  s = starts.update(FlowSnapshot({flow(1, "c/#"), flow(2, "b")}), 70);
  EXPECT_EQ(routed(*s, 9, {2}), (std::vector<std::int64_t>{}));
  EXPECT_EQ(routed(*s, 10, {2}), (std::vector<std::int64_t>{2}));
  // ... also across a restart.
  FlowStarts again(dir_, 100);
  s = again.update(FlowSnapshot({flow(2, "b")}), 1);
  EXPECT_EQ(routed(*s, 10, {2}), (std::vector<std::int64_t>{2}));
}

// After a power loss the spool may go on below a start the (synced) file kept: this run's
// records still reach the flow.
TEST_F(FlowStartsTest, AStartAboveTheSpoolsNextSeqIsLoweredToIt) {
  {
    FlowStarts starts(dir_, 1);
    starts.update(FlowSnapshot({flow(1, "a/#")}), 1);
    starts.update(FlowSnapshot({flow(1, "a/#"), flow(2, "a/#")}), 1000);
  }
  FlowStarts starts(dir_, 990);
  auto s = starts.update(FlowSnapshot({flow(1, "a/#"), flow(2, "a/#")}), 1);
  EXPECT_EQ(routed(*s, 989, {1, 2}), (std::vector<std::int64_t>{1}));
  EXPECT_EQ(routed(*s, 990, {1, 2}), (std::vector<std::int64_t>{1, 2}));
}

// An empty first table ends the start-at-zero rule too: the records it saw went to no flow (dead
// letters), and a flow enabled later must not store them as well.
TEST_F(FlowStartsTest, AnEmptyFirstTableEndsStartingAtZero) {
  FlowStarts starts(dir_, 50);
  starts.update(FlowSnapshot({}), 1);
  auto s = starts.update(FlowSnapshot({flow(1, "a/#")}), 20);
  EXPECT_EQ(routed(*s, 49, {1}), (std::vector<std::int64_t>{}));
  EXPECT_EQ(routed(*s, 50, {1}), (std::vector<std::int64_t>{1}));
}

TEST_F(FlowStartsTest, AnUnchangedSnapshotKeepsTheSameStarts) {
  FlowStarts starts(dir_, 1);
  auto a = starts.update(FlowSnapshot({flow(1, "a/#")}), 1);
  auto b = starts.update(FlowSnapshot({flow(1, "a/#")}), 500);
  EXPECT_EQ(a, b);
}

TEST_F(FlowStartsTest, AnUnreadableFileIsAnErrorNamingIt) {
  std::ofstream(dir_ / FlowStarts::kFileName) << "{not json";
  try {
    FlowStarts starts(dir_, 1);
    FAIL() << "parsed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(FlowStarts::kFileName), std::string::npos) << e.what();
  }
}

TEST_F(FlowStartsTest, AFailedWriteLeavesTheStartsAsTheyWereForARetry) {
  FlowStarts starts(dir_, 1);
  starts.update(FlowSnapshot({flow(1, "a/#")}), 1);
  // A directory where the temp file must go: the write fails.
  std::filesystem::create_directory(dir_ / (std::string(FlowStarts::kFileName) + ".tmp"));
  EXPECT_THROW(starts.update(FlowSnapshot({flow(1, "a/#"), flow(2, "a/#")}), 10), Error);
  std::filesystem::remove(dir_ / (std::string(FlowStarts::kFileName) + ".tmp"));
  auto s = starts.update(FlowSnapshot({flow(1, "a/#"), flow(2, "a/#")}), 20);
  EXPECT_EQ(routed(*s, 19, {1, 2}), (std::vector<std::int64_t>{1}));
  EXPECT_EQ(routed(*s, 20, {1, 2}), (std::vector<std::int64_t>{1, 2}));
}

}  // namespace
}  // namespace gateway
