// Which connection losses the reconnect thread has answered. A loss that is reported while a
// reconnect attempt is under way (the new connection dropped at once) must not be forgotten when
// that attempt returns success: a plain "lost" flag cleared after the attempt would lose it, and
// nothing would reconnect again. Losses are counted; an attempt answers the ones counted before it.
//
// Thread-safe: report_loss() from any thread (Paho's callback), the rest from the reconnect
// thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace gateway {

class LossLedger {
 public:
  // A connection was lost (or is being dropped on purpose). Wakes wait_for_loss().
  void report_loss();
  // Blocks until a loss is unanswered or stop() was called; false when stopping.
  bool wait_for_loss();
  // Sleeps `d` unless stop() is called meanwhile; false when stopping.
  bool sleep(std::chrono::milliseconds d);
  // Before a reconnect attempt: the losses it answers.
  std::uint64_t begin_attempt();
  // After a successful attempt begun with `ticket`: true when every loss is answered, false when
  // another one arrived since begin_attempt() (the caller goes round again).
  bool settle(std::uint64_t ticket);
  void stop();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t losses_ = 0;    // guarded by mu_
  std::uint64_t answered_ = 0;  // guarded by mu_
  bool stopping_ = false;       // guarded by mu_
};

}  // namespace gateway
