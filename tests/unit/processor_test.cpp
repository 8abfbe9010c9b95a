// The flow transaction against an in-memory repository and a scripted HTTP poster.
#include "gateway/processor.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <set>

#include "fakes/fake_flow_repository.h"
#include "fakes/fake_http_poster.h"
#include "gateway/clock.h"
#include "gateway/errors.h"
#include "gateway/metrics.h"

namespace gateway {
namespace {

using testing::FakeFlowRepository;
using testing::FakeHttpPoster;

class ProcessorTest : public ::testing::Test {
 protected:
  ProcessorTest() {
    Flow store;
    store.id = 1;
    store.code = "temps";
    store.topic = "sensors/+/temp";
    store.action = "STORE_DB";
    store.payload_schema = R"({"temperature": "number", "unit": "string"})";
    repo_.flows[1] = store;
    Flow post;
    post.id = 2;
    post.code = "hook";
    post.topic = "hook/#";
    post.action = "POST_ENDPOINT";
    post.endpoint_url = "http://127.0.0.1:9/x";
    repo_.flows[2] = post;
  }

  InboundMessage message(std::uint64_t seq, std::string payload,
                         std::string topic = "sensors/a/temp") {
    InboundMessage m;
    m.seq = seq;
    m.topic = std::move(topic);
    m.payload = std::move(payload);
    m.parsed = parse_payload(m.payload, PayloadLimits{});
    return m;
  }

  BatchResult run(std::int64_t flow_id, const std::vector<InboundMessage>& msgs,
                  bool post_inline = false) {
    std::vector<const InboundMessage*> view;
    for (const auto& m : msgs) view.push_back(&m);
    return (post_inline ? inline_ : processor_).process_batch(flow_id, view, "spool-1");
  }

