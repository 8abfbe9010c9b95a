// Issue 12, the database side of secure connections, through the real binary: TLS to MariaDB
// (DB_SSL_MODE) against the test server (its certificate from scripts/services.sh, SANs 127.0.0.1
// and localhost) with require_secure_transport=ON, the password from a file or a systemd
// credential, and endpoint URL passwords kept out of logs, dead letters, /metrics and --check.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "e2e/e2e_fixture.h"
#include "support/http_sink.h"
#include "support/loopback_http.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

// GW_TEST_DB_SSL_CA from services.env: the CA that signed the test MariaDB's certificate.
std::string db_ssl_ca() {
  const char* ca = std::getenv("GW_TEST_DB_SSL_CA");
  if (ca == nullptr || *ca == '\0') {
    throw std::runtime_error(
        "GW_TEST_DB_SSL_CA is not set: restart the services with scripts/services.sh (MariaDB "
        "with TLS)");
  }
  return ca;
}

// SET GLOBAL require_secure_transport=ON for the life of the object, as MariaDB's root over the
// Unix socket (which counts as secure). The destructor turns it off again, also when the test
// fails, so that the other tests' clear-text connections work.
class SecureTransportRequired {
 public:
  SecureTransportRequired() {
    root_.execute("SET GLOBAL require_secure_transport = ON");
    const auto rows = root_.query("SELECT @@GLOBAL.require_secure_transport");
    if (rows.empty() || rows[0][0] != "1") throw std::runtime_error("could not turn it on");
  }
  ~SecureTransportRequired() {
    try {
      root_.execute("SET GLOBAL require_secure_transport = OFF");
    } catch (const std::exception& e) {
      ADD_FAILURE() << "require_secure_transport stays ON: " << e.what();
    }
  }
  SecureTransportRequired(const SecureTransportRequired&) = delete;
  SecureTransportRequired& operator=(const SecureTransportRequired&) = delete;

 private:
  SqlSession root_{SqlSession::As::kRoot};
};

class SecureConnectionsE2e : public GatewayE2eTest {};

// ---- TLS to MariaDB -----------------------------------------------------------------------------

TEST_F(SecureConnectionsE2e, VerifyIdentityWorksWhereTheServerRequiresSecureTransport) {
  db_.insert_flow("tls", prefix_ + "/tls", "STORE_DB", std::nullopt);
  SecureTransportRequired required;
  extra_env_["DB_SSL_MODE"] = "verify-identity";
  extra_env_["DB_SSL_CA"] = db_ssl_ca();

  const Outcome check = run_gateway({"--check"}, env());
  EXPECT_EQ(check.code, 0) << check.output;
  EXPECT_NE(check.output.find(", TLS TLSv1."), std::string::npos) << check.output;
  std::cout << "[tls] --check: " << check.output.substr(0, check.output.find('\n')) << "\n";

  GatewayProcess& gw = start_gateway();
  EXPECT_TRUE(gw.wait_for_output(", TLS TLSv1.", 5s)) << gw.output();
  publisher().publish(prefix_ + "/tls", R"({"t": 21.5})");
  EXPECT_TRUE(wait_for_count("SELECT COUNT(*) FROM data_records", 1)) << gw.output();
  // With require_secure_transport=ON every TCP connection that got this far is encrypted.
}

TEST_F(SecureConnectionsE2e, DisabledIsRefusedWithOneLineWhereTheServerRequiresSecureTransport) {
  SecureTransportRequired required;
  extra_env_["DB_SSL_MODE"] = "disabled";
  const Outcome check = run_gateway({"--check"}, env());
  EXPECT_EQ(check.code, 1) << check.output;
  EXPECT_EQ(line_count(check.output), 1u) << check.output;
  EXPECT_NE(check.output.find("mqtt-gateway: database " + db_.name() + " at 127.0.0.1:"),
            std::string::npos)
      << check.output;
  EXPECT_NE(check.output.find("in clear text (DB_SSL_MODE=disabled; a server with "
                              "require_secure_transport=ON refuses that as access denied)"),
            std::string::npos)
      << check.output;
  EXPECT_NE(check.output.find("(MySQL error 1045)"), std::string::npos) << check.output;
  std::cout << "[tls] disabled, --check: " << check.output;

  // The daemon says the same on its fatal line (or its retry lines), never the password.
  GatewayProcess gw(GATEWAY_BINARY, {}, env());
  EXPECT_TRUE(
      gw.wait_for_output("DB_SSL_MODE=disabled; a server with require_secure_transport", 20s))
      << gw.output();
  EXPECT_EQ(gw.output().find(test_services().db_password), std::string::npos) << gw.output();
}

