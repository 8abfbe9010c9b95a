#include "support/gateway_process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/close_range.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace gateway::testing {

namespace {

constexpr std::chrono::milliseconds kPollInterval{20};
constexpr std::size_t kOutputTailOnFailure = 8192;
constexpr const char* kPassThroughVariables[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"};

std::runtime_error system_failure(const std::string& what, int error) {
  return std::runtime_error(what + ": " + std::strerror(error));
}

bool current_test_failed() {
  return ::testing::UnitTest::GetInstance()->current_test_info() != nullptr &&
         ::testing::Test::HasFailure();
}

// A file descriptor closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

int decode_wait_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;  // not reachable without WUNTRACED
}

std::filesystem::path next_output_file(const std::filesystem::path& dir) {
  for (int n = 1;; ++n) {
    auto candidate = dir / ("gateway." + std::to_string(n) + ".out");
    if (!std::filesystem::exists(candidate)) return candidate;
  }
}

// Runs in the forked child of a multi-threaded parent: async-signal-safe calls only, no
// allocation. Never returns.
[[noreturn]] void exec_child(pid_t parent, int null_fd, int out_fd, int error_fd, const char* dir,
                             const char* binary, char* const argv[], char* const envp[]) {
  // Do not outlive the test if it crashes; the check closes the race with an early parent death.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);

  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  for (const int sig : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD}) {
    ::signal(sig, SIG_DFL);
  }

  int error = 0;
  if (::dup2(null_fd, STDIN_FILENO) < 0 || ::dup2(out_fd, STDOUT_FILENO) < 0 ||
      ::dup2(out_fd, STDERR_FILENO) < 0 || ::chdir(dir) < 0) {
    error = errno;
  } else {
    // Sockets the test process holds (broker, database) must not leak into the child.
    ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    ::execve(binary, argv, envp);
    error = errno;
  }
  [[maybe_unused]] const ssize_t ignored = ::write(error_fd, &error, sizeof error);
  ::_exit(127);
}

}  // namespace

TempDir::TempDir(std::string_view prefix, bool keep_if_test_failed)
    : keep_if_test_failed_(keep_if_test_failed) {
  std::string pattern = (std::filesystem::temp_directory_path() / prefix).string() + "XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) throw system_failure("mkdtemp " + pattern, errno);
  path_ = pattern;
}

TempDir::~TempDir() {
  if (keep_ || (keep_if_test_failed_ && current_test_failed())) {
    std::cerr << "[ keeping  ] " << path_.string() << "\n";
    return;
  }
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

GatewayProcess::GatewayProcess(std::string binary, std::vector<std::string> args,
                               std::map<std::string, std::string> env,
                               std::filesystem::path work_dir) {
  if (binary.empty()) throw std::runtime_error("GatewayProcess: no binary given");
  if (work_dir.empty()) {
    owned_dir_ = std::make_unique<TempDir>("gw_process_");
    work_dir_ = owned_dir_->path();
  } else {
    work_dir_ = std::filesystem::absolute(work_dir);
    std::filesystem::create_directories(work_dir_);
  }
  output_file_ = next_output_file(work_dir_);

  if (env.find("PATH") == env.end()) {
    const char* path = std::getenv("PATH");
    env.emplace("PATH", path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  }
  for (const char* name : kPassThroughVariables) {
    if (const char* value = std::getenv(name); value != nullptr) env.emplace(name, value);
  }

  // Everything the child needs is built before fork(): it may not allocate afterwards.
  std::vector<std::string> env_lines;
  env_lines.reserve(env.size());
  for (const auto& [name, value] : env) env_lines.push_back(name + "=" + value);
  args.insert(args.begin(), binary);
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& line : env_lines) envp.push_back(line.data());
  envp.push_back(nullptr);
  const std::string dir = work_dir_.string();

  Fd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (null_fd.get() < 0) throw system_failure("open /dev/null", errno);
  Fd out_fd(::open(output_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (out_fd.get() < 0) throw system_failure("open " + output_file_.string(), errno);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) < 0) throw system_failure("pipe2", errno);
  Fd error_read(pipe_fds[0]);
  Fd error_write(pipe_fds[1]);

  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child < 0) throw system_failure("fork", errno);
  if (child == 0) {
    exec_child(parent, null_fd.get(), out_fd.get(), error_write.get(), dir.c_str(), binary.c_str(),
               argv.data(), envp.data());
  }
  pid_ = child;
  error_write.reset();

  // The pipe closes on a successful exec (CLOEXEC); otherwise the child sends its errno.
  int child_errno = 0;
  ssize_t got = 0;
  do {
    got = ::read(error_read.get(), &child_errno, sizeof child_errno);
  } while (got < 0 && errno == EINTR);
  if (got > 0) {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    exit_status_ = decode_wait_status(status);
    throw system_failure("cannot execute " + binary + " in " + dir, child_errno);
  }
}

GatewayProcess::~GatewayProcess() {
  if (!exit_status_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  archive_logs();
  if (current_test_failed()) {
    std::string text = output();
    if (text.size() > kOutputTailOnFailure) text.erase(0, text.size() - kOutputTailOnFailure);
    std::cerr << "[ output   ] of pid " << pid_ << " (" << output_file_.string() << "), last "
              << text.size() << " bytes:\n"
              << text << "\n[ end      ]\n";
  }
}

void GatewayProcess::archive_logs() const {
  // scripts/test.sh sets GW_TEST_LOG_ARCHIVE so that, after the whole suite, it can scan every
  // log the gateway wrote (for leaked passwords) although the working directories are gone.
  const char* archive = std::getenv("GW_TEST_LOG_ARCHIVE");
  if (archive == nullptr || *archive == '\0') return;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path dest = fs::path(archive) / ("gateway-" + std::to_string(pid_));
  fs::create_directories(dest, ec);
  fs::copy(output_file_, dest / (output_file_.filename().string() + ".log"),
           fs::copy_options::overwrite_existing, ec);
  if (fs::is_directory(work_dir_ / "log", ec)) {
    fs::copy(work_dir_ / "log", dest / "log",
             fs::copy_options::recursive | fs::copy_options::overwrite_existing, ec);
  }
}

bool GatewayProcess::running() {
  if (exit_status_) return false;
  int status = 0;
  const pid_t done = ::waitpid(pid_, &status, WNOHANG);
  if (done == pid_) {
    exit_status_ = decode_wait_status(status);
    return false;
  }
  return true;
}

bool GatewayProcess::kill(int sig) {
  if (exit_status_) return false;
  return ::kill(pid_, sig) == 0;
}

std::optional<int> GatewayProcess::wait_exit(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (running()) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(kPollInterval);
  }
  return exit_status_;
}

std::string GatewayProcess::output() const {
  std::ifstream in(output_file_, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

bool GatewayProcess::wait_for_output(std::string_view text, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const bool alive = running();  // before reading, so a final write is not missed
    if (output().find(text) != std::string::npos) return true;
    if (!alive || std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(kPollInterval);
  }
}

}  // namespace gateway::testing
