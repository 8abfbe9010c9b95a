// The command line: the daemon's options and the operator's subcommands parsed into an
// AdminRequest, --help with an example for every subcommand, usage errors (exit status 2).
#include "gateway/command_line.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

namespace gateway {
namespace {

struct Parsed {
  std::variant<CommandLine, int> result;
  std::string out, err;
};

Parsed parse(std::vector<std::string> args) {
  args.insert(args.begin(), "mqtt-gateway");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  Parsed p{parse_command_line(static_cast<int>(argv.size()), argv.data(), out, err), "", ""};
  p.out = out.str();
  p.err = err.str();
  return p;
}

AdminRequest admin(const std::vector<std::string>& args) {
  Parsed p = parse(args);
  const auto* cl = std::get_if<CommandLine>(&p.result);
  if (cl == nullptr || !cl->admin) {
    ADD_FAILURE() << "no subcommand parsed: " << p.err;
    return {};
  }
  return *cl->admin;
}

TEST(CommandLine, NoSubcommandRunsTheDaemon) {
  Parsed p = parse({});
  ASSERT_TRUE(std::holds_alternative<CommandLine>(p.result));
  EXPECT_FALSE(std::get<CommandLine>(p.result).admin.has_value());
}

TEST(CommandLine, FlowsAddKeepsGivenOptionsApartFromMissingOnes) {
  const AdminRequest r = admin({"flows", "add", "--code", "temps", "--topic", "s/+/t", "--action",
                                "STORE_DB", "--schema", R"({"t":"int"})", "--endpoint", "",
                                "--disabled", "--reload", "--pid", "42", "--json", "--table", "x"});
  EXPECT_EQ(r.command, AdminCommand::kFlowsAdd);
  EXPECT_EQ(r.edit.code.value_or("?"), "temps");
  EXPECT_EQ(r.edit.topic.value_or("?"), "s/+/t");
  EXPECT_EQ(r.edit.schema.value_or("?"), R"({"t":"int"})");
  EXPECT_EQ(r.edit.endpoint.value_or("?"), "");  // given empty
  EXPECT_FALSE(r.edit.name.has_value());         // not given
  EXPECT_TRUE(r.edit.disabled);
  EXPECT_TRUE(r.reload);
  EXPECT_EQ(r.daemon.pid.value_or(0), 42);
  EXPECT_TRUE(r.json);
  EXPECT_EQ(r.edit.table.value_or("?"), "x");
  EXPECT_FALSE(r.edit.column_map.has_value());
  EXPECT_FALSE(r.edit.write_mode.has_value());
}

TEST(CommandLine, StoreTableOptionsOfAddAndSet) {
  const AdminRequest add =
      admin({"flows", "add", "--code", "latest", "--topic", "plant/+/temp", "--action",
             "STORE_TABLE", "--table", "readings", "--column-map",
             R"({"device": "$topic[1]", "temp": "/temperature"})", "--write-mode", "upsert"});
  EXPECT_EQ(add.edit.action.value_or("?"), "STORE_TABLE");
  EXPECT_EQ(add.edit.table.value_or("?"), "readings");
  EXPECT_EQ(add.edit.column_map.value_or("?"),
            R"({"device": "$topic[1]", "temp": "/temperature"})");
  EXPECT_EQ(add.edit.write_mode.value_or("?"), "upsert");
  const AdminRequest set = admin(
      {"flows", "set", "latest", "--table", "", "--column-map", "", "--write-mode", "insert"});
  EXPECT_EQ(set.edit.table.value_or("?"), "");  // given empty: clears
  EXPECT_EQ(set.edit.column_map.value_or("?"), "");
  EXPECT_EQ(set.edit.write_mode.value_or("?"), "insert");
  EXPECT_FALSE(set.edit.action.has_value());
  Parsed help = parse({"flows", "add", "--help"});
  EXPECT_NE(help.out.find("--column-map"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("--action STORE_TABLE"), std::string::npos) << help.out;
  EXPECT_EQ(help.out.find("not available"), std::string::npos) << help.out;
}

TEST(CommandLine, EverySubcommand) {
  EXPECT_EQ(admin({"flows", "list"}).command, AdminCommand::kFlowsList);
  EXPECT_EQ(admin({"flows", "show", "a"}).code, "a");
  const AdminRequest set = admin({"flows", "set", "a", "--schema", "null"});
  EXPECT_EQ(set.command, AdminCommand::kFlowsSet);
  EXPECT_EQ(set.edit.schema.value_or("?"), "null");
  EXPECT_FALSE(set.edit.topic.has_value());
  EXPECT_EQ(admin({"flows", "enable", "a"}).command, AdminCommand::kFlowsEnable);
  const AdminRequest dis = admin({"flows", "disable", "a", "--reload", "--pid-file", "/x/p"});
  EXPECT_EQ(dis.command, AdminCommand::kFlowsDisable);
  EXPECT_EQ(dis.daemon.pid_file.value_or(""), "/x/p");
  const AdminRequest list =
      admin({"rejected", "list", "--flow", "a", "--since", "2h", "--limit", "5", "--all"});
  EXPECT_EQ(list.command, AdminCommand::kRejectedList);
  EXPECT_EQ(list.since.value_or(""), "2h");
  EXPECT_FALSE(list.reason.has_value());
  EXPECT_EQ(list.limit, 5);
  EXPECT_TRUE(list.all);
  EXPECT_EQ(admin({"rejected", "show", "17"}).id, 17);
  const AdminRequest replay = admin({"rejected", "replay", "--flow", "a", "--id", "3", "--id", "9",
                                     "--reason", "int", "--dry-run", "--batch", "1"});
  EXPECT_EQ(replay.command, AdminCommand::kRejectedReplay);
  EXPECT_EQ(replay.ids, (std::vector<std::int64_t>{3, 9}));
  EXPECT_EQ(replay.reason.value_or(""), "int");
  EXPECT_TRUE(replay.dry_run);
  EXPECT_EQ(replay.batch, 1);
}

TEST(CommandLine, EnvFileMayFollowTheSubcommand) {
  Parsed p = parse({"flows", "list", "--env-file", "/dev/null"});
  ASSERT_TRUE(std::holds_alternative<CommandLine>(p.result)) << p.err;
  EXPECT_EQ(std::get<CommandLine>(p.result).env_file.value_or(""), "/dev/null");
}

TEST(CommandLine, EverySubcommandHasHelpWithAnExample) {
  const std::vector<std::vector<std::string>> subs = {
      {"flows", "list"},    {"flows", "show"},    {"flows", "add"},
      {"flows", "set"},     {"flows", "enable"},  {"flows", "disable"},
      {"rejected", "list"}, {"rejected", "show"}, {"rejected", "replay"}};
  for (auto args : subs) {
    const std::string name = args[0] + " " + args[1];
    args.emplace_back("--help");
    Parsed p = parse(args);
    ASSERT_TRUE(std::holds_alternative<int>(p.result)) << name;
    EXPECT_EQ(std::get<int>(p.result), 0);
    EXPECT_NE(p.out.find("Usage: mqtt-gateway " + name), std::string::npos) << p.out;
    EXPECT_NE(p.out.find("Example:\n  mqtt-gateway "), std::string::npos) << name << p.out;
  }
  Parsed top = parse({"--help"});
  EXPECT_NE(top.out.find("rejected list|show|replay"), std::string::npos);
}

TEST(CommandLine, UsageErrorsAreExitStatusTwo) {
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"flows"},
                                             {"flows", "show"},
                                             {"flows", "frobnicate"},
                                             {"rejected", "replay"},
                                             {"rejected", "show", "x"},
                                             {"--check", "flows", "list"},
                                             {"flows", "set", "a", "--pid", "3"}}) {
    Parsed p = parse(args);
    ASSERT_TRUE(std::holds_alternative<int>(p.result)) << ::testing::PrintToString(args);
    EXPECT_EQ(std::get<int>(p.result), 2);
    EXPECT_EQ(std::count(p.err.begin(), p.err.end(), '\n'), 1) << p.err;
  }
}

}  // namespace
}  // namespace gateway