TEST_F(SecureConnectionsE2e, CertificateChecksRefuseTheWrongNameOrCa) {
  const std::string ca = db_ssl_ca();
  auto e = env();
  e["DB_SSL_CA"] = ca;
  // 127.1 reaches the server at 127.0.0.1, but the certificate does not carry that name.
  e["DB_HOST"] = "127.1";
  e["DB_SSL_MODE"] = "verify-identity";
  Outcome o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 1) << o.output;
  EXPECT_EQ(line_count(o.output), 1u) << o.output;
  EXPECT_NE(o.output.find("TLS/SSL error: Validation of SSL server certificate failed"),
            std::string::npos)
      << o.output;
  std::cout << "[tls] verify-identity, wrong name: " << o.output;
  // verify-ca checks the chain only.
  e["DB_SSL_MODE"] = "verify-ca";
  o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 0) << o.output;
  EXPECT_NE(o.output.find(", TLS TLSv1."), std::string::npos) << o.output;
  // A CA that did not sign the server's certificate.
  e["DB_HOST"] = "127.0.0.1";
  e["DB_SSL_CA"] = test_services().mqtt_wrong_ca_file;
  o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 1) << o.output;
  EXPECT_EQ(line_count(o.output), 1u) << o.output;
  EXPECT_NE(o.output.find("TLS/SSL error: self-signed certificate in certificate chain"),
            std::string::npos)
      << o.output;
  std::cout << "[tls] verify-ca, wrong CA: " << o.output;
  // verify-identity without DB_SSL_CA: the system's trust store, which knows no test CA.
  e.erase("DB_SSL_CA");
  e["DB_SSL_MODE"] = "verify-identity";
  o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 1) << o.output;
  EXPECT_NE(o.output.find("TLS/SSL error"), std::string::npos) << o.output;
}

TEST_F(SecureConnectionsE2e, ClientCertificateLogsInAUserThatRequiresOne) {
  const char* cert = std::getenv("GW_TEST_MQTT_CLIENT_CERT");  // signed by the test CA
  const char* key = std::getenv("GW_TEST_MQTT_CLIENT_KEY");
  ASSERT_TRUE(cert && key) << "GW_TEST_MQTT_CLIENT_CERT/KEY are not set (services.env)";
  SqlSession root(SqlSession::As::kRoot);
  const std::string user = "gwx509";
  root.execute("DROP USER IF EXISTS '" + user + "'@'127.0.0.1'");
  root.execute("CREATE USER '" + user + "'@'127.0.0.1' IDENTIFIED BY 'x509pass' REQUIRE X509");
  root.execute("GRANT ALL ON `" + db_.name() + "`.* TO '" + user + "'@'127.0.0.1'");
  struct DropUser {
    SqlSession& root;
    std::string user;
    ~DropUser() {
      try {
        root.execute("DROP USER IF EXISTS '" + user + "'@'127.0.0.1'");
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
      }
    }
  } drop{root, user};
  auto e = env();
  e["DB_USER"] = user;
  e["DB_PASSWORD"] = "x509pass";
  e["DB_SSL_MODE"] = "verify-identity";
  e["DB_SSL_CA"] = db_ssl_ca();
  Outcome o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 1) << o.output;  // no certificate: refused
  EXPECT_NE(o.output.find("Access denied for user 'gwx509'"), std::string::npos) << o.output;
  e["DB_SSL_CERT"] = cert;
  e["DB_SSL_KEY"] = key;
  o = run_gateway({"--check"}, e);
  EXPECT_NE(o.output.find(" ok, node 127.0.0.1:"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find(", TLS TLSv1."), std::string::npos) << o.output;
}

