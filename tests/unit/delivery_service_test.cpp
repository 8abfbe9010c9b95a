// How delivery outcomes are classified and how long a failed delivery waits.
#include "gateway/delivery_service.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <numeric>
#include <set>
#include <thread>

#include "fakes/fake_delivery_repository.h"
#include "fakes/fake_http_poster.h"
#include "gateway/errors.h"
#include "support/eventually.h"

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

// ---------------------------------------------------------------------------------------------
// The service's error handling against an in-memory outbox that fails on command: an outbox row
// leaves only when the endpoint took it or its dead letter is written; every database error,
// known or not, leaves it where it is.

namespace gateway {
namespace {

using testing::eventually;
using testing::FakeDeliveryRepository;
using testing::FakeHttpPoster;
using namespace std::chrono_literals;

class SharedRepository final : public DeliveryRepository {
 public:
  explicit SharedRepository(FakeDeliveryRepository& r) : r_(r) {}
  std::vector<DueFlow> pending_flows(std::string_view owner) override {
    return r_.pending_flows(owner);
  }
  bool claim(std::int64_t id, std::string_view owner, std::int64_t ttl_ms) override {
    return r_.claim(id, owner, ttl_ms);
  }
  void release(std::int64_t id, std::string_view owner) override { r_.release(id, owner); }
  std::optional<DeliveryTarget> delivery_target(std::int64_t id) override {
    return r_.delivery_target(id);
  }
  std::vector<PendingDelivery> next_deliveries(std::int64_t id, std::int64_t after,
                                               std::size_t limit) override {
    return r_.next_deliveries(id, after, limit);
  }
  void delivered(std::int64_t id, std::int64_t first, std::int64_t last) override {
    r_.delivered(id, first, last);
  }
  void retry_later(const PendingDelivery& d, int status, std::string_view error) override {
    r_.retry_later(d, status, error);
  }
  void give_up(const PendingDelivery& d, int status, std::string_view reason) override {
    r_.give_up(d, status, reason);
  }

 private:
  FakeDeliveryRepository& r_;
};

class SharedPoster final : public HttpPoster {
 public:
  explicit SharedPoster(FakeHttpPoster& p) : p_(p) {}
  HttpResult post(const HttpRequest& r) override { return p_.post(r); }

 private:
  FakeHttpPoster& p_;
};

class DeliveryServiceTest : public ::testing::Test {
 protected:
  DeliveryServiceTest() {
    outbox_.set_target(1, DeliveryTarget{"hook", "http://127.0.0.1:9/x"});
    options_.workers = 2;
    options_.poll = 5ms;
    options_.retry_initial = 5ms;
    options_.retry_max = 20ms;
    options_.db_retry_initial = 5ms;
    options_.db_retry_max = 20ms;
  }
  ~DeliveryServiceTest() override {
    if (service_) service_->stop();
  }

  // Starts a service with options_ (a new instance, with its own lease owner id, if one ran).
  void start() {
    const DeliveryOptions& o = options_;
    service_ = std::make_unique<DeliveryService>(
        [this]() -> std::unique_ptr<DeliveryRepository> {
          std::lock_guard lock(mu_);
          ++connects_;
          if (!connect_errors_.empty()) {
            const int code = connect_errors_.front();
            connect_errors_.pop_front();
            throw DbRefused("connect refused (MySQL error " + std::to_string(code) + ")", code);
          }
          return std::make_unique<SharedRepository>(outbox_);
        },
        [this] { return std::make_unique<SharedPoster>(http_); }, o, metrics_, log_);
    service_->start();
  }

  // The msg_ids of the POSTs, in the order they were sent.
  std::vector<std::int64_t> posted_ids() {
    std::vector<std::int64_t> ids;
    for (const HttpRequest& r : http_.requests()) {
      for (const auto& [k, v] : r.headers) {
        if (k == "X-Gateway-Msg-Id") ids.push_back(std::stoll(v));
      }
    }
    return ids;
  }

