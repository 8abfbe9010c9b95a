#include "gateway/spool.h"

#include <gtest/gtest.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>
#include <stdlib.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gateway/errors.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using namespace std::chrono_literals;

constexpr std::size_t kHeaderBytes = 33;  // the fixed part of a record (see spool.h)

std::size_t record_size(std::string_view topic, std::string_view payload) {
  return kHeaderBytes + topic.size() + payload.size();
}

class SpoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "spool_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    dir_ = root_ / "spool";  // not created: the spool creates it
    sink_ = std::make_shared<spdlog::sinks::ostream_sink_mt>(log_text_);
    log_ = std::make_shared<spdlog::logger>("spool_test", sink_);
    log_->set_level(spdlog::level::debug);
  }
  void TearDown() override { fs::remove_all(root_); }

  SpoolOptions options(std::uint64_t segment_bytes = 1 << 20) const {
    SpoolOptions o;
    o.dir = dir_;
    o.segment_bytes = segment_bytes;
    return o;
  }
  std::unique_ptr<Spool> open(const SpoolOptions& o) { return std::make_unique<Spool>(o, log_); }
  std::unique_ptr<Spool> open() { return open(options()); }

  std::vector<fs::path> segment_files() const {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      if (entry.path().extension() == ".seg") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    return files;
  }

  static std::vector<SpoolRecord> read_all(Spool& spool) {
    std::vector<SpoolRecord> records;
    while (auto r = spool.read_next(0ms)) records.push_back(std::move(*r));
    return records;
  }
  static std::vector<std::uint64_t> seqs(const std::vector<SpoolRecord>& records) {
    std::vector<std::uint64_t> out;
    for (const auto& r : records) out.push_back(r.seq);
    return out;
  }
  // Appends "payload-<i>" for i in [from, to) on topic "t".
  static void append_range(Spool& spool, int from, int to) {
    for (int i = from; i < to; ++i) {
      ASSERT_TRUE(spool.append("t", "payload-" + std::to_string(i), 0, false, i).has_value());
    }
  }
  std::string log_text() {
    log_->flush();
    return log_text_.str();
  }

  fs::path root_;
  fs::path dir_;
  std::ostringstream log_text_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
  std::shared_ptr<spdlog::logger> log_;
};

void flip_byte(const fs::path& path, std::uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x5a));
}

void append_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream f(path, std::ios::app | std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// ---- the codec ----

TEST(SpoolCodecTest, RoundTripsEveryField) {
  SpoolRecord r{42, -17, 65535, true, "sensors/a", std::string("\0\xff\x01 bytes", 9)};
  const std::string bytes = encode_record(r);
  EXPECT_EQ(bytes.size(), record_size(r.topic, r.payload));
  const DecodeResult d = decode_record(bytes);
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.consumed, bytes.size());
  EXPECT_EQ(d.record, r);
}

TEST(SpoolCodecTest, EmptyTopicAndPayloadRoundTrip) {
  const SpoolRecord r{1, 0, 0, false, "", ""};
  const std::string bytes = encode_record(r);
  EXPECT_EQ(bytes.size(), kHeaderBytes);
  const DecodeResult d = decode_record(bytes);
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.record, r);
}

TEST(SpoolCodecTest, TopicOf65535BytesRoundTripsAndOneMoreThrows) {
  SpoolRecord r{7, 1, 2, false, std::string(kSpoolMaxTopicBytes, 'x'), "p"};
  const DecodeResult d = decode_record(encode_record(r));
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.record, r);
  r.topic.push_back('x');
  EXPECT_THROW(encode_record(r), std::invalid_argument);
}

TEST(SpoolCodecTest, DecodesOnlyTheFirstOfTwoRecords) {
  const std::string first = encode_record({1, 0, 0, false, "a", "1"});
  const std::string second = encode_record({2, 0, 0, false, "b", "22"});
  const DecodeResult d = decode_record(first + second);
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.consumed, first.size());
  EXPECT_EQ(d.record.seq, 1u);
}

TEST(SpoolCodecTest, EveryProperPrefixIsIncomplete) {
  const std::string bytes = encode_record({9, 9, 9, true, "topic", "payload"});
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    const DecodeResult d = decode_record(std::string_view(bytes).substr(0, n));
    EXPECT_EQ(d.status, DecodeStatus::kIncomplete) << "prefix of " << n;
    EXPECT_EQ(d.consumed, 0u);
  }
}

