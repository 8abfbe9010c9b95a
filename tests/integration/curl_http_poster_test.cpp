// CurlHttpPoster against a real HTTP server (HttpSink), plus self-tests of the test-support
// library (HttpSink, TestDatabase, MqttTestClient/Subscriber, GatewayProcess). The database and
// broker tests need the services from scripts/services.sh (GW_TEST_* variables).
#include "gateway/adapters/curl_http_poster.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "gateway/constants.h"
#include "support/gateway_process.h"
#include "support/http_sink.h"
#include "support/mqtt_test_client.h"
#include "support/test_database.h"
#include "support/test_env.h"

namespace gateway::testing {
namespace {

using namespace std::chrono_literals;

// libcurl's process-wide setup, once for the whole test program (main does this in the daemon).
class CurlEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { global_ = std::make_unique<CurlGlobal>(); }
  void TearDown() override { global_.reset(); }

 private:
  std::unique_ptr<CurlGlobal> global_;
};
[[maybe_unused]] ::testing::Environment* const kCurlEnvironment =
    ::testing::AddGlobalTestEnvironment(new CurlEnvironment);

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

HttpRequest make_request(std::string url, std::string body = R"({"t":1})",
                         std::chrono::milliseconds timeout = 5000ms) {
  HttpRequest request;
  request.url = std::move(url);
  request.body = std::move(body);
  request.timeout = timeout;
  return request;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A port on which nothing listens: bound by a sink that is then stopped.
int unused_port() {
  HttpSink sink;
  const int port = sink.port();
  sink.stop();
  return port;
}

// ---------------------------------------------------------------------------------------------
// CurlHttpPoster

TEST(CurlHttpPosterTest, DeliversExactBodyAndHeadersAndReturns200) {
  HttpSink sink;
  CurlHttpPoster poster;
  HttpRequest request =
      make_request(sink.url("/ingest/flow-1"),
                   "{\"text\":\"h\\u00e9 \\\"q\\\"\",\"emoji\":\"\xF0\x9F\x98\x80\","
                   "\"n\":[1,2.5,null]}\n");
  request.headers = {{"X-Gateway-Flow", "flow-1"}, {"Authorization", "Bearer t0k3n"}};

  const HttpResult result = poster.post(request);

  EXPECT_EQ(result.status, 200);
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(result.error, "");
  ASSERT_EQ(sink.count(), 1u);
  const RecordedRequest received = sink.requests().at(0);
  EXPECT_EQ(received.method, "POST");
  EXPECT_EQ(received.path, "/ingest/flow-1");
  EXPECT_EQ(received.body, request.body);
  EXPECT_EQ(received.header("Content-Type"), "application/json");
  EXPECT_EQ(received.header("x-gateway-flow"), "flow-1");
  EXPECT_EQ(received.header("Authorization"), "Bearer t0k3n");
  EXPECT_EQ(received.header("Expect"), std::nullopt);  // no 100-continue round trip
}

TEST(CurlHttpPosterTest, ServerErrorIsStatus500NotOk) {
  HttpSink sink;
  sink.push_statuses({500});
  CurlHttpPoster poster;

  const HttpResult result = poster.post(make_request(sink.url("/x")));

  EXPECT_EQ(result.status, 500);
  EXPECT_FALSE(result.ok());
  EXPECT_EQ(result.error, "HTTP 500");
  EXPECT_EQ(sink.count(), 1u);
}

TEST(CurlHttpPosterTest, SlowEndpointTimesOutWithinTheRequestTimeout) {
  HttpSink sink;
  sink.set_delay(1500ms);
  CurlHttpPoster poster;

  const auto start = std::chrono::steady_clock::now();
  const HttpResult result = poster.post(make_request(sink.url("/slow"), "{}", 300ms));
  const auto elapsed = std::chrono::steady_clock::now() - start;

  EXPECT_EQ(result.status, 0);
  EXPECT_FALSE(result.ok());
  EXPECT_PRED2(contains, result.error, "Timeout was reached");
  EXPECT_PRED2(contains, result.error, "curl 28");
  EXPECT_GE(elapsed, 250ms);
  EXPECT_LT(elapsed, 1000ms);
}

TEST(CurlHttpPosterTest, RefusedConnectionIsStatusZeroWithError) {
  const int port = unused_port();
  CurlHttpPoster poster;

  const HttpResult result =
      poster.post(make_request("http://127.0.0.1:" + std::to_string(port) + "/x"));

  EXPECT_EQ(result.status, 0);
  EXPECT_FALSE(result.ok());
  EXPECT_PRED2(contains, result.error, "curl 7");
}

TEST(CurlHttpPosterTest, NonHttpSchemesAreRefusedWithoutTransfer) {
  HttpSink sink;
  CurlHttpPoster poster;
  for (const std::string& url : {"ftp://127.0.0.1:" + std::to_string(sink.port()) + "/x",
                                 std::string("file:///etc/hostname"), std::string("gopher://x/")}) {
    SCOPED_TRACE(url);
    const HttpResult result = poster.post(make_request(url));
    EXPECT_EQ(result.status, 0);
    EXPECT_FALSE(result.ok());
    EXPECT_PRED2(contains, result.error, "curl 1)");  // CURLE_UNSUPPORTED_PROTOCOL
  }
  EXPECT_EQ(sink.count(), 0u);
}

TEST(CurlHttpPosterTest, RetryAfterIsCapturedOn429AndNotCarriedOver) {
  HttpSink sink;
  sink.push_statuses({429});
  sink.set_retry_after("7");
  CurlHttpPoster poster;

  const HttpResult throttled = poster.post(make_request(sink.url("/x")));
  sink.set_retry_after(std::nullopt);
  const HttpResult next = poster.post(make_request(sink.url("/x")));

  EXPECT_EQ(throttled.status, 429);
  EXPECT_EQ(throttled.retry_after, "7");
  EXPECT_EQ(throttled.error, "HTTP 429");
  EXPECT_EQ(next.status, 200);
  EXPECT_EQ(next.retry_after, "");
}

TEST(CurlHttpPosterTest, SequentialPostsReuseOneKeptAliveConnection) {
  HttpSink sink;
  CurlHttpPoster poster;
  for (int i = 0; i < 50; ++i) {
    const HttpResult result =
        poster.post(make_request(sink.url("/seq"), "{\"i\":" + std::to_string(i) + "}"));
    ASSERT_EQ(result.status, 200) << "post " << i << ": " << result.error;
  }
  const auto requests = sink.requests();
  ASSERT_EQ(requests.size(), 50u);
  std::set<int> client_ports;
  for (const auto& request : requests) client_ports.insert(request.remote_port);
  EXPECT_EQ(client_ports.size(), 1u) << "each new client port is a new TCP connection";
  EXPECT_EQ(requests.back().body, "{\"i\":49}");
}

TEST(CurlHttpPosterTest, HeaderWithLineBreakIsRefusedNotSent) {
  HttpSink sink;
  CurlHttpPoster poster;
  HttpRequest request = make_request(sink.url("/x"));
  request.headers = {{"X-Flow", "a\r\nX-Injected: 1"}};

  const HttpResult result = poster.post(request);

  EXPECT_EQ(result.status, 0);
  EXPECT_PRED2(contains, result.error, "invalid header");
  EXPECT_EQ(sink.count(), 0u);
}

TEST(CurlHttpPosterTest, RecoversWhenTheEndpointGoesDownAndComesBackOnTheSamePort) {
  HttpSink sink;
  CurlHttpPoster poster;
  ASSERT_EQ(poster.post(make_request(sink.url("/x"))).status, 200);

  sink.stop();
  const HttpResult down = poster.post(make_request(sink.url("/x"), "{}", 2000ms));
  sink.start();
  const HttpResult back = poster.post(make_request(sink.url("/x")));

  EXPECT_EQ(down.status, 0);
  EXPECT_FALSE(down.error.empty());
  EXPECT_EQ(back.status, 200) << back.error;
  EXPECT_EQ(sink.count(), 2u);
}

// ---------------------------------------------------------------------------------------------
// HttpSink

TEST(HttpSinkTest, ScriptedStatusesAreConsumedInOrderThenTheDefaultApplies) {
  HttpSink sink;
  sink.push_statuses({500, 503});
  sink.set_status(202);
  CurlHttpPoster poster;

  std::vector<int> statuses;
  for (int i = 0; i < 3; ++i) statuses.push_back(poster.post(make_request(sink.url("/"))).status);

  EXPECT_EQ(statuses, (std::vector<int>{500, 503, 202}));
  const auto requests = sink.requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].status_sent, 500);
  EXPECT_EQ(requests[2].status_sent, 202);
}

