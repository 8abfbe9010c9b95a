// The reconnect bookkeeping, with the interleavings that lost a reconnect before.
#include "gateway/loss_ledger.h"

#include <gtest/gtest.h>

#include <thread>

namespace gateway {
namespace {

using namespace std::chrono_literals;

TEST(LossLedgerTest, ASuccessfulAttemptAnswersTheLossBeforeIt) {
  LossLedger ledger;
  ledger.report_loss();
  const auto ticket = ledger.begin_attempt();
  EXPECT_TRUE(ledger.settle(ticket));
}

// The new connection dropped between connect() returning and the thread marking success: the
// loss must stay unanswered, so that the thread reconnects again.
TEST(LossLedgerTest, ALossDuringTheAttemptIsNotForgotten) {
  LossLedger ledger;
  ledger.report_loss();
  const auto ticket = ledger.begin_attempt();
  ledger.report_loss();  // on Paho's thread, while the attempt was in progress
  EXPECT_FALSE(ledger.settle(ticket));
  // ... and the reconnect thread does not go to sleep on it.
  std::thread stopper([&] {
    std::this_thread::sleep_for(500ms);
    ledger.stop();
  });
  const auto started = std::chrono::steady_clock::now();
  EXPECT_TRUE(ledger.wait_for_loss());
  EXPECT_LT(std::chrono::steady_clock::now() - started, 250ms);
  ledger.stop();
  stopper.join();
}

TEST(LossLedgerTest, WaitsForALossAndWakesOnStop) {
  LossLedger ledger;
  std::thread reporter([&] {
    std::this_thread::sleep_for(20ms);
    ledger.report_loss();
  });
  EXPECT_TRUE(ledger.wait_for_loss());
  reporter.join();
  EXPECT_TRUE(ledger.settle(ledger.begin_attempt()));
  std::thread stopper([&] {
    std::this_thread::sleep_for(20ms);
    ledger.stop();
  });
  EXPECT_FALSE(ledger.wait_for_loss());
  EXPECT_FALSE(ledger.sleep(10s));
  stopper.join();
}

}  // namespace
}  // namespace gateway