TEST(SpoolCodecTest, BadMagicIsCorruptWithNothingToSkip) {
  std::string bytes = encode_record({1, 0, 0, false, "t", "p"});
  bytes[0] ^= 1;
  DecodeResult d = decode_record(bytes);
  EXPECT_EQ(d.status, DecodeStatus::kCorrupt);
  EXPECT_EQ(d.consumed, 0u);
  // Even two bytes of garbage are recognised as such.
  d = decode_record(std::string_view("\0\0", 2));
  EXPECT_EQ(d.status, DecodeStatus::kCorrupt);
}

TEST(SpoolCodecTest, ImpossibleLengthIsCorrupt) {
  std::string bytes = encode_record({1, 0, 0, false, "t", "p"});
  for (const std::uint32_t length : {0u, 24u, 0xffffffffu}) {
    for (int i = 0; i < 4; ++i) bytes[4 + i] = static_cast<char>(length >> (8 * i));
    const DecodeResult d = decode_record(bytes);
    EXPECT_EQ(d.status, DecodeStatus::kCorrupt) << length;
    EXPECT_EQ(d.consumed, 0u);
  }
}

TEST(SpoolCodecTest, ChecksumMismatchSkipsTheWholeRecord) {
  std::string bytes = encode_record({5, 0, 0, false, "topic", "payload"});
  bytes.back() ^= 1;
  const DecodeResult d = decode_record(bytes);
  EXPECT_EQ(d.status, DecodeStatus::kCorrupt);
  EXPECT_EQ(d.consumed, bytes.size());
  EXPECT_EQ(d.record.seq, 5u);
}

TEST(SpoolCodecTest, UnknownFlagBitsAndOverlongTopicLengthAreCorrupt) {
  const auto reseal = [](std::string& b) {
    const auto crc = static_cast<std::uint32_t>(
        crc32(0, reinterpret_cast<const Bytef*>(b.data() + 12), static_cast<uInt>(b.size() - 12)));
    for (int i = 0; i < 4; ++i) b[8 + i] = static_cast<char>(crc >> (8 * i));
  };
  std::string flags = encode_record({1, 0, 0, false, "t", "p"});
  flags[30] = 0x02;
  reseal(flags);
  EXPECT_EQ(decode_record(flags).status, DecodeStatus::kCorrupt);

  std::string topic_len = encode_record({1, 0, 0, false, "t", "p"});
  topic_len[31] = 3;  // more than the 2 bytes of topic and payload
  reseal(topic_len);
  const DecodeResult d = decode_record(topic_len);
  EXPECT_EQ(d.status, DecodeStatus::kCorrupt);
  EXPECT_EQ(d.consumed, topic_len.size());
}

TEST(SpoolCodecTest, RandomAndMutatedInputNeverCrashes) {
  std::mt19937_64 rng(12345);
  const std::string valid = encode_record({3, 4, 5, true, "some/topic", "some payload"});
  for (int i = 0; i < 20000; ++i) {
    std::string bytes;
    if (i % 2 == 0) {
      bytes.resize(rng() % 80);
      for (auto& c : bytes) c = static_cast<char>(rng());
    } else {
      bytes = valid.substr(0, rng() % (valid.size() + 1));
      if (!bytes.empty()) bytes[rng() % bytes.size()] ^= static_cast<char>(1 + rng() % 255);
    }
    const DecodeResult d = decode_record(bytes);
    EXPECT_LE(d.consumed, bytes.size());
    if (d.status == DecodeStatus::kOk) {
      EXPECT_EQ(encode_record(d.record), bytes.substr(0, d.consumed));
    }
  }
}

// ---- the spool ----