TEST(HttpSinkTest, WaitForCountSeesPostsFromAnotherThreadAndTimesOut) {
  HttpSink sink;
  std::thread client([&] {
    CurlHttpPoster poster;
    for (int i = 0; i < 3; ++i) poster.post(make_request(sink.url("/bg")));
  });
  EXPECT_TRUE(sink.wait_for_count(3, 5000ms));
  client.join();

  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(sink.wait_for_count(4, 100ms));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1000ms);
}

TEST(HttpSinkTest, StopReturnsPromptlyWithAnIdleKeptAliveConnection) {
  HttpSink sink;
  CurlHttpPoster poster;  // keeps its connection open after the post
  ASSERT_EQ(poster.post(make_request(sink.url("/x"))).status, 200);

  const auto start = std::chrono::steady_clock::now();
  sink.stop();

  EXPECT_LT(std::chrono::steady_clock::now() - start, 3000ms);
  EXPECT_FALSE(sink.running());
}

// ---------------------------------------------------------------------------------------------
// TestDatabase

TEST(TestDatabaseTest, SplitSqlScriptIgnoresSemicolonsInCommentsAndQuotes) {
  const auto statements = TestDatabase::split_sql_script(
      "-- the flow's rows; not a statement\n"
      "CREATE TABLE a (x VARCHAR(9) DEFAULT 'a;b''c');\n"
      "/* block; comment */ INSERT INTO a VALUES (\"d;e\") ; # trailing; comment\n"
      "  \n");
  ASSERT_EQ(statements.size(), 2u);
  EXPECT_EQ(statements[0], "CREATE TABLE a (x VARCHAR(9) DEFAULT 'a;b''c')");
  EXPECT_EQ(statements[1], "INSERT INTO a VALUES (\"d;e\")");
}