  // Every POST carries the key of its message; each of 1..n was POSTed, and a message was POSTed
  // for the first time only after every earlier one (a repeat may come later). Returns how many
  // POSTs were repeats.
  std::size_t expect_all_in_order_with_same_keys(std::int64_t n) {
    std::set<std::int64_t> seen;
    std::size_t repeats = 0;
    for (const HttpRequest& r : http_.requests()) {
      std::string id, key;
      for (const auto& [k, v] : r.headers) {
        if (k == "X-Gateway-Msg-Id") id = v;
        if (k == "Idempotency-Key") key = v;
      }
      EXPECT_EQ(key, "hook:" + id);
      const std::int64_t msg_id = std::stoll(id);
      if (!seen.insert(msg_id).second) {
        ++repeats;
        continue;
      }
      EXPECT_EQ(msg_id, static_cast<std::int64_t>(seen.size())) << "a message overtook another";
    }
    EXPECT_EQ(seen.size(), static_cast<std::size_t>(n));
    return repeats;
  }

  FakeDeliveryRepository outbox_;
  FakeHttpPoster http_;
  Metrics metrics_;
  std::mutex mu_;
  std::deque<int> connect_errors_;  // guarded by mu_
  int connects_ = 0;                // guarded by mu_
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  DeliveryOptions options_;
  std::unique_ptr<DeliveryService> service_;
};

// A call the test holds up until release() (a hook blocks the sidecar's removal), bounded so that
// a failing test cannot hang.
class Gate {
 public:
  void wait() {
    std::unique_lock lock(mu_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait_for(lock, 10s, [this] { return open_; });
  }
  bool entered() {
    std::lock_guard lock(mu_);
    return entered_;
  }
  void release() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;  // guarded by mu_
  bool open_ = false;     // guarded by mu_
};

TEST_F(DeliveryServiceTest, DeliversInOrderAndEmptiesTheOutbox) {
  for (int i = 1; i <= 20; ++i) outbox_.add(1, i, "{}");
  start();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  std::vector<std::int64_t> expected(20);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(posted_ids(), expected);
  ASSERT_TRUE(eventually([&] { return metrics_.posted.load() == 20; }));
  EXPECT_EQ(metrics_.flows()["hook"].posted, 20u);
}

// The removal of delivered rows (a commit) runs beside the POSTs: a slow one does not hold them.
TEST_F(DeliveryServiceTest, PostsContinueWhileARemovalIsSlow) {
  for (int i = 1; i <= 100; ++i) outbox_.add(1, i, "{}");
  Gate gate;
  outbox_.on_call([&](const std::string& method) {
    if (method == "delivered") gate.wait();
  });
  start();
  EXPECT_TRUE(eventually([&] { return http_.count() == 100; }))
      << http_.count() << " POSTs while the first removal is held up";
  // The removal thread may reach its (held) commit only after the last POST (seen under ASan).
  EXPECT_TRUE(eventually([&] { return gate.entered(); }));
  EXPECT_EQ(outbox_.pending(), 100u);
  gate.release();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  std::vector<std::int64_t> expected(100);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(posted_ids(), expected);
  EXPECT_TRUE(eventually([&] { return metrics_.posted.load() == 100; }));
}

// ... but only so far: at most max_unremoved delivered rows are ever left in the outbox, the most
// POSTs a crash could repeat.
TEST_F(DeliveryServiceTest, PostsPauseWhenTheRemovalsFallMaxUnremovedBehind) {
  for (int i = 1; i <= 100; ++i) outbox_.add(1, i, "{}");
  options_.remove_every = 4;
  options_.max_unremoved = 16;
  Gate gate;
  outbox_.on_call([&](const std::string& method) {
    if (method == "delivered") gate.wait();
  });
  start();
  ASSERT_TRUE(eventually([&] { return http_.count() == 16; }));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(http_.count(), 16u) << "POSTed beyond max_unremoved while the removal was held up";
  gate.release();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  std::vector<std::int64_t> expected(100);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(posted_ids(), expected);
}

// The next rows are read after the last one handled, not after the removals: however slow these
// are, nothing is POSTed twice.
TEST_F(DeliveryServiceTest, SlowRemovalsAcrossBatchesPostEachMessageOnce) {
  for (int i = 1; i <= 55; ++i) outbox_.add(1, i, "{}");
  options_.batch = 10;
  options_.remove_every = 4;
  outbox_.on_call([&](const std::string& method) {
    if (method == "delivered") std::this_thread::sleep_for(5ms);
  });
  start();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  std::vector<std::int64_t> expected(55);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(posted_ids(), expected);
}

// A flow that ran dry is looked at again for a poll interval before it is given back: messages
// that arrive meanwhile go out in the same pass, not after the next scan.
TEST_F(DeliveryServiceTest, RowsArrivingJustAfterTheFlowRanDryGoOutInTheSamePass) {
  for (int i = 1; i <= 5; ++i) outbox_.add(1, i, "{}");
  options_.poll = 400ms;
  std::atomic<int> claims{0};
  outbox_.on_call([&](const std::string& method) {
    if (method == "claim") ++claims;
  });
  start();
  ASSERT_TRUE(eventually([&] { return http_.count() == 5; }));
  std::this_thread::sleep_for(20ms);
  for (int i = 6; i <= 10; ++i) outbox_.add(1, i, "{}");
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  EXPECT_EQ(claims.load(), 1) << "the flow was given back and taken again";
  std::vector<std::int64_t> expected(10);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(posted_ids(), expected);
}

// A removal that fails leaves its rows (and those handed over after them) in the outbox: the flow
// stops and they are POSTed again, with the same Idempotency-Key, before anything newer.
TEST_F(DeliveryServiceTest, FailedRemovalRepeatsPostsWithTheSameKeyAndLosesNothing) {
  for (int i = 1; i <= 50; ++i) outbox_.add(1, i, "{}");
  options_.remove_every = 4;
  options_.max_unremoved = 8;  // the bound on what one failed removal may repeat
  std::atomic<int> calls{0};
  outbox_.on_call([&](const std::string& method) {
    if (method != "delivered") return;
    const int n = ++calls;
    if (n == 1 || n == 3) throw DbUnavailable("lost connection (MySQL error 2013)", 2013);
  });
  start();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  const std::size_t repeats = expect_all_in_order_with_same_keys(50);
  EXPECT_GE(repeats, 4u);  // at least the first group, whose removal failed
  EXPECT_LE(repeats, 2 * options_.max_unremoved);
  EXPECT_TRUE(outbox_.rejections().empty());
  EXPECT_TRUE(eventually([&] { return metrics_.posted.load() == 50; }))
      << "counted once, when removed";
}

// stop() waits for the removals handed over, then gives the lease back: a restart repeats nothing.
TEST_F(DeliveryServiceTest, StopWaitsForTheRemovalsInHand) {
  for (int i = 1; i <= 40; ++i) outbox_.add(1, i, "{}");
  options_.remove_every = 64;  // one removal, at the end of the pass
  Gate gate;
  outbox_.on_call([&](const std::string& method) {
    if (method == "delivered") gate.wait();
  });
  start();
  ASSERT_TRUE(eventually([&] { return gate.entered(); }));
  std::thread releaser([&] {
    std::this_thread::sleep_for(100ms);
    gate.release();
  });
  service_->stop();
  releaser.join();
  EXPECT_EQ(outbox_.pending(), 0u) << "stop() returned before the removal committed";
  EXPECT_EQ(outbox_.lease_owner(1), "");
  EXPECT_EQ(http_.count(), 40u);
}

// A removal that fails while stopping leaves its rows in the outbox: the next start POSTs them
// again (same keys, in order) and nothing is lost.
TEST_F(DeliveryServiceTest, RemovalFailingAtStopLeavesTheRowsForTheNextStart) {
  for (int i = 1; i <= 20; ++i) outbox_.add(1, i, "{}");
  options_.remove_every = 64;
  options_.lease = 300ms;  // the failed instance keeps its lease until it runs out
  Gate gate;
  std::atomic<bool> fail{true};
  outbox_.on_call([&](const std::string& method) {
    if (method != "delivered" || !fail) return;
    gate.wait();
    throw DbUnavailable("lost connection (MySQL error 2013)", 2013);
  });
  start();
  ASSERT_TRUE(eventually([&] { return gate.entered(); }));
  std::thread releaser([&] {
    std::this_thread::sleep_for(100ms);
    gate.release();
  });
  service_->stop();
  releaser.join();
  EXPECT_EQ(outbox_.pending(), 20u);
  fail = false;
  start();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  EXPECT_EQ(expect_all_in_order_with_same_keys(20), 20u);
  EXPECT_TRUE(outbox_.rejections().empty());
}

TEST_F(DeliveryServiceTest, RemovalRefusedKeepsTheRowsAndPostsThemAgainInOrder) {
  for (int i = 1; i <= 5; ++i) outbox_.add(1, i, "{}");
  std::atomic<int> refusals{0};
  outbox_.on_call([&](const std::string& method) {
    if (method == "delivered" && refusals++ < 3)
      throw DbRefused("read-only (MySQL error 1290)", 1290);
  });
  start();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  EXPECT_GE(refusals.load(), 3);
  const auto ids = posted_ids();
  // At least once each (same Idempotency-Key on the repeat), never out of order within a pass.
  for (std::int64_t id = 1; id <= 5; ++id) {
    EXPECT_NE(std::find(ids.begin(), ids.end(), id), ids.end()) << id;
  }
  EXPECT_TRUE(outbox_.rejections().empty());
}

TEST_F(DeliveryServiceTest, DeadLetterThatCannotBeWrittenStaysInTheOutbox) {
  outbox_.add(1, 1, "{}");
  http_.set_default_result(FakeHttpPoster::status_result(400));  // permanent: a dead letter
  std::atomic<int> refusals{0};
  outbox_.on_call([&](const std::string& method) {
    if (method == "give_up" && refusals++ < 4)
      throw DbRefused("disk full (MySQL error 1021)", 1021);
  });
  start();
  ASSERT_TRUE(eventually([&] { return refusals.load() >= 4; }));
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  ASSERT_EQ(outbox_.rejections().size(), 1u);
  EXPECT_EQ(outbox_.rejections()[0].msg_id, 1);
}

TEST_F(DeliveryServiceTest, ReconnectRefusedWith1040And1045IsRetried) {
  {
    std::lock_guard lock(mu_);
    connect_errors_ = {1040, 1045, 1040, 1045};
  }
  for (int i = 1; i <= 3; ++i) outbox_.add(1, i, "{}");
  start();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  EXPECT_EQ(posted_ids(), (std::vector<std::int64_t>{1, 2, 3}));
  std::lock_guard lock(mu_);
  EXPECT_GE(connects_, 5);
}

TEST_F(DeliveryServiceTest, UnknownErrorReadingTheOutboxIsRetriedNotFatal) {
  for (int i = 1; i <= 3; ++i) outbox_.add(1, i, "{}");
  std::atomic<int> failures{0};
  outbox_.on_call([&](const std::string& method) {
    if (method == "next_deliveries" && failures++ < 3) throw std::runtime_error("unexpected");
  });
  start();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  EXPECT_EQ(posted_ids(), (std::vector<std::int64_t>{1, 2, 3}));
}

// Two instances (two services) on one outbox: the lease lets one of them deliver a flow at a
// time, so each message is POSTed once and in order.
TEST_F(DeliveryServiceTest, TwoInstancesPostEachMessageOnceInOrder) {
  for (int i = 1; i <= 300; ++i) outbox_.add(1, i, "{}");
  start();
  DeliveryOptions o;
  o.workers = 2;
  o.poll = 1ms;
  DeliveryService other([this] { return std::make_unique<SharedRepository>(outbox_); },
                        [this] { return std::make_unique<SharedPoster>(http_); }, o, metrics_,
                        log_);
  other.start();
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  other.stop();
  std::vector<std::int64_t> expected(300);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(posted_ids(), expected);
  // Given back once the flow is empty (and stayed so for a poll interval).
  EXPECT_TRUE(eventually([&] { return outbox_.lease_owner(1).empty(); }));
}

// A crashed owner's lease runs out and another instance takes the flow over.
TEST_F(DeliveryServiceTest, ExpiredLeaseOfAnotherOwnerIsTakenOver) {
  outbox_.add(1, 1, "{}");
  ASSERT_TRUE(outbox_.claim(1, "crashed-instance", 300));  // it never renews or releases
  start();
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(http_.count(), 0u) << "the lease of a live owner is respected";
  ASSERT_TRUE(eventually([&] { return outbox_.pending() == 0; }));
  EXPECT_EQ(posted_ids(), (std::vector<std::int64_t>{1}));
}

}  // namespace
}  // namespace gateway
