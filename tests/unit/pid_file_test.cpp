// The daemon's pid file and --reload's checks before it sends SIGHUP.
#include "gateway/pid_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "gateway/errors.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;

class PidFileTest : public ::testing::Test {
 protected:
  PidFileTest() {
    std::string pattern = (fs::temp_directory_path() / "gw_pid_XXXXXX").string();
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  ~PidFileTest() override { fs::remove_all(dir_); }
  std::string what(const DaemonTarget& target) {
    try {
      send_reload(target, dir_.c_str());
    } catch (const Error& e) {
      return e.what();
    }
    return "sent";
  }
  fs::path dir_;
};

TEST_F(PidFileTest, PathFollowsRuntimeDirectory) {
  EXPECT_FALSE(pid_file_path(nullptr).has_value());
  EXPECT_FALSE(pid_file_path("").has_value());
  EXPECT_EQ(pid_file_path("/run/mqtt-gateway").value(), "/run/mqtt-gateway/mqtt-gateway.pid");
  EXPECT_EQ(pid_file_path("/run/a:/run/b").value(), "/run/a/mqtt-gateway.pid");
}

TEST_F(PidFileTest, WrittenWithOurPidAndRemovedOnDestruction) {
  const fs::path path = dir_ / kPidFileName;
  {
    PidFile file(path);
    std::ifstream in(path);
    pid_t pid = 0;
    in >> pid;
    EXPECT_EQ(pid, ::getpid());
    EXPECT_FALSE(fs::exists(dir_ / "mqtt-gateway.pid.tmp"));
  }
  EXPECT_FALSE(fs::exists(path));
  // A file another process took over is left alone.
  {
    PidFile file(path);
    std::ofstream(path) << "1\n";
  }
  EXPECT_TRUE(fs::exists(path));
  EXPECT_THROW(PidFile(dir_ / "missing" / "x.pid"), Error);
}

TEST_F(PidFileTest, ReloadSignalsOnlyARunningGateway) {
  EXPECT_NE(what({}).find("cannot read " + (dir_ / kPidFileName).string()), std::string::npos);
  std::ofstream(dir_ / kPidFileName) << "garbage\n";
  EXPECT_NE(what({}).find("does not hold a process id"), std::string::npos);
  // This test process is alive but not an mqtt-gateway: never signalled.
  std::ofstream(dir_ / kPidFileName) << ::getpid() << "\n";
  EXPECT_NE(what({}).find("not mqtt-gateway"), std::string::npos) << what({});
  EXPECT_NE(what({.pid = 0x3ffffff0, .pid_file = {}}).find("no process"), std::string::npos);
  EXPECT_EQ(what({.pid = -1, .pid_file = {}}), "--pid must be a positive process id");
}

}  // namespace
}  // namespace gateway
