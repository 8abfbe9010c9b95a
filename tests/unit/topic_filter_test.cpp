#include "gateway/topic_filter.h"

#include <gtest/gtest.h>

#include <ostream>
#include <string>

namespace gateway {
namespace {

struct MatchCase {
  const char* filter;
  const char* topic;
  bool matches;
};

std::ostream& operator<<(std::ostream& os, const MatchCase& c) {
  return os << "'" << c.filter << "' vs '" << c.topic << "' -> "
            << (c.matches ? "match" : "no match");
}

class TopicMatchTable : public ::testing::TestWithParam<MatchCase> {};

TEST_P(TopicMatchTable, MatchesAsMqttSpecifies) {
  const MatchCase& c = GetParam();
  ASSERT_EQ(validate_topic_filter(c.filter), std::nullopt) << "the table only holds valid filters";
  EXPECT_EQ(topic_matches(c.filter, c.topic), c.matches) << c;
}

// MQTT 3.1.1 section 4.7 examples, paho.mqtt.cpp test_topic_matcher, mosquitto util_topic_test.
INSTANTIATE_TEST_SUITE_P(
    CornerCases, TopicMatchTable,
    ::testing::Values(
        // MQTT 4.7.1.2: multi-level wildcard
        MatchCase{"sport/tennis/player1/#", "sport/tennis/player1", true},
        MatchCase{"sport/tennis/player1/#", "sport/tennis/player1/ranking", true},
        MatchCase{"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
        MatchCase{"sport/#", "sport", true}, MatchCase{"sport/tennis/#", "sport/tennis", true},
        MatchCase{"sport/tennis/#", "sport/tennis/", true},
        MatchCase{"sport/tennis/#", "sport/tennisx", false},
        MatchCase{"sport/tennis/#", "sport", false},
        // MQTT 4.7.1.3: single-level wildcard
        MatchCase{"sport/tennis/+", "sport/tennis/player1", true},
        MatchCase{"sport/tennis/+", "sport/tennis/player2", true},
        MatchCase{"sport/tennis/+", "sport/tennis/player1/ranking", false},
        MatchCase{"sport/+", "sport", false}, MatchCase{"sport/+", "sport/", true},
        MatchCase{"+/+", "/finance", true}, MatchCase{"/+", "/finance", true},
        MatchCase{"+", "/finance", false}, MatchCase{"+", "sport", true},
        MatchCase{"+", "/", false}, MatchCase{"+/+", "/", true},
        MatchCase{"+/tennis/#", "sport/tennis/player1", true},
        // MQTT 4.7.2: topics beginning with '$'
        MatchCase{"#", "$SYS/x", false},
        MatchCase{"+/monitor/Clients", "$SYS/monitor/Clients", false},
        MatchCase{"$SYS/#", "$SYS/x", true}, MatchCase{"$SYS/#", "$SYS", true},
        MatchCase{"$SYS/monitor/+", "$SYS/monitor/Clients", true},
        MatchCase{"$BOB/bar", "$SYS/bar", false}, MatchCase{"$SYS/bar", "$SYS/bar", true},
        MatchCase{"+/bar", "$SYS/bar", false}, MatchCase{"foo/#", "foo/$bar", true},
        MatchCase{"foo/+/baz", "foo/$bar/baz", true},
        // Levels are case-sensitive; '/' alone is two empty levels.
        MatchCase{"ACCOUNTS", "Accounts", false}, MatchCase{"/", "/", true},
        MatchCase{"#", "/", true}, MatchCase{"/#", "/", true}, MatchCase{"/", "a/", false},
        // paho test_topic_matcher
        MatchCase{"foo/bar", "foo/bar", true}, MatchCase{"foo/+", "foo/bar", true},
        MatchCase{"foo/+/baz", "foo/bar/baz", true}, MatchCase{"foo/+/#", "foo/bar/baz", true},
        MatchCase{"A/B/+/#", "A/B/B/C", true}, MatchCase{"#", "foo/bar/baz", true},
        MatchCase{"#", "/foo/bar", true}, MatchCase{"/#", "/foo/bar", true},
        MatchCase{"test/6/#", "test/3", false}, MatchCase{"foo/bar", "foo", false},
        MatchCase{"foo/+", "foo/bar/baz", false}, MatchCase{"foo/+/baz", "foo/bar/bar", false},
        MatchCase{"foo/+/#", "fo2/bar/baz", false}, MatchCase{"/#", "foo/bar", false},
        // mosquitto util_topic_test
        MatchCase{"foo/#", "foo/", true}, MatchCase{"foo/#", "foo", true},
        MatchCase{"foo//bar", "foo//bar", true}, MatchCase{"foo//+", "foo//bar", true},
        MatchCase{"foo/+/+/baz", "foo///baz", true}, MatchCase{"foo/bar/+", "foo/bar/", true},
        MatchCase{"foo/+/#", "foo/bar", true}, MatchCase{"foo/+/#", "foo", false},
        // Prefixes and trailing separators are not matches.
        MatchCase{"foo/bar", "foo/bar/", false}, MatchCase{"foo/bar/", "foo/bar", false},
        MatchCase{"foo", "foobar", false}, MatchCase{"foobar", "foo", false},
        // Not topic names: empty, or carrying wildcards (mosquitto: MOSQ_ERR_INVAL, no match).
        MatchCase{"#", "", false}, MatchCase{"foo/+", "foo/+", false},
        MatchCase{"foo/#", "foo/#", false}, MatchCase{"foo/#", "foo/bar/+", false},
        MatchCase{"foo/+", "foo/bar/#", false}));

struct InvalidCase {
  const char* filter;
  const char* reason;
};

std::ostream& operator<<(std::ostream& os, const InvalidCase& c) {
  return os << "'" << c.filter << "'";
}

class InvalidFilterTable : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(InvalidFilterTable, IsRejectedWithReason) {
  const InvalidCase& c = GetParam();
  EXPECT_EQ(validate_topic_filter(c.filter), std::optional<std::string>(c.reason)) << c;
}

constexpr const char* kHashLast = "'#' must be the last level";
constexpr const char* kHashWhole = "'#' must occupy a whole level";
constexpr const char* kPlusWhole = "'+' must occupy a whole level";

INSTANTIATE_TEST_SUITE_P(
    CornerCases, InvalidFilterTable,
    ::testing::Values(InvalidCase{"", "empty filter"}, InvalidCase{"a/#/b", kHashLast},
                      InvalidCase{"#/", kHashLast}, InvalidCase{"#/#", kHashLast},
                      InvalidCase{"sport/tennis#", kHashWhole}, InvalidCase{"foo#", kHashWhole},
                      InvalidCase{"fo#o/", kHashWhole}, InvalidCase{"#a", kHashWhole},
                      InvalidCase{"foo/#a", kHashWhole}, InvalidCase{"/#a", kHashWhole},
                      InvalidCase{"a+", kPlusWhole}, InvalidCase{"+a", kPlusWhole},
                      InvalidCase{"a/b+/c", kPlusWhole}, InvalidCase{"sport+", kPlusWhole},
                      InvalidCase{"foo/+bar", kPlusWhole}, InvalidCase{"++", kPlusWhole},
                      InvalidCase{"$share/group/a/b",
                                  "shared subscriptions are set with MQTT_SHARED_GROUP"},
                      InvalidCase{"a/\xC3(", "not valid UTF-8 (byte 2)"},
                      InvalidCase{"a/\xED\xA0\x80", "not valid UTF-8 (byte 2)"}));

class ValidFilterTable : public ::testing::TestWithParam<const char*> {};

TEST_P(ValidFilterTable, IsAccepted) {
  EXPECT_EQ(validate_topic_filter(GetParam()), std::nullopt) << "'" << GetParam() << "'";
}

INSTANTIATE_TEST_SUITE_P(CornerCases, ValidFilterTable,
                         ::testing::Values("#", "+", "/", "//", "+/+", "/+", "+/#", "a/#", "a/+/b",
                                           "sport/tennis/player1", "$SYS/#", "$share",
                                           "$sharexyz/a", "a b/c", "caf\xC3\xA9/+", "+/+/+/#"));

TEST(ValidateTopicFilterTest, RejectsEmbeddedNul) {
  EXPECT_EQ(validate_topic_filter(std::string_view("a/\0b", 4)), "contains NUL");
}

TEST(ValidateTopicFilterTest, AcceptsMaximumLengthAndRejectsOneMore) {
  EXPECT_EQ(validate_topic_filter(std::string(65535, 'a')), std::nullopt);
  EXPECT_EQ(validate_topic_filter(std::string(65536, 'a')), "longer than 65535 bytes");
}

TEST(TopicMatchesTest, EveryNonDollarTopicMatchesHash) {
  for (const char* topic : {"a", "a/b", "/", "//", "a/b/c/d/e/f", " "}) {
    EXPECT_TRUE(topic_matches("#", topic)) << topic;
  }
}

TEST(TopicMatchesTest, ExactFilterMatchesOnlyItself) {
  EXPECT_TRUE(topic_matches("sensors/room1/temp", "sensors/room1/temp"));
  EXPECT_FALSE(topic_matches("sensors/room1/temp", "sensors/room1/temp2"));
  EXPECT_FALSE(topic_matches("sensors/room1/temp", "sensors/room2/temp"));
}

TEST(TopicMatchesTest, DeepTopicsAreMatchedLevelByLevel) {
  std::string filter;
  std::string topic;
  for (int i = 0; i < 1000; ++i) {
    filter += i % 2 ? "+/" : "x/";
    topic += "x/";
  }
  EXPECT_TRUE(topic_matches(filter + "#", topic + "end"));
  EXPECT_TRUE(topic_matches(filter + "end", topic + "end"));
  EXPECT_FALSE(topic_matches(filter + "end", topic + "end/more"));
}

}  // namespace
}  // namespace gateway
