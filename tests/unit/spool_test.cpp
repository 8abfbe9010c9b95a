#include "gateway/spool.h"

#include <gtest/gtest.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gateway/errors.h"
#include "support/eventually.h"

namespace gateway {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using testing::eventually;
using namespace std::chrono_literals;

constexpr std::size_t kHeaderBytes = 33;  // the fixed part of a record (see spool.h)

std::size_t record_size(std::string_view topic, std::string_view payload) {
  return kHeaderBytes + topic.size() + payload.size();
}

// For the tests of the mapped window when the temporary directory cannot have one.
constexpr const char* kNoWindowHere =
    "the temporary directory is not on ext4, XFS or tmpfs: appends use write(2) there";

int occurrences(const std::string& text, std::string_view what) {
  int n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
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

// Recomputes the checksum of an encoded record after a test changed its bytes.
void reseal(std::string& b) {
  const auto crc = static_cast<std::uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(b.data() + 12), static_cast<uInt>(b.size() - 12)));
  for (int i = 0; i < 4; ++i) b[8 + i] = static_cast<char>(crc >> (8 * i));
}

// ---- the codec ----

// The checksum is zlib's CRC-32 (computed with libdeflate since 2026-12-03): records written by
// either read back with the other.
TEST(SpoolCodecTest, TheChecksumIsZlibsCrc32) {
  for (std::size_t size : {0u, 1u, 100u, 5000u}) {
    SpoolRecord r{7, 1, 1, false, "t/crc", std::string(size, 'p')};
    for (std::size_t i = 0; i < size; ++i) r.payload[i] = static_cast<char>(i * 131 + size);
    std::string b = encode_record(r);
    const std::string written = b;
    reseal(b);  // zlib's crc32 over the same bytes
    EXPECT_EQ(b, written) << size << "-byte payload";
  }
}

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
  std::string flags = encode_record({1, 0, 0, false, "t", "p"});
  for (const char unknown : {'\x10', '\x20', '\x40', '\x80'}) {
    flags[30] = unknown;
    reseal(flags);
    EXPECT_EQ(decode_record(flags).status, DecodeStatus::kCorrupt) << int{unknown};
  }

  std::string topic_len = encode_record({1, 0, 0, false, "t", "p"});
  topic_len[31] = 3;  // more than the 2 bytes of topic and payload
  reseal(topic_len);
  const DecodeResult d = decode_record(topic_len);
  EXPECT_EQ(d.status, DecodeStatus::kCorrupt);
  EXPECT_EQ(d.consumed, topic_len.size());
}

// Bytes written by the encoder before the retained and payload-cut flags existed (commit
// e23ab80): seq 258, arrival 1700000000123456, packet 4660, dup, topic "a/b", payload {"v":1}.
constexpr std::string_view kOldFormatRecord(
    "\x47\x53\x50\x4c\x23\x00\x00\x00\xe8\x07\x30\xf8\x02\x01\x00\x00\x00\x00\x00\x00"
    "\x40\x22\x20\x18\x24\x0a\x06\x00\x34\x12\x01\x03\x00\x61\x2f\x62\x7b\x22\x76\x22"
    "\x3a\x31\x7d",
    43);

TEST(SpoolCodecTest, RecordsWrittenBeforeTheNewFlagsDecodeExactlyAsBefore) {
  const DecodeResult d = decode_record(kOldFormatRecord);
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.consumed, kOldFormatRecord.size());
  const SpoolRecord expected{258, 1700000000123456, 4660, true, "a/b", "{\"v\":1}"};
  EXPECT_EQ(d.record, expected);
  EXPECT_FALSE(d.record.retained);
  EXPECT_EQ(d.record.original_size, 0u);
  // And a record that uses neither new flag is still written byte for byte the same.
  EXPECT_EQ(encode_record(expected), kOldFormatRecord);
}

TEST(SpoolCodecTest, RetainedFlagRoundTripsWithoutExtraBytes) {
  SpoolRecord r{3, 4, 5, false, "t/r", "on"};
  r.retained = true;
  const std::string bytes = encode_record(r);
  EXPECT_EQ(bytes.size(), record_size(r.topic, r.payload));
  EXPECT_EQ(bytes[30], '\x02');
  const DecodeResult d = decode_record(bytes);
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.record, r);
}

TEST(SpoolCodecTest, CutPayloadCarriesItsOriginalSize) {
  SpoolRecord r{9, 8, 7, true, "big/one", std::string(100, 'x')};
  r.retained = true;
  r.original_size = 10'000'000'000ull;  // beyond the payload limit: the reason for the cut
  const std::string bytes = encode_record(r);
  EXPECT_EQ(bytes.size(), kSpoolCutRecordHeaderBytes + r.topic.size() + r.payload.size());
  EXPECT_EQ(bytes[30], '\x07');
  const DecodeResult d = decode_record(bytes);
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.consumed, bytes.size());
  EXPECT_EQ(d.record, r);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_EQ(decode_record(std::string_view(bytes).substr(0, n)).status, DecodeStatus::kIncomplete)
        << "prefix of " << n;
  }
}

TEST(SpoolCodecTest, OriginalSizeNotAboveThePayloadIsRefusedAndCorrupt) {
  SpoolRecord r{1, 0, 0, false, "t", "12345"};
  for (const std::uint64_t size : {1ull, 4ull, 5ull}) {
    r.original_size = size;
    EXPECT_THROW(encode_record(r), std::invalid_argument) << size;
  }
  // The same on disk: a cut flag whose size does not exceed the payload kept.
  r.original_size = 6;
  std::string bytes = encode_record(r);
  for (int i = 0; i < 8; ++i) bytes[33 + i] = static_cast<char>(i == 0 ? 5 : 0);
  reseal(bytes);
  DecodeResult d = decode_record(bytes);
  EXPECT_EQ(d.status, DecodeStatus::kCorrupt);
  EXPECT_EQ(d.consumed, bytes.size());
  // A cut flag on a record too short to hold the original size.
  bytes = encode_record({1, 0, 0, false, "t", "p"});
  bytes[30] = '\x04';
  reseal(bytes);
  d = decode_record(bytes);
  EXPECT_EQ(d.status, DecodeStatus::kCorrupt);
  EXPECT_EQ(d.consumed, bytes.size());
}

// ---- MQTT 5 properties (flag bit 3) ----

SpoolRecord v5_record() {
  SpoolRecord r{11, 1700000000000000, 77, false, "v5/t", R"({"v":2})"};
  r.retained = true;
  r.expiry_deadline_us = 1700000060000000;
  r.content_type = "application/json";
  r.user_properties = {{"site", "north"},
                       {"site", "south"},
                       {"empty", ""},
                       {"", "no name"},
                       {std::string("b\0in", 4), std::string("\xff\x00", 2)}};
  return r;
}

// The properties block of v5_record(), as the format describes it.
std::size_t v5_block_bytes() {
  return 4 + 8 + 2 + 16 + (4 + 4 + 5) + (4 + 4 + 5) + (4 + 5 + 0) + (4 + 0 + 7) + (4 + 4 + 2);
}

