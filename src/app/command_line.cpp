#include "gateway/command_line.h"

#include <CLI/CLI.hpp>
#include <ostream>

namespace gateway {

std::variant<CommandLine, int> parse_command_line(int argc, const char* const* argv,
                                                  std::ostream& out, std::ostream& err) {
  CommandLine cl;
  CLI::App app{
      "mqtt-gateway: MQTT to MariaDB/HTTP gateway. Settings come from the environment "
      "and a .env file; see .env.example.",
      "mqtt-gateway"};
  std::string env_file;
  app.add_option("--env-file", env_file, "Read settings from this file instead of ./.env")
      ->check(CLI::ExistingFile);
  auto* check = app.add_flag("--check", cl.check,
                             "Check settings, database, schema, broker row and flows, then exit");
  app.add_flag("--init-db", cl.init_db, "Create the database tables (idempotent), then exit")
      ->excludes(check);
  app.set_version_flag("--version", std::string("mqtt-gateway ") + GATEWAY_VERSION);
  app.footer(
      "Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the flows and reopens the log "
      "file.\nExit status: 0 ok; 1 failure (database, broker, disk, --check found a problem); 2 "
      "bad command line or settings.");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return 0;
  } catch (const CLI::CallForVersion&) {
    out << "mqtt-gateway " << GATEWAY_VERSION << "\n";
    return 0;
  } catch (const CLI::ParseError& e) {
    err << "mqtt-gateway: " << e.what() << " (see --help)\n";
    return 2;
  }
  if (!env_file.empty()) cl.env_file = env_file;
  return cl;
}

}  // namespace gateway
