// The routing tree against the reference matcher: for every pair of a table of filters (the '+',
// '#' and '$' corner cases of topic_filter_test.cpp, overlapping filters, empty levels) and
// topics, the tree finds exactly the flows topic_matches() says, each once, in id order.
#include "gateway/topic_tree.h"

#include <gtest/gtest.h>

#include <random>

#include "gateway/flow_table.h"
#include "gateway/topic_filter.h"

namespace gateway {
namespace {

const std::vector<std::string> kFilters = {
    "#",
    "+",
    "+/+",
    "/+",
    "+/#",
    "sport",
    "sport/",
    "sport/#",
    "sport/+",
    "sport/tennis/#",
    "sport/tennis/+",
    "sport/tennis/player1",
    "sport/tennis/player1/#",
    "+/tennis/#",
    "/#",
    "$SYS/#",
    "$SYS/monitor/+",
    "$SYS",
    "a/+/c",
    "a/b/c",
    "a/+/+",
    "+/b/#",
    "a//c",
    "a/+/c/#",
    "//",
    "+/+/+",
};
const std::vector<std::string> kTopics = {
    "sport",
    "sport/",
    "sport/tennis",
    "sport/tennis/",
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "sport/tennis/player1/score/wimbledon",
    "sport/tennisx",
    "/finance",
    "/",
    "//",
    "$SYS",
    "$SYS/x",
    "$SYS/monitor/Clients",
    "$BOB/bar",
    "a/b/c",
    "a//c",
    "a/b/c/d",
    "a/x/c",
    "x/b",
    "x/b/y",
    "a",
    "",
    "a/+",
    "a/#",
    "",
    "$",
    "$/x",
};

TEST(TopicTreeTest, MatchesExactlyWhatTopicMatchesSays) {
  TopicTree tree;
  for (std::size_t i = 0; i < kFilters.size(); ++i) {
    ASSERT_FALSE(validate_topic_filter(kFilters[i])) << kFilters[i];
    tree.insert(kFilters[i], static_cast<std::int64_t>(i + 1));
  }
  std::vector<std::int64_t> got;
  for (const std::string& topic : kTopics) {
    std::vector<std::int64_t> expected;
    for (std::size_t i = 0; i < kFilters.size(); ++i) {
      if (topic_matches(kFilters[i], topic)) expected.push_back(static_cast<std::int64_t>(i + 1));
    }
    tree.match(topic, got);
    EXPECT_EQ(got, expected) << "topic '" << topic << "'";
  }
}

// Several flows on one filter, and one flow reachable along two paths in the tree (not possible
// with one filter per flow, but ids must still come out once).
TEST(TopicTreeTest, SharedAndOverlappingFiltersReachEachFlowOnce) {
  TopicTree tree;
  tree.insert("a/#", 3);
  tree.insert("a/#", 1);
  tree.insert("a/+", 2);
  tree.insert("a/b", 2);
  std::vector<std::int64_t> got;
  tree.match("a/b", got);
  EXPECT_EQ(got, (std::vector<std::int64_t>{1, 2, 3}));
}

// Random filters and topics over a small alphabet (so that they collide often).
TEST(TopicTreeTest, AgreesWithTopicMatchesOnRandomFiltersAndTopics) {
  std::mt19937 rng(20261202);
  const std::vector<std::string> levels = {"a", "b", "", "$x", "+", "#"};
  auto make = [&](bool filter) {
    std::string s;
    const int n = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < n; ++i) {
      std::string level = levels[rng() % levels.size()];
      if (!filter && (level == "+" || level == "#")) level = "c";
      if (level == "#" && i != n - 1) level = "+";
      s += (i ? "/" : "") + level;
    }
    return s;
  };
  for (int round = 0; round < 200; ++round) {
    TopicTree tree;
    std::vector<std::string> filters;
    for (int i = 0; i < 20; ++i) {
      std::string f = make(true);
      if (validate_topic_filter(f)) continue;
      filters.push_back(f);
      tree.insert(f, static_cast<std::int64_t>(filters.size()));
    }
    std::vector<std::int64_t> got;
    for (int t = 0; t < 20; ++t) {
      const std::string topic = make(false);
      std::vector<std::int64_t> expected;
      for (std::size_t i = 0; i < filters.size(); ++i) {
        if (topic_matches(filters[i], topic)) expected.push_back(static_cast<std::int64_t>(i + 1));
      }
      tree.match(topic, got);
      ASSERT_EQ(got, expected) << "topic '" << topic << "'";
    }
  }
}

TEST(TopicTreeTest, FlowSnapshotRoutesThroughTheTree) {
  std::vector<Flow> flows(3);
  flows[0].id = 7, flows[0].topic = "x/+";
  flows[1].id = 9, flows[1].topic = "x/#";
  flows[2].id = 11, flows[2].topic = "y";
  FlowSnapshot snapshot(flows);
  std::vector<std::int64_t> got;
  snapshot.match("x/1", got);
  EXPECT_EQ(got, (std::vector<std::int64_t>{7, 9}));
  snapshot.match("z", got);
  EXPECT_TRUE(got.empty());
}

}  // namespace
}  // namespace gateway
