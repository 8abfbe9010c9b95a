// The daemon's pid file, and sending the daemon SIGHUP (`mqtt-gateway flows ... --reload`).
//
// The daemon writes its pid to $RUNTIME_DIRECTORY/mqtt-gateway.pid when RUNTIME_DIRECTORY is set
// (systemd sets it for a unit with RuntimeDirectory=; elsewhere set it yourself) and removes the
// file when it stops cleanly. A file left by a killed daemon is harmless: send_reload() signals
// a pid only if /proc/<pid>/comm says it is an mqtt-gateway process. No new setting: the
// location follows the systemd convention, and `--pid` covers everything else.
// Main thread only; no shared state.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <optional>

namespace spdlog {
class logger;
}

namespace gateway {

inline constexpr const char* kPidFileName = "mqtt-gateway.pid";
// Where the subcommands look when RUNTIME_DIRECTORY is not set in their environment (the
// operator's shell): what systemd makes of RuntimeDirectory=mqtt-gateway.
inline constexpr const char* kDefaultRuntimeDirectory = "/run/mqtt-gateway";

// $RUNTIME_DIRECTORY/mqtt-gateway.pid (the first directory when the variable lists several,
// separated by ':'); std::nullopt when `runtime_directory` is null or empty.
std::optional<std::filesystem::path> pid_file_path(const char* runtime_directory);

// Writes the calling process's pid to `path` (a temporary file renamed over it, so a reader never
// sees a partial one) and removes it on destruction if it still holds that pid.
class PidFile {
 public:
  // Throws Error naming the path and the system error.
  explicit PidFile(std::filesystem::path path);
  ~PidFile();
  PidFile(const PidFile&) = delete;
  PidFile& operator=(const PidFile&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  pid_t pid_;
};

// The daemon's pid file at start-up: written when RUNTIME_DIRECTORY (`runtime_directory`) is set,
// logged either way; a file that cannot be written is a warning, not a reason to stop (--reload
// then needs --pid). nullptr when there is none.
std::unique_ptr<PidFile> write_daemon_pid_file(const char* runtime_directory, spdlog::logger& log);

// Which daemon `--reload` signals: `pid` if given, else the pid in `pid_file` if given, else in
// pid_file_path(runtime_directory), else in kDefaultRuntimeDirectory/mqtt-gateway.pid.
struct DaemonTarget {
  std::optional<pid_t> pid;
  std::optional<std::filesystem::path> pid_file;
};

// Sends SIGHUP to the daemon (it reloads the flows at once and reopens its log file); returns its
// pid. Throws Error with a one-line reason: no readable pid file, not a number, no such process
// (a stale file), not an mqtt-gateway process, not permitted (run as root or as the gateway's
// user).
pid_t send_reload(const DaemonTarget& target, const char* runtime_directory);

}  // namespace gateway
