// AdminCommandsFixture: runs the operator's flow subcommands (AdminCommands) against the
// in-memory repository, capturing what they print, for admin_commands_test.cpp and
// admin_commands_redact_test.cpp. --reload reaches a fake daemon that the test can make fail.
// Header-only: the unit tests do not link test_support.
#pragma once

#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>
#include <sys/types.h>

#include <memory>
#include <sstream>
#include <string>

#include "fakes/fake_flow_admin.h"
#include "fakes/fake_flow_repository.h"
#include "fakes/fake_http_poster.h"
#include "gateway/admin_commands.h"
#include "gateway/errors.h"

namespace gateway::testing {

class AdminCommandsFixture : public ::testing::Test {
 protected:
  // Runs one subcommand; its output replaces what out_ and err_ held. Returns the exit status.
  int run(AdminRequest r) {
    out_.str("");
    err_.str("");
    AdminOptions options;
    options.reload = [this](const DaemonTarget& target) -> pid_t {
      ++reloads_;
      if (reload_fails_) throw Error("no process 4242 (the gateway is not running?)");
      return target.pid.value_or(4242);
    };
    AdminCommands commands(admin_, processor_, options, out_, err_);
    return commands.run(r);
  }
  // Everything the last run() printed, stdout then stderr.
  std::string printed() const { return out_.str() + err_.str(); }

  FakeFlowRepository repo_;
  FakeFlowAdmin admin_{repo_};
  FakeHttpPoster http_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  Processor processor_{repo_, http_, ProcessorOptions{}, log_};
  std::ostringstream out_, err_;
  int reloads_ = 0;            // calls of the fake reload
  bool reload_fails_ = false;  // the fake reload throws, as with no gateway running
};

}  // namespace gateway::testing
