// The flows subcommands never print a password an endpoint URL carries (issue 12): show, list
// --json, and the change lines of add and set. What is stored stays the URL as given.
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <sstream>
#include <string>

#include "fakes/fake_flow_admin.h"
#include "fakes/fake_flow_repository.h"
#include "fakes/fake_http_poster.h"
#include "gateway/admin_commands.h"

namespace gateway {
namespace {

using testing::FakeFlowAdmin;
using testing::FakeFlowRepository;
using testing::FakeHttpPoster;

class AdminCommandsRedactTest : public ::testing::Test {
 protected:
  int run(AdminRequest r) {
    out_.str("");
    err_.str("");
    AdminOptions options;
    options.reload = [](const DaemonTarget& target) -> pid_t { return target.pid.value_or(4242); };
    AdminCommands commands(admin_, processor_, options, out_, err_);
    return commands.run(r);
  }
  std::string printed() const { return out_.str() + err_.str(); }

  FakeFlowRepository repo_;
  FakeFlowAdmin admin_{repo_};
  FakeHttpPoster http_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  Processor processor_{repo_, http_, ProcessorOptions{}, log_};
  std::ostringstream out_, err_;
};

TEST_F(AdminCommandsRedactTest, EndpointPasswordIsStoredButNeverPrinted) {
  AdminRequest add;
  add.command = AdminCommand::kFlowsAdd;
  add.edit.code = "hook";
  add.edit.topic = "hook/#";
  add.edit.action = "POST_ENDPOINT";
  add.edit.endpoint = "https://bot:first-secret@hooks.example/in";
  ASSERT_EQ(run(add), 0) << printed();
  EXPECT_EQ(repo_.flows.begin()->second.endpoint_url.value_or(""), *add.edit.endpoint);
  EXPECT_NE(printed().find("endpoint_url: https://bot:***@hooks.example/in\n"), std::string::npos)
      << printed();

  AdminRequest set;
  set.command = AdminCommand::kFlowsSet;
  set.code = "hook";
  set.edit.endpoint = "https://bot:second-secret@hooks.example/in";
  ASSERT_EQ(run(set), 0) << printed();
  EXPECT_EQ(repo_.flows.begin()->second.endpoint_url.value_or(""), *set.edit.endpoint);
  // Only the password changed: still reported (and saved), as *** -> ***.
  EXPECT_NE(printed().find("endpoint_url: https://bot:***@hooks.example/in -> "
                           "https://bot:***@hooks.example/in\n"),
            std::string::npos)
      << printed();

  AdminRequest show;
  show.command = AdminCommand::kFlowsShow;
  show.code = "hook";
  ASSERT_EQ(run(show), 0) << printed();
  EXPECT_NE(printed().find("https://bot:***@hooks.example/in"), std::string::npos) << printed();
  show.json = true;
  ASSERT_EQ(run(show), 0) << printed();
  EXPECT_NE(printed().find("https://bot:***@hooks.example/in"), std::string::npos) << printed();
  AdminRequest list;
  list.command = AdminCommand::kFlowsList;
  list.json = true;
  ASSERT_EQ(run(list), 0) << printed();
  EXPECT_NE(printed().find("https://bot:***@hooks.example/in"), std::string::npos) << printed();
  EXPECT_EQ(printed().find("secret"), std::string::npos) << printed();

  // A refused URL is quoted without its password too.
  set.edit.endpoint = "ftp://bot:third-secret@hooks.example/in";
  EXPECT_EQ(run(set), 1);
  EXPECT_NE(printed().find("'ftp://bot:***@hooks.example/in'"), std::string::npos) << printed();
  EXPECT_EQ(printed().find("third-secret"), std::string::npos) << printed();
}

}  // namespace
}  // namespace gateway
