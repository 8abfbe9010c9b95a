#include "gateway/backoff.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <set>
#include <stdexcept>

namespace gateway {
namespace {

using std::chrono::milliseconds;

TEST(BackoffTest, DelayDoublesUpToTheCapWithJitterInTheUpperHalf) {
  Backoff backoff(milliseconds(100), milliseconds(1000), 42);
  const long long expected_ceiling[] = {100, 200, 400, 800, 1000, 1000, 1000};
  for (long long ceiling : expected_ceiling) {
    long long delay = backoff.next().count();
    EXPECT_GE(delay, ceiling / 2) << "ceiling " << ceiling;
    EXPECT_LE(delay, ceiling) << "ceiling " << ceiling;
  }
  EXPECT_EQ(backoff.attempts(), 7);
}

TEST(BackoffTest, JitterStaysWithinBoundsAndActuallyVaries) {
  std::set<long long> seen;
  for (std::uint64_t seed = 0; seed < 200; ++seed) {
    Backoff backoff(milliseconds(1000), milliseconds(1000), seed);
    long long delay = backoff.next().count();
    ASSERT_GE(delay, 500);
    ASSERT_LE(delay, 1000);
    seen.insert(delay);
  }
  EXPECT_GT(seen.size(), 50u);
  EXPECT_LT(*seen.begin(), 750);  // both halves of the range are used
  EXPECT_GT(*seen.rbegin(), 750);
}

TEST(BackoffTest, SameSeedGivesSameSequence) {
  Backoff a(milliseconds(10), milliseconds(10000), 7);
  Backoff b(milliseconds(10), milliseconds(10000), 7);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(a.next(), b.next());
}

TEST(BackoffTest, ResetStartsAgainFromInitial) {
  Backoff backoff(milliseconds(100), milliseconds(60000), 1);
  for (int i = 0; i < 10; ++i) backoff.next();
  EXPECT_EQ(backoff.attempts(), 10);
  backoff.reset();
  EXPECT_EQ(backoff.attempts(), 0);
  long long delay = backoff.next().count();
  EXPECT_GE(delay, 50);
  EXPECT_LE(delay, 100);
}

TEST(BackoffTest, ThousandsOfAttemptsStayAtTheCapWithoutOverflow) {
  Backoff backoff(milliseconds(1), milliseconds(30000), 3);
  for (int i = 0; i < 10000; ++i) {
    long long delay = backoff.next().count();
    ASSERT_GE(delay, 0) << "attempt " << i;
    ASSERT_LE(delay, 30000) << "attempt " << i;
    if (i >= 15) {  // 2^15 ms > 30 s: capped
      ASSERT_GE(delay, 15000) << "attempt " << i;
    }
  }
  EXPECT_EQ(backoff.attempts(), 10000);
}

TEST(BackoffTest, HugeCapDoesNotOverflowWhenDoubling) {
  const milliseconds huge(std::numeric_limits<milliseconds::rep>::max());
  Backoff backoff(milliseconds(3), huge, 5);
  milliseconds previous_floor(0);
  for (int i = 0; i < 200; ++i) {
    milliseconds delay = backoff.next();
    ASSERT_GE(delay, previous_floor) << "attempt " << i;  // never wraps around to small values
    ASSERT_LE(delay, huge);
    previous_floor = std::min(delay, huge / 4);
  }
}

TEST(BackoffTest, OneMillisecondInitialCanYieldZeroOrOne) {
  Backoff backoff(milliseconds(1), milliseconds(1), 9);
  for (int i = 0; i < 100; ++i) {
    long long delay = backoff.next().count();
    EXPECT_TRUE(delay == 0 || delay == 1) << delay;
  }
}

TEST(BackoffTest, RejectsNonPositiveInitialOrCapBelowInitial) {
  EXPECT_THROW(Backoff(milliseconds(0), milliseconds(10), 1), std::invalid_argument);
  EXPECT_THROW(Backoff(milliseconds(-5), milliseconds(10), 1), std::invalid_argument);
  EXPECT_THROW(Backoff(milliseconds(20), milliseconds(10), 1), std::invalid_argument);
  EXPECT_NO_THROW(Backoff(milliseconds(10), milliseconds(10)));
}

}  // namespace
}  // namespace gateway
