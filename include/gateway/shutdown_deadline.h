// ShutdownDeadline: bounds the daemon's shutdown (SHUTDOWN_TIMEOUT_SECONDS). Constructed when
// shutdown starts; unless destroyed within the timeout, its own thread logs why and ends the
// process with exit status 1. What was not processed by then stays in the spool for the next start.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

namespace spdlog {
class logger;
}

namespace gateway {

class ShutdownDeadline {
 public:
  ShutdownDeadline(std::chrono::seconds timeout, std::shared_ptr<spdlog::logger> log);
  ~ShutdownDeadline();  // in time: cancels the deadline and joins its thread
  ShutdownDeadline(const ShutdownDeadline&) = delete;
  ShutdownDeadline& operator=(const ShutdownDeadline&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace gateway