TEST(SpoolCodecTest, PropertiesRoundTripInOrderWithDuplicatesAndBinaryBytes) {
  const SpoolRecord r = v5_record();
  const std::string bytes = encode_record(r);
  EXPECT_EQ(bytes.size(), kHeaderBytes + v5_block_bytes() + r.topic.size() + r.payload.size());
  EXPECT_EQ(bytes[30], '\x0a');  // retained + properties
  const DecodeResult d = decode_record(bytes);
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.consumed, bytes.size());
  EXPECT_EQ(d.record, r);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_EQ(decode_record(std::string_view(bytes).substr(0, n)).status, DecodeStatus::kIncomplete)
        << "prefix of " << n;
  }
}

TEST(SpoolCodecTest, EachPropertyAloneWritesTheBlockAndNoneWritesNothing) {
  SpoolRecord expiry{1, 2, 3, false, "t", "p"};
  expiry.expiry_deadline_us = -5;  // any non-zero wall clock value
  SpoolRecord content_type{1, 2, 3, false, "t", "p"};
  content_type.content_type = "text/plain";
  SpoolRecord user{1, 2, 3, false, "t", "p"};
  user.user_properties = {{"k", "v"}};
  for (const SpoolRecord& r : {expiry, content_type, user}) {
    const std::string bytes = encode_record(r);
    EXPECT_EQ(bytes[30], '\x08');
    const DecodeResult d = decode_record(bytes);
    ASSERT_EQ(d.status, DecodeStatus::kOk);
    EXPECT_EQ(d.record, r);
  }
  EXPECT_EQ(encode_record({1, 2, 3, false, "t", "p"}).size(), record_size("t", "p"));
}

TEST(SpoolCodecTest, PropertiesFollowTheOriginalSizeOfACutPayload) {
  SpoolRecord r = v5_record();
  r.original_size = 1u << 30;
  const std::string bytes = encode_record(r);
  EXPECT_EQ(bytes[30], '\x0e');
  EXPECT_EQ(bytes.size(),
            kSpoolCutRecordHeaderBytes + v5_block_bytes() + r.topic.size() + r.payload.size());
  const DecodeResult d = decode_record(bytes);
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.record, r);
}

// Bytes of a record with properties as this format first wrote it: seq 5, arrival 1000, packet
// 9, topic "t", payload "{}", expiry deadline 2000, content type "ct", user property ("k", "v").
// Pinned so that a later change of the layout cannot strand records already on disk.
constexpr std::string_view kFirstPropertiesRecord(
    "\x47\x53\x50\x4c\x32\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00"
    "\xe8\x03\x00\x00\x00\x00\x00\x00\x09\x00\x08\x01\x00\x12\x00\x00\x00\xd0\x07\x00"
    "\x00\x00\x00\x00\x00\x02\x00\x63\x74\x01\x00\x6b\x01\x00\x76\x74\x7b\x7d",
    58);

TEST(SpoolCodecTest, ThePropertiesLayoutIsPinned) {
  SpoolRecord r{5, 1000, 9, false, "t", "{}"};
  r.expiry_deadline_us = 2000;
  r.content_type = "ct";
  r.user_properties = {{"k", "v"}};
  std::string expected(kFirstPropertiesRecord);
  reseal(expected);  // the checksum bytes above are zero: computed here
  EXPECT_EQ(encode_record(r), expected);
  const DecodeResult d = decode_record(expected);
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.record, r);
}

TEST(SpoolCodecTest, MalformedPropertiesBlocksAreCorruptAndSkippedWhole) {
  SpoolRecord base{5, 1000, 9, false, "t", "{}"};
  base.content_type = "ct";
  base.user_properties = {{"k", "v"}};
  const std::string good = encode_record(base);
  constexpr std::size_t kBlock = 33;  // where the block's length field is
  const auto with_block_len = [&](std::uint32_t len) {
    std::string b = good;
    for (int i = 0; i < 4; ++i) b[kBlock + i] = static_cast<char>(len >> (8 * i));
    reseal(b);
    return b;
  };
  std::vector<std::pair<std::string, std::string>> cases = {
      {"block longer than the record", with_block_len(1000)},
      {"block shorter than expiry and content type length", with_block_len(9)},
      // The block is 18 bytes: expiry 8, "ct" 2 + 2, "k" 2 + 1, "v" 2 + 1.
      {"user property's value cut by the block's end", with_block_len(15)},
      {"content type cut by the block's end", with_block_len(11)},
  };
  {  // A block that holds nothing at all is not what the encoder writes.
    SpoolRecord r{5, 1000, 9, false, "t", "{}"};
    r.expiry_deadline_us = 1;
    std::string b = encode_record(r);
    for (int i = 0; i < 8; ++i) b[kBlock + 4 + i] = 0;
    reseal(b);
    cases.emplace_back("empty block", b);
  }
  {  // The properties flag on a record too short to hold a block.
    std::string b = encode_record({1, 0, 0, false, "", ""});
    b[30] = '\x08';
    reseal(b);
    cases.emplace_back("no room for the block", b);
  }
  for (const auto& [what, bytes] : cases) {
    const DecodeResult d = decode_record(bytes);
    EXPECT_EQ(d.status, DecodeStatus::kCorrupt) << what;
    EXPECT_EQ(d.consumed, bytes.size()) << what;
    EXPECT_EQ(d.record, SpoolRecord{}) << what;
  }
}

TEST(SpoolCodecTest, PropertiesOverTheirLimitsAreRefused) {
  SpoolRecord r{1, 0, 0, false, "t", "p"};
  r.content_type = std::string(65535, 'c');
  EXPECT_EQ(decode_record(encode_record(r)).record, r);
  r.content_type.push_back('c');
  EXPECT_THROW(encode_record(r), std::invalid_argument);

  r.content_type.clear();
  r.user_properties = {{std::string(65536, 'n'), "v"}};
  EXPECT_THROW(encode_record(r), std::invalid_argument);
  r.user_properties = {{"n", std::string(65536, 'v')}};
  EXPECT_THROW(encode_record(r), std::invalid_argument);

  // The block as a whole: 20 properties of about 60 KiB each are more than 1 MiB.
  r.user_properties.assign(20, {"n", std::string(60000, 'v')});
  std::vector<UserPropertyView> views(r.user_properties.begin(), r.user_properties.end());
  EXPECT_GT(spool_properties_bytes({0, "", views}), kSpoolMaxPropertiesBytes);
  EXPECT_THROW(encode_record(r), std::invalid_argument);
  r.user_properties.resize(17);
  views.assign(r.user_properties.begin(), r.user_properties.end());
  EXPECT_LE(spool_properties_bytes({0, "", views}), kSpoolMaxPropertiesBytes);
  const DecodeResult d = decode_record(encode_record(r));
  ASSERT_EQ(d.status, DecodeStatus::kOk);
  EXPECT_EQ(d.record, r);
}

