// Log set-up: one size-rotated file in LOG_DIR (mqtt-gateway.log, rotated at LOG_MAX_BYTES to
// mqtt-gateway.1.log ... mqtt-gateway.N.log, N = LOG_MAX_FILES; the oldest is deleted) plus stderr,
// each line with level and component ("[mqtt]", "[pipeline]"...) at LOG_LEVEL. File lines carry a
// timestamp; when stderr is systemd's journal stream (JOURNAL_STREAM) its lines carry a "<N>"
// syslog priority instead, which journald turns into the entry's priority.
// Built once in main; components receive their logger. Thread-safe.
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
  // Creates LOG_DIR if missing. Throws Error (exit status 1) naming LOG_DIR when it cannot be
  // written.
  explicit Logging(const Settings& settings);
  ~Logging();  // flushes
  Logging(const Logging&) = delete;
  Logging& operator=(const Logging&) = delete;

  // A logger for one component; all share the same sinks. Thread-safe.
  std::shared_ptr<spdlog::logger> get(const std::string& component);
  // Reopens the log file (after logrotate moved it away; SIGHUP). Returns false, after logging
  // why, when the file cannot be opened: logging then goes on into the old file. Never throws.
  bool reopen();
  void flush();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace gateway