TEST_F(SpoolTest, RoundTripInOrderAcrossSegments) {
  auto spool = open(options(256));
  std::vector<SpoolRecord> expected;
  for (int i = 0; i < 50; ++i) {
    SpoolRecord r{0,
                  1'700'000'000'000'000 + i,
                  static_cast<std::uint16_t>(i % 3 == 0 ? 0 : i),
                  i % 5 == 0,
                  "plant/" + std::to_string(i % 4),
                  std::string(static_cast<std::size_t>(i * 3), static_cast<char>(i))};
    const auto result = spool->append(r.topic, r.payload, r.packet_id, r.dup, r.arrival_us);
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->redelivery);
    r.seq = result->seq;
    expected.push_back(r);
  }
  EXPECT_GT(segment_files().size(), 3u);
  EXPECT_EQ(spool->stats().segments, segment_files().size());
  EXPECT_EQ(read_all(*spool), expected);
  EXPECT_EQ(expected.front().seq, 1u);
  for (std::size_t i = 1; i < expected.size(); ++i) {
    EXPECT_EQ(expected[i].seq, expected[i - 1].seq + 1);
  }
  EXPECT_EQ(spool->stats().appended, 50u);
}

TEST_F(SpoolTest, SegmentsAreNamedByTheirFirstSeq) {
  auto spool = open(options(100));
  append_range(*spool, 0, 6);  // 43 bytes each: two records per segment
  std::vector<std::string> names;
  for (const auto& f : segment_files()) names.push_back(f.filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"00000000000000000001.seg", "00000000000000000003.seg",
                                             "00000000000000000005.seg"}));
}

TEST_F(SpoolTest, StatsCountBytesOnDisk) {
  auto spool = open(options(100));
  append_range(*spool, 0, 5);
  std::uint64_t on_disk = 0;
  for (const auto& f : segment_files()) on_disk += fs::file_size(f);
  EXPECT_EQ(spool->stats().bytes, on_disk);
  EXPECT_EQ(on_disk, 5 * record_size("t", "payload-0"));
  EXPECT_EQ(spool->stats().next_seq, 6u);
}

TEST_F(SpoolTest, SeqContinuesAfterReopen) {
  open()->append("t", "a", 0, false, 0);
  auto spool = open();
  ASSERT_TRUE(spool->append("t", "b", 0, false, 0));
  EXPECT_EQ(spool->append("t", "c", 0, false, 0)->seq, 3u);
  EXPECT_EQ(spool->stats().next_seq, 4u);
}

TEST_F(SpoolTest, SeqContinuesAfterAllOldSegmentsWereReleased) {
  SpoolOptions o = options(1 << 20);
  o.max_bytes = 100;  // full after three records; releasing everything then rolls the segment
  {
    auto spool = open(o);
    append_range(*spool, 0, 3);
    spool->release_below(spool->stats().next_seq);
    const auto files = segment_files();
    ASSERT_EQ(files.size(), 1u);
    EXPECT_EQ(files[0].filename(), "00000000000000000004.seg");
    EXPECT_EQ(fs::file_size(files[0]), 0u);
  }
  auto spool = open(o);
  EXPECT_TRUE(read_all(*spool).empty());
  EXPECT_EQ(spool->append("t", "x", 0, false, 0)->seq, 4u);
}

TEST_F(SpoolTest, ReopenReplaysUnreleasedRecords) {
  {
    auto spool = open(options(100));
    append_range(*spool, 0, 20);
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(spool->read_next(0ms));
    spool->release_below(11);
  }
  auto spool = open(options(100));
  const auto records = read_all(*spool);
  // Segments of two records: 1-2 .. 9-10 are gone, 11..20 are replayed.
  ASSERT_EQ(records.size(), 10u);
  EXPECT_EQ(records.front().seq, 11u);
  EXPECT_EQ(records.back().seq, 20u);
  EXPECT_EQ(records.back().payload, "payload-19");
  EXPECT_EQ(records.back().arrival_us, 19);
}

TEST_F(SpoolTest, TornTailIsTruncatedToTheLastWholeRecord) {
  {
    auto spool = open();
    append_range(*spool, 0, 5);
  }
  const fs::path segment = segment_files().at(0);
  const std::uint64_t whole = 4 * record_size("t", "payload-0");
  fs::resize_file(segment, fs::file_size(segment) - 3);

  auto spool = open();
  EXPECT_EQ(fs::file_size(segment), whole);
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2, 3, 4}));
  const std::string log = log_text();
  EXPECT_NE(log.find("torn record"), std::string::npos) << log;
  EXPECT_NE(log.find(segment.filename().string()), std::string::npos) << log;
  EXPECT_NE(log.find("offset " + std::to_string(whole)), std::string::npos) << log;
  EXPECT_EQ(spool->stats().corrupt_records_skipped, 0u);
}