TEST(SpoolCodecTest, MutatedPropertiesRecordsNeverCrashAndRoundTripWhenAccepted) {
  std::mt19937_64 rng(777);
  const std::string valid = encode_record(v5_record());
  for (int i = 0; i < 20000; ++i) {
    std::string bytes = valid;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      // Mostly inside the header and the properties block.
      const std::size_t at = 30 + rng() % std::min<std::size_t>(bytes.size() - 30, 120);
      bytes[at] ^= static_cast<char>(1 + rng() % 255);
    }
    reseal(bytes);  // past the checksum, so that the content checks are what is tested
    const DecodeResult d = decode_record(bytes);
    EXPECT_LE(d.consumed, bytes.size());
    if (d.status == DecodeStatus::kOk) {
      EXPECT_EQ(encode_record(d.record), bytes.substr(0, d.consumed));
    }
  }
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

TEST_F(SpoolTest, StatsCountTheRecordsBytesWhichAreTheFilesOnceClosed) {
  auto spool = open(options(100));
  append_range(*spool, 0, 5);
  EXPECT_EQ(spool->stats().bytes, 5 * record_size("t", "payload-0"));
  EXPECT_EQ(spool->stats().next_seq, 6u);
  const std::uint64_t bytes = spool->stats().bytes;
  spool.reset();  // the active segment's preallocated tail is cut off
  std::uint64_t on_disk = 0;
  for (const auto& f : segment_files()) on_disk += fs::file_size(f);
  EXPECT_EQ(on_disk, bytes);
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

// kill -9 leaves the active segment's preallocated window behind it: zeros, not damage, cut off.
// After a power loss the zeros could also stand for records that never reached the disk (the
// file's size was allocated before), so their seqs are skipped as a damaged tail's are.
TEST_F(SpoolTest, KilledProcessLeavesEveryAppendedRecordAndAZeroTailThatIsCutOff) {
  SpoolOptions o = options();
  o.fsync = SpoolFsync::kNever;  // only the page cache: what kill -9 must not lose
  if (!open(o)->stats().mapped_appends) GTEST_SKIP() << kNoWindowHere;
  fs::remove_all(dir_);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    Spool spool(o, nullptr);
    for (int i = 0; i < 1000; ++i) spool.append("t", "payload-" + std::to_string(i), 0, false, i);
    ::raise(SIGKILL);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  const fs::path segment = segment_files().at(0);
  const std::uint64_t whole = 1000 * record_size("t", "payload-000") - 10 * 2 - 90 * 1;
  ASSERT_GT(fs::file_size(segment), whole) << "no zero tail to cut off";
  const std::uint64_t zeros = fs::file_size(segment) - whole;

  auto spool = open(o);
  const auto records = read_all(*spool);
  ASSERT_EQ(records.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(records[i].payload, "payload-" + std::to_string(i));
  EXPECT_EQ(spool->stats().corrupt_records_skipped, 0u);
  EXPECT_EQ(spool->stats().next_seq, 1001 + (zeros + kHeaderBytes - 1) / kHeaderBytes);
  EXPECT_EQ(fs::file_size(segment), whole);
  const std::string log = log_text();
  EXPECT_EQ(log.find("[error]"), std::string::npos) << log;
  EXPECT_NE(log.find(std::to_string(zeros) + " bytes of zeros after the last record"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("ended in zeros"), std::string::npos) << log;
}

// Only a window's rest is a clean end: zeros where a finished segment should end (the roll cut
// it to its records) mean the disk lost what it had, and are damage, as are more zeros than a
// window ever allocates.
TEST_F(SpoolTest, ZerosEndingAFinishedSegmentOrLongerThanAWindowAreDamage) {
  {
    auto spool = open(options(4 * record_size("t", "payload-0")));
    append_range(*spool, 0, 6);  // segments 1-4 and 5-6
  }
  ASSERT_EQ(segment_files().size(), 2u);
  const fs::path first = segment_files().at(0);
  const fs::path last = segment_files().at(1);
  append_bytes(first, std::string(100, '\0'));
  append_bytes(last, std::string((1 << 20) + 1, '\0'));
  const std::uint64_t last_size = fs::file_size(last);

  auto spool = open(options(4 * record_size("t", "payload-0")));
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(spool->stats().corrupt_records_skipped, 2u);
  EXPECT_EQ(fs::file_size(last), last_size) << "damage is left in place";
  const std::string log = log_text();
  EXPECT_EQ(occurrences(log, "bad magic or length"), 2) << log;
  EXPECT_EQ(log.find("bytes of zeros after the last record"), std::string::npos) << log;
  EXPECT_GT(spool->append("t", "new", 0, false, 0)->seq, 6u + (1 << 20) / kHeaderBytes);
}

// The production shape: a segment far larger than a window, so that the window is mapped again
// every MiB in the middle of the segment and records straddle its ends. Every record reads back,
// live and after a restart, and the finished file holds exactly its records.
TEST_F(SpoolTest, AppendsAcrossManyWindowsOfOneSegmentReadBackWhole) {
  for (const auto policy : {SpoolFsync::kNever, SpoolFsync::kBatch}) {
    SCOPED_TRACE(static_cast<int>(policy));
    fs::remove_all(dir_);
    SpoolOptions o = options(64 << 20);
    o.fsync = policy;
    std::mt19937 random(7);
    std::vector<std::string> payloads;
    std::uint64_t bytes = 0;
    while (bytes < (3u << 20) + 12345) {  // a bit more than three windows
      // Mostly small, now and then one larger than a page, rarely one larger than a window.
      const std::size_t size =
          random() % 50 == 0 ? (random() % 300 == 0 ? (1 << 20) + 17 : 5000) : 20 + random() % 200;
      payloads.push_back(std::string(size, static_cast<char>('a' + payloads.size() % 26)));
      bytes += record_size("topic", payloads.back());
    }
    auto spool = open(o);
    if (!spool->stats().mapped_appends) GTEST_SKIP() << kNoWindowHere;
    std::size_t read = 0;
    for (std::size_t i = 0; i < payloads.size(); ++i) {
      ASSERT_TRUE(spool->append("topic", payloads[i], 0, false, static_cast<std::int64_t>(i)));
      if (i % 97 == 0) {  // the reader follows the writer, as the dispatcher does
        for (auto r = spool->read_next(0ms); r; r = spool->read_next(0ms)) {
          ASSERT_EQ(r->payload, payloads[read]) << "record " << read;
          ++read;
        }
      }
    }
    for (auto r = spool->read_next(0ms); r; r = spool->read_next(0ms)) {
      ASSERT_EQ(r->payload, payloads[read]) << "record " << read;
      ++read;
    }
    EXPECT_EQ(read, payloads.size());
    EXPECT_EQ(spool->stats().bytes, bytes);
    spool.reset();
    ASSERT_EQ(segment_files().size(), 1u);
    EXPECT_EQ(fs::file_size(segment_files().at(0)), bytes);
    auto reopened = open(o);
    const auto records = read_all(*reopened);
    ASSERT_EQ(records.size(), payloads.size());
    for (std::size_t i = 0; i < records.size(); ++i) {
      ASSERT_EQ(records[i].payload, payloads[i]) << "record " << i;
      ASSERT_EQ(records[i].seq, i + 1);
    }
    EXPECT_EQ(reopened->stats().corrupt_records_skipped, 0u);
  }
}

// The window only where fallocate reserves blocks; never with kAlways or map_appends off.
TEST_F(SpoolTest, TheWindowIsUsedWhereFallocateReservesBlocksAndNowhereElse) {
  struct statfs st {};
  ASSERT_EQ(::statfs(root_.c_str(), &st), 0);
  const auto type = static_cast<unsigned long>(st.f_type);
  const bool reserves = type == EXT4_SUPER_MAGIC || type == XFS_SUPER_MAGIC || type == TMPFS_MAGIC;
  EXPECT_EQ(open()->stats().mapped_appends, reserves) << std::hex << type;
  SpoolOptions o = options();
  o.map_appends = false;
  EXPECT_FALSE(open(o)->stats().mapped_appends);
  o = options();
  o.fsync = SpoolFsync::kAlways;
  EXPECT_FALSE(open(o)->stats().mapped_appends);
  if (fs::is_directory("/dev/shm")) {  // tmpfs on Linux
    std::string pattern = "/dev/shm/spool_test_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    o = options();
    o.dir = pattern;
    EXPECT_TRUE(Spool(o, log_).stats().mapped_appends);
    fs::remove_all(pattern);
  }
}

// Without the window (map_appends off, as on a file system whose fallocate does not reserve
// blocks) each record is written: the file never runs ahead of its records.
TEST_F(SpoolTest, WithoutTheWindowEachRecordIsWrittenAndTheFileIsExactlyItsRecords) {
  SpoolOptions o = options();
  o.map_appends = false;
  auto spool = open(o);
  append_range(*spool, 0, 10);
  const fs::path segment = segment_files().at(0);
  EXPECT_EQ(fs::file_size(segment), 10 * record_size("t", "payload-0"));
  EXPECT_EQ(read_all(*spool).size(), 10u);
  spool.reset();
  auto reopened = open(o);
  EXPECT_EQ(read_all(*reopened).size(), 10u);
  EXPECT_EQ(reopened->stats().next_seq, 11u);
}

// kBatch acknowledges before the sync; when the sync thread's fdatasync fails, the disk is not
// taking what it was given (a full file system that reserved nothing, an I/O error), so appends
// are refused (the message is held, not acknowledged) until a sync succeeds again, and then go
// to a new segment: Linux reports a failed writeback once and never retries those pages, so a
// record appended behind them could sit behind a hole.
TEST_F(SpoolTest, AFailedBatchSyncHoldsAppendsUntilANewSegmentIsSynced) {
  for (const bool mapped : {true, false}) {
    SCOPED_TRACE(mapped);
    fs::remove_all(dir_);
    std::atomic<bool> failing{false};
    std::atomic<int> failed_syncs{0};
    SpoolOptions o = options();
    o.fsync = SpoolFsync::kBatch;
    o.fsync_interval = 1ms;
    o.map_appends = mapped;
    o.sync_data = [&](int fd) {
      if (!failing) return ::fdatasync(fd);
      ++failed_syncs;
      errno = EIO;
      return -1;
    };
    auto spool = open(o);
    append_range(*spool, 0, 2);
    const std::size_t segments = segment_files().size();
    failing = true;
    std::vector<std::string> expected = {"payload-0", "payload-1"};
    std::string refusal;
    // Appends succeed until the sync thread has seen its failure, then they are refused.
    ASSERT_TRUE(eventually([&] {
      try {
        const std::string payload = "before-the-refusal-" + std::to_string(expected.size());
        if (spool->append("t", payload, 0, false, 0)) expected.push_back(payload);
        return false;
      } catch (const SpoolError& e) {
        refusal = e.what();
        return true;
      }
    }));
    EXPECT_NE(refusal.find("fdatasync failed"), std::string::npos) << refusal;
    const int failures = failed_syncs;
    ASSERT_TRUE(eventually([&] { return failed_syncs > failures; })) << "not retried";
    EXPECT_THROW(spool->append("t", "held", 0, false, 0), SpoolError);
    failing = false;
    ASSERT_TRUE(eventually([&] {
      try {
        return spool->append("t", "after", 0, false, 0).has_value();
      } catch (const SpoolError&) {
        return false;
      }
    }));
    // One new segment, however many retries failed.
    EXPECT_EQ(segment_files().size(), segments + 1) << "not resumed in a new segment";
    expected.push_back("after");
    std::vector<std::string> payloads;
    for (const auto& r : read_all(*spool)) payloads.push_back(r.payload);
    EXPECT_EQ(payloads, expected);
    const std::string log = log_text();
    EXPECT_EQ(occurrences(log, "appends wait until a sync succeeds"), 1) << log;
    EXPECT_NE(log.find("syncs work again; appends resume in segment"), std::string::npos) << log;
    log_text_.str("");
  }
}

// A copy cut short by kill -9 lacks its magic (copied last): it never reads as a record. (Written
// by hand here, as such a copy would leave it.) The rest of the segment is damage, whose seqs
// are skipped.
TEST_F(SpoolTest, RecordCopiedWithoutItsMagicIsDamageNotARecord) {
  {
    auto spool = open();
    append_range(*spool, 0, 3);
  }
  const fs::path segment = segment_files().at(0);
  std::string half = encode_record(SpoolRecord{4, 0, 0, false, "t", "payload-3"});
  half.replace(0, 4, 4, '\0');
  half.append(100, '\0');
  std::ofstream(segment, std::ios::binary | std::ios::app) << half;

  auto spool = open();
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2, 3}));
  EXPECT_GT(spool->append("t", "new", 0, false, 0)->seq, 4u);
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

// After a broker restart without persistence the packet ids start again: a DUP message equal to
// an old record is new, and dropping it as a redelivery would lose it.
TEST_F(SpoolTest, NewBrokerSessionForgetsTheRedeliveryWindow) {
  auto spool = open();
  spool->new_broker_connection(true);
  ASSERT_TRUE(spool->append("a/b", "payload", 77, false, 1));
  spool->new_broker_connection(false);
  const auto again = spool->append("a/b", "payload", 77, true, 2);
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->redelivery) << "a new session cannot redeliver the old one's messages";
  EXPECT_EQ(spool->stats().appended, 2u);
}

