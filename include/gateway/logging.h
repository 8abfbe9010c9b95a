// Log set-up: one rotating file in LOG_DIR plus stderr (for journald), each line with time, level
// and component ("[mqtt]", "[pipeline]"...). Built once in main; components receive their logger.
#pragma once

#include <memory>
#include <string>

#include "gateway/settings.h"

namespace spdlog {
class logger;
}

namespace gateway {

class Logging {
 public:
  // Creates LOG_DIR if missing. Throws ConfigError naming LOG_DIR when it cannot be written.
  explicit Logging(const Settings& settings);
  ~Logging();  // flushes
  Logging(const Logging&) = delete;
  Logging& operator=(const Logging&) = delete;

  // A logger for one component; all share the same sinks. Thread-safe.
  std::shared_ptr<spdlog::logger> get(const std::string& component);
  // Reopens the log file (after logrotate moved it away). Thread-safe.
  void reopen();
  void flush();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gateway