TEST_F(SpoolTest, RecordCutInsideItsHeaderIsTruncated) {
  {
    auto spool = open();
    append_range(*spool, 0, 3);
  }
  const fs::path segment = segment_files().at(0);
  const std::uint64_t whole = 2 * record_size("t", "payload-0");
  fs::resize_file(segment, whole + 10);

  auto spool = open();
  EXPECT_EQ(fs::file_size(segment), whole);
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2}));
}

TEST_F(SpoolTest, AppendsAfterATornTailNeverReuseItsSeq) {
  {
    auto spool = open();
    append_range(*spool, 0, 3);
  }
  const fs::path segment = segment_files().at(0);
  fs::resize_file(segment, fs::file_size(segment) - 1);
  {
    auto spool = open();
    // Seq 3 may have reached the database before the crash.
    EXPECT_GT(spool->append("t", "new", 0, false, 0)->seq, 3u);
  }
  auto spool = open();
  const auto records = read_all(*spool);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[2].payload, "new");
}

TEST_F(SpoolTest, FlippedByteSkipsOnlyThatRecord) {
  {
    auto spool = open();
    append_range(*spool, 0, 3);
  }
  const std::uint64_t size = record_size("t", "payload-0");
  flip_byte(segment_files().at(0), size + size - 2);  // in the second record's payload

  auto spool = open();
  const auto records = read_all(*spool);
  EXPECT_EQ(seqs(records), (std::vector<std::uint64_t>{1, 3}));
  EXPECT_EQ(records[1].payload, "payload-2");
  EXPECT_EQ(spool->stats().corrupt_records_skipped, 1u);
  EXPECT_NE(log_text().find("checksum"), std::string::npos);
  // The tail was intact, so appending goes on where it was.
  EXPECT_EQ(spool->append("t", "x", 0, false, 0)->seq, 4u);
}

TEST_F(SpoolTest, CorruptLastRecordNeverHasItsSeqReused) {
  {
    auto spool = open();
    append_range(*spool, 0, 3);
  }
  const fs::path segment = segment_files().at(0);
  flip_byte(segment, fs::file_size(segment) - 1);
  auto spool = open();
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2}));
  EXPECT_GT(spool->append("t", "x", 0, false, 0)->seq, 3u);
}

TEST_F(SpoolTest, GarbageAppendedIsSkippedAndLaterAppendsStayReadable) {
  {
    auto spool = open();
    append_range(*spool, 0, 3);
  }
  const fs::path segment = segment_files().at(0);
  append_bytes(segment, "this is not a record, just garbage at the end of the file");
  {
    auto spool = open();
    EXPECT_EQ(spool->stats().corrupt_records_skipped, 1u);
    EXPECT_NE(log_text().find("unreadable"), std::string::npos);
    ASSERT_TRUE(spool->append("t", "after", 0, false, 0));
  }
  auto spool = open();
  const auto records = read_all(*spool);
  ASSERT_EQ(records.size(), 4u);
  EXPECT_EQ(records[2].payload, "payload-2");
  EXPECT_EQ(records[3].payload, "after");
}

TEST_F(SpoolTest, ZeroFilledTailFromPowerLossIsSkipped) {
  {
    auto spool = open();
    append_range(*spool, 0, 2);
  }
  append_bytes(segment_files().at(0), std::string(4096, '\0'));
  auto spool = open();
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2}));
  ASSERT_TRUE(spool->append("t", "x", 0, false, 0));
  EXPECT_EQ(read_all(*spool).at(0).payload, "x");
}

TEST_F(SpoolTest, DamageInAnOlderSegmentSkipsOnlyItsRest) {
  {
    auto spool = open(options(100));
    append_range(*spool, 0, 6);  // segments 1-2, 3-4, 5-6
  }
  flip_byte(segment_files().at(1), 0);  // the magic of seq 3
  auto spool = open(options(100));
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2, 5, 6}));
  EXPECT_EQ(spool->append("t", "x", 0, false, 0)->seq, 7u);
}

