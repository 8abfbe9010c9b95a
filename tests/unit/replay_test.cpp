// Dead-letter replay against the in-memory repository: Processor::replay() (the flow transaction,
// the marks committed with the rows) and the replay loop of `rejected replay` (batches, order,
// dry run, refused payloads, an interruption and a second run, a refused row, explicit ids).
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <map>
#include <set>
#include <sstream>

#include "fakes/fake_flow_admin.h"
#include "fakes/fake_flow_repository.h"
#include "fakes/fake_http_poster.h"
#include "gateway/admin_commands.h"
#include "gateway/errors.h"
#include "gateway/processor.h"

namespace gateway {
namespace {

using testing::FakeFlowAdmin;
using testing::FakeFlowRepository;
using testing::FakeHttpPoster;

class ReplayTest : public ::testing::Test {
 protected:
  ReplayTest() {
    Flow f;
    f.id = 1;
    f.code = "temps";
    f.topic = "sensors/+/temp";
    f.action = "STORE_DB";
    f.payload_schema = R"({"temperature": "int"})";
    repo_.flows[1] = f;
  }

  // Publishes `payloads` through the flow (as the daemon would) with seqs from next_seq_.
  BatchResult ingest(const std::vector<std::string>& payloads,
                     const std::string& topic = "sensors/a/temp") {
    std::vector<InboundMessage> msgs;
    for (const auto& p : payloads) {
      InboundMessage m;
      m.seq = next_seq_++;
      m.topic = topic;
      m.payload = p;
      m.parsed = parse_payload(m.payload, PayloadLimits{});
      msgs.push_back(std::move(m));
    }
    std::vector<const InboundMessage*> view;
    for (const auto& m : msgs) view.push_back(&m);
    return processor_.process_batch(1, view, "spool-1");
  }

  // n dead letters {"n": i, "temperature": i.5} for i = 1..n.
  void reject_many(int n) {
    std::vector<std::string> payloads;
    for (int i = 1; i <= n; ++i) {
      payloads.push_back(R"({"n": )" + std::to_string(i) + R"(, "temperature": )" +
                         std::to_string(i) + ".5}");
    }
    ingest(payloads);
  }

  void fix_schema() { repo_.flows[1].payload_schema = R"({"temperature": "number"})"; }

  int replay(AdminRequest r) {
    r.command = AdminCommand::kRejectedReplay;
    if (r.code.empty()) r.code = "temps";
    out_.str("");
    err_.str("");
    AdminOptions options;
    options.reload = [](const DaemonTarget&) -> pid_t { return 1; };
    AdminCommands commands(admin_, processor_, options, out_, err_);
    return commands.run(r);
  }

  // msg_id -> the payload's "n", from the stored records.
  std::map<std::int64_t, std::string> stored_n() {
    std::map<std::int64_t, std::string> out;
    for (const auto& r : repo_.records) {
      if (r.field_name == "n") out[r.msg_id] = r.field_value;
    }
    return out;
  }

