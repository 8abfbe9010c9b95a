// The command line (CLI11): mqtt-gateway [--env-file PATH] [--check | --init-db] [--version], or
// one of the operator's subcommands (admin_commands.h): mqtt-gateway [--env-file PATH]
// flows list|show|add|set|enable|disable ..., rejected list|show|replay ... (each with --help and
// an example). Parsing is pure apart from the two streams; no global state.
#pragma once

#include <filesystem>
#include <iosfwd>
#include <optional>
#include <variant>

#include "gateway/admin_commands.h"

namespace gateway {

struct CommandLine {
  std::optional<std::filesystem::path> env_file;  // default: .env in the working directory
  bool check = false;    // verify settings, database, schema, broker row and flows; then exit
  bool init_db = false;  // apply the built-in schema (idempotent); then exit
  std::optional<AdminRequest> admin;  // a subcommand: run it (same settings), then exit
};

// Returns the options, or the exit code when the program must stop here: 0 after --help or
// --version (printed to `out`), 2 after a usage error: an unknown option, a missing or bad value
// (--env-file of a file that does not exist), --check with --init-db or with a subcommand, a
// subcommand without its sub-subcommand (one line on `err`). Values a subcommand validates itself
// (topic filters, schemas, URLs, --since) are left to it: one line per problem, exit status 1.
std::variant<CommandLine, int> parse_command_line(int argc, const char* const* argv,
                                                  std::ostream& out, std::ostream& err);

}  // namespace gateway
