// The spool's record format: how one received MQTT message is laid out in a segment file, and
// the codec. Pure functions, thread-safe. The spool (spool.h) writes and reads these records;
// tests and the fuzzer use the codec directly.
//
// A record is a little-endian header, then the topic, then the payload:
//   [magic u32][length u32: bytes after this field][crc32 u32 of all bytes after this field]
//   [seq u64][arrival_us i64][packet_id u16][flags u8][topic_len u16]
//   [original_size u64: only with flag bit 2]
//   [properties: only with flag bit 3]
//   [topic: topic_len bytes][payload: the rest]
// flags: bit 0 = dup (the MQTT DUP flag), bit 1 = retained (the MQTT RETAIN flag), bit 2 = payload
// cut (the record holds only the first bytes of a payload of original_size bytes), bit 3 = MQTT 5
// properties. The properties block:
//   [block_len u32: bytes after this field][expiry_deadline_us i64]
//   [content_type_len u16][content_type]
//   then, until block_len is used up, the user properties in order:
//   [name_len u16][name][value_len u16][value]
// It is written only when a record has an expiry, a content type or a user property, so a
// present block never holds none of them. Bits 1 to 3 came later: a record without them is laid
// out exactly as before, so old segments decode unchanged. Any other bit makes the record
// corrupt, so a reader never misreads a format it does not know (the price: a gateway older than
// a bit skips the records that use it, as corrupt).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gateway {

struct SpoolRecord {
  std::uint64_t seq = 0;  // assigned by append, strictly increasing, never reused (gaps allowed)
  std::int64_t arrival_us = 0;  // wall clock, microseconds since the epoch
  std::uint16_t packet_id = 0;  // MQTT packet id (0 for QoS 0)
  bool dup = false;             // the MQTT DUP flag
  std::string topic;            // at most kSpoolMaxTopicBytes
  std::string payload;          // raw bytes, at most kSpoolMaxPayloadBytes
  // The two newer fields come last so that positional initialisers of the fields above still
  // compile unchanged.
  bool retained = false;            // the MQTT RETAIN flag
  std::uint64_t original_size = 0;  // > 0: payload holds only the first bytes of a payload of this
                                    // many bytes (always more than payload.size())
  // MQTT 5 (all empty on 3.1.1):
  std::int64_t expiry_deadline_us = 0;  // wall clock (as arrival_us) at which the message expires
                                        // (arrival + its Message Expiry Interval); 0 = never
  std::string content_type{};           // the Content Type property
  std::vector<std::pair<std::string, std::string>> user_properties{};  // (name, value), in order

  friend bool operator==(const SpoolRecord&, const SpoolRecord&) = default;
};

// Limits of the record format; Spool::append() and encode_record() throw std::invalid_argument
// beyond them. The payload limit is MQTT's own maximum packet size (256 MiB), so a real message
// always fits. Strings in the properties block are MQTT strings (at most 65535 bytes each); the
// whole block is capped (a message may carry any number of user properties): check
// spool_properties_bytes() against it before appending.
inline constexpr std::size_t kSpoolMaxTopicBytes = 65535;
inline constexpr std::size_t kSpoolMaxPayloadBytes = 256u << 20;
inline constexpr std::size_t kSpoolMaxPropertiesBytes = 1u << 20;

// Bytes of a record besides its topic and payload: the header, plus original_size when the
// payload was cut.
inline constexpr std::size_t kSpoolRecordHeaderBytes = 33;
inline constexpr std::size_t kSpoolCutRecordHeaderBytes = kSpoolRecordHeaderBytes + 8;

// Throws std::invalid_argument if the topic, payload or properties exceed the limits above (a
// content type, property name or value over 65535 bytes; a block over kSpoolMaxPropertiesBytes),
// or if original_size is neither 0 nor larger than the payload.
std::string encode_record(const SpoolRecord& record);

enum class DecodeStatus { kOk, kIncomplete, kCorrupt };
struct DecodeResult {
  DecodeStatus status;
  SpoolRecord record;    // kOk: the record; kCorrupt by checksum: only seq, as stored (untrusted)
  std::size_t consumed;  // bytes to skip. kOk, or kCorrupt for a framed record with bad content
                         // (checksum, flags, topic length, original_size, properties): the
                         // whole record. kIncomplete: 0 (more bytes needed). kCorrupt with 0:
                         // bad magic or an impossible length, so nothing after this point can
                         // be framed
};
// Decodes the record at the start of `bytes`. A kOk record re-encodes to exactly the bytes it
// consumed. Never throws, never reads out of bounds.
DecodeResult decode_record(std::string_view bytes);

// A user property (name, value) as the writer sees it: views into the received message.
using UserPropertyView = std::pair<std::string_view, std::string_view>;

// The MQTT 5 fields of a record, as views (see SpoolRecord).
struct SpoolPropertiesView {
  std::int64_t expiry_deadline_us = 0;
  std::string_view content_type{};
  std::span<const UserPropertyView> user_properties{};

  bool empty() const {
    return expiry_deadline_us == 0 && content_type.empty() && user_properties.empty();
  }
};

// The bytes of the properties block these fields take, its length field included (0 when
// empty()). Never throws.
std::size_t spool_properties_bytes(const SpoolPropertiesView& properties);

// For the spool's writer: the fields of a record without copies of the topic and payload.
struct SpoolRecordView {
  std::uint64_t seq = 0;
  std::int64_t arrival_us = 0;
  std::uint16_t packet_id = 0;
  bool dup = false;
  bool retained = false;
  std::uint64_t original_size = 0;
  std::string_view topic;
  std::string_view payload;
  SpoolPropertiesView properties{};
};
// Throws std::invalid_argument where encode_record() would.
void check_record_limits(std::string_view topic, std::string_view payload,
                         std::uint64_t original_size, const SpoolPropertiesView& properties = {});
// encode_record() into `out`, reusing its capacity (no allocation per record once warmed up).
// Throws std::invalid_argument where encode_record() would.
void encode_record_into(std::string& out, const SpoolRecordView& record);

// The total size of the record that starts with `bytes`, from its length field, once at least 8
// bytes are there and decode_record() did not find them corrupt; otherwise 0. For readers that
// load a record before decoding it.
std::size_t framed_record_size(std::string_view bytes);

}  // namespace gateway
