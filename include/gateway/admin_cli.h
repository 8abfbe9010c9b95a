// The operator's subcommands in the binary (`mqtt-gateway flows ...`, `rejected ...`): wires the
// MySQL adapters (MySqlFlowAdmin, and a MySqlFlowRepository + Processor for replays, each on its
// own connection) to AdminCommands. Called from main() once the settings are loaded; the daemon
// itself is not involved (a running one keeps running; --reload sends it SIGHUP).
#pragma once

#include <iosfwd>

#include "gateway/admin_commands.h"
#include "gateway/settings.h"

namespace gateway {

// Runs `request` and returns the exit status (AdminCommands::run()). Database errors propagate
// (main prints them, exit status 1). SIGINT and SIGTERM end the process at once (main blocks them
// for the daemon): a replay stopped that way leaves only whole, committed batches behind.
int run_admin(const AdminRequest& request, const Settings& settings, std::ostream& out,
              std::ostream& err);

}  // namespace gateway