// With the session kept, what earlier connections (and the process before a restart) spooled can
// still be redelivered, also after several quick reconnects.
TEST_F(SpoolTest, KeptSessionKeepsTheRedeliveryWindow) {
  {
    auto spool = open();
    ASSERT_TRUE(spool->append("t", "before-restart", 5, false, 1));
  }
  auto spool = open();
  spool->new_broker_connection(true);  // first connection after the restart
  ASSERT_TRUE(spool->append("t", "first-connection", 6, false, 3));
  spool->new_broker_connection(true);
  spool->new_broker_connection(true);  // two quick reconnects
  EXPECT_TRUE(spool->append("t", "first-connection", 6, true, 4)->redelivery);
  EXPECT_TRUE(spool->append("t", "before-restart", 5, true, 5)->redelivery);
}

// Failover (issue 15): each broker numbers its own packets and keeps its own session. A move to
// another broker (a new session there) must not forget what the first one may still redeliver,
// and a packet of the second broker that happens to match a record of the first is new.
TEST_F(SpoolTest, EachBrokerHasItsOwnRedeliveryWindow) {
  auto spool = open();
  spool->new_broker_connection(true, "tcp://a:1883");
  ASSERT_TRUE(spool->append("t", "on-a", 9, false, 1));
  spool->new_broker_connection(false, "tcp://b:1883");  // moved: a new session on b
  const auto on_b = spool->append("t", "on-a", 9, true, 2);
  ASSERT_TRUE(on_b);
  EXPECT_FALSE(on_b->redelivery) << "b never sent it: a DUP from b is another message";
  spool->new_broker_connection(true, "tcp://a:1883");  // back on a, its session kept
  EXPECT_TRUE(spool->append("t", "on-a", 9, true, 3)->redelivery);
  EXPECT_EQ(spool->stats().appended, 2u);
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
  const std::uint64_t bytes = spool->stats().bytes;
  spool.reset();
  EXPECT_EQ(bytes, fs::file_size(files[0]));
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

// ---- retained and cut payloads ----

TEST_F(SpoolTest, RetainedAndCutRecordsReadBackAcrossReopen) {
  {
    auto spool = open();
    ASSERT_TRUE(spool->append("a", "plain", 1, false, 10));
    ASSERT_TRUE(spool->append("b", "kept", 2, true, 11, /*retained=*/true));
    ASSERT_TRUE(spool->append("c", "first-bytes", 3, false, 12, false, 1u << 30));
    EXPECT_EQ(spool->stats().bytes, 2 * kHeaderBytes + kSpoolCutRecordHeaderBytes + 3 + 20);
  }
  auto spool = open();
  const auto records = read_all(*spool);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_FALSE(records[0].retained);
  EXPECT_EQ(records[0].original_size, 0u);
  EXPECT_TRUE(records[1].retained);
  EXPECT_TRUE(records[1].dup);
  EXPECT_EQ(records[1].payload, "kept");
  EXPECT_FALSE(records[2].retained);
  EXPECT_EQ(records[2].payload, "first-bytes");
  EXPECT_EQ(records[2].original_size, 1u << 30);
}

TEST_F(SpoolTest, PropertiesReadBackAcrossReopenAndThroughACursor) {
  const std::vector<UserPropertyView> user = {{"a", "1"}, {"b", ""}};
  const SpoolPropertiesView properties{1234, "application/json", user};
  {
    auto spool = open();
    ASSERT_TRUE(spool->append("t/1", "{}", 1, false, 10));
    ASSERT_TRUE(spool->append("t/2", "{}", 2, false, 11, true, 0, properties));
    EXPECT_EQ(spool->stats().bytes, 2 * kHeaderBytes + spool_properties_bytes(properties) + 6 + 4);
  }
  auto spool = open();
  const auto records = read_all(*spool);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0].expiry_deadline_us, 0);
  EXPECT_EQ(records[0].content_type, "");
  EXPECT_TRUE(records[0].user_properties.empty());
  EXPECT_TRUE(records[1].retained);
  EXPECT_EQ(records[1].expiry_deadline_us, 1234);
  EXPECT_EQ(records[1].content_type, "application/json");
  const std::vector<std::pair<std::string, std::string>> expected = {{"a", "1"}, {"b", ""}};
  EXPECT_EQ(records[1].user_properties, expected);
  auto cursor = spool->cursor(records[1].seq);
  const auto again = cursor->next(records[1].seq + 1);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, records[1]);
}