TEST(TestDatabaseTest, CreatesSchemaInAUniqueDatabaseAndDropsIt) {
  std::int64_t schema_tables = 0;
  for (const auto& statement :
       TestDatabase::split_sql_script(read_text(TestDatabase::default_schema_file()))) {
    if (statement.rfind("CREATE TABLE", 0) == 0) ++schema_tables;
  }
  ASSERT_GE(schema_tables, 5);
  TestDatabase observer;
  std::string name;
  {
    TestDatabase db;
    name = db.name();
    EXPECT_EQ(name.rfind("gw_test_", 0), 0u) << name;
    EXPECT_NE(name, observer.name());
    EXPECT_EQ(observer.query_int("SELECT COUNT(*) FROM information_schema.TABLES "
                                 "WHERE TABLE_SCHEMA = '" +
                                 name + "'"),
              schema_tables);
    EXPECT_EQ(db.query_int("SELECT COUNT(*) FROM flows"), 0);
  }
  EXPECT_EQ(observer.query_int("SELECT COUNT(*) FROM information_schema.SCHEMATA "
                               "WHERE SCHEMA_NAME = '" +
                               name + "'"),
            0);
}

TEST(TestDatabaseTest, InsertFlowAndServerRowsReadBackWithNulls) {
  TestDatabase db;
  const std::int64_t flow_id = db.insert_flow(
      "temp", "sensors/+/temp", std::string(kFlowActionStoreDb), R"({"t": "number"})");
  const std::int64_t post_id =
      db.insert_flow("fwd", "fwd/#", std::string(kFlowActionPostEndpoint), std::nullopt,
                     "http://127.0.0.1:1/x", /*enabled=*/false);
  const std::int64_t server_id = db.insert_mqtt_server("127.0.0.1", 1883, "gw", std::nullopt);

  EXPECT_GT(flow_id, 0);
  EXPECT_EQ(post_id, flow_id + 1);
  const auto rows = db.query(
      "SELECT code, topic, action, JSON_EXTRACT(payload_schema, '$.t'), endpoint_url, enabled, "
      "last_msg_id FROM flows ORDER BY id");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], (TestDatabase::Row{"temp", "sensors/+/temp", "STORE_DB", "\"number\"",
                                        std::nullopt, "1", "0"}));
  EXPECT_EQ(rows[1], (TestDatabase::Row{"fwd", "fwd/#", "POST_ENDPOINT", std::nullopt,
                                        "http://127.0.0.1:1/x", "0", "0"}));
  const auto servers = db.query(
      "SELECT id, host, port, username, password, use_tls, ca_file, "
      "enabled FROM mqtt_servers");
  ASSERT_EQ(servers.size(), 1u);
  EXPECT_EQ(servers[0], (TestDatabase::Row{std::to_string(server_id), "127.0.0.1", "1883", "gw",
                                           std::nullopt, "0", std::nullopt, "1"}));
}

