#include "gateway/adapters/paho_version.h"

#include <gtest/gtest.h>

namespace gateway {
namespace {

TEST(PahoVersionTest, ComparesNumberByNumberNotAsText) {
  EXPECT_TRUE(version_at_least("1.3.12", "1.3.10"));
  EXPECT_TRUE(version_at_least("1.3.10", "1.3.10"));
  EXPECT_FALSE(version_at_least("1.3.9", "1.3.10"));  // "1.3.9" > "1.3.10" as text
  EXPECT_TRUE(version_at_least("1.3.12", "1.3.9"));
  EXPECT_TRUE(version_at_least("1.4.0", "1.3.10"));
  EXPECT_TRUE(version_at_least("2.0.0", "1.3.10"));
  EXPECT_FALSE(version_at_least("1.2.99", "1.3.10"));
  EXPECT_FALSE(version_at_least("0.9.20", "1.3.10"));
}

TEST(PahoVersionTest, TheMinimumIsTheReleaseThatAcknowledgesAfterTheCallback) {
  EXPECT_EQ(kMinPahoCVersion, "1.3.10");
  EXPECT_TRUE(version_at_least("1.3.11", kMinPahoCVersion));  // Debian 12's library says 1.3.11
  EXPECT_FALSE(version_at_least("1.3.8", kMinPahoCVersion));
}

TEST(PahoVersionTest, AnUnreadableVersionIsNeverEnough) {
  for (const char* bad : {"", "1.3", "1", "1.3.", ".1.3.10", "v1.3.10", "1.3.x", "1.3.10.2", "1..3",
                          "-1.3.10", "1.3.99999999999"}) {
    EXPECT_FALSE(version_at_least(bad, "0.0.0")) << bad;
    EXPECT_FALSE(parse_dotted_version(bad).has_value()) << bad;
  }
  EXPECT_FALSE(version_at_least("1.3.12", "junk"));
}

TEST(PahoVersionTest, ParsesThreeNumbersAndToleratesASuffix) {
  using Parts = std::array<int, 3>;
  EXPECT_EQ(parse_dotted_version("1.3.12"), (Parts{1, 3, 12}));
  EXPECT_EQ(parse_dotted_version("1.3.13-rc1"), (Parts{1, 3, 13}));
  EXPECT_EQ(parse_dotted_version("10.0.1 (git)"), (Parts{10, 0, 1}));
  EXPECT_TRUE(version_at_least("1.3.10-rc1", "1.3.10"));
  static_assert(version_at_least("1.3.10", "1.3.10"));
  static_assert(!version_at_least("1.3.9", "1.3.10"));
}

TEST(PahoVersionTest, TheStartUpErrorNamesTheFoundAndTheRequiredVersion) {
  EXPECT_EQ(paho_c_version_problem("1.3.12"), std::nullopt);
  EXPECT_EQ(paho_c_version_problem("1.3.10"), std::nullopt);
  EXPECT_EQ(paho_c_version_problem("1.3.9"),
            "the Paho MQTT C library loaded is version 1.3.9; mqtt-gateway needs 1.3.10 or newer "
            "(older versions acknowledge a QoS 1 message before it is spooled)");
  const auto unknown = paho_c_version_problem("");
  ASSERT_TRUE(unknown.has_value());
  EXPECT_NE(unknown->find("of unknown version; mqtt-gateway needs 1.3.10 or newer"),
            std::string::npos)
      << *unknown;
  EXPECT_EQ(unknown->find('\n'), std::string::npos);
}

}  // namespace
}  // namespace gateway