TEST_F(SpoolTest, AppendRefusesPropertiesOverTheLimit) {
  auto spool = open();
  const std::string big(65536, 'x');
  const SpoolPropertiesView properties{0, big, {}};
  EXPECT_THROW(spool->append("t", "p", 0, false, 0, false, 0, properties), std::invalid_argument);
  EXPECT_EQ(spool->stats().appended, 0u);
}

TEST_F(SpoolTest, AppendRefusesAnOriginalSizeNotAboveThePayload) {
  auto spool = open();
  EXPECT_THROW(spool->append("t", "12345", 0, false, 0, false, 5), std::invalid_argument);
  EXPECT_EQ(spool->stats().appended, 0u);
  EXPECT_EQ(spool->stats().next_seq, 1u);
}

// ---- ensure_seq_above ----

TEST_F(SpoolTest, EnsureSeqAboveMakesLaterAppendsLargerAndKeepsRecordsInOrder) {
  auto spool = open();
  append_range(*spool, 0, 3);
  ASSERT_TRUE(spool->read_next(0ms));  // the reader is inside the old segment
  spool->ensure_seq_above(100, "the reason");
  EXPECT_EQ(spool->stats().next_seq, 101u);
  EXPECT_EQ(spool->append("t", "after", 0, false, 0)->seq, 101u);
  EXPECT_EQ(spool->append("t", "after", 0, false, 0)->seq, 102u);
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{2, 3, 101, 102}));
  const std::string log = log_text();
  EXPECT_EQ(occurrences(log, "[warning]"), 1) << log;
  EXPECT_NE(log.find("continue at seq 101 in a new segment (the next seq was 4): the reason"),
            std::string::npos)
      << log;
}

TEST_F(SpoolTest, EnsureSeqAboveFloorSurvivesReopenWithNothingAppended) {
  {
    auto spool = open();
    append_range(*spool, 0, 3);
    spool->ensure_seq_above(100, "test");
  }
  EXPECT_TRUE(fs::exists(dir_ / "00000000000000000101.seg"));
  {
    auto spool = open();
    EXPECT_EQ(spool->stats().next_seq, 101u);
    EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2, 3}));
    EXPECT_EQ(spool->append("t", "x", 0, false, 0)->seq, 101u);
  }
  auto spool = open();
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2, 3, 101}));
  EXPECT_EQ(spool->append("t", "y", 0, false, 0)->seq, 102u);
}

TEST_F(SpoolTest, EnsureSeqAboveBelowTheNextSeqChangesNothing) {
  auto spool = open();
  append_range(*spool, 0, 5);
  spool->ensure_seq_above(0, "test");
  spool->ensure_seq_above(3, "test");
  spool->ensure_seq_above(5, "test");
  EXPECT_EQ(spool->stats().next_seq, 6u);
  EXPECT_EQ(segment_files().size(), 1u);
  EXPECT_EQ(log_text().find("[warning]"), std::string::npos);
  EXPECT_THROW(spool->ensure_seq_above(std::numeric_limits<std::uint64_t>::max(), "test"),
               std::invalid_argument);
}

TEST_F(SpoolTest, EnsureSeqAboveOnAnEmptySpoolTakesEffect) {
  {
    auto spool = open();
    spool->ensure_seq_above(41, "test");
  }
  auto spool = open();
  EXPECT_EQ(spool->append("t", "x", 0, false, 0)->seq, 42u);
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{42}));
}