TEST(TestDatabaseTest, SqlErrorsThrowWithTheServerMessage) {
  TestDatabase db;
  db.insert_flow("dup", "a", "STORE_DB", std::nullopt);
  try {
    db.insert_flow("dup", "b", "STORE_DB", std::nullopt);
    FAIL() << "duplicate flow code was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_PRED2(contains, e.what(), "1062");
  }
  EXPECT_THROW(db.query_int("SELECT NULL"), std::runtime_error);
  EXPECT_THROW(db.execute("SELEC 1"), std::runtime_error);
}

TEST(TestDatabaseTest, GatewayEnvPointsAtThisDatabase) {
  TestDatabase db;
  const auto env = db.gateway_env();
  const TestServices& services = test_services();
  EXPECT_EQ(env.at("DB_NAME"), db.name());
  EXPECT_EQ(env.at("DB_HOST"), services.db_host);
  EXPECT_EQ(env.at("DB_PORT"), std::to_string(services.db_port));
  EXPECT_EQ(env.at("DB_USER"), services.db_user);
  EXPECT_EQ(env.at("DB_PASSWORD"), services.db_password);
}

// ---------------------------------------------------------------------------------------------
// MqttTestClient / MqttTestSubscriber

std::string unique_topic(std::string_view name) {
  return "gwtest/" + std::to_string(::getpid()) + "/" + std::string(name);
}

TEST(MqttTestClientTest, PublishedMessagesReachASubscriberInOrder) {
  const TestServices& services = test_services();
  const std::string topic = unique_topic("order");
  MqttTestSubscriber subscriber(services.mqtt_host, services.mqtt_port, topic + "/#");
  MqttTestClient client(services.mqtt_host, services.mqtt_port);

  client.publish(topic + "/first", R"({"n":0})");
  std::vector<std::pair<std::string, std::string>> batch;
  for (int i = 1; i <= 500; ++i)
    batch.emplace_back(topic + "/many", "{\"n\":" + std::to_string(i) + "}");
  client.publish_many(batch);  // default window (200) exceeds Paho's default buffer of 100

  ASSERT_TRUE(subscriber.wait_for_count(501, 10000ms)) << "got " << subscriber.count();
  const auto messages = subscriber.messages();
  EXPECT_EQ(messages[0].topic, topic + "/first");
  EXPECT_EQ(messages[0].payload, R"({"n":0})");
  EXPECT_EQ(messages[0].qos, 1);
  for (int i = 1; i <= 500; ++i) {
    ASSERT_EQ(messages[i].payload, batch[i - 1].second) << "message " << i;
  }
}