  FakeFlowRepository repo_;
  FakeHttpPoster http_;
  std::shared_ptr<spdlog::logger> log_ =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());
  Processor processor_{repo_, http_, ProcessorOptions{}, log_};
  Processor inline_{repo_, http_, ProcessorOptions{.post_inline = true}, log_};
};

TEST_F(ProcessorTest, StoresOneRowPerFieldWithConsecutiveMsgIds) {
  auto r = run(1, {message(1, R"({"temperature": 21.5, "unit": "C"})"),
                   message(2, R"({"temperature": 22, "unit": "C", "extra": [1, {"a": true}]})")});
  EXPECT_EQ(r.accepted, 2u);
  EXPECT_EQ(r.first_msg_id, 1);
  EXPECT_EQ(r.last_msg_id, 2);
  EXPECT_EQ(repo_.flows[1].last_msg_id, 2);
  ASSERT_EQ(repo_.records.size(), 5u);
  EXPECT_EQ(repo_.commits, 1);
  std::map<std::string, std::string> got;
  for (const auto& rec : repo_.records) {
    got[std::to_string(rec.msg_id) + "/" + rec.field_name] = rec.field_value;
  }
  EXPECT_EQ(got["1/temperature"], "21.5");
  EXPECT_EQ(got["1/unit"], "\"C\"");
  EXPECT_EQ(got["2/temperature"], "22");
  EXPECT_EQ(got["2/extra"], R"([1,{"a":true}])");
  EXPECT_EQ(repo_.records[0].topic, "sensors/a/temp");
  EXPECT_EQ((repo_.offsets[{"spool-1", 1}]), 2u);
}

TEST_F(ProcessorTest, InvalidMessageInsideABatchIsRejectedAndTheOthersStored) {
  auto r = run(1, {message(10, R"({"temperature": 1, "unit": "C"})"),
                   message(11, R"({"temperature": "hot", "unit": "C"})"), message(12, "not json"),
                   message(13, R"({"temperature": 3, "unit": "C"})")});
  EXPECT_EQ(r.accepted, 2u);
  EXPECT_EQ(r.rejected, 2u);
  EXPECT_EQ(r.first_msg_id, 1);
  EXPECT_EQ(r.last_msg_id, 2);  // no gap for the rejected ones
  ASSERT_EQ(repo_.rejections.size(), 2u);
  EXPECT_NE(repo_.rejections[0].reason.find("temperature"), std::string::npos);
  EXPECT_NE(repo_.rejections[0].reason.find("expected number"), std::string::npos);
  EXPECT_EQ(repo_.rejections[0].spool_seq, 11u);
  EXPECT_EQ(repo_.rejections[1].payload, "not json");
  EXPECT_EQ((repo_.offsets[{"spool-1", 1}]), 13u);
}

TEST_F(ProcessorTest, ReplayedMessagesAtOrBelowTheCommittedSeqAreSkipped) {
  repo_.offsets[{"spool-1", 1}] = 5;
  auto r = run(1, {message(4, R"({"temperature": 1, "unit": "C"})"),
                   message(5, R"({"temperature": 2, "unit": "C"})"),
                   message(6, R"({"temperature": 3, "unit": "C"})")});
  EXPECT_EQ(r.skipped, 2u);
  EXPECT_EQ(r.accepted, 1u);
  EXPECT_EQ(repo_.flows[1].last_msg_id, 1);
  EXPECT_EQ(repo_.records.size(), 2u);
}

// MQTT 5 message expiry: a message that waited in the spool past it (a database outage) is not
// stored as data but kept as a dead letter (nothing leaves the spool unrecorded); msg_ids stay
// consecutive and the offset covers it.
TEST_F(ProcessorTest, ExpiredMessagesBecomeDeadLettersNotData) {
  auto expired = message(2, R"({"temperature": 2, "unit": "C"})");
  expired.expiry_deadline_us = unix_now_us() - 1000;
  auto fresh = message(3, R"({"temperature": 3, "unit": "C"})");
  fresh.expiry_deadline_us = unix_now_us() + 60000000;
  auto r = run(1, {message(1, R"({"temperature": 1, "unit": "C"})"), expired, fresh});
  EXPECT_EQ(r.expired, 1u);
  EXPECT_EQ(r.rejected, 1u);
  EXPECT_EQ(r.accepted, 2u);
  EXPECT_EQ(r.last_msg_id, 2);
  ASSERT_EQ(repo_.rejections.size(), 1u);
  EXPECT_EQ(repo_.rejections[0].spool_seq, 2u);
  EXPECT_NE(repo_.rejections[0].reason.find("MQTT 5 message expiry passed"), std::string::npos)
      << repo_.rejections[0].reason;
  std::set<std::string> temperatures;
  for (const auto& rec : repo_.records) {
    if (rec.field_name == "temperature") temperatures.insert(rec.field_value);
  }
  EXPECT_EQ(temperatures, (std::set<std::string>{"1", "3"}));
  EXPECT_EQ((repo_.offsets[{"spool-1", 1}]), 3u);
}

TEST_F(ProcessorTest, DatabaseFailureCommitsNothing) {
  repo_.fail_next_insert = [] { throw DbUnavailable("gone away"); };
  EXPECT_THROW(run(1, {message(1, R"({"temperature": 1, "unit": "C"})")}), DbUnavailable);
  EXPECT_EQ(repo_.commits, 0);
  EXPECT_EQ(repo_.rollbacks, 1);
  EXPECT_EQ(repo_.flows[1].last_msg_id, 0);
  EXPECT_TRUE(repo_.records.empty());
  EXPECT_TRUE(repo_.offsets.empty());
}

TEST_F(ProcessorTest, UnknownSchemaTypeIsAnErrorOfTheFlowNotACrash) {
  repo_.flows[1].payload_schema = R"({"temperature": "decimal"})";
  auto r = run(1, {message(1, R"({"temperature": 1})")});
  EXPECT_EQ(r.rejected, 1u);
  EXPECT_NE(repo_.rejections[0].reason.find("decimal"), std::string::npos);
}

TEST_F(ProcessorTest, FieldNameLongerThanTheColumnIsRejected) {
  repo_.flows[1].payload_schema.reset();
  auto r = run(1, {message(1, "{\"" + std::string(300, 'f') + "\": 1}")});
  EXPECT_EQ(r.rejected, 1u);
  EXPECT_TRUE(repo_.records.empty());
}

TEST_F(ProcessorTest, PostEndpointQueuesInTheOutboxWithoutPostingUnderTheLock) {
  std::vector<InboundMessage> msgs = {message(7, R"({"a":  1})", "hook/x"),
                                      message(8, R"({"b": 2})", "hook/y")};
  auto r = run(2, msgs);
  EXPECT_EQ(r.queued, 2u);
  EXPECT_EQ(r.posted, 0u);
  EXPECT_EQ(http_.count(), 0u);
  ASSERT_EQ(repo_.outbox.size(), 2u);
  EXPECT_EQ(repo_.outbox[0].second.msg_id, 1);
  EXPECT_EQ(repo_.outbox[0].second.payload, R"({"a":  1})");
  EXPECT_EQ(repo_.outbox[1].second.msg_id, 2);
  EXPECT_EQ(repo_.outbox[1].second.topic, "hook/y");
  EXPECT_EQ(repo_.flows[2].last_msg_id, 2);
  EXPECT_EQ((repo_.offsets[{"spool-1", 2}]), 8u);
}

TEST_F(ProcessorTest, PostEndpointSendsThePayloadAsReceivedWithIdentityHeaders) {
  auto r = run(2, {message(1, R"({"a":  1})", "hook/x")}, true);
  EXPECT_EQ(r.posted, 1u);
  ASSERT_EQ(http_.count(), 1u);
  const HttpRequest req = http_.requests()[0];
  EXPECT_EQ(req.url, "http://127.0.0.1:9/x");
  EXPECT_EQ(req.body, R"({"a":  1})");
  auto header = [&](const std::string& name) {
    for (const auto& [k, v] : req.headers) {
      if (k == name) return v;
    }
    return std::string("<missing>");
  };
  EXPECT_EQ(header("Idempotency-Key"), "hook:1");
  EXPECT_EQ(header("X-Gateway-Topic"), "hook/x");
  EXPECT_TRUE(repo_.records.empty());
  EXPECT_EQ(repo_.flows[2].last_msg_id, 1);
}

TEST_F(ProcessorTest, FailedPostLeavesTheCounterAndIsRejected) {
  http_.push_result(FakeHttpPoster::status_result(500));
  auto r = run(2, {message(1, R"({"a": 1})", "hook/x"), message(2, R"({"a": 2})", "hook/x")}, true);
  EXPECT_EQ(r.rejected, 1u);
  EXPECT_EQ(r.posted, 1u);
  EXPECT_EQ(repo_.flows[2].last_msg_id, 1);
  EXPECT_NE(repo_.rejections.at(0).reason.find("HTTP 500"), std::string::npos);
}

TEST_F(ProcessorTest, ProcessFlowMessageMirrorsTheReference) {
  auto r = processor_.process_flow_message(1, {{"temperature", 23.5}, {"unit", "C"}}, "t");
  EXPECT_EQ(r.flow_code, "temps");
  EXPECT_EQ(r.msg_id, 1);
  EXPECT_EQ(r.action, FlowAction::kStoreDb);
  EXPECT_THROW(processor_.process_flow_message(1, {{"temperature", "x"}}), MessageRejected);
  EXPECT_EQ(repo_.flows[1].last_msg_id, 1);
  EXPECT_TRUE(repo_.rejections.empty());  // the reference API writes nothing on error
  repo_.flows[2].endpoint_url.reset();
  EXPECT_THROW(processor_.process_flow_message(2, {{"a", 1}}), MessageRejected);
  EXPECT_THROW(processor_.process_flow_message(99, {{"a", 1}}), Error);
}

TEST_F(ProcessorTest, DisabledOrMissingFlow) {
  repo_.flows[1].enabled = false;
  auto r = run(1, {message(1, R"({"temperature": 1, "unit": "C"})")});
  EXPECT_EQ(r.rejected, 1u);
  auto gone = run(42, {message(2, R"({})")});
  EXPECT_TRUE(gone.flow_missing);
}

// Every SUBSCRIBE makes the broker send its retained copy again (RETAIN set); stored once, it is
// skipped when it comes again unchanged, in the same batch or a later one.
TEST_F(ProcessorTest, RetainedResendEqualToTheLastStoredIsSkipped) {
  auto retained = [&](std::uint64_t seq, std::string payload) {
    InboundMessage m = message(seq, std::move(payload));
    m.retained = true;
    return m;
  };
  BatchResult first = run(1, {retained(1, R"({"temperature": 20, "unit": "C"})"),
                              retained(2, R"({"temperature": 20, "unit": "C"})")});
  EXPECT_EQ(first.accepted, 1u);
  EXPECT_EQ(first.retained_resends, 1u);
  BatchResult later = run(1, {retained(3, R"({"temperature": 20, "unit": "C"})"),
                              retained(4, R"({"temperature": 21, "unit": "C"})"),
                              message(5, R"({"temperature": 21, "unit": "C"})")});
  EXPECT_EQ(later.retained_resends, 1u) << "the unchanged re-send";
  EXPECT_EQ(later.accepted, 2u) << "a new retained value, and a live message (RETAIN clear)";
  EXPECT_EQ(repo_.flows[1].last_msg_id, 3);
  EXPECT_EQ((repo_.offsets[{"spool-1", 1}]), 5u) << "skipped re-sends still advance the offset";
}

}  // namespace
}  // namespace gateway

