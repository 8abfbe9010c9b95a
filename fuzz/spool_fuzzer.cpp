// libFuzzer target for the spool record codec: decode_record must never crash or read out of
// bounds on any input, and whatever it accepts must re-encode to exactly the bytes it consumed.
// A second pass builds a record from the input (every flag, a cut payload's original size) and
// checks encode -> decode gives it back, and that encode refuses an impossible original size.
// Build: see fuzz_inputs in scripts/test.sh (the sources of the spool, -lz and spdlog).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

#include "gateway/spool_format.h"

namespace {

void check(bool condition) {
  if (!condition) std::abort();
}

std::uint64_t take(std::string_view& in, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes && !in.empty(); ++i) {
    v |= static_cast<std::uint64_t>(static_cast<unsigned char>(in.front())) << (8 * i);
    in.remove_prefix(1);
  }
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);

  // 1. Arbitrary bytes.
  const gateway::DecodeResult decoded = gateway::decode_record(input);
  check(decoded.consumed <= input.size());
  switch (decoded.status) {
    case gateway::DecodeStatus::kOk:
      check(decoded.consumed > 0);
      check(decoded.record.original_size == 0 ||
            decoded.record.original_size > decoded.record.payload.size());
      check(gateway::encode_record(decoded.record) == input.substr(0, decoded.consumed));
      break;
    case gateway::DecodeStatus::kIncomplete:
      check(decoded.consumed == 0);
      break;
    case gateway::DecodeStatus::kCorrupt:
      break;
  }

  // 2. A record made from the input round-trips through the codec.
  std::string_view in = input;
  gateway::SpoolRecord record;
  record.seq = take(in, 8);
  record.arrival_us = static_cast<std::int64_t>(take(in, 8));
  record.packet_id = static_cast<std::uint16_t>(take(in, 2));
  const std::uint64_t control = take(in, 2);
  record.dup = (control & 0x8000) != 0;
  record.retained = (control & 0x4000) != 0;
  const bool payload_cut = (control & 0x2000) != 0;
  const std::uint64_t claimed = payload_cut ? take(in, 8) : 0;
  const std::size_t topic_len = std::min<std::size_t>(control & 0x1fff, in.size());
  record.topic = in.substr(0, topic_len);
  record.payload = in.substr(topic_len);
  if (payload_cut) {
    // An original size from 1 to the payload's size is refused; a larger one round-trips.
    if (claimed > 0 && claimed <= record.payload.size()) {
      record.original_size = claimed;
      bool refused = false;
      try {
        (void)gateway::encode_record(record);
      } catch (const std::invalid_argument&) {
        refused = true;
      }
      check(refused);
    }
    record.original_size = std::max<std::uint64_t>(claimed, record.payload.size() + 1);
  }
  const std::string bytes = gateway::encode_record(record);
  const gateway::DecodeResult again = gateway::decode_record(bytes);
  check(again.status == gateway::DecodeStatus::kOk);
  check(again.consumed == bytes.size());
  check(again.record == record);
  // Every proper prefix is incomplete, never corrupt (a torn write is recognised as one).
  const std::size_t cut = static_cast<std::size_t>(record.seq % bytes.size());
  check(gateway::decode_record(std::string_view(bytes).substr(0, cut)).status ==
        gateway::DecodeStatus::kIncomplete);
  return 0;
}
