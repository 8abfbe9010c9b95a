#include "gateway/spool_format.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace gateway {
namespace {

// "GSPL" in the file. Chosen so that zero-filled blocks (what a power loss leaves) never match.
constexpr std::uint32_t kMagic = 0x4C505347;
constexpr std::size_t kPrefixBytes = 8;  // magic + length
constexpr std::size_t kHeaderBytes = kSpoolRecordHeaderBytes;
constexpr std::size_t kOriginalSizeBytes = kSpoolCutRecordHeaderBytes - kSpoolRecordHeaderBytes;
constexpr std::uint32_t kMinLength = kHeaderBytes - kPrefixBytes;
constexpr std::uint64_t kMaxLength =
    kMinLength + kOriginalSizeBytes + kSpoolMaxTopicBytes + kSpoolMaxPayloadBytes;
constexpr std::uint8_t kFlagDup = 0x01;
constexpr std::uint8_t kFlagRetained = 0x02;
constexpr std::uint8_t kFlagCut = 0x04;
constexpr std::uint8_t kKnownFlags = kFlagDup | kFlagRetained | kFlagCut;

void put_u16(char* out, std::uint16_t v) {
  out[0] = static_cast<char>(v);
  out[1] = static_cast<char>(v >> 8);
}
void put_u32(char* out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(v >> (8 * i));
}
void put_u64(char* out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
}
std::uint64_t get_le(const char* in, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

std::uint32_t checksum(const char* data, std::size_t size) {
  return static_cast<std::uint32_t>(
      crc32_z(0, reinterpret_cast<const Bytef*>(data), static_cast<z_size_t>(size)));
}

// The length field of a record starting at `bytes` (at least kPrefixBytes), or 0 if the magic or
// the length is impossible.
std::uint64_t framed_length(std::string_view bytes) {
  char magic[4];
  put_u32(magic, kMagic);
  if (std::memcmp(bytes.data(), magic, 4) != 0) return 0;
  const std::uint64_t length = get_le(bytes.data() + 4, 4);
  return length < kMinLength || length > kMaxLength ? 0 : length;
}

}  // namespace

void check_record_limits(std::string_view topic, std::string_view payload,
                         std::uint64_t original_size) {
  if (topic.size() > kSpoolMaxTopicBytes) {
    throw std::invalid_argument("spool: topic of " + std::to_string(topic.size()) +
                                " bytes exceeds the limit of " +
                                std::to_string(kSpoolMaxTopicBytes));
  }
  if (payload.size() > kSpoolMaxPayloadBytes) {
    throw std::invalid_argument("spool: payload of " + std::to_string(payload.size()) +
                                " bytes exceeds the limit of " +
                                std::to_string(kSpoolMaxPayloadBytes));
  }
  if (original_size != 0 && original_size <= payload.size()) {
    throw std::invalid_argument("spool: original size " + std::to_string(original_size) +
                                " of a cut payload is not more than the " +
                                std::to_string(payload.size()) + " bytes kept");
  }
}

void encode_record_into(std::string& out, const SpoolRecordView& r) {
  check_record_limits(r.topic, r.payload, r.original_size);
  const std::size_t extra = r.original_size > 0 ? kOriginalSizeBytes : 0;
  const std::size_t fixed = kHeaderBytes + extra;
  const std::size_t total = fixed + r.topic.size() + r.payload.size();
  out.resize(total);
  char* d = out.data();
  put_u32(d, kMagic);
  put_u32(d + 4, static_cast<std::uint32_t>(total - kPrefixBytes));
  put_u64(d + 12, r.seq);
  put_u64(d + 20, static_cast<std::uint64_t>(r.arrival_us));
  put_u16(d + 28, r.packet_id);
  d[30] = static_cast<char>((r.dup ? kFlagDup : 0) | (r.retained ? kFlagRetained : 0) |
                            (extra > 0 ? kFlagCut : 0));
  put_u16(d + 31, static_cast<std::uint16_t>(r.topic.size()));
  if (extra > 0) put_u64(d + kHeaderBytes, r.original_size);
  if (!r.topic.empty()) std::memcpy(d + fixed, r.topic.data(), r.topic.size());
  if (!r.payload.empty())
    std::memcpy(d + fixed + r.topic.size(), r.payload.data(), r.payload.size());
  put_u32(d + 8, checksum(d + 12, total - 12));
}

std::string encode_record(const SpoolRecord& record) {
  std::string out;
  encode_record_into(
      out, SpoolRecordView{record.seq, record.arrival_us, record.packet_id, record.dup,
                           record.retained, record.original_size, record.topic, record.payload});
  return out;
}

DecodeResult decode_record(std::string_view bytes) {
  DecodeResult result{DecodeStatus::kIncomplete, {}, 0};
  if (bytes.empty()) return result;
  // Compare what is there of the magic, so garbage is recognised even when it is short.
  char magic[4];
  put_u32(magic, kMagic);
  if (std::memcmp(bytes.data(), magic, std::min<std::size_t>(4, bytes.size())) != 0) {
    result.status = DecodeStatus::kCorrupt;
    return result;
  }
  if (bytes.size() < kPrefixBytes) return result;
  const std::uint64_t length = framed_length(bytes);
  if (length == 0) {
    result.status = DecodeStatus::kCorrupt;
    return result;
  }
  const std::size_t total = kPrefixBytes + static_cast<std::size_t>(length);
  if (bytes.size() < total) return result;

  const char* d = bytes.data();
  result.status = DecodeStatus::kCorrupt;
  result.consumed = total;
  if (get_le(d + 8, 4) != checksum(d + 12, total - 12)) {
    result.record.seq = get_le(d + 12, 8);  // for the log only
    return result;
  }
  const auto flags = static_cast<std::uint8_t>(d[30]);
  if ((flags & ~kKnownFlags) != 0) return result;
  const std::size_t fixed = kHeaderBytes + ((flags & kFlagCut) != 0 ? kOriginalSizeBytes : 0);
  if (total < fixed) return result;
  const std::size_t topic_len = get_le(d + 31, 2);
  const std::size_t body = total - fixed;
  // Content that encode_record would refuse is corrupt, so kOk always round-trips.
  if (topic_len > body || body - topic_len > kSpoolMaxPayloadBytes) return result;
  const std::size_t payload_len = body - topic_len;
  const std::uint64_t original_size = fixed > kHeaderBytes ? get_le(d + kHeaderBytes, 8) : 0;
  if ((flags & kFlagCut) != 0 && original_size <= payload_len) return result;

  SpoolRecord& r = result.record;
  r.seq = get_le(d + 12, 8);
  r.arrival_us = static_cast<std::int64_t>(get_le(d + 20, 8));
  r.packet_id = static_cast<std::uint16_t>(get_le(d + 28, 2));
  r.dup = (flags & kFlagDup) != 0;
  r.retained = (flags & kFlagRetained) != 0;
  r.original_size = original_size;
  r.topic.assign(d + fixed, topic_len);
  r.payload.assign(d + fixed + topic_len, payload_len);
  result.status = DecodeStatus::kOk;
  return result;
}

std::size_t framed_record_size(std::string_view bytes) {
  if (bytes.size() < kPrefixBytes) return 0;
  const std::uint64_t length = framed_length(bytes);
  return length == 0 ? 0 : kPrefixBytes + static_cast<std::size_t>(length);
}

}  // namespace gateway
