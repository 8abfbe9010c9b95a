#include "gateway/flow_table.h"

#include <gtest/gtest.h>

namespace gateway {
namespace {

Flow flow(std::int64_t id, std::string code, std::string topic) {
  Flow f;
  f.id = id;
  f.code = std::move(code);
  f.topic = std::move(topic);
  f.action = "STORE_DB";
  return f;
}

TEST(FlowTableTest, MatchesEveryFlowWhoseFilterMatches) {
  FlowTable table;
  table.replace({flow(1, "a", "s/+/t"), flow(2, "b", "s/#"), flow(3, "c", "other")});
  std::vector<std::int64_t> ids;
  table.snapshot()->match("s/x/t", ids);
  EXPECT_EQ(ids, (std::vector<std::int64_t>{1, 2}));
  table.snapshot()->match("nothing", ids);
  EXPECT_TRUE(ids.empty());
}

TEST(FlowTableTest, InvalidFilterDisablesOnlyThatFlow) {
  FlowTable table;
  auto diff = table.replace({flow(1, "ok", "a/b"), flow(2, "bad", "a/#/b"), flow(3, "bad2", "a+")});
  ASSERT_EQ(diff.invalid.size(), 2u);
  EXPECT_EQ(diff.invalid[0].first.code, "bad");
  EXPECT_EQ(table.snapshot()->flows().size(), 1u);
  EXPECT_EQ(diff.subscribe, (std::vector<std::string>{"a/b"}));
}

TEST(FlowTableTest, FlowsSharingAFilterShareOneSubscription) {
  FlowTable table;
  auto d1 = table.replace({flow(1, "a", "x/#"), flow(2, "b", "x/#")});
  EXPECT_EQ(d1.subscribe, (std::vector<std::string>{"x/#"}));
  // Removing one of the two keeps the subscription.
  auto d2 = table.replace({flow(2, "b", "x/#")});
  EXPECT_TRUE(d2.unsubscribe.empty());
  EXPECT_EQ(d2.removed.size(), 1u);
  auto d3 = table.replace({});
  EXPECT_EQ(d3.unsubscribe, (std::vector<std::string>{"x/#"}));
}

TEST(FlowTableTest, DiffReportsAddedRemovedAndChanged) {
  FlowTable table;
  table.replace({flow(1, "a", "t/1"), flow(2, "b", "t/2")});
  Flow changed = flow(2, "b", "t/22");
  auto diff = table.replace({changed, flow(3, "c", "t/3")});
  ASSERT_EQ(diff.added.size(), 1u);
  EXPECT_EQ(diff.added[0].code, "c");
  ASSERT_EQ(diff.removed.size(), 1u);
  EXPECT_EQ(diff.removed[0].code, "a");
  ASSERT_EQ(diff.changed.size(), 1u);
  EXPECT_EQ(diff.changed[0].second.topic, "t/22");
  EXPECT_EQ(diff.subscribe, (std::vector<std::string>{"t/22", "t/3"}));
  EXPECT_EQ(diff.unsubscribe, (std::vector<std::string>{"t/1", "t/2"}));
  // Counter updates alone are not a change.
  Flow counted = changed;
  counted.last_msg_id = 99;
  EXPECT_TRUE(table.replace({counted, flow(3, "c", "t/3")}).empty());
}

}  // namespace
}  // namespace gateway
