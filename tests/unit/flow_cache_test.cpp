// FlowCache: the copy of the broker rows and flows that a gateway starts from when the database
// is down. Round trip of every field, atomic replacement, mode 0600, and refusal of a damaged copy.
#include "gateway/flow_cache.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "gateway/errors.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;

class FlowCacheTest : public ::testing::Test {
 protected:
  FlowCacheTest() {
    std::string pattern = (fs::temp_directory_path() / "gw_flow_cache_XXXXXX").string();
    EXPECT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  ~FlowCacheTest() override { fs::remove_all(dir_); }

  static Flow full_flow() {
    Flow f;
    f.id = 7;
    f.code = "temps";
    f.topic = "plant/+/temp";
    f.action = "STORE_TABLE";
    f.endpoint_url = "http://example.com/in";
    f.payload_schema = R"({"t": "number"})";
    f.last_msg_id = 42;
    f.enabled = true;
    f.target_table = "readings";
    f.column_map = R"({"t": "temperature"})";
    f.write_mode = "upsert";
    return f;
  }

  static MqttServer server(std::int64_t id, const std::string& host) {
    MqttServer s;
    s.id = id;
    s.host = host;
    s.port = 1883 + static_cast<int>(id);
    s.username = "gw";
    s.password = Secret("s3cret");
    s.use_tls = id % 2 == 0;
    s.ca_file = "/etc/ca.pem";
    s.client_cert_file = "/etc/c.pem";
    s.client_key_file = "/etc/k.pem";
    s.client_key_password_file = "/etc/k.pw";
    return s;
  }

  fs::path dir_;
};

TEST_F(FlowCacheTest, NoFileIsNoCopy) { EXPECT_FALSE(FlowCache(dir_).load().has_value()); }

TEST_F(FlowCacheTest, RoundTripKeepsEveryField) {
  FlowCache cache(dir_);
  FlowCacheContents c;
  c.servers = {server(2, "a"), server(1, "b")};
  Flow minimal;  // NULL columns stay NULL
  minimal.id = 8;
  minimal.code = "m";
  minimal.topic = "m/#";
  minimal.action = "STORE_DB";
  c.flows = {full_flow(), minimal};
  c.spool_id = "abc";
  c.committed_seq = 99;
  c.written_unix_ms = 123;
  cache.save(c);

  const auto back = cache.load();
  ASSERT_TRUE(back.has_value());
  ASSERT_EQ(back->flows.size(), 2u);
  const Flow& f = back->flows[0];
  EXPECT_TRUE(f.same_definition(full_flow()));
  EXPECT_EQ(f.id, 7);
  EXPECT_EQ(f.last_msg_id, 42);
  EXPECT_TRUE(back->flows[1].same_definition(minimal));
  EXPECT_FALSE(back->flows[1].endpoint_url.has_value());
  EXPECT_FALSE(back->flows[1].target_table.has_value());
  ASSERT_EQ(back->servers.size(), 2u);
  EXPECT_EQ(back->servers[0].id, 2);  // the order is the failover order
  EXPECT_EQ(back->servers[0].host, "a");
  EXPECT_EQ(back->servers[0].port, 1885);
  EXPECT_EQ(back->servers[0].username, "gw");
  ASSERT_TRUE(back->servers[0].password.has_value());
  EXPECT_EQ(back->servers[0].password->reveal(), "s3cret");
  EXPECT_TRUE(back->servers[0].use_tls);
  EXPECT_EQ(back->servers[0].client_key_password_file, "/etc/k.pw");
  EXPECT_EQ(back->spool_id, "abc");
  EXPECT_EQ(back->committed_seq, 99u);
  EXPECT_EQ(back->written_unix_ms, 123);
}

TEST_F(FlowCacheTest, FileIsOwnerOnlyBecauseItHoldsBrokerPasswords) {
  FlowCache cache(dir_);
  // A world-readable leftover from elsewhere must not keep its mode.
  { std::ofstream(cache.path()) << "{}"; }
  fs::permissions(cache.path(), fs::perms::all);
  FlowCacheContents c;
  c.servers = {server(1, "a")};
  cache.save(c);
  struct stat st {};
  ASSERT_EQ(::stat(cache.path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(fs::exists(cache.path().string() + ".tmp"));
}

TEST_F(FlowCacheTest, SaveReplacesTheWholeCopy) {
  FlowCache cache(dir_);
  FlowCacheContents c;
  c.flows = {full_flow(), full_flow()};
  cache.save(c);
  c.flows.clear();
  cache.save(c);
  EXPECT_TRUE(cache.load()->flows.empty());
}

TEST_F(FlowCacheTest, DamagedCopyIsRefusedNotHalfRead) {
  FlowCache cache(dir_);
  FlowCacheContents c;
  c.flows = {full_flow()};
  cache.save(c);
  std::string text;
  {
    std::ifstream in(cache.path());
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  { std::ofstream(cache.path(), std::ios::trunc) << text.substr(0, text.size() / 2); }
  EXPECT_THROW(cache.load(), Error);
  { std::ofstream(cache.path(), std::ios::trunc) << R"({"version": 99})"; }
  EXPECT_THROW(cache.load(), Error);
}

TEST_F(FlowCacheTest, ErrorAboutADamagedCopyNeverQuotesThePassword) {
  FlowCache cache(dir_);
  FlowCacheContents c;
  c.servers = {server(1, "a")};
  cache.save(c);
  std::string text;
  {
    std::ifstream in(cache.path());
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const auto at = text.find("s3cret");
  ASSERT_NE(at, std::string::npos);
  { std::ofstream(cache.path(), std::ios::trunc) << text.substr(0, at + 3) << "\x01"; }
  try {
    cache.load();
    ADD_FAILURE() << "a damaged copy was read";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("s3c"), std::string::npos) << e.what();
  }
}

TEST_F(FlowCacheTest, UnwritableDirectoryThrowsAndKeepsTheOldCopy) {
  FlowCache missing(dir_ / "nope");
  EXPECT_THROW(missing.save(FlowCacheContents{}), Error);
}

TEST_F(FlowCacheTest, CopyWithoutNewerFlowFieldsReadsDefaults) {
  nlohmann::json j = full_flow();
  j.erase("target_table");
  j.erase("column_map");
  j.erase("write_mode");
  const Flow f = j.get<Flow>();
  EXPECT_FALSE(f.target_table.has_value());
  EXPECT_EQ(f.write_mode, "insert");
}

// Started from the copy, the spool numbers new messages 2^32 above the higher of the copy's
// offset and its own last seq (what the database may have committed since), without overflowing.
TEST(SeqFloorWithoutDatabaseTest, LeavesRoomForWhatTheDatabaseCommittedSince) {
  constexpr std::uint64_t kMargin = std::uint64_t{1} << 32;
  FlowCacheContents c;
  EXPECT_EQ(seq_floor_without_database(c, 1), kMargin);
  c.committed_seq = 1000;
  EXPECT_EQ(seq_floor_without_database(c, 1), 1000 + kMargin);
  EXPECT_EQ(seq_floor_without_database(c, 900), 1000 + kMargin);
  EXPECT_EQ(seq_floor_without_database(c, 5001), 5000 + kMargin) << "an old copy";
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  c.committed_seq = kMax - 5;
  EXPECT_EQ(seq_floor_without_database(c, 1), kMax - 1) << "ensure_seq_above() refuses the largest";
}

}  // namespace
}  // namespace gateway