// Segments hold the messages' payloads: only the owner reads them, whatever the umask; a
// directory the spool creates is the owner's only too.
TEST_F(SpoolTest, SegmentsAndANewDirectoryAreTheOwnersOnly) {
  const mode_t old_umask = ::umask(0);
  auto spool = open();
  ::umask(old_umask);
  append_range(*spool, 0, 1);
  EXPECT_EQ(fs::status(dir_).permissions() & fs::perms::all, fs::perms::owner_all);
  const auto files = segment_files();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(fs::status(files.front()).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
}

// ---- released-below: where a restart resumes ----

// Records a release_below() declared done are not handed out again after a restart (the flows of
// that day would route them afresh: a flow disabled meanwhile would make stored ones dead
// letters); the others are, and seqs go on.
TEST_F(SpoolTest, AfterARestartReadingResumesAtTheLastRelease) {
  std::string id;
  {
    auto spool = open();
    id = spool->id();
    append_range(*spool, 0, 5);
    EXPECT_EQ(read_all(*spool).size(), 5u);
    spool->release_below(4);
  }
  std::ifstream file(dir_ / "released-below");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(file), {}), id + " 4\n");
  auto spool = open();
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{4, 5}));
  EXPECT_EQ(spool->append("t", "x", 0, false, 0)->seq, 6u);
  EXPECT_NE(log_text().find("records below seq 4 were done before the restart"), std::string::npos)
      << log_text();
}

// Segments released before a restart whose files are still there (a kill -9 between the file and
// the unlinks) go at open: a full spool of done records would otherwise block appends until a new
// record is done, and none can be appended.
TEST_F(SpoolTest, SegmentsReleasedBeforeARestartGoAtOpen) {
  const std::string payload = "payload-0";
  SpoolOptions o = options();
  o.segment_bytes = 2 * record_size("t", payload);
  o.max_bytes = 4 * record_size("t", payload);
  std::string id;
  {
    auto spool = open(o);
    id = spool->id();
    append_range(*spool, 0, 4);  // two full segments: the spool is full
    EXPECT_EQ(read_all(*spool).size(), 4u);
  }
  std::ofstream(dir_ / "released-below") << id << " 5\n";  // as if the unlinks never happened
  auto spool = open(o);
  auto appended =
      std::async(std::launch::async, [&] { return spool->append("t", "new", 0, false, 0); });
  if (appended.wait_for(5s) != std::future_status::ready) {
    spool->close();  // so that the blocked append returns and the test ends
    FAIL() << "the append waits for room that only released segments hold";
  }
  EXPECT_EQ(appended.get()->seq, 5u);
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{5}));
}

// An unreadable file (a machine crash after an unsynced rename) or one of another spool id only
// replays more: everything is read, as without it.
TEST_F(SpoolTest, AnUnusableReleasedBelowFileReplaysTheWholeSpool) {
  {
    auto spool = open();
    append_range(*spool, 0, 3);
  }
  std::ofstream(dir_ / "released-below") << "";
  EXPECT_EQ(seqs(read_all(*open())), (std::vector<std::uint64_t>{1, 2, 3}));
  EXPECT_NE(log_text().find("released-below is unreadable"), std::string::npos) << log_text();
  std::ofstream(dir_ / "released-below") << "0123456789abcdef0123456789abcdef 3\n";
  EXPECT_EQ(seqs(read_all(*open())), (std::vector<std::uint64_t>{1, 2, 3}));
}

// Released records the spool lost (a power loss with kBatch): their seqs are never handed out
// again, and a new record is read.
TEST_F(SpoolTest, AReleaseBeyondTheSpoolsEndKeepsAppendsAboveIt) {
  std::string id;
  {
    auto spool = open();
    id = spool->id();
    append_range(*spool, 0, 2);
  }
  std::ofstream(dir_ / "released-below") << id << " 100\n";
  auto spool = open();
  EXPECT_EQ(spool->append("t", "x", 0, false, 0)->seq, 100u);
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{100}));
}

TEST_F(SpoolTest, SegmentBeforeASeqGapIsReleasedOnceItsRecordsAre) {
  SpoolOptions o = options();
  o.max_bytes = 3 * record_size("t", "payload-0");  // full after three records
  auto spool = open(o);
  append_range(*spool, 0, 3);
  spool->ensure_seq_above(1000, "test");
  auto blocked =
      std::async(std::launch::async, [&] { return spool->append("t", "x", 0, false, 0); });
  EXPECT_EQ(blocked.wait_for(100ms), std::future_status::timeout);
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2, 3}));
  // Everything read so far is processed: seqs 4..1000 were never used here.
  spool->release_below(4);
  if (blocked.wait_for(5s) != std::future_status::ready) {
    spool->close();  // so that the blocked append returns and the test ends
    FAIL() << "release_below(4) kept the segment of seqs 1-3, so the append stays blocked";
  }
  EXPECT_EQ(blocked.get()->seq, 1001u);
  EXPECT_EQ(segment_files().size(), 1u);
}

// ---- kAlways: read only what is on stable storage ----

// Makes every later fdatasync(2) of this thread (and of threads it starts) fail with EIO. Only
// for a forked child: a seccomp filter cannot be removed again.
bool fail_every_fdatasync() {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fdatasync, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EIO & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(std::size(filter)), filter};
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

// Runs `body` in a forked child and returns its exit code (or 128 + the signal that ended it).
// The child's own assertions cannot reach gtest, so `body` reports through its return value.
int run_in_child(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(body());
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST_F(SpoolTest, WithFsyncAlwaysARecordWhoseFdatasyncFailedIsNeverRead) {
  SpoolOptions o = options();
  o.fsync = SpoolFsync::kAlways;
  {
    auto spool = open(o);
    append_range(*spool, 0, 2);
  }
  const std::uint64_t two = 2 * record_size("t", "payload-0");
  constexpr int kNoSeccomp = 77;
  const int code = run_in_child([&]() -> int {
    if (!fail_every_fdatasync()) return kNoSeccomp;
    Spool spool(o, nullptr);
    try {
      spool.append("q", "lost", 9, false, 0);
      return 10;  // acknowledged although it is not on stable storage
    } catch (const SpoolError&) {
    }
    std::vector<std::uint64_t> seen;
    while (auto r = spool.read_next(0ms)) seen.push_back(r->seq);
    if (seen != std::vector<std::uint64_t>{1, 2}) return 11;  // the reader saw it
    if (spool.stats().bytes != two || fs::file_size(segment_files().at(0)) != two) return 12;
    // The broker redelivers it (DUP): it must be spooled anew, not dropped as already spooled.
    try {
      const auto again = spool.append("q", "lost", 9, true, 0);
      return again && again->redelivery ? 13 : 14;
    } catch (const SpoolError&) {
    }
    return 0;
  });
  if (code == kNoSeccomp) GTEST_SKIP() << "seccomp filters are not available here";
  ASSERT_EQ(code, 0) << "10: append did not throw, 11: the reader saw the record, 12: the "
                        "record was not cut back, 13: its redelivery was dropped";
  // The disk works again: the spool holds exactly the two records and takes new ones.
  auto spool = open(o);
  const auto result = spool->append("q", "lost", 9, true, 0);
  ASSERT_TRUE(result);
  EXPECT_FALSE(result->redelivery);
  EXPECT_EQ(result->seq, 3u);
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 2, 3}));
}