TEST_F(SpoolTest, RedeliveryIsRecognisedAfterReopen) {
  std::uint64_t first = 0;
  {
    auto spool = open();
    first = spool->append("a/b", "payload", 77, false, 1)->seq;
    append_range(*spool, 0, 5);
  }
  auto spool = open();
  const auto before = spool->stats();
  const auto again = spool->append("a/b", "payload", 77, true, 2);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->redelivery);
  EXPECT_EQ(again->seq, first);
  EXPECT_EQ(spool->stats().next_seq, before.next_seq);
  EXPECT_EQ(spool->stats().bytes, before.bytes);
  EXPECT_EQ(spool->stats().redeliveries_dropped, 1u);
}

TEST_F(SpoolTest, OnlyAnIdenticalDupIsARedelivery) {
  auto spool = open();
  ASSERT_TRUE(spool->append("a/b", "payload", 77, false, 1));
  EXPECT_FALSE(spool->append("a/b", "payload", 77, false, 2)->redelivery);  // dup not set
  EXPECT_FALSE(spool->append("a/b", "payload", 78, true, 3)->redelivery);   // other packet id
  EXPECT_FALSE(spool->append("a/b", "other", 77, true, 4)->redelivery);     // other payload
  EXPECT_FALSE(spool->append("a/c", "payload", 77, true, 5)->redelivery);   // other topic
  ASSERT_TRUE(spool->append("q0", "payload", 0, false, 6));
  EXPECT_FALSE(spool->append("q0", "payload", 0, true, 7)->redelivery);  // QoS 0 has no id
  EXPECT_EQ(spool->stats().appended, 7u);
  EXPECT_EQ(spool->stats().redeliveries_dropped, 0u);
}

TEST_F(SpoolTest, RedeliveryWindowForgetsOldRecords) {
  SpoolOptions o = options();
  o.redelivery_window = 2;
  auto spool = open(o);
  ASSERT_TRUE(spool->append("t", "old", 1, false, 0));
  ASSERT_TRUE(spool->append("t", "b", 2, false, 0));
  EXPECT_TRUE(spool->append("t", "old", 1, true, 0)->redelivery);
  ASSERT_TRUE(spool->append("t", "c", 3, false, 0));
  EXPECT_FALSE(spool->append("t", "old", 1, true, 0)->redelivery);
}

TEST_F(SpoolTest, ReleaseBelowDeletesWholeSegmentsOnly) {
  auto spool = open(options(100));
  append_range(*spool, 0, 6);  // segments 1-2, 3-4, 5-6
  spool->release_below(4);     // 3 is not processed yet: segment 3-4 stays
  std::vector<std::string> names;
  for (const auto& f : segment_files()) names.push_back(f.filename().string());
  EXPECT_EQ(names,
            (std::vector<std::string>{"00000000000000000003.seg", "00000000000000000005.seg"}));
  EXPECT_EQ(spool->stats().segments, 2u);
  EXPECT_EQ(spool->stats().bytes, 4 * record_size("t", "payload-0"));
}

TEST_F(SpoolTest, ReleaseBelowNeverDeletesTheActiveSegment) {
  auto spool = open(options(100));
  append_range(*spool, 0, 5);
  spool->release_below(std::numeric_limits<std::uint64_t>::max());
  const auto files = segment_files();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].filename(), "00000000000000000005.seg");
  ASSERT_TRUE(spool->append("t", "more", 0, false, 0));
  EXPECT_EQ(spool->stats().bytes, fs::file_size(files[0]));
}

TEST_F(SpoolTest, SizeCapBlocksAppendUntilRelease) {
  SpoolOptions o = options(100);
  o.max_bytes = 120;
  auto spool = open(o);
  append_range(*spool, 0, 3);  // 129 bytes
  auto blocked =
      std::async(std::launch::async, [&] { return spool->append("t", "x", 0, false, 0); });
  EXPECT_EQ(blocked.wait_for(200ms), std::future_status::timeout);
  EXPECT_TRUE(spool->stats().full);
  spool->release_below(3);  // deletes the segment 1-2
  ASSERT_EQ(blocked.wait_for(5s), std::future_status::ready);
  const auto result = blocked.get();
  ASSERT_TRUE(result);
  EXPECT_EQ(result->seq, 4u);
  EXPECT_FALSE(spool->stats().full);
  const std::string log = log_text();
  EXPECT_NE(log.find("full"), std::string::npos);
  EXPECT_NE(log.find("resume"), std::string::npos);
}

