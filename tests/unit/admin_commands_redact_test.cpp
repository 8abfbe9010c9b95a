// The flows subcommands never print a password an endpoint URL carries (issue 12): show, list
// --json, and the change lines of add and set. What is stored stays the URL as given.
#include <gtest/gtest.h>

#include <string>

#include "gateway/admin_commands.h"
#include "support/admin_commands_fixture.h"

namespace gateway {
namespace {

class AdminCommandsRedactTest : public testing::AdminCommandsFixture {};

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