TEST_F(SpoolTest, WithFsyncAlwaysAReaderOnAnotherThreadSeesEveryRecordInOrder) {
  SpoolOptions o = options(4096);
  o.fsync = SpoolFsync::kAlways;
  auto spool = open(o);
  constexpr int kCount = 200;
  std::thread writer([&] { append_range(*spool, 0, kCount); });
  std::vector<std::uint64_t> read;
  while (read.size() < kCount) {
    auto r = spool->read_next(5s);
    ASSERT_TRUE(r) << "after " << read.size();
    read.push_back(r->seq);
  }
  writer.join();
  for (std::size_t i = 0; i < read.size(); ++i) EXPECT_EQ(read[i], i + 1);
}

// ---- failed appends ----

// Lowers RLIMIT_FSIZE and ignores SIGXFSZ, so that a write past the limit fails with EFBIG
// instead of killing the process. Restores both on destruction, also when the test fails.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(std::uint64_t bytes) {
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    signal_saved_ = ::sigaction(SIGXFSZ, &ignore, &old_action_) == 0;
    limit_saved_ = ::getrlimit(RLIMIT_FSIZE, &old_limit_) == 0;
    rlimit lowered = old_limit_;
    lowered.rlim_cur = static_cast<rlim_t>(bytes);
    active_ = signal_saved_ && limit_saved_ && ::setrlimit(RLIMIT_FSIZE, &lowered) == 0;
  }
  ~FileSizeLimit() {
    if (limit_saved_) ::setrlimit(RLIMIT_FSIZE, &old_limit_);
    if (signal_saved_) ::sigaction(SIGXFSZ, &old_action_, nullptr);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
  bool active() const { return active_; }

 private:
  struct sigaction old_action_ {};
  rlimit old_limit_{};
  bool signal_saved_ = false;
  bool limit_saved_ = false;
  bool active_ = false;
};

// kAlways writes each record with write(2); the others copy it into a preallocated window (see
// the next test).
TEST_F(SpoolTest, FailedAppendIsCutBackAndTheNextOneSucceedsOnceTheDiskTakesWrites) {
  for (const auto policy : {SpoolFsync::kAlways}) {
    SCOPED_TRACE(static_cast<int>(policy));
    fs::remove_all(dir_);
    SpoolOptions o = options();
    o.fsync = policy;
    auto spool = open(o);
    append_range(*spool, 0, 3);
    const fs::path segment = segment_files().at(0);
    const std::uint64_t good = fs::file_size(segment);
    auto waiting_reader = std::async(std::launch::async, [&] {
      std::vector<SpoolRecord> records;
      while (records.size() < 5) {
        auto r = spool->read_next(5s);
        if (!r) break;
        records.push_back(std::move(*r));
      }
      return records;
    });
    {
      FileSizeLimit limit(good + 10);  // room for part of the next record only
      ASSERT_TRUE(limit.active());
      try {
        spool->append("t", std::string(100, 'x'), 0, false, 0);
        ADD_FAILURE() << "no exception";
      } catch (const SpoolError& e) {
        EXPECT_NE(std::string(e.what()).find(segment.string()), std::string::npos) << e.what();
      }
      EXPECT_EQ(fs::file_size(segment), good);  // the part that got in was cut back off
      EXPECT_THROW(spool->append("t", "y", 0, true, 0), SpoolError);  // nothing fits now
      EXPECT_THROW(spool->append("t", std::string(200, 'z'), 0, false, 0), SpoolError);
    }
    const auto first = spool->append("t", "after-1", 0, false, 0);
    const auto second = spool->append("t", "after-2", 0, false, 0);
    ASSERT_TRUE(first && second);
    EXPECT_GT(first->seq, 3u);
    EXPECT_GT(second->seq, first->seq);
    const auto records = waiting_reader.get();
    ASSERT_EQ(records.size(), 5u);
    std::vector<std::string> payloads;
    payloads.reserve(records.size());
    for (const auto& r : records) payloads.push_back(r.payload);
    EXPECT_EQ(payloads, (std::vector<std::string>{"payload-0", "payload-1", "payload-2", "after-1",
                                                  "after-2"}));
    for (std::size_t i = 1; i < records.size(); ++i) EXPECT_GT(records[i].seq, records[i - 1].seq);
    spool.reset();
    EXPECT_EQ(read_all(*open(o)), records);  // and so it stays after a restart
  }
}

TEST_F(SpoolTest, AppendFailsWhenNoWindowCanBeAllocatedAndSucceedsOnceTheDiskTakesWrites) {
  for (const auto policy : {SpoolFsync::kNever, SpoolFsync::kBatch}) {
    SCOPED_TRACE(static_cast<int>(policy));
    fs::remove_all(dir_);
    SpoolOptions o = options(64 << 20);  // far from rolling: the next window extends this file
    o.fsync = policy;
    auto spool = open(o);
    if (!spool->stats().mapped_appends) GTEST_SKIP() << kNoWindowHere;
    append_range(*spool, 0, 3);
    const fs::path segment = segment_files().at(0);
    const std::uint64_t allocated = fs::file_size(segment);  // the records and their window
    const std::uint64_t room = allocated - spool->stats().bytes;
    ASSERT_GT(room, 100u) << "no preallocated window";
    const std::string too_big(room, 'x');  // needs more than the window has left
    {
      FileSizeLimit limit(allocated);  // no byte more
      ASSERT_TRUE(limit.active());
      try {
        spool->append("t", too_big, 0, false, 0);
        ADD_FAILURE() << "no exception";
      } catch (const SpoolError& e) {
        EXPECT_NE(std::string(e.what()).find(segment.string()), std::string::npos) << e.what();
      }
      EXPECT_EQ(spool->stats().bytes, 3 * record_size("t", "payload-0"));
      // A record that fits in the bytes allocated before still goes in (a new window over them).
      ASSERT_TRUE(spool->append("t", "small", 0, false, 0));
      EXPECT_THROW(spool->append("t", too_big, 0, false, 0), SpoolError);
    }
    const auto after = spool->append("t", too_big, 0, false, 0);
    ASSERT_TRUE(after);
    std::vector<std::string> payloads;  // the big one by its size: its bytes would flood the log
    for (const auto& r : read_all(*spool)) {
      payloads.push_back(r.payload == too_big ? "too_big" : r.payload.substr(0, 20));
    }
    EXPECT_EQ(payloads, (std::vector<std::string>{"payload-0", "payload-1", "payload-2", "small",
                                                  "too_big"}));
    const std::uint64_t bytes = spool->stats().bytes;
    spool.reset();
    EXPECT_EQ(fs::file_size(segment), bytes);
    auto reopened = open(o);
    EXPECT_EQ(read_all(*reopened).size(), 5u);
    EXPECT_EQ(reopened->stats().corrupt_records_skipped, 0u);
  }
}

