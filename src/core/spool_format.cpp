#include "gateway/spool_format.h"

#include <libdeflate.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

namespace gateway {
namespace {

// "GSPL" in the file. Chosen so that zero-filled blocks (what a power loss leaves) never match.
constexpr std::uint32_t kMagic = 0x4C505347;
constexpr std::size_t kPrefixBytes = 8;  // magic + length
constexpr std::size_t kHeaderBytes = kSpoolRecordHeaderBytes;
constexpr std::size_t kOriginalSizeBytes = kSpoolCutRecordHeaderBytes - kSpoolRecordHeaderBytes;
constexpr std::uint32_t kMinLength = kHeaderBytes - kPrefixBytes;
constexpr std::uint64_t kMaxLength = kMinLength + kOriginalSizeBytes + kSpoolMaxPropertiesBytes +
                                     kSpoolMaxTopicBytes + kSpoolMaxPayloadBytes;
constexpr std::uint8_t kFlagDup = 0x01;
constexpr std::uint8_t kFlagRetained = 0x02;
constexpr std::uint8_t kFlagCut = 0x04;
constexpr std::uint8_t kFlagProperties = 0x08;
constexpr std::uint8_t kKnownFlags = kFlagDup | kFlagRetained | kFlagCut | kFlagProperties;
// The properties block: its length field, the expiry, the content type's length.
constexpr std::size_t kBlockLengthBytes = 4;
constexpr std::size_t kBlockFixedBytes = 8 + 2;  // after the length field
constexpr std::size_t kMaxMqttString = 65535;

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
  return libdeflate_crc32(0, data, size);  // zlib's CRC-32, faster
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

void check_mqtt_string(std::string_view what, std::string_view value) {
  if (value.size() > kMaxMqttString) {
    throw std::invalid_argument("spool: " + std::string(what) + " of " +
                                std::to_string(value.size()) + " bytes exceeds the limit of " +
                                std::to_string(kMaxMqttString));
  }
}

// Writes the properties block (spool_properties_bytes(p) bytes, not empty) at `d`.
void put_properties(char* d, const SpoolPropertiesView& p, std::size_t block_bytes) {
  put_u32(d, static_cast<std::uint32_t>(block_bytes - kBlockLengthBytes));
  put_u64(d + 4, static_cast<std::uint64_t>(p.expiry_deadline_us));
  put_u16(d + 12, static_cast<std::uint16_t>(p.content_type.size()));
  char* out = d + 14;
  const auto put_string = [&out](std::string_view text) {
    if (!text.empty()) std::memcpy(out, text.data(), text.size());
    out += text.size();
  };
  put_string(p.content_type);
  for (const auto& [name, value] : p.user_properties) {
    put_u16(out, static_cast<std::uint16_t>(name.size()));
    out += 2;
    put_string(name);
    put_u16(out, static_cast<std::uint16_t>(value.size()));
    out += 2;
    put_string(value);
  }
}

// Reads a properties block of `block_len` bytes (after its length field) at `d` into `r`. False
// when it is malformed or not what encode would write (empty).
bool get_properties(const char* d, std::size_t block_len, SpoolRecord& r) {
  if (block_len < kBlockFixedBytes) return false;
  r.expiry_deadline_us = static_cast<std::int64_t>(get_le(d, 8));
  std::size_t pos = 8;
  // A string at pos: its u16 length, then its bytes, all inside the block.
  const auto get_string = [&](std::string& out) {
    if (block_len - pos < 2) return false;
    const std::size_t len = get_le(d + pos, 2);
    pos += 2;
    if (block_len - pos < len) return false;
    out.assign(d + pos, len);
    pos += len;
    return true;
  };
  if (!get_string(r.content_type)) return false;
  while (pos < block_len) {
    auto& [name, value] = r.user_properties.emplace_back();
    if (!get_string(name) || !get_string(value)) return false;
  }
  return r.expiry_deadline_us != 0 || !r.content_type.empty() || !r.user_properties.empty();
}

}  // namespace

std::size_t spool_properties_bytes(const SpoolPropertiesView& p) {
  if (p.empty()) return 0;
  std::size_t bytes = kBlockLengthBytes + kBlockFixedBytes + p.content_type.size();
  for (const auto& [name, value] : p.user_properties) bytes += 4 + name.size() + value.size();
  return bytes;
}

void check_record_limits(std::string_view topic, std::string_view payload,
                         std::uint64_t original_size, const SpoolPropertiesView& properties) {
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
  if (properties.empty()) return;
  check_mqtt_string("content type", properties.content_type);
  for (const auto& [name, value] : properties.user_properties) {
    check_mqtt_string("user property name", name);
    check_mqtt_string("user property value", value);
  }
  if (const std::size_t bytes = spool_properties_bytes(properties);
      bytes > kSpoolMaxPropertiesBytes) {
    throw std::invalid_argument("spool: properties of " + std::to_string(bytes) +
                                " bytes exceed the limit of " +
                                std::to_string(kSpoolMaxPropertiesBytes));
  }
}

void encode_record_into(std::string& out, const SpoolRecordView& r) {
  check_record_limits(r.topic, r.payload, r.original_size, r.properties);
  const std::size_t extra = r.original_size > 0 ? kOriginalSizeBytes : 0;
  const std::size_t block = spool_properties_bytes(r.properties);
  const std::size_t fixed = kHeaderBytes + extra + block;
  const std::size_t total = fixed + r.topic.size() + r.payload.size();
  out.resize(total);
  char* d = out.data();
  put_u32(d, kMagic);
  put_u32(d + 4, static_cast<std::uint32_t>(total - kPrefixBytes));
  put_u64(d + 12, r.seq);
  put_u64(d + 20, static_cast<std::uint64_t>(r.arrival_us));
  put_u16(d + 28, r.packet_id);
  d[30] = static_cast<char>((r.dup ? kFlagDup : 0) | (r.retained ? kFlagRetained : 0) |
                            (extra > 0 ? kFlagCut : 0) | (block > 0 ? kFlagProperties : 0));
  put_u16(d + 31, static_cast<std::uint16_t>(r.topic.size()));
  if (extra > 0) put_u64(d + kHeaderBytes, r.original_size);
  if (block > 0) put_properties(d + kHeaderBytes + extra, r.properties, block);
  if (!r.topic.empty()) std::memcpy(d + fixed, r.topic.data(), r.topic.size());
  if (!r.payload.empty())
    std::memcpy(d + fixed + r.topic.size(), r.payload.data(), r.payload.size());
  put_u32(d + 8, checksum(d + 12, total - 12));
}

std::string encode_record(const SpoolRecord& record) {
  std::vector<UserPropertyView> user_properties(record.user_properties.begin(),
                                                record.user_properties.end());
  std::string out;
  encode_record_into(
      out, SpoolRecordView{record.seq, record.arrival_us, record.packet_id, record.dup,
                           record.retained, record.original_size, record.topic, record.payload,
                           SpoolPropertiesView{record.expiry_deadline_us, record.content_type,
                                               user_properties}});
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
  SpoolRecord r;  // moved into the result once everything checked out
  std::size_t fixed = kHeaderBytes + ((flags & kFlagCut) != 0 ? kOriginalSizeBytes : 0);
  if (total < fixed) return result;
  if ((flags & kFlagProperties) != 0) {
    if (total - fixed < kBlockLengthBytes) return result;
    const std::size_t block_len = get_le(d + fixed, 4);
    if (block_len > total - fixed - kBlockLengthBytes ||
        block_len > kSpoolMaxPropertiesBytes - kBlockLengthBytes ||
        !get_properties(d + fixed + kBlockLengthBytes, block_len, r)) {
      return result;
    }
    fixed += kBlockLengthBytes + block_len;
  }
  const std::size_t topic_len = get_le(d + 31, 2);
  const std::size_t body = total - fixed;
  // Content that encode_record would refuse is corrupt, so kOk always round-trips.
  if (topic_len > body || body - topic_len > kSpoolMaxPayloadBytes) return result;
  const std::size_t payload_len = body - topic_len;
  const std::uint64_t original_size = (flags & kFlagCut) != 0 ? get_le(d + kHeaderBytes, 8) : 0;
  if ((flags & kFlagCut) != 0 && original_size <= payload_len) return result;

  r.seq = get_le(d + 12, 8);
  r.arrival_us = static_cast<std::int64_t>(get_le(d + 20, 8));
  r.packet_id = static_cast<std::uint16_t>(get_le(d + 28, 2));
  r.dup = (flags & kFlagDup) != 0;
  r.retained = (flags & kFlagRetained) != 0;
  r.original_size = original_size;
  r.topic.assign(d + fixed, topic_len);
  r.payload.assign(d + fixed + topic_len, payload_len);
  result.record = std::move(r);
  result.status = DecodeStatus::kOk;
  return result;
}

std::size_t framed_record_size(std::string_view bytes) {
  if (bytes.size() < kPrefixBytes) return 0;
  const std::uint64_t length = framed_length(bytes);
  return length == 0 ? 0 : kPrefixBytes + static_cast<std::size_t>(length);
}

}  // namespace gateway
