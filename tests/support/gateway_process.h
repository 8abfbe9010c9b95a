// GatewayProcess: runs a real executable (the mqtt-gateway binary in e2e tests, or a helper
// script) as a child process for the life of the object, with a controlled environment and its
// own working directory, capturing stdout+stderr to a file there. No shell is involved.
// TempDir: a scratch directory removed on destruction.
//
// Not thread-safe: use each object from one thread. All waits are bounded (polled every 20 ms).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gateway::testing {

class TempDir {
 public:
  // Creates <temp_directory_path()>/<prefix>XXXXXX. Throws std::runtime_error on failure.
  explicit TempDir(std::string_view prefix = "gw_test_", bool keep_if_test_failed = true);
  // Removes the directory recursively, unless keep() was called or (keep_if_test_failed) the
  // current test failed: then its path is printed to stderr for the post-mortem.
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  void keep() { keep_ = true; }

 private:
  std::filesystem::path path_;
  bool keep_ = false;
  bool keep_if_test_failed_ = true;
};

class GatewayProcess {
 public:
  // Starts `binary args...` (e2e tests pass the GATEWAY_BINARY macro). The child's environment is
  // exactly `env`, plus PATH from this process unless env has one, plus ASAN_OPTIONS /
  // UBSAN_OPTIONS / LSAN_OPTIONS if set here (sanitizer builds only read them). The working
  // directory is work_dir, or when empty a fresh TempDir owned by this object; pass an existing
  // directory to restart a gateway on the state (spool, logs) a killed one left behind.
  // stdin is /dev/null; stdout and stderr go to output_file() inside the working directory. The
  // child is SIGKILLed if this (forking) thread dies. Throws std::runtime_error if the binary
  // cannot be executed.
  GatewayProcess(std::string binary, std::vector<std::string> args,
                 std::map<std::string, std::string> env, std::filesystem::path work_dir = {});
  // SIGKILLs and reaps the child if it is still running. If the current test failed, prints the
  // tail of the output to stderr and keeps an owned working directory.
  ~GatewayProcess();
  GatewayProcess(const GatewayProcess&) = delete;
  GatewayProcess& operator=(const GatewayProcess&) = delete;

  pid_t pid() const { return pid_; }
  // An owned working directory is deleted with this object. To restart a gateway on what a
  // killed one left, create a TempDir and pass it to both, or take_work_dir() before destroying.
  const std::filesystem::path& work_dir() const { return work_dir_; }
  // Hands over the owned working directory (nullptr if the caller supplied it); work_dir() keeps
  // naming it.
  std::unique_ptr<TempDir> take_work_dir() { return std::move(owned_dir_); }
  // gateway.<n>.out in work_dir(): n counts up so that restarts in one directory keep each run's
  // output apart.
  const std::filesystem::path& output_file() const { return output_file_; }

  // True until the child has exited (reaps it when it has).
  bool running();
  // Sends sig to the child. Returns false (and sends nothing) once the child has been reaped.
  bool kill(int sig);
  // Waits up to timeout for the child to exit. Returns its exit code, or -N if signal N killed
  // it; std::nullopt if it is still running after the timeout.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  // Everything the child has written to stdout and stderr so far.
  std::string output() const;
  // Waits up to timeout for `text` to appear in output(). Returns false at the timeout, or as
  // soon as the child has exited without writing it.
  bool wait_for_output(std::string_view text, std::chrono::milliseconds timeout);

 private:
  // Copies the output and LOG_DIR to $GW_TEST_LOG_ARCHIVE/gateway-<pid>/ when that is set.
  void archive_logs() const;

  std::unique_ptr<TempDir> owned_dir_;
  std::filesystem::path work_dir_;
  std::filesystem::path output_file_;
  pid_t pid_ = -1;
  std::optional<int> exit_status_;  // set once reaped
};

}  // namespace gateway::testing
