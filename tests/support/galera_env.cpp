#include "support/galera_env.h"

#include <cppconn/connection.h>
#include <cppconn/driver.h>
#include <cppconn/exception.h>
#include <cppconn/resultset.h>
#include <cppconn/statement.h>
#include <signal.h>

#include <charconv>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>

#include "support/gateway_process.h"
#include "support/test_env.h"

extern char** environ;  // NOLINT: POSIX, the environment inherited by the cluster script

namespace gateway::testing {
namespace {

constexpr std::chrono::minutes kGaleraCommandTimeout{5};

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t at = text.find(separator, start);
    out.push_back(text.substr(start, at == std::string::npos ? at : at - start));
    if (at == std::string::npos) return out;
    start = at + 1;
  }
}

std::optional<int> port_of(const std::string& text) {
  int port = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), port);
  if (ec != std::errc() || end != text.data() + text.size() || port < 1 || port > 65535) {
    return std::nullopt;
  }
  return port;
}

std::unique_ptr<sql::Connection> root_connection(const GaleraCluster& cluster, int number) {
  sql::ConnectOptionsMap options;
  options["hostName"] = sql::SQLString("unix://" + cluster.node(number).socket);
  options["userName"] = sql::SQLString("root");
  options["password"] = sql::SQLString("");
  options["OPT_CONNECT_TIMEOUT"] = 5;
  options["OPT_READ_TIMEOUT"] = 60;
  options["OPT_RECONNECT"] = false;
  try {
    std::unique_ptr<sql::Connection> c(get_driver_instance()->connect(options));
    c->setAutoCommit(true);
    return c;
  } catch (const sql::SQLException& e) {
    throw std::runtime_error("root on galera node " + std::to_string(number) + ": " + e.what());
  }
}

}  // namespace

std::string GaleraCluster::db_host(const std::vector<int>& order) const {
  std::string out;
  for (int number : order) out += (out.empty() ? "" : ",") + node(number).address();
  return out;
}

std::optional<GaleraCluster> galera_cluster(std::string* why_not) {
  std::vector<std::string> missing;
  const auto get = [&](const char* name) -> std::string {
    const char* value = std::getenv(name);
    if (value == nullptr || value[0] == '\0') {
      missing.emplace_back(name);
      return {};
    }
    return value;
  };
  GaleraCluster c;
  const std::string nodes = get("GW_TEST_GALERA_NODES");
  const std::string sockets = get("GW_TEST_GALERA_SOCKETS");
  c.user = get("GW_TEST_GALERA_USER");
  const char* password = std::getenv("GW_TEST_GALERA_PASSWORD");
  if (password == nullptr) missing.emplace_back("GW_TEST_GALERA_PASSWORD");
  c.password = password == nullptr ? "" : password;
  c.dir = get("GW_TEST_GALERA_DIR");
  c.script = get("GW_GALERA_SCRIPT");
  if (missing.empty()) {
    const auto addresses = split(nodes, ',');
    const auto paths = split(sockets, ',');
    for (std::size_t i = 0; i < addresses.size(); ++i) {
      const std::size_t colon = addresses[i].rfind(':');
      const auto port =
          colon == std::string::npos ? std::nullopt : port_of(addresses[i].substr(colon + 1));
      if (!port || i >= paths.size()) {
        missing.emplace_back("GW_TEST_GALERA_NODES/GW_TEST_GALERA_SOCKETS malformed");
        break;
      }
      c.nodes.push_back(GaleraNode{addresses[i].substr(0, colon), *port, paths[i]});
    }
    if (missing.empty() && c.nodes.size() < 3) missing.emplace_back("GW_TEST_GALERA_NODES: < 3");
  }
  if (!missing.empty()) {
    if (why_not != nullptr) {
      *why_not = "no Galera cluster (";
      for (std::size_t i = 0; i < missing.size(); ++i) *why_not += (i ? ", " : "") + missing[i];
      *why_not +=
          "): start one with scripts/galera.sh start and export what it writes to galera.env, or "
          "run scripts/test-galera.sh";
    }
    return std::nullopt;
  }
  return c;
}

void run_galera_command(const GaleraCluster& cluster, const std::vector<std::string>& words) {
  std::map<std::string, std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string text(*entry);
    const auto equals = text.find('=');
    if (equals != std::string::npos && equals > 0)
      env[text.substr(0, equals)] = text.substr(equals + 1);
  }
  env["GW_GALERA_DIR"] = cluster.dir;
  std::string description = cluster.script;
  for (const std::string& w : words) description += " " + w;
  const TempDir dir("gw_galera_", /*keep_if_test_failed=*/false);
  GatewayProcess script(cluster.script, words, std::move(env), dir.path());
  const std::optional<int> status = script.wait_exit(kGaleraCommandTimeout);
  if (!status) {
    script.kill(SIGKILL);
    throw std::runtime_error(description + " did not finish within 5 minutes; output:\n" +
                             script.output());
  }
  if (*status != 0) {
    throw std::runtime_error(description + " failed with status " + std::to_string(*status) +
                             "; output:\n" + script.output());
  }
}

void use_galera_for_test_database(const GaleraCluster& cluster, int number) {
  const GaleraNode& node = cluster.node(number);
  ::setenv("GW_TEST_DB_HOST", node.host.c_str(), 1);
  ::setenv("GW_TEST_DB_PORT", std::to_string(node.port).c_str(), 1);
  ::setenv("GW_TEST_DB_USER", cluster.user.c_str(), 1);
  ::setenv("GW_TEST_DB_PASSWORD", cluster.password.c_str(), 1);
  ::setenv("GW_TEST_DB_SOCKET", node.socket.c_str(), 1);
  const TestServices& services = test_services();
  if (services.db_port != node.port || services.db_host != node.host) {
    throw std::runtime_error("the test services were read before the Galera cluster was chosen (" +
                             services.db_host + ":" + std::to_string(services.db_port) +
                             "): run each Galera test in a process of its own, as ctest does");
  }
}

void galera_root_execute(const GaleraCluster& cluster, int number, std::string_view sql) {
  auto c = root_connection(cluster, number);
  try {
    std::unique_ptr<sql::Statement> st(c->createStatement());
    st->execute(sql::SQLString(sql.data(), sql.size()));
  } catch (const sql::SQLException& e) {
    throw std::runtime_error("galera node " + std::to_string(number) + ": " + e.what() +
                             " in: " + std::string(sql));
  }
}

std::string galera_root_query(const GaleraCluster& cluster, int number, std::string_view sql) {
  auto c = root_connection(cluster, number);
  try {
    std::unique_ptr<sql::Statement> st(c->createStatement());
    std::unique_ptr<sql::ResultSet> rs(st->executeQuery(sql::SQLString(sql.data(), sql.size())));
    if (!rs->next() || rs->isNull(1)) return {};
    return std::string(rs->getString(1));
  } catch (const sql::SQLException& e) {
    throw std::runtime_error("galera node " + std::to_string(number) + ": " + e.what() +
                             " in: " + std::string(sql));
  }
}

}  // namespace gateway::testing
