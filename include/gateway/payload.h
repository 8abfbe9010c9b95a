// Turning the bytes of one MQTT message into a JSON object, and the JSON encoding of its field
// values for storage. Everything here is a pure function: thread-safe, no shared state, and it
// never throws for bad input (a rejected payload is a value with a reason).
//
// The reasons are meant for logs: one line, valid UTF-8, bounded length, never the raw bytes of
// the payload.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace gateway {

struct PayloadLimits {
  // Larger payloads are rejected before any parsing.
  std::size_t max_bytes = 262144;
  // Nesting deeper than this many arrays/objects is rejected before parsing: the parser is
  // iterative but dump() and every other walk of the tree are recursive (stack overflow at
  // ~100,000 levels). The top-level object is level 1, so this must be at least 1.
  int max_depth = 32;
};

struct ParsedPayload {
  nlohmann::json object;  // a JSON object when ok(); null otherwise
  std::string error;      // why the payload was rejected (see the header comment)
  bool ok() const { return error.empty(); }
};

// Parses one payload straight from `bytes` (no copy). Never throws (except std::bad_alloc).
// Rejects, in this order, with a reason:
//   - too large:       "payload is 300000 bytes, limit 262144"
//   - empty:           "payload is empty"
//   - not UTF-8:       "payload is not valid UTF-8 (byte 17)" (0-based offset of the first byte of
//                      the ill-formed sequence; overlong forms and surrogates are ill-formed)
//   - NUL byte:        "payload is not valid JSON: NUL byte (byte 7)" (nlohmann would stop there)
//   - too deep:        "payload nests deeper than 32 levels"
//   - not JSON:        "payload is not valid JSON: <nlohmann's message>" (trailing garbage, NaN,
//                      comments, lone surrogate escapes, ...)
//   - number overflow: "payload has a number out of range: <nlohmann's message>" (1e400)
//   - not an object:   "payload is a JSON array, expected an object"
// Accepted as nlohmann does: a UTF-8 BOM, duplicate keys (the last wins), integers beyond 64 bits
// (stored as double).
ParsedPayload parse_payload(std::string_view bytes, const PayloadLimits& limits);

// The JSON encoding of a field value for storage: 23.5, "abc", true, {"a":1} (compact, non-ASCII
// kept as UTF-8). Invalid UTF-8 inside strings (only possible for values built in code) is
// replaced by U+FFFD. Never throws (except std::bad_alloc). Recursive: `value` must be bounded in
// depth, as everything from parse_payload is.
std::string encode_field_value(const nlohmann::json& value);

// data_records.field_name is VARCHAR(255), which counts characters, not bytes. Returns a reason
// for the first top-level key (in the object's order) longer than `max_length` characters, e.g.
// "field name longer than 255 characters: 'aaaa…'", or std::nullopt if there is none (or
// `object` is not an object).
std::optional<std::string> check_field_names(const nlohmann::json& object, std::size_t max_length);

// Offset of the first byte of the first ill-formed UTF-8 sequence in `bytes`, or std::nullopt if
// it is all well-formed (Unicode Table 3-7: no overlong forms, surrogates or values > U+10FFFF).
std::optional<std::size_t> find_invalid_utf8(std::string_view bytes);

// `text` made fit for a one-line log message: valid UTF-8, invalid bytes and control characters
// written as \xNN, cut at a character boundary to at most about `max_bytes` bytes with "…"
// appended when cut.
std::string printable_excerpt(std::string_view text, std::size_t max_bytes);

}  // namespace gateway
