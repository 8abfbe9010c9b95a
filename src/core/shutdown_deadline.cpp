#include "gateway/shutdown_deadline.h"

#include <spdlog/spdlog.h>

#include <cstdlib>

namespace gateway {

ShutdownDeadline::ShutdownDeadline(std::chrono::seconds timeout,
                                   std::shared_ptr<spdlog::logger> log)
    : thread_([this, timeout, log = std::move(log)] {
        std::unique_lock lock(mu_);
        if (cv_.wait_for(lock, timeout, [this] { return done_; })) return;
        log->critical("shutdown did not finish within SHUTDOWN_TIMEOUT_SECONDS={}; exiting now",
                      timeout.count());
        log->flush();
        // Destructors could hang on whatever stalled the shutdown; everything durable is durable.
        std::_Exit(1);
      }) {}

ShutdownDeadline::~ShutdownDeadline() {
  {
    std::lock_guard lock(mu_);
    done_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

}  // namespace gateway