TEST_F(SecureConnectionsE2e, PreferredEncryptsAndDisabledDoesNot) {
  // preferred is the default.
  Outcome o = run_gateway({"--check"}, env());
  EXPECT_EQ(o.code, 0) << o.output;
  EXPECT_NE(o.output.find(", TLS TLSv1."), std::string::npos) << o.output;
  auto e = env();
  e["DB_SSL_MODE"] = "disabled";
  o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 0) << o.output;
  EXPECT_NE(o.output.find(", not encrypted\n"), std::string::npos) << o.output;
}

TEST_F(SecureConnectionsE2e, BadTlsSettingsStopStartUpWithOneLine) {
  auto e = env();
  e["DB_SSL_MODE"] = "verify-ca";
  e["DB_SSL_CA"] = "/nonexistent/ca.pem";
  Outcome o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 2) << o.output;
  EXPECT_EQ(o.output,
            "mqtt-gateway: DB_SSL_CA: cannot read the file (No such file or directory), got "
            "'/nonexistent/ca.pem'\n");
  e["DB_SSL_MODE"] = "strict";
  o = run_gateway({}, e);
  EXPECT_EQ(o.code, 2) << o.output;
  EXPECT_EQ(line_count(o.output), 1u) << o.output;
  EXPECT_EQ(o.output.rfind("mqtt-gateway: DB_SSL_MODE: expected one of", 0), 0u) << o.output;
}

// ---- secrets from files -------------------------------------------------------------------------

TEST_F(SecureConnectionsE2e, PasswordFileWorksAndPasswordWithPasswordFileIsRefused) {
  TempDir dir("gw_secret_");
  const auto path = dir.path() / "db_password";
  std::ofstream(path) << test_services().db_password << "\n";
  auto e = env();
  e.erase("DB_PASSWORD");
  e["DB_PASSWORD_FILE"] = path.string();
  Outcome o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 0) << o.output;

  e["DB_PASSWORD"] = test_services().db_password;
  o = run_gateway({"--check"}, e);
  EXPECT_EQ(o.code, 2) << o.output;
  EXPECT_EQ(o.output,
            "mqtt-gateway: DB_PASSWORD_FILE: set only one of DB_PASSWORD and DB_PASSWORD_FILE\n");
}

TEST_F(SecureConnectionsE2e, SystemdCredentialKeepsThePasswordOutOfTheEnvironment) {
  if (test_services().db_password.empty()) GTEST_FAIL() << "the test needs a database password";
  TempDir credentials("gw_credentials_");
  std::ofstream(credentials.path() / "db_password") << test_services().db_password;
  extra_env_["CREDENTIALS_DIRECTORY"] = credentials.path().string();
  auto e = env();
  e.erase("DB_PASSWORD");
  db_.insert_flow("cred", prefix_ + "/cred", "STORE_DB", std::nullopt);
  GatewayProcess gw(GATEWAY_BINARY, {}, e);
  ASSERT_TRUE(gw.wait_for_output("ready", 20s)) << gw.output();
  EXPECT_NE(gw.output().find("setting DB_PASSWORD=*** (from systemd credential " +
                             (credentials.path() / "db_password").string() + ")"),
            std::string::npos)
      << gw.output();
  publisher().publish(prefix_ + "/cred", R"({"a": 1})");
  EXPECT_TRUE(wait_for_count("SELECT COUNT(*) FROM data_records", 1)) << gw.output();
  const std::string environ = read_file("/proc/" + std::to_string(gw.pid()) + "/environ");
  EXPECT_FALSE(environ.empty());
  EXPECT_EQ(environ.find("DB_PASSWORD"), std::string::npos);
  EXPECT_EQ(environ.find(test_services().db_password), std::string::npos);
  EXPECT_EQ(gw.output().find(test_services().db_password), std::string::npos);
}

// ---- endpoint URL credentials -------------------------------------------------------------------