TEST_F(SpoolTest, CapBelowSegmentSizeStillUnblocksOnRelease) {
  SpoolOptions o = options(1 << 20);
  o.max_bytes = 80;
  auto spool = open(o);
  append_range(*spool, 0, 2);
  auto blocked =
      std::async(std::launch::async, [&] { return spool->append("t", "x", 0, false, 0); });
  EXPECT_EQ(blocked.wait_for(100ms), std::future_status::timeout);
  spool->release_below(3);
  ASSERT_EQ(blocked.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(blocked.get()->seq, 3u);
}

TEST_F(SpoolTest, StopBackPressureLetsABlockedAppendWritePastTheCap) {
  SpoolOptions o = options(100);
  o.max_bytes = 120;
  auto spool = open(o);
  append_range(*spool, 0, 3);
  auto blocked =
      std::async(std::launch::async, [&] { return spool->append("t", "x", 0, false, 0); });
  EXPECT_EQ(blocked.wait_for(200ms), std::future_status::timeout);
  spool->stop_back_pressure();
  ASSERT_EQ(blocked.wait_for(5s), std::future_status::ready);
  const auto result = blocked.get();
  ASSERT_TRUE(result);  // written, not dropped: the message is acknowledged after this
  EXPECT_EQ(result->seq, 4u);
  EXPECT_TRUE(spool->append("t", "y", 0, false, 0));  // later appends do not wait either
  EXPECT_GT(spool->stats().bytes, o.max_bytes);
  std::vector<std::uint64_t> seqs;
  while (auto r = spool->read_next(0ms)) seqs.push_back(r->seq);
  EXPECT_EQ(seqs, (std::vector<std::uint64_t>{1, 2, 3, 4, 5}));
}

TEST_F(SpoolTest, CloseUnblocksABlockedAppendWithNullopt) {
  SpoolOptions o = options(100);
  o.max_bytes = 50;
  auto spool = open(o);
  append_range(*spool, 0, 2);
  auto blocked =
      std::async(std::launch::async, [&] { return spool->append("t", "x", 0, false, 0); });
  EXPECT_EQ(blocked.wait_for(100ms), std::future_status::timeout);
  spool->close();
  ASSERT_EQ(blocked.wait_for(5s), std::future_status::ready);
  EXPECT_FALSE(blocked.get().has_value());
  EXPECT_FALSE(spool->append("t", "y", 0, false, 0).has_value());
  spool->close();  // idempotent
}

TEST_F(SpoolTest, ReadNextTimesOutWhenEmpty) {
  auto spool = open();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(spool->read_next(100ms).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - start, 100ms);
}

TEST_F(SpoolTest, ReadNextWakesWhenARecordArrivesFromAnotherThread) {
  auto spool = open();
  const auto start = std::chrono::steady_clock::now();
  std::thread writer([&] {
    std::this_thread::sleep_for(50ms);
    spool->append("t", "late", 0, false, 0);
  });
  const auto record = spool->read_next(10s);
  writer.join();
  ASSERT_TRUE(record);
  EXPECT_EQ(record->payload, "late");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

TEST_F(SpoolTest, CloseWakesAWaitingReader) {
  auto spool = open();
  auto reader = std::async(std::launch::async, [&] { return spool->read_next(10s); });
  EXPECT_EQ(reader.wait_for(50ms), std::future_status::timeout);
  spool->close();
  ASSERT_EQ(reader.wait_for(5s), std::future_status::ready);
  EXPECT_FALSE(reader.get().has_value());
}

TEST_F(SpoolTest, ConcurrentAppendersAndAReaderSeeEveryRecordOnceInOrder) {
  auto spool = open(options(4096));
  constexpr int kThreads = 4;
  constexpr int kEach = 500;
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        spool->append("w/" + std::to_string(t), std::to_string(i), 0, false, 0);
      }
    });
  }
  std::vector<int> next(kThreads, 0);
  std::uint64_t last_seq = 0;
  int read = 0;
  while (read < kThreads * kEach) {
    auto r = spool->read_next(5s);
    ASSERT_TRUE(r) << "after " << read;
    EXPECT_GT(r->seq, last_seq);
    last_seq = r->seq;
    const int t = r->topic.back() - '0';
    EXPECT_EQ(r->payload, std::to_string(next[t]++));
    if (++read % 300 == 0) spool->release_below(r->seq);
  }
  for (auto& w : writers) w.join();
  EXPECT_FALSE(spool->read_next(0ms));
}