// ---- cursors ----

TEST_F(SpoolTest, CursorReturnsExactlyTheRecordsInItsRangeAcrossSegments) {
  auto spool = open(options(100));  // two records per segment
  append_range(*spool, 0, 10);
  const auto all = read_all(*spool);
  ASSERT_EQ(all.size(), 10u);
  auto cursor = spool->cursor(3);
  std::vector<SpoolRecord> got;
  while (auto r = cursor->next(8)) got.push_back(std::move(*r));
  EXPECT_EQ(got, std::vector<SpoolRecord>(all.begin() + 2, all.begin() + 7));
  EXPECT_FALSE(cursor->next(8));
  EXPECT_FALSE(cursor->next(3));
  got.clear();
  while (auto r = cursor->next(11)) got.push_back(std::move(*r));
  EXPECT_EQ(seqs(got), (std::vector<std::uint64_t>{8, 9, 10}));
  // The main reader was not disturbed.
  ASSERT_TRUE(spool->append("t", "more", 0, false, 0));
  EXPECT_EQ(spool->read_next(0ms)->payload, "more");
}

TEST_F(SpoolTest, CursorSeesRecordsAppendedAfterItWasCreatedOnceBelowMoves) {
  auto spool = open(options(100));
  auto cursor = spool->cursor(1);
  EXPECT_FALSE(cursor->next(1000));
  append_range(*spool, 0, 3);
  EXPECT_FALSE(cursor->next(1));
  EXPECT_EQ(cursor->next(2)->seq, 1u);
  EXPECT_FALSE(cursor->next(2));
  EXPECT_EQ(cursor->next(4)->seq, 2u);
  EXPECT_EQ(cursor->next(4)->payload, "payload-2");
  EXPECT_FALSE(cursor->next(4));
  append_range(*spool, 3, 8);  // over two more segment rolls
  std::vector<std::uint64_t> got;
  while (auto r = cursor->next(1000)) got.push_back(r->seq);
  EXPECT_EQ(got, (std::vector<std::uint64_t>{4, 5, 6, 7, 8}));
}

TEST_F(SpoolTest, CursorSurvivesReleaseOfTheSegmentsBeforeItsPosition) {
  auto spool = open(options(100));
  append_range(*spool, 0, 10);  // segments 1-2, 3-4, 5-6, 7-8, 9-10
  read_all(*spool);
  auto cursor = spool->cursor(5);
  EXPECT_EQ(cursor->next(100)->seq, 5u);
  spool->release_below(6);
  EXPECT_EQ(cursor->next(100)->seq, 6u);
  spool->release_below(7);  // deletes 5-6, which the cursor is reading
  EXPECT_EQ(spool->stats().segments, 2u);
  std::vector<std::uint64_t> got;
  while (auto r = cursor->next(100)) got.push_back(r->seq);
  EXPECT_EQ(got, (std::vector<std::uint64_t>{7, 8, 9, 10}));
}

TEST_F(SpoolTest, CursorFromBelowTheOldestRecordStartsAtTheOldest) {
  auto spool = open(options(100));
  append_range(*spool, 0, 6);
  read_all(*spool);
  spool->release_below(5);  // 1-2 and 3-4 are gone
  auto cursor = spool->cursor(1);
  std::vector<std::uint64_t> got;
  while (auto r = cursor->next(100)) got.push_back(r->seq);
  EXPECT_EQ(got, (std::vector<std::uint64_t>{5, 6}));
}

TEST_F(SpoolTest, CursorFromBeyondTheLastRecordWaitsForIt) {
  auto spool = open(options(100));
  append_range(*spool, 0, 3);
  auto cursor = spool->cursor(6);
  EXPECT_FALSE(cursor->next(100));
  append_range(*spool, 3, 7);  // seqs 4..7
  EXPECT_FALSE(cursor->next(6));
  EXPECT_EQ(cursor->next(7)->seq, 6u);
  EXPECT_EQ(cursor->next(100)->seq, 7u);
  EXPECT_FALSE(cursor->next(100));
}

TEST_F(SpoolTest, CursorSkipsACorruptRecordAsTheReaderDoes) {
  {
    auto spool = open();
    append_range(*spool, 0, 4);
  }
  const std::uint64_t size = record_size("t", "payload-0");
  flip_byte(segment_files().at(0), 2 * size - 2);  // in the second record's payload
  auto spool = open();
  EXPECT_EQ(seqs(read_all(*spool)), (std::vector<std::uint64_t>{1, 3, 4}));
  auto cursor = spool->cursor(1);
  std::vector<std::uint64_t> got;
  while (auto r = cursor->next(100)) got.push_back(r->seq);
  EXPECT_EQ(got, (std::vector<std::uint64_t>{1, 3, 4}));
}

TEST_F(SpoolTest, CursorFollowsTheRollOfEnsureSeqAbove) {
  auto spool = open();
  append_range(*spool, 0, 3);
  auto cursor = spool->cursor(2);
  EXPECT_EQ(cursor->next(3)->seq, 2u);
  spool->ensure_seq_above(100, "test");
  ASSERT_EQ(spool->append("t", "after", 0, false, 0)->seq, 101u);
  std::vector<std::uint64_t> got;
  while (auto r = cursor->next(1000)) got.push_back(r->seq);
  EXPECT_EQ(got, (std::vector<std::uint64_t>{3, 101}));
}

TEST_F(SpoolTest, CursorRunsConcurrentlyWithAppendsReadsAndReleases) {
  auto spool = open(options(2048));
  constexpr std::uint64_t kCount = 3000;
  constexpr std::uint64_t kFrom = 500;
  std::atomic<std::uint64_t> read_below{1};     // every seq below it was read by read_next
  std::atomic<std::uint64_t> cursor_at{kFrom};  // the cursor's position
  std::thread writer([&] { append_range(*spool, 0, static_cast<int>(kCount)); });
  std::thread consumer([&] {
    while (read_below.load() <= kCount) {
      auto r = spool->read_next(5s);
      if (!r) break;
      read_below.store(r->seq + 1);
      spool->release_below(std::min(r->seq, cursor_at.load()));
    }
    // Then deletes segments behind the cursor while it reads.
    while (cursor_at.load() <= kCount) {
      spool->release_below(cursor_at.load());
      std::this_thread::sleep_for(100us);
    }
  });
  auto cursor = spool->cursor(kFrom);
  std::vector<std::uint64_t> got;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (cursor_at.load() <= kCount && std::chrono::steady_clock::now() < deadline) {
    if (auto r = cursor->next(read_below.load())) {
      got.push_back(r->seq);
      EXPECT_EQ(r->payload, "payload-" + std::to_string(r->seq - 1));
      cursor_at.store(r->seq + 1);
    } else {
      std::this_thread::yield();
    }
  }
  writer.join();
  consumer.join();
  ASSERT_EQ(got.size(), kCount - kFrom + 1);
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], kFrom + i);
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
