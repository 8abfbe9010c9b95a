#include "gateway/pid_file.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>

#include "gateway/errors.h"

namespace gateway {
namespace {

// What the kernel reports as the daemon's command name (/proc/<pid>/comm: the executable's file
// name, at most 15 characters).
constexpr const char* kDaemonComm = "mqtt-gateway";

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string() + ": " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string trimmed(std::string s) {
  const auto end = s.find_last_not_of(" \t\r\n");
  s.erase(end == std::string::npos ? 0 : end + 1);
  return s;
}

pid_t pid_from(const std::filesystem::path& file) {
  const std::string text = trimmed(read_text(file));
  pid_t pid = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), pid);
  if (ec != std::errc() || end != text.data() + text.size() || pid <= 0) {
    throw Error(file.string() + " does not hold a process id");
  }
  return pid;
}

}  // namespace

std::optional<std::filesystem::path> pid_file_path(const char* runtime_directory) {
  if (runtime_directory == nullptr || *runtime_directory == '\0') return std::nullopt;
  std::string dir(runtime_directory);
  dir = dir.substr(0, dir.find(':'));
  if (dir.empty()) return std::nullopt;
  return std::filesystem::path(dir) / kPidFileName;
}

PidFile::PidFile(std::filesystem::path path) : path_(std::move(path)), pid_(::getpid()) {
  std::filesystem::path tmp = path_;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << pid_ << "\n";
    out.close();
    if (!out) throw Error("cannot write " + tmp.string() + ": " + std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path_, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw Error("cannot write " + path_.string() + ": " + ec.message());
  }
}

PidFile::~PidFile() {
  try {
    // A newer daemon may have taken the file over: leave its pid alone.
    if (pid_from(path_) == pid_) {
      std::error_code ignored;
      std::filesystem::remove(path_, ignored);
    }
  } catch (const std::exception&) {
    // Gone or unreadable already: nothing to remove.
  }
}

std::unique_ptr<PidFile> write_daemon_pid_file(const char* runtime_directory, spdlog::logger& log) {
  const auto path = pid_file_path(runtime_directory);
  if (!path) return nullptr;
  try {
    auto file = std::make_unique<PidFile>(*path);
    log.info("pid file {}", path->string());
    return file;
  } catch (const Error& e) {
    log.warn("no pid file ({}); `flows ... --reload` needs --pid", e.what());
    return nullptr;
  }
}

pid_t send_reload(const DaemonTarget& target, const char* runtime_directory) {
  pid_t pid = 0;
  if (target.pid) {
    pid = *target.pid;
    if (pid <= 0) throw Error("--pid must be a positive process id");
  } else {
    const std::filesystem::path file =
        target.pid_file
            ? *target.pid_file
            : pid_file_path(runtime_directory)
                  .value_or(std::filesystem::path(kDefaultRuntimeDirectory) / kPidFileName);
    try {
      pid = pid_from(file);
    } catch (const Error& e) {
      throw Error(std::string(e.what()) +
                  " (is the gateway running with RUNTIME_DIRECTORY set? else give --pid)");
    }
  }
  std::string comm;
  try {
    comm = trimmed(read_text("/proc/" + std::to_string(pid) + "/comm"));
  } catch (const Error&) {
    throw Error("no process " + std::to_string(pid) + " (the gateway is not running?)");
  }
  if (comm != kDaemonComm) {
    throw Error("process " + std::to_string(pid) + " is '" + comm + "', not " + kDaemonComm);
  }
  if (::kill(pid, SIGHUP) != 0) {
    const int error = errno;
    throw Error("cannot signal process " + std::to_string(pid) + ": " + std::strerror(error) +
                (error == EPERM ? " (run as root or as the gateway's user)" : ""));
  }
  return pid;
}

}  // namespace gateway