  FakeFlowRepository repo_;
  FakeFlowAdmin admin_{repo_};
  FakeHttpPoster http_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  Processor processor_{repo_, http_, ProcessorOptions{}, log_};
  std::uint64_t next_seq_ = 1;
  std::ostringstream out_, err_;
};

TEST_F(ReplayTest, ProcessorReplayStoresAndMarksInOneTransaction) {
  ingest({R"({"temperature": 1})", R"({"temperature": 1.5})", R"({"temperature": "x"})"});
  ASSERT_EQ(repo_.rejections.size(), 2u);
  EXPECT_EQ(repo_.flows[1].last_msg_id, 1);
  fix_schema();
  std::vector<ReplayItem> items;
  for (const auto& d : repo_.rejections) {
    ReplayItem item;
    item.rejected_id = d.id;
    item.message.topic = d.topic;
    item.message.payload = d.payload;
    item.message.parsed = parse_payload(item.message.payload, PayloadLimits{});
    items.push_back(std::move(item));
  }
  const int commits = repo_.commits;
  ReplayResult r = processor_.replay(1, items, true);
  EXPECT_EQ(repo_.commits, commits + 1);
  ASSERT_EQ(r.outcomes.size(), 2u);
  EXPECT_EQ(r.outcomes[0].msg_id, 2);
  EXPECT_TRUE(r.outcomes[0].reason.empty());
  EXPECT_EQ(r.outcomes[1].msg_id, 0);
  EXPECT_EQ(r.outcomes[1].reason, "field 'temperature': expected number, got string");
  EXPECT_EQ(repo_.flows[1].last_msg_id, 2);
  EXPECT_EQ(repo_.rejections[0].replayed_msg_id, 2);
  EXPECT_FALSE(repo_.rejections[1].replayed_msg_id.has_value());
  EXPECT_EQ(repo_.rejections[1].attempts, 2);
  EXPECT_EQ(repo_.rejections[1].reason, "field 'temperature': expected number, got string");
  EXPECT_EQ(repo_.rejections.size(), 2u);  // no new dead letter rows
  // The spool offset is not touched by a replay.
  EXPECT_EQ((repo_.offsets[{"spool-1", 1}]), 3u);

  // The same items again: the first is taken, the second refused again (attempts 3).
  r = processor_.replay(1, items, true);
  EXPECT_TRUE(r.outcomes[0].already_replayed);
  EXPECT_EQ(r.outcomes[1].msg_id, 0);
  EXPECT_EQ(repo_.rejections[1].attempts, 3);
  EXPECT_EQ(repo_.flows[1].last_msg_id, 2);
  EXPECT_EQ(repo_.records.size(), 2u);

  // Uncommitted (a dry run): nothing changes.
  items.erase(items.begin());
  items[0].message.payload = R"({"temperature": 3})";
  items[0].message.parsed = parse_payload(items[0].message.payload, PayloadLimits{});
  r = processor_.replay(1, items, false);
  EXPECT_EQ(r.outcomes[0].msg_id, 3);
  EXPECT_EQ(repo_.flows[1].last_msg_id, 2);
  EXPECT_FALSE(repo_.rejections[1].replayed_msg_id.has_value());
}

TEST_F(ReplayTest, ReplaysInOriginalOrderWithConsecutiveMsgIdsAndOnlyOnce) {
  ingest({R"({"n": 0, "temperature": 20})"});
  reject_many(25);
  ingest({R"({"n": 99, "temperature": 21})"});
  ASSERT_EQ(repo_.rejections.size(), 25u);
  fix_schema();
  AdminRequest r;
  r.batch = 10;
  EXPECT_EQ(replay(r), 0) << err_.str();
  EXPECT_EQ(out_.str(), "replayed 25, still rejected 0 (flow temps, msg_id 3..27)\n");
  const auto n = stored_n();
  ASSERT_EQ(n.size(), 27u);
  for (std::int64_t id = 3; id <= 27; ++id) EXPECT_EQ(n.at(id), std::to_string(id - 2));
  for (const auto& d : repo_.rejections) {
    ASSERT_TRUE(d.replayed_msg_id.has_value());
    EXPECT_EQ(n.at(*d.replayed_msg_id), d.payload.substr(6, d.payload.find(',') - 6));
  }
  const std::size_t records = repo_.records.size();
  EXPECT_EQ(replay(r), 0);
  EXPECT_EQ(out_.str(), "replayed 0, still rejected 0 (flow temps)\n");
  EXPECT_EQ(repo_.records.size(), records);
}

TEST_F(ReplayTest, StillRejectedKeepsItsRowWithTheNewReasonAndOneMoreAttempt) {
  ingest({R"({"temperature": 1.5})", R"({"temperature": "warm"})"});
  repo_.flows[1].payload_schema = R"({"temperature": "number", "unit": "string"})";
  AdminRequest r;
  EXPECT_EQ(replay(r), 0);
  EXPECT_EQ(out_.str(),
            "#1 sensors/a/temp: still rejected: missing field 'unit' (expected string)\n"
            "#2 sensors/a/temp: still rejected: field 'temperature': expected number, got "
            "string\n"
            "replayed 0, still rejected 2 (flow temps)\n");
  EXPECT_EQ(repo_.rejections[0].reason, "missing field 'unit' (expected string)");
  EXPECT_EQ(repo_.rejections[0].attempts, 2);
  EXPECT_TRUE(repo_.records.empty());
  EXPECT_EQ(repo_.flows[1].last_msg_id, 0);
}

TEST_F(ReplayTest, DryRunSaysWhatWouldHappenAndWritesNothing) {
  reject_many(5);
  ingest({R"({"temperature": "warm"})"});
  fix_schema();
  const int commits = repo_.commits;
  AdminRequest r;
  r.dry_run = true;
  r.batch = 2;  // several transactions, all rolled back: the msg_ids still count on
  EXPECT_EQ(replay(r), 0);
  EXPECT_EQ(out_.str(),
            "#1 sensors/a/temp: would be replayed as msg_id 1\n"
            "#2 sensors/a/temp: would be replayed as msg_id 2\n"
            "#3 sensors/a/temp: would be replayed as msg_id 3\n"
            "#4 sensors/a/temp: would be replayed as msg_id 4\n"
            "#5 sensors/a/temp: would be replayed as msg_id 5\n"
            "#6 sensors/a/temp: would stay rejected: field 'temperature': expected number, got "
            "string\n"
            "dry run: would replay 5, would stay rejected 1 (flow temps, msg_id 1..5); nothing "
            "written\n");
  EXPECT_EQ(repo_.commits, commits);
  EXPECT_TRUE(repo_.records.empty());
  for (const auto& d : repo_.rejections) {
    EXPECT_FALSE(d.replayed_msg_id.has_value());
    EXPECT_EQ(d.attempts, 1);
  }
}

TEST_F(ReplayTest, ACutPayloadIsRefusedAndLeftAlone) {
  Processor cutting{repo_, http_, ProcessorOptions{.rejected_payload_max_bytes = 10}, log_};
  InboundMessage m;
  m.seq = 1;
  m.topic = "sensors/a/temp";
  m.payload = R"({"temperature": 1.5, "pad": "xxxxxxxxxxxxxxxx"})";
  m.parsed = parse_payload(m.payload, PayloadLimits{});
  const InboundMessage* view[] = {&m};
  cutting.process_batch(1, view, "spool-1");
  ASSERT_EQ(repo_.rejections.size(), 1u);
  ASSERT_TRUE(repo_.rejections[0].payload_truncated);
  fix_schema();
  AdminRequest r;
  r.json = true;
  EXPECT_EQ(replay(r), 0);
  const auto j = nlohmann::json::parse(out_.str());
  EXPECT_EQ(j["replayed"], 0);
  EXPECT_EQ(j["still_rejected"], 1);
  EXPECT_EQ(j["dead_letters"][0]["outcome"], "refused");
  EXPECT_EQ(j["dead_letters"][0]["reason"],
            "payload was cut to 10 bytes when it was rejected (REJECTED_PAYLOAD_MAX_BYTES); the "
            "whole message is not available");
  EXPECT_EQ(repo_.rejections[0].attempts, 1);
  EXPECT_NE(repo_.rejections[0].reason.find("expected int"), std::string::npos);
}

// A replay that dies after some batches committed (kill -9) and is run again stores every dead
// letter exactly once: the marks committed with the rows.
TEST_F(ReplayTest, AnInterruptedReplayRunAgainStoresEachDeadLetterOnce) {
  reject_many(30);
  fix_schema();
  AdminRequest r;
  r.batch = 7;
  // The 4th batch's commit fails as if the process died there.
  int locks = 0;
  repo_.on_lock = [&](std::int64_t) {
    if (++locks == 4) {
      repo_.fail_next_commit = [] { throw DbUnavailable("lost connection (killed)", 2013); };
    }
  };
  EXPECT_THROW(replay(r), DbUnavailable);
  EXPECT_EQ(out_.str(),
            "stopped by an error after: replayed 21, still rejected 0 (flow temps, msg_id "
            "1..21)\n");
  repo_.on_lock = nullptr;
  EXPECT_EQ(stored_n().size(), 21u);
  std::size_t marked = 0;
  for (const auto& d : repo_.rejections) marked += d.replayed_msg_id.has_value();
  EXPECT_EQ(marked, 21u);

  EXPECT_EQ(replay(r), 0);
  EXPECT_EQ(out_.str(), "replayed 9, still rejected 0 (flow temps, msg_id 22..30)\n");
  const auto n = stored_n();
  ASSERT_EQ(n.size(), 30u);
  std::set<std::string> distinct;
  for (const auto& [id, v] : n) distinct.insert(v);
  EXPECT_EQ(distinct.size(), 30u);
  EXPECT_EQ(n.begin()->first, 1);
  EXPECT_EQ(n.rbegin()->first, 30);
}

TEST_F(ReplayTest, ARowTheDatabaseRefusesStaysRejectedAloneWithItsReason) {
  reject_many(4);
  fix_schema();
  // The database refuses the rows of message n=3 (say, a value too long for its column).
  repo_.on_insert_record = [](const DataRecord& r) {
    if (r.field_name == "n" && r.field_value == "3") {
      throw DbDataError("insert data_records: Data too long (MySQL error 1406)", 1406);
    }
  };
  AdminRequest r;
  EXPECT_EQ(replay(r), 0);
  EXPECT_EQ(out_.str(),
            "#3 sensors/a/temp: still rejected: insert data_records: Data too long (MySQL error "
            "1406)\n"
            "replayed 3, still rejected 1 (flow temps, msg_id 1..3)\n");
  EXPECT_EQ(repo_.rejections[2].attempts, 2);
  EXPECT_FALSE(repo_.rejections[2].replayed_msg_id.has_value());
  const auto n = stored_n();
  EXPECT_EQ(n.at(1), "1");
  EXPECT_EQ(n.at(2), "2");
  EXPECT_EQ(n.at(3), "4");
}

// A batch split one by one (a refused row) and then stopped by a lost connection: the summary
// counts what the split committed before the error.
TEST_F(ReplayTest, TheSummaryAfterAnErrorCountsWhatWasCommittedBeforeIt) {
  reject_many(4);
  fix_schema();
  repo_.on_insert_record = [](const DataRecord& r) {
    if (r.field_name != "n") return;
    if (r.field_value == "2") throw DbDataError("Data too long (MySQL error 1406)", 1406);
    if (r.field_value == "3") throw DbUnavailable("lost connection (MySQL error 2013)", 2013);
  };
  AdminRequest r;
  EXPECT_THROW(replay(r), DbUnavailable);
  EXPECT_NE(out_.str().find("stopped by an error after: replayed 1, still rejected 1 (flow temps, "
                            "msg_id 1..1)"),
            std::string::npos)
      << out_.str();
  EXPECT_EQ(stored_n().size(), 1u);
}

TEST_F(ReplayTest, RefusesADisabledFlowAndIdsOfOtherFlows) {
  reject_many(2);
  fix_schema();
  Flow other = repo_.flows[1];
  other.id = 2;
  other.code = "other";
  other.topic = "other/#";
  repo_.flows[2] = other;
  AdminRequest r;
  r.ids = {1, 77};
  r.code = "other";
  EXPECT_EQ(replay(r), 1);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway rejected replay: --id 1: a dead letter of flow temps, not of other\n"
            "mqtt-gateway rejected replay: --id 77: no such dead letter\n");
  repo_.flows[1].enabled = false;
  r = AdminRequest{};
  EXPECT_EQ(replay(r), 1);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway rejected replay: flow 'temps' is disabled: enable it first (flows "
            "enable temps)\n");
  r.code = "missing";
  r.since = "soon";
  r.batch = 0;
  EXPECT_EQ(replay(r), 1);
  const std::string err = err_.str();
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 3) << err;
  EXPECT_TRUE(repo_.records.empty());
}

