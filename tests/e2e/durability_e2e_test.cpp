// Never drop what the database or the disk refused (issue 9), with real processes: the database
// switched read-only under load, a flow row locked past the gateway's lock wait timeout, kill -9
// twice while the database is down, the spool's disk full and then freed, a 100 MiB message, and
// a power loss that leaves the spool shorter than what the database committed.
//
// Load scales with GW_FAULT_SCALE (default 1: a few thousand messages per test). Every test prints
// one line "[fault] <name>: published P stored S lost L duplicated D ..." and expects 0 lost and
// 0 duplicated. Helpers: fault_helpers.h.
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "e2e/fault_helpers.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr std::int64_t kMiB = 1024 * 1024;

std::string lowercase(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// The first `name` in $PATH, or an empty path.
fs::path find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    const fs::path candidate = fs::path(dir) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

// A warning line of the gateway's output: "<4>..." (journal format) or "... warn[ing] [...".
bool is_warning(const std::string& line) {
  return line.rfind("<4>", 0) == 0 || line.find(" warning [") != std::string::npos ||
         line.find(" warn  [") != std::string::npos || line.find(" warn [") != std::string::npos;
}

std::string yes_no(bool b) { return b ? "yes" : "no"; }

std::int64_t ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// SET GLOBAL read_only = ON (as root) for the life of the object, or until end(). The gateway's
// user (GW_TEST_DB_USER: ALL on gw%.* only, no SUPER or READ_ONLY ADMIN, see
// scripts/services.sh) can then read but every write fails with error 1290.
class ReadOnlyDatabase {
 public:
  explicit ReadOnlyDatabase(SqlSession& root) : root_(root) {
    root_.execute("SET GLOBAL read_only = ON");
    on_ = true;
  }
  ~ReadOnlyDatabase() {
    try {
      end();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "SET GLOBAL read_only = OFF failed: " << e.what();
    }
  }
  ReadOnlyDatabase(const ReadOnlyDatabase&) = delete;
  ReadOnlyDatabase& operator=(const ReadOnlyDatabase&) = delete;

  void end() {
    if (!on_) return;
    root_.execute("SET GLOBAL read_only = OFF");
    on_ = false;
  }

 private:
  SqlSession& root_;
  bool on_ = false;
};

// A tmpfs of the given options mounted on `dir` for the life of the object (lazily unmounted, so
// a process still using it cannot keep it). Check mounted(); error() is the errno of mount(2).
class TmpfsMount {
 public:
  TmpfsMount(const fs::path& dir, const std::string& options) : dir_(dir) {
    if (::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = errno;
    }
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;

  bool mounted() const { return mounted_; }
  int error() const { return error_; }

 private:
  fs::path dir_;
  bool mounted_ = false;
  int error_ = 0;
};

// Bytes an unprivileged writer may still use on the file system of `path`.
std::uint64_t free_bytes(const fs::path& path) {
  struct statvfs st {};
  if (::statvfs(path.c_str(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
}

// Writes up to `size` bytes to a new file `path` (stops early at ENOSPC); returns what it wrote.
std::uint64_t write_filler(const fs::path& path, std::uint64_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return 0;
  const std::string block(64 * 1024, 'f');
  std::uint64_t written = 0;
  while (written < size) {
    const std::size_t n =
        static_cast<std::size_t>(std::min<std::uint64_t>(block.size(), size - written));
    const ssize_t w = ::write(fd, block.data(), n);
    if (w <= 0) break;
    written += static_cast<std::uint64_t>(w);
  }
  ::close(fd);
  return written;
}

class DurabilityE2e : public FaultFixture {
 protected:
  // Adds a STORE_DB flow on <prefix>/<code> without changing the one-flow helpers' flow.
  std::int64_t add_other_flow(const std::string& code) {
    return db_.insert_flow(code, prefix_ + "/" + code, "STORE_DB", std::nullopt);
  }

  // Serves METRICS_ADDRESS on a free port; returns it.
  int enable_metrics() {
    metrics_port_ = free_port();
    extra_env_["METRICS_ADDRESS"] = "127.0.0.1:" + std::to_string(metrics_port_);
    return metrics_port_;
  }

  std::int64_t rejected_count() { return count("SELECT COUNT(*) FROM rejected_messages"); }

  // One start of the gateway in `dir`, as systemd makes it: waits until it is ready, has exited
  // (exit code in *code), or is still starting after `timeout` (neither: then it is alive).
  enum class Start { kReady, kExited, kStarting };
  Start start_attempt(const fs::path& dir, std::optional<int>* code,
                      std::chrono::milliseconds timeout = 10s) {
    gateway_.reset();
    gateway_ =
        std::make_unique<GatewayProcess>(GATEWAY_BINARY, std::vector<std::string>{}, env(), dir);
    if (gateway_->wait_for_output("[main] ready", timeout)) return Start::kReady;
    *code = gateway_->wait_exit(2s);
    return code->has_value() ? Start::kExited : Start::kStarting;
  }

  int metrics_port_ = 0;
};

// a. The database goes read-only for ~8 s while messages arrive at a steady rate. Every write of
// the gateway's user fails (error 1290) but nothing is wrong with the messages: the flow must be
// held and retried, never turned into dead letters or dropped. Health says so while it lasts.
TEST_F(DurabilityE2e, DatabaseReadOnlyUnderLoad) {
  const int total = scaled(6000);
  const double rate = 1000.0 * std::min(fault_scale(), 2.0);
  const int port = enable_metrics();
  extra_env_["HEALTH_UNREACHABLE_SECONDS"] = "2";
  const std::string code = "rohold";
  add_flow(code);
  SqlSession root(SqlSession::As::kRoot);
  root.execute("SET GLOBAL read_only = OFF");  // a crashed earlier run may have left it on
  start_gateway();
  const pid_t pid = gateway_->pid();
  ASSERT_TRUE(wait_until([&] { return http_get(port, "/healthz").status == 200; }, 10s));

  ChunkedPublisher pub(topic_, total, 50, 0ms, 16, rate);
  std::this_thread::sleep_for(1s);
  const std::int64_t stored_before = count(seq_rows_sql());
  bool saw_503 = false;
  std::string body_503;
  double held_max = -1;  // -1: gateway_flows_held never present
  std::string metrics_text;
  {
    ReadOnlyDatabase read_only(root);
    const auto since = Clock::now();
    while (Clock::now() - since < 8s) {
      ASSERT_TRUE(gateway_->running()) << gateway_->output();
      const HttpAnswer health = http_get(port, "/healthz");
      if (health.status == 503 && !saw_503) {
        saw_503 = true;
        body_503 = health.body;
      }
      const HttpAnswer metrics = http_get(port, "/metrics");
      if (const auto held = metric_sum(metrics.body, "gateway_flows_held")) {
        held_max = std::max(held_max, *held);
      }
      metrics_text = metrics.body;
      std::this_thread::sleep_for(200ms);
    }
    read_only.end();
  }
  const auto writable_at = Clock::now();
  HttpAnswer health;
  const bool healthy_again = wait_until(
      [&] {
        health = http_get(port, "/healthz");
        return health.status == 200;
      },
      30s);
  const auto healthy_ms = ms_since(writable_at);
  ASSERT_TRUE(pub.wait_done(120s));
  ASSERT_EQ(pub.error(), "");

  const Tally t = drain_and_tally(
      "db-read-only", pub.published(), total, 60s,
      " rejected " + std::to_string(rejected_count()) + " (read-only 8 s after " +
          std::to_string(stored_before) +
          " stored; healthz 503 while read-only: " + yes_no(saw_503) + ", gateway_flows_held max " +
          (held_max < 0 ? std::string("absent") : std::to_string(static_cast<int>(held_max))) +
          ", healthz 200 " + std::to_string(healthy_ms) + " ms after; gateway VmHWM " +
          std::to_string(proc_status_kb(pid, "VmHWM") / 1024) + " MiB)");
  expect_exactly_once(t, total);
  EXPECT_EQ(rejected_count(), 0) << "messages the read-only database refused became dead letters";

  EXPECT_TRUE(saw_503) << "/healthz never answered 503 while the database was read-only";
  EXPECT_NE(body_503.find(code), std::string::npos) << "healthz body: " << body_503;
  EXPECT_NE(body_503.find("held"), std::string::npos) << "healthz body: " << body_503;
  EXPECT_TRUE(healthy_again) << health.status << " " << health.body;
  EXPECT_GE(held_max, 1.0) << "no gateway_flows_held >= 1 in /metrics while read-only:\n"
                           << metrics_text;
  EXPECT_EQ(metric_sum(http_get(port, "/metrics").body, "gateway_flows_held").value_or(0), 0.0);

  // One line when the flow is held, one when it recovers: not one per message or retry (the
  // periodic summary line may count held flows; it is not one of them).
  const std::string out = gateway_->output();
  std::vector<std::string> held_lines;
  for (std::string& line : lines_with(out, {"held", code})) {
    if (line.find("summary:") == std::string::npos) held_lines.push_back(std::move(line));
  }
  const auto recovered_lines = lines_with(out, {"recovered"});
  EXPECT_EQ(held_lines.size(), 1u) << ::testing::PrintToString(held_lines);
  if (!held_lines.empty()) {
    EXPECT_TRUE(is_warning(held_lines.front())) << "not a warning: " << held_lines.front();
  }
  EXPECT_EQ(recovered_lines.size(), 1u) << ::testing::PrintToString(recovered_lines);
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

// b. Another session holds flow A's row lock for 25 s, past the gateway's innodb_lock_wait_timeout
// (20 s). A's messages wait (and are retried after error 1205); B's must not wait behind them,
// even when A's backlog is larger than the pipeline's in-flight cap (20,000 messages / 32 MiB
// today; A alone brings ~37 MiB).
TEST_F(DurabilityE2e, FlowRowLockedPastLockWaitTimeout) {
  const int a_total = scaled(600);
  const int b_total = scaled(2000);
  constexpr std::size_t kBigPad = 64 * 1024 - 64;  // A's payloads: just under 64 KiB
  extra_env_["MAX_BATCH"] = "8";
  const std::int64_t a = add_other_flow("locka");
  const std::int64_t b = add_other_flow("lockb");
  const std::string topic_a = prefix_ + "/locka";
  const std::string topic_b = prefix_ + "/lockb";
  start_gateway();

  SqlSession locker(SqlSession::As::kTestUser, db_.name());
  locker.execute("START TRANSACTION");
  ASSERT_EQ(
      locker.query("SELECT id FROM flows WHERE id = " + std::to_string(a) + " FOR UPDATE").size(),
      1u);
  const auto locked_at = Clock::now();
  {
    MqttTestClient client(test_services().mqtt_host, test_services().mqtt_port);
    client.publish_many(seq_messages(topic_a, 1, a_total, kBigPad), 1, kPublishWindow);
    client.publish_many(seq_messages(topic_b, 1, b_total, 16), 1, kPublishWindow);
  }
  const auto published_ms = ms_since(locked_at);
  // B, while A stays locked (until 24 s after the lock was taken).
  const auto b_deadline = locked_at + 24s;
  bool b_done = false;
  while (!b_done && Clock::now() < b_deadline) {
    b_done = count(seq_rows_sql(b)) >= b_total;
    if (!b_done) std::this_thread::sleep_for(100ms);
  }
  const auto b_ms = ms_since(locked_at);
  const std::int64_t b_while_locked = count(seq_rows_sql(b));
  const std::int64_t a_while_locked = count(seq_rows_sql(a));
  ASSERT_TRUE(gateway_->running()) << gateway_->output();
  // Hold the lock past the lock wait timeout, then let go.
  std::this_thread::sleep_until(locked_at + 25s);
  const std::size_t lock_waits = lines_with(gateway_->output(), {"1205"}).size();
  locker.execute("ROLLBACK");
  const auto released_at = Clock::now();

  const Tally ta = drain_and_tally("row-lock A", a_total, a_total, 120s,
                                   " (flow row locked 25 s; " + std::to_string(a_while_locked) +
                                       " stored while locked, " + std::to_string(lock_waits) +
                                       " log lines with error 1205)",
                                   a);
  const auto a_ms = ms_since(released_at);
  const Tally tb =
      drain_and_tally("row-lock B", b_total, b_total, 30s,
                      " (" + std::to_string(b_while_locked) + " of " + std::to_string(b_total) +
                          " stored while A was locked, " + (b_done ? "all " : "not all ") +
                          std::to_string(b_ms) + " ms after the lock; published in " +
                          std::to_string(published_ms) + " ms; A drained " + std::to_string(a_ms) +
                          " ms after the release) rejected " + std::to_string(rejected_count()),
                      b);
  EXPECT_EQ(b_while_locked, b_total) << "flow B waited behind flow A's locked row";
  EXPECT_EQ(a_while_locked, 0) << "flow A stored rows while its row was locked?";
  expect_exactly_once(ta, a_total);
  expect_exactly_once(tb, b_total);
  EXPECT_EQ(rejected_count(), 0);
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

// c. kill -9 twice while the database is down. The gateway reads its broker and flows from the
// database, and today exits 1 at start-up without one; systemd (Restart=on-failure, RestartSec=2)
// then starts it again and again. The test does what systemd does: it restarts the gateway every
// 2 s while the database is down, publishes more, and SIGKILLs whatever gateway is alive at that
// moment (a ready one if the gateway learns to start without its database; otherwise a start
// attempt, if one is running). Then the database comes back, systemd's next start succeeds, and
// every message of both batches must be stored exactly once. Whether the second kill hit a
// running gateway is reported, not required.
TEST_F(DurabilityE2e, Kill9TwiceWhileDatabaseDown) {
  const int first = scaled(1500);
  const int second = scaled(1500);
  const int total = first + second;
  extra_env_["SPOOL_SEGMENT_BYTES"] = "64K";
  add_flow("k9db");
  TempDir dir("gw_dur_k9db_");
  start_gateway(dir.path());
  const fs::path spool = dir.path() / "spool";

  stop_db();
  publisher().publish_many(seq_messages(topic_, 1, first, 16), 1, kPublishWindow);
  ASSERT_TRUE(wait_until([&] { return spool_records(spool).size() >= std::size_t(first); }, 30s))
      << spool_records(spool).size() << " records spooled of " << first;
  std::this_thread::sleep_for(300ms);  // let the last acknowledgement reach the broker
  ASSERT_TRUE(gateway_->kill(SIGKILL));
  ASSERT_EQ(gateway_->wait_exit(10s), -SIGKILL);

  // systemd's restarts while the database is down, for about 6 s.
  int attempts = 0;
  std::string exit_codes;
  Start state = Start::kExited;
  const auto until = Clock::now() + 6s;
  while (Clock::now() < until) {
    ++attempts;
    std::optional<int> code;
    state = start_attempt(dir.path(), &code, 5s);
    if (state != Start::kExited) break;
    exit_codes += (exit_codes.empty() ? "" : ",") + std::to_string(*code);
    EXPECT_NE(*code, 2) << "a setting error, not the database:\n" << gateway_->output();
    std::this_thread::sleep_for(2s);  // RestartSec
  }
  publisher().publish_many(seq_messages(topic_, first + 1, total, 16), 1, kPublishWindow);
  bool second_kill_hit = false;
  if (state == Start::kReady) {
    // It runs without its database: it spools the second batch, then dies.
    EXPECT_TRUE(wait_until([&] { return spool_records(spool).size() >= std::size_t(total); }, 30s))
        << spool_records(spool).size() << " records spooled of " << total;
    std::this_thread::sleep_for(300ms);
  }
  if (gateway_->running()) {
    second_kill_hit = gateway_->kill(SIGKILL);
    gateway_->wait_exit(10s);
  }

  start_db();
  // systemd's next starts, now with the database.
  bool ready = false;
  for (int i = 0; i < 5 && !ready; ++i) {
    std::optional<int> code;
    ready = start_attempt(dir.path(), &code, 20s) == Start::kReady;
    if (!ready) std::this_thread::sleep_for(2s);
  }
  ASSERT_TRUE(ready) << gateway_->output();

  const std::string how = state == Start::kReady      ? "ready without the database"
                          : state == Start::kStarting ? "still starting without the database"
                                                      : "exits at start-up without the database";
  const Tally t = drain_and_tally(
      "kill9-db-down", total, total, 90s,
      " (kills " + std::to_string(second_kill_hit ? 2 : 1) +
          ", the 2nd hit a running gateway: " + yes_no(second_kill_hit) + "; " +
          std::to_string(attempts) + " start(s) while the database was down: " + how +
          (exit_codes.empty() ? "" : ", exit codes " + exit_codes) + ")" +
          log_evidence(everything_logged(dir.path())));
  expect_exactly_once(t, total);
  EXPECT_EQ(rejected_count(), 0);
  stop_gateway_cleanly();
}

// d. The spool's file system is full. The message callback cannot spool: it must neither
// acknowledge the message nor let the error escape into Paho (std::terminate), but wait, report
// it (log, /healthz) and go on once there is room again.
TEST_F(DurabilityE2e, SpoolDiskFullThenFreed) {
  const int total = scaled(2000);
  TempDir mount_dir("gw_dur_tmpfs_");
  TmpfsMount tmpfs(mount_dir.path(), "size=2m,mode=0700");
  if (!tmpfs.mounted()) {
    if (tmpfs.error() == EPERM) {
      GTEST_SKIP() << "cannot mount a tmpfs here (EPERM: not root, or no CAP_SYS_ADMIN)";
    }
    FAIL() << "mount tmpfs on " << mount_dir.path() << ": " << std::strerror(tmpfs.error());
  }
  const fs::path spool = mount_dir.path() / "spool";
  const fs::path filler = mount_dir.path() / "filler";
  const int port = enable_metrics();
  extra_env_["HEALTH_UNREACHABLE_SECONDS"] = "2";
  extra_env_["SPOOL_DIR"] = spool.string();
  extra_env_["SPOOL_SEGMENT_BYTES"] = "64K";  // more than is left: the segment cannot roll
  add_flow("diskfull");
  TempDir dir("gw_dur_diskfull_");
  start_gateway(dir.path());
  const pid_t pid = gateway_->pid();

  // Leave ~24 KiB: room for a couple of hundred records, not for the messages below.
  const std::uint64_t free_before = free_bytes(mount_dir.path());
  ASSERT_GT(free_before, 256u * 1024);
  const std::uint64_t filled = write_filler(filler, free_before - 24 * 1024);
  const std::uint64_t free_after = free_bytes(mount_dir.path());
  ASSERT_LT(free_after, 64u * 1024) << "filled " << filled << " of " << free_before;

  ChunkedPublisher pub(topic_, total, 200, 0ms);
  std::vector<std::string> failed_lines;
  const bool logged =
      wait_until(
          [&] {
            failed_lines = lines_with(lowercase(gateway_->output()), {"spool", "failed"});
            return !failed_lines.empty() || !gateway_->running();
          },
          30s) &&
      !failed_lines.empty();
  EXPECT_TRUE(logged) << "no log line with 'spool' and 'failed':\n" << gateway_->output();
  HttpAnswer health;
  bool unhealthy = false;
  if (gateway_->running()) {
    unhealthy = wait_until(
        [&] {
          health = http_get(port, "/healthz");
          return health.status == 503;
        },
        15s);
  }
  const bool survived_full = gateway_->running();
  const std::int64_t stored_while_full = count(seq_rows_sql());
  EXPECT_TRUE(survived_full) << "the gateway died on a full disk:\n" << gateway_->output();
  EXPECT_TRUE(unhealthy) << "/healthz while the spool's disk was full: " << health.status << " "
                         << health.body;

  fs::remove(filler);
  ASSERT_TRUE(pub.wait_done(120s));
  ASSERT_EQ(pub.error(), "");
  if (!gateway_->running()) {
    // What a restart (systemd) recovers, to tell a crash from a loss.
    start_gateway(dir.path());
  }
  const Tally t = drain_and_tally(
      "spool-disk-full", pub.published(), total, 90s,
      " (tmpfs 2 MiB, " + std::to_string(free_after / 1024) + " KiB left; " +
          std::to_string(stored_while_full) + " stored while full; gateway survived: " +
          yes_no(survived_full) + ", healthz 503: " + yes_no(unhealthy) + "; log: " +
          (failed_lines.empty() ? std::string("-") : failed_lines.front().substr(0, 160)) + ")");
  expect_exactly_once(t, total);
  EXPECT_EQ(rejected_count(), 0);
  EXPECT_TRUE(gateway_->running());
  EXPECT_EQ(gateway_->pid(), pid) << "the gateway had to be restarted";
  if (gateway_->running()) {
    EXPECT_TRUE(wait_until([&] { return http_get(port, "/healthz").status == 200; }, 15s));
  }
  stop_gateway_cleanly();
}

// e. One 100 MiB message (the default MAX_PAYLOAD_BYTES is 256 KiB) between ordinary ones: it is a
// dead letter with its first REJECTED_PAYLOAD_MAX_BYTES, the others are stored, and the gateway
// holds the big payload in memory a bounded number of times.
TEST_F(DurabilityE2e, HundredMebibytePublish) {
  const int total = scaled(200);
  constexpr std::int64_t kBig = 100 * kMiB;
  constexpr std::int64_t kMaxHwmKb = 400 * 1024;
  extra_env_["REJECTED_PAYLOAD_MAX_BYTES"] = "65536";
  add_flow("huge");
  start_gateway();
  const pid_t pid = gateway_->pid();
  const std::int64_t hwm_idle_kb = proc_status_kb(pid, "VmHWM");

  publisher().publish_many(seq_messages(topic_, 1, total / 2, 16), 1, kPublishWindow);
  {
    // mosquitto_pub sends it in 0.3 s; Paho C 1.3.12 needs ~20 s for 100 MiB (~2 s for 10 MiB).
    const fs::path pub = find_in_path("mosquitto_pub");
    ASSERT_FALSE(pub.empty()) << "mosquitto_pub not found in PATH (Debian: mosquitto-clients)";
    TempDir big_dir("gw_dur_big_");
    const fs::path big = big_dir.path() / "payload.json";
    {
      const std::string head = R"({"blob": ")";
      const std::string tail = R"("})";
      std::ofstream out(big, std::ios::binary);
      out << head << std::string(static_cast<std::size_t>(kBig) - head.size() - tail.size(), 'x')
          << tail;
      ASSERT_TRUE(out.good());
    }
    ASSERT_EQ(fs::file_size(big), static_cast<std::uint64_t>(kBig));
    const auto sent_at = Clock::now();
    GatewayProcess sender(
        pub.string(),
        {"-h", test_services().mqtt_host, "-p", std::to_string(test_services().mqtt_port), "-i",
         "gwtest-big-" + db_.name(), "-q", "1", "-t", topic_, "-f", big.string()},
        {}, big_dir.path());
    const auto code = sender.wait_exit(60s);
    ASSERT_EQ(code, 0) << sender.output();
    std::cout << "[fault] 100-MiB: mosquitto_pub had the publish acknowledged in "
              << ms_since(sent_at) << " ms\n";
  }
  publisher().publish_many(seq_messages(topic_, total / 2 + 1, total, 16), 1, kPublishWindow);

  const bool rejected = wait_for_count("SELECT COUNT(*) FROM rejected_messages", 1, 60s);
  const bool alive = gateway_->running();
  const std::int64_t hwm_kb = proc_status_kb(pid, "VmHWM");
  const Tally t = drain_and_tally("100-MiB", total + 1, total, 60s,
                                  " (plus one 100 MiB payload: dead letter " + yes_no(rejected) +
                                      ", gateway alive " + yes_no(alive) + ", gateway VmHWM " +
                                      std::to_string(hwm_kb / 1024) + " MiB, " +
                                      std::to_string(hwm_idle_kb / 1024) + " MiB before)");
  ASSERT_TRUE(alive) << gateway_->output();
  expect_exactly_once(t, total);
  ASSERT_TRUE(rejected) << gateway_->output();
  const auto rows = db_.query(
      "SELECT flow_id, payload_truncated, LENGTH(payload), reason FROM rejected_messages");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].at(0).value_or(""), std::to_string(flow_id_));
  EXPECT_EQ(rows[0].at(1).value_or(""), "1");
  EXPECT_EQ(rows[0].at(2).value_or(""), "65536");
  std::cout << "[fault] 100-MiB: reason: " << rows[0].at(3).value_or("NULL") << "\n";
  EXPECT_GT(hwm_kb, 0);
  EXPECT_LT(hwm_kb, kMaxHwmKb) << "peak RSS " << hwm_kb / 1024 << " MiB for one 100 MiB message";
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

// f. A power loss with SPOOL_FSYNC=batch: the last records the database committed may be missing
// from the spool after the reboot (their fdatasync never happened). The restarted gateway must
// not number new messages with spool seqs the database already committed: they would be skipped
// as "committed before a restart", i.e. lost.
TEST_F(DurabilityE2e, PowerLossSpoolShorterThanDatabase) {
  const int before = scaled(1000);
  const int after = scaled(500);
  const int cut = std::min(100, before / 2);  // committed records the "disk" forgets
  const int total = before + after;
  extra_env_["SPOOL_FSYNC"] = "batch";
  add_flow("power");
  TempDir dir("gw_dur_power_");
  start_gateway(dir.path());
  const fs::path spool = dir.path() / "spool";

  publisher().publish_many(seq_messages(topic_, 1, before, 16), 1, kPublishWindow);
  ASSERT_TRUE(wait_for_count(seq_rows_sql(), before, 60s));
  ASSERT_TRUE(gateway_->kill(SIGKILL));
  ASSERT_EQ(gateway_->wait_exit(10s), -SIGKILL);

  // The newest segment, cut back to the start of a record `cut` records before its end.
  const auto records = spool_records(spool);
  ASSERT_GE(records.size(), static_cast<std::size_t>(cut) + 1);
  const RecordAt& first_lost = records.at(records.size() - static_cast<std::size_t>(cut));
  ASSERT_EQ(first_lost.file, records.back().file) << "the last records span segments";
  const std::uint64_t last_seq = records.back().record.seq;
  fs::resize_file(first_lost.file, first_lost.offset);
  const std::int64_t offset_in_db = count("SELECT MAX(last_seq) FROM spool_offsets");

  start_gateway(dir.path());
  publisher().publish_many(seq_messages(topic_, before + 1, total, 16), 1, kPublishWindow);
  const Tally t =
      drain_and_tally("power-loss", total, total, 60s,
                      " (spool cut back by " + std::to_string(cut) + " committed records: seq " +
                          std::to_string(first_lost.record.seq) + ".." + std::to_string(last_seq) +
                          " gone, database offset " + std::to_string(offset_in_db) + ")" +
                          log_evidence(gateway_->output()));
  expect_exactly_once(t, total);
  EXPECT_EQ(rejected_count(), 0);
  EXPECT_TRUE(gateway_->running());
  stop_gateway_cleanly();
}

}  // namespace
}  // namespace gateway::testing