namespace gateway {
namespace {

// STORE_TABLE: one row of the flow's table per message, cells as the map says.
class StoreTableProcessorTest : public ProcessorTest {
 protected:
  StoreTableProcessorTest() {
    Flow f;
    f.id = 3;
    f.code = "plant";
    f.topic = "plant/+/temp";
    f.action = "STORE_TABLE";
    f.target_table = "readings";
    f.column_map = R"({"device": "$topic[1]", "temp": "/t", "seq": "$msg_id", "note": "/n"})";
    f.payload_schema = R"({"t": "number"})";
    repo_.flows[3] = f;
    TableInfo t;
    t.name = "readings";
    const auto column = [](std::string name, std::string type, std::string column_type) {
      ColumnInfo c;
      c.name = std::move(name);
      c.data_type = std::move(type);
      c.column_type = std::move(column_type);
      return c;
    };
    ColumnInfo device = column("device", "varchar", "varchar(8)");
    device.nullable = false;
    device.max_chars = 8;
    ColumnInfo temp = column("temp", "int", "int(11)");
    ColumnInfo seq = column("seq", "bigint", "bigint(20)");
    ColumnInfo note = column("note", "varchar", "varchar(10)");
    note.has_default = true;
    note.max_chars = 10;
    t.columns = {device, temp, seq, note};
    repo_.tables["readings"] = t;
  }
};

TEST_F(StoreTableProcessorTest, OneRowPerMessageAndRejectsWhatDoesNotFit) {
  auto r = run(3, {message(1, R"({"t": 21})", "plant/7/temp"),
                   message(2, R"({"t": 21.5})", "plant/8/temp"),  // a fraction into INT
                   message(3, R"({"t": "x"})", "plant/9/temp"),   // fails payload_schema first
                   message(4, R"({"t": 23, "n": "hi"})", "plant/toolongname/temp"),
                   message(5, R"({"t": 24, "n": "ok"})", "plant/10/temp")});
  EXPECT_EQ(r.accepted, 2u);
  EXPECT_EQ(r.rejected, 3u);
  EXPECT_EQ(r.first_msg_id, 1);
  EXPECT_EQ(r.last_msg_id, 2);
  EXPECT_EQ(repo_.flows[3].last_msg_id, 2);
  EXPECT_TRUE(repo_.records.empty());  // no data_records rows for STORE_TABLE
  ASSERT_EQ(repo_.table_rows.size(), 2u);
  const auto& first = repo_.table_rows[0];
  EXPECT_EQ(first.table, "readings");
  EXPECT_EQ(first.mode, WriteMode::kInsert);
  // Cells in the map's key order: device, note, seq, temp.
  ASSERT_EQ(first.cells.size(), 4u);
  EXPECT_EQ(std::get<std::string>(first.cells[0]), "7");
  EXPECT_TRUE(std::holds_alternative<UseDefault>(first.cells[1]));  // "/n" missing: the default
  EXPECT_EQ(std::get<std::int64_t>(first.cells[2]), 1);             // $msg_id
  EXPECT_EQ(std::get<std::int64_t>(first.cells[3]), 21);
  const auto& second = repo_.table_rows[1];
  EXPECT_EQ(std::get<std::string>(second.cells[0]), "10");
  EXPECT_EQ(std::get<std::string>(second.cells[1]), "ok");
  EXPECT_EQ(std::get<std::int64_t>(second.cells[2]), 2);
  ASSERT_EQ(repo_.rejections.size(), 3u);
  EXPECT_NE(repo_.rejections[0].reason.find("column 'temp'"), std::string::npos)
      << repo_.rejections[0].reason;
  EXPECT_NE(repo_.rejections[2].reason.find("column 'device'"), std::string::npos)
      << repo_.rejections[2].reason;
  EXPECT_EQ((repo_.offsets[{"spool-1", 3}]), 5u);
}

TEST_F(StoreTableProcessorTest, AnUnusableMappingHoldsTheMessagesInsteadOfRejectingThem) {
  repo_.tables.erase("readings");  // dropped after the flow was activated
  EXPECT_THROW(run(3, {message(1, R"({"t": 21})", "plant/7/temp")}), Error);
  EXPECT_EQ(repo_.commits, 0);
  EXPECT_TRUE(repo_.rejections.empty());
  EXPECT_EQ(repo_.flows[3].last_msg_id, 0);
}

TEST_F(StoreTableProcessorTest, UpsertModeAndAChangedMapAreRead) {
  repo_.flows[3].write_mode = "upsert";
  run(3, {message(1, R"({"t": 1})", "plant/7/temp")});
  repo_.flows[3].column_map = R"({"device": "$flow_code"})";
  run(3, {message(2, R"({"t": 2})", "plant/7/temp")});
  ASSERT_EQ(repo_.table_rows.size(), 2u);
  EXPECT_EQ(repo_.table_rows[0].mode, WriteMode::kUpsert);
  ASSERT_EQ(repo_.table_rows[1].cells.size(), 1u);
  EXPECT_EQ(std::get<std::string>(repo_.table_rows[1].cells[0]), "plant");
}

}  // namespace
}  // namespace gateway