TEST_F(SecureConnectionsE2e, EndpointPasswordReachesNoLogReasonMetricsOrCheck) {
  // scripts/test.sh also scans every log of the suite for "hookpw-".
  const std::string password = "hookpw-" + db_.name();
  HttpSink sink;
  sink.push_statuses({503});
  sink.set_status(400);  // then a permanent failure: a dead letter
  const std::string url =
      "http://hook-user:" + password + "@127.0.0.1:" + std::to_string(sink.port()) + "/in";
  db_.insert_flow("hook", prefix_ + "/hook", "POST_ENDPOINT", std::nullopt, url);
  const int metrics_port = free_port();
  extra_env_["METRICS_ADDRESS"] = "127.0.0.1:" + std::to_string(metrics_port);
  extra_env_["HTTP_RETRY_MAX_SECONDS"] = "1";
  GatewayProcess& gw = start_gateway();
  publisher().publish(prefix_ + "/hook", R"({"a": 1})");
  ASSERT_TRUE(wait_for_count("SELECT COUNT(*) FROM rejected_messages", 1)) << gw.output();
  ASSERT_GE(sink.requests().size(), 2u);
  // The endpoint got the credentials (curl sends them as Basic auth): only the gateway hides them.
  EXPECT_TRUE(sink.requests()[0].header("Authorization").has_value());

  const auto reason = db_.query("SELECT reason FROM rejected_messages");
  ASSERT_EQ(reason.size(), 1u);
  EXPECT_EQ(reason[0][0], "POST http://hook-user:***@127.0.0.1:" + std::to_string(sink.port()) +
                              "/in failed: HTTP 400 (permanent)");
  const HttpAnswer metrics = http_get(metrics_port, "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_EQ(metrics.body.find(password), std::string::npos);

  const Outcome check = run_gateway({"--check"}, env());
  EXPECT_NE(check.output.find("http://hook-user:***@127.0.0.1:"), std::string::npos)
      << check.output;
  EXPECT_EQ(check.output.find(password), std::string::npos) << check.output;

  EXPECT_TRUE(gw.wait_for_output("delivery given up", 5s)) << gw.output();
  gw.kill(SIGTERM);
  gw.wait_exit(20s);
  const std::string log = read_file(gw.work_dir() / "log" / "mqtt-gateway.log");
  EXPECT_NE(log.find("delivery failed: flow hook"), std::string::npos) << log;
  EXPECT_NE(log.find("POST http://hook-user:***@127.0.0.1:"), std::string::npos) << log;
  EXPECT_EQ(log.find(password), std::string::npos) << log;
  EXPECT_EQ(gw.output().find(password), std::string::npos) << gw.output();
}

TEST_F(SecureConnectionsE2e, InlineEndpointPasswordReachesNoLogOrReason) {
  const std::string password = "hookpw-inline-" + db_.name();
  HttpSink sink;
  sink.set_status(400);
  const std::string url =
      "https://" + password + "@127.0.0.1:" + std::to_string(sink.port()) + "/in";  // a token
  db_.insert_flow("hook", prefix_ + "/hook", "POST_ENDPOINT", std::nullopt, url);
  extra_env_["HTTP_DELIVERY"] = "inline";
  extra_env_["HTTP_TIMEOUT_SECONDS"] = "2";
  GatewayProcess& gw = start_gateway();
  publisher().publish(prefix_ + "/hook", R"({"a": 1})");
  // https to a plain HTTP sink: a TLS failure, curl's error text in the reason.
  ASSERT_TRUE(wait_for_count("SELECT COUNT(*) FROM rejected_messages", 1)) << gw.output();
  const auto reason = db_.query("SELECT reason FROM rejected_messages");
  ASSERT_EQ(reason.size(), 1u);
  EXPECT_NE(reason[0][0]->find("POST https://***@127.0.0.1:"), std::string::npos) << *reason[0][0];
  EXPECT_EQ(reason[0][0]->find(password), std::string::npos) << *reason[0][0];
  EXPECT_TRUE(gw.wait_for_output("https://***@127.0.0.1:", 5s)) << gw.output();
  gw.kill(SIGTERM);
  gw.wait_exit(20s);
  EXPECT_EQ(read_file(gw.work_dir() / "log" / "mqtt-gateway.log").find(password),
            std::string::npos);
  EXPECT_EQ(gw.output().find(password), std::string::npos) << gw.output();
}

}  // namespace
}  // namespace gateway::testing