TEST_F(SpoolTest, PayloadLargerThanTheReadBufferRoundTrips) {
  auto spool = open(options(1 << 20));
  std::string big(1 << 20, 'b');
  big[12345] = 'x';
  ASSERT_TRUE(spool->append("t", "small", 0, false, 0));
  ASSERT_TRUE(spool->append("t", big, 0, false, 0));
  ASSERT_TRUE(spool->append("t", "after", 0, false, 0));
  const auto records = read_all(*spool);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[1].payload, big);
  EXPECT_EQ(records[2].payload, "after");
}

TEST_F(SpoolTest, AppendRejectsATopicOverTheLimit) {
  auto spool = open();
  EXPECT_THROW(spool->append(std::string(kSpoolMaxTopicBytes + 1, 't'), "p", 0, false, 0),
               std::invalid_argument);
  EXPECT_EQ(spool->stats().appended, 0u);
  EXPECT_EQ(spool->append(std::string(kSpoolMaxTopicBytes, 't'), "p", 0, false, 0)->seq, 1u);
}

TEST_F(SpoolTest, IdIsStableAcrossReopenAndFreshForANewDirectory) {
  std::string id;
  {
    auto spool = open();
    id = spool->id();
  }
  EXPECT_EQ(id.size(), 32u);
  EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(open()->id(), id);
  SpoolOptions other = options();
  other.dir = root_ / "other";
  EXPECT_NE(open(other)->id(), id);
}

TEST_F(SpoolTest, MalformedIdFileIsAnError) {
  open();
  std::ofstream(dir_ / "spool.id") << "not-an-id\n";
  EXPECT_THROW(open(), SpoolError);
}

TEST_F(SpoolTest, ASecondSpoolOnTheSameDirectoryIsRefused) {
  auto spool = open();
  EXPECT_THROW(open(), SpoolError);
}

TEST_F(SpoolTest, UnusableDirectoryThrowsSpoolErrorNamingThePath) {
  std::ofstream(root_ / "file") << "x";
  SpoolOptions o = options();
  o.dir = root_ / "file" / "spool";
  try {
    Spool spool(o, log_);
    FAIL() << "no exception";
  } catch (const SpoolError& e) {
    EXPECT_NE(std::string(e.what()).find((root_ / "file").string()), std::string::npos) << e.what();
  }
}

TEST_F(SpoolTest, EveryFsyncPolicyRoundTripsAcrossReopen) {
  for (const auto policy : {SpoolFsync::kNever, SpoolFsync::kBatch, SpoolFsync::kAlways}) {
    fs::remove_all(dir_);
    SpoolOptions o = options(100);
    o.fsync = policy;
    o.fsync_interval = 1ms;
    {
      auto spool = open(o);
      append_range(*spool, 0, 5);
      std::this_thread::sleep_for(5ms);  // kBatch: let the fsync thread run once
    }
    auto spool = open(o);
    EXPECT_EQ(read_all(*spool).size(), 5u) << static_cast<int>(policy);
  }
}

// A sanity print, not an assertion: the MQTT callback path needs ~10k appends/s.
TEST_F(SpoolTest, ThroughputIsPrinted) {
  auto spool = open(options(8 << 20));
  const std::string payload(200, 'p');
  constexpr int kCount = 50000;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kCount; ++i) {
    spool->append("plant/line/sensor", payload, static_cast<std::uint16_t>(i % 65535 + 1), false,
                  i);
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  std::printf("[ spool    ] %d appends of 200 bytes in %.3f s: %.0f appends/s\n", kCount,
              elapsed.count(), kCount / elapsed.count());
  EXPECT_EQ(spool->stats().appended, static_cast<std::uint64_t>(kCount));
}

}  // namespace
}  // namespace gateway
