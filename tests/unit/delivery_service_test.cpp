// How delivery outcomes are classified and how long a failed delivery waits.
#include "gateway/delivery_service.h"

#include <gtest/gtest.h>

namespace gateway {
namespace {

HttpResult with_status(int status) {
  HttpResult r;
  r.status = status;
  if (!r.ok()) r.error = "HTTP " + std::to_string(status);
  return r;
}

TEST(DeliveryClassifyTest, TwoHundredsAreDelivered) {
  EXPECT_EQ(classify(with_status(200)), DeliveryVerdict::kDelivered);
  EXPECT_EQ(classify(with_status(204)), DeliveryVerdict::kDelivered);
}

TEST(DeliveryClassifyTest, TransientFailuresAreRetried) {
  HttpResult refused;
  refused.error = "Couldn't connect to server";
  EXPECT_EQ(classify(refused), DeliveryVerdict::kRetry);
  for (int s : {408, 429, 500, 502, 503, 504}) {
    EXPECT_EQ(classify(with_status(s)), DeliveryVerdict::kRetry) << s;
  }
}

TEST(DeliveryClassifyTest, OtherAnswersArePermanent) {
  for (int s : {301, 400, 401, 403, 404, 409, 413, 422}) {
    EXPECT_EQ(classify(with_status(s)), DeliveryVerdict::kPermanent) << s;
  }
}

TEST(DeliveryRetryDelayTest, GrowsExponentiallyWithJitterAndACap) {
  DeliveryOptions o;
  o.retry_initial = std::chrono::milliseconds(500);
  o.retry_max = std::chrono::milliseconds(10000);
  EXPECT_EQ(retry_delay(1, "", o, 1.0).count(), 500);
  EXPECT_EQ(retry_delay(1, "", o, 0.0).count(), 250);
  EXPECT_EQ(retry_delay(3, "", o, 1.0).count(), 2000);
  EXPECT_EQ(retry_delay(20, "", o, 1.0).count(), 10000);
  EXPECT_EQ(retry_delay(1000, "", o, 0.0).count(), 5000);
}

TEST(DeliveryRetryDelayTest, HonoursRetryAfterSecondsUpToTheCap) {
  DeliveryOptions o;
  o.retry_max = std::chrono::milliseconds(10000);
  EXPECT_EQ(retry_delay(1, "3", o, 0.5).count(), 3000);
  EXPECT_EQ(retry_delay(1, "3600", o, 0.5).count(), 10000);
  // Not delta-seconds (an HTTP date, garbage): the backoff applies.
  EXPECT_LE(retry_delay(1, "Wed, 21 Oct 2015 07:28:00 GMT", o, 1.0).count(), 500);
}

}  // namespace
}  // namespace gateway