TEST(MqttTestClientTest, TlsConnectsWithTheRightCaAndFailsWithTheWrongOne) {
  const TestServices& services = test_services();
  const std::string topic = unique_topic("tls");
  MqttTestSubscriber subscriber(services.mqtt_host, services.mqtt_port, topic);
  {
    MqttTestClient client(services.mqtt_host, services.mqtt_tls_port, services.mqtt_ca_file);
    client.publish(topic, "over tls");
  }
  EXPECT_TRUE(subscriber.wait_for_count(1, 5000ms));
  EXPECT_THROW(
      MqttTestClient(services.mqtt_host, services.mqtt_tls_port, services.mqtt_wrong_ca_file),
      std::runtime_error);
}

TEST(MqttTestClientTest, ConnectingToNothingThrows) {
  EXPECT_THROW(MqttTestClient("127.0.0.1", unused_port()), std::runtime_error);
}

// ---------------------------------------------------------------------------------------------
// GatewayProcess

TEST(GatewayProcessTest, ChildGetsOnlyTheGivenEnvironmentAndItsOwnDirectory) {
  GatewayProcess child("/bin/sh",
                       {"-c",
                        "echo \"FOO=$FOO HOME=${HOME:-unset}\"; pwd; "
                        "echo to-stderr >&2; exit 3"},
                       {{"FOO", "bar baz"}});

  EXPECT_EQ(child.wait_exit(5000ms), 3);
  EXPECT_FALSE(child.running());
  const std::string output = child.output();
  EXPECT_PRED2(contains, output, "FOO=bar baz HOME=unset");
  EXPECT_PRED2(contains, output, child.work_dir().string() + "\n");
  EXPECT_PRED2(contains, output, "to-stderr");
  EXPECT_EQ(child.output_file().parent_path(), child.work_dir());
}

TEST(GatewayProcessTest, KillReportsTheSignalAndWaitsAreBounded) {
  GatewayProcess child("/bin/sh", {"-c", "echo started; exec sleep 30"}, {});

  EXPECT_TRUE(child.wait_for_output("started", 5000ms));
  EXPECT_FALSE(child.wait_exit(100ms).has_value());
  EXPECT_TRUE(child.running());
  EXPECT_TRUE(child.kill(SIGKILL));
  EXPECT_EQ(child.wait_exit(5000ms), -SIGKILL);
  EXPECT_FALSE(child.kill(SIGTERM));
}

TEST(GatewayProcessTest, WaitForOutputGivesUpWhenTheChildExits) {
  GatewayProcess child("/bin/sh", {"-c", "echo bye"}, {});
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(child.wait_for_output("never printed", 10000ms));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5000ms);
}

TEST(GatewayProcessTest, RestartInTheSameDirectoryKeepsBothOutputs) {
  TempDir dir;
  {
    GatewayProcess first("/bin/sh", {"-c", "echo one > state.txt; echo run1"}, {}, dir.path());
    EXPECT_EQ(first.wait_exit(5000ms), 0);
  }
  GatewayProcess second("/bin/sh", {"-c", "cat state.txt; echo run2"}, {}, dir.path());
  EXPECT_EQ(second.wait_exit(5000ms), 0);
  EXPECT_EQ(second.output(), "one\nrun2\n");
  EXPECT_NE(second.output_file(), dir.path() / "gateway.1.out");
}

TEST(GatewayProcessTest, TakenWorkDirOutlivesTheProcessForARestart) {
  std::unique_ptr<TempDir> dir;
  {
    GatewayProcess first("/bin/sh", {"-c", "echo kept > state.txt"}, {});
    EXPECT_EQ(first.wait_exit(5000ms), 0);
    dir = first.take_work_dir();
    ASSERT_NE(dir, nullptr);
    EXPECT_EQ(dir->path(), first.work_dir());
  }
  GatewayProcess second("/bin/sh", {"-c", "cat state.txt"}, {}, dir->path());
  EXPECT_EQ(second.wait_exit(5000ms), 0);
  EXPECT_EQ(second.output(), "kept\n");
}

TEST(GatewayProcessTest, MissingBinaryThrows) {
  EXPECT_THROW(GatewayProcess("/nonexistent/mqtt-gateway", {}, {}), std::runtime_error);
}

}  // namespace
}  // namespace gateway::testing
