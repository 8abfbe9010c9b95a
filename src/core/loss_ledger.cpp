#include "gateway/loss_ledger.h"

#include <algorithm>

namespace gateway {

void LossLedger::report_loss() {
  {
    std::lock_guard lock(mu_);
    ++losses_;
  }
  cv_.notify_all();
}

bool LossLedger::wait_for_loss() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [this] { return stopping_ || losses_ > answered_; });
  return !stopping_;
}

bool LossLedger::sleep(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  return !cv_.wait_for(lock, d, [this] { return stopping_; });
}

std::uint64_t LossLedger::begin_attempt() {
  std::lock_guard lock(mu_);
  return losses_;
}

bool LossLedger::settle(std::uint64_t ticket) {
  std::lock_guard lock(mu_);
  answered_ = std::max(answered_, ticket);
  return losses_ <= answered_;
}

void LossLedger::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

}  // namespace gateway