TEST_F(ReplayTest, ExplicitIdsMayTakeADeadLetterNoFlowTookWhenItsTopicMatches) {
  reject_many(3);
  fix_schema();
  // A message no flow took (flow_id NULL), on a topic this flow matches, and one it does not.
  auto tx = repo_.begin_unrouted("spool-1");
  const std::string payload = R"({"n": 50, "temperature": 5})";
  const RejectedMessage rows[] = {{"sensors/b/temp", payload, false, "no flow takes it", 90},
                                  {"elsewhere", payload, false, "no flow takes it", 91}};
  tx->insert_rejected(rows);
  tx->commit();
  tx.reset();
  AdminRequest r;
  r.ids = {5};
  EXPECT_EQ(replay(r), 1);
  EXPECT_EQ(err_.str(),
            "mqtt-gateway rejected replay: --id 5: its topic 'elsewhere' does not match the "
            "filter 'sensors/+/temp' of flow temps\n");
  r.ids = {4, 2};
  EXPECT_EQ(replay(r), 0) << err_.str();
  EXPECT_EQ(out_.str(), "replayed 2, still rejected 0 (flow temps, msg_id 1..2)\n");
  EXPECT_EQ(repo_.rejections[3].flow_id, 1);  // now recorded under the flow
  EXPECT_EQ(repo_.rejections[3].replayed_msg_id, 2);
  EXPECT_EQ(repo_.rejections[1].replayed_msg_id, 1);  // id order: the original order
  EXPECT_FALSE(repo_.rejections[0].replayed_msg_id.has_value());
  // Asked again: already replayed, nothing stored.
  EXPECT_EQ(replay(r), 0);
  EXPECT_EQ(out_.str(),
            "#4 sensors/b/temp: already replayed as msg_id 2\n"
            "#2 sensors/a/temp: already replayed as msg_id 1\n"
            "replayed 0, still rejected 0, already replayed 2 (flow temps)\n");
  EXPECT_EQ(stored_n().size(), 2u);
}

TEST_F(ReplayTest, PostEndpointReplaysAreQueuedInTheOutbox) {
  repo_.flows[1].action = "POST_ENDPOINT";
  repo_.flows[1].endpoint_url = "http://127.0.0.1:9/in";
  reject_many(2);
  fix_schema();
  AdminRequest r;
  EXPECT_EQ(replay(r), 0);
  ASSERT_EQ(repo_.outbox.size(), 2u);
  EXPECT_EQ(repo_.outbox[0].second.msg_id, 1);
  EXPECT_EQ(http_.requests().size(), 0u);
}

}  // namespace
}  // namespace gateway
