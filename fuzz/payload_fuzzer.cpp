// libFuzzer target for everything a message from the broker goes through before it reaches a
// flow: payload parsing, schema compilation and validation, topic filters and matching.
//
// Input: the first byte chooses the mode and limits; the rest is split at its first '\n'.
//   even first byte: schema text '\n' payload (no '\n': the whole rest is the payload);
//   odd first byte:  filter '\n' topic.
// Besides sanitizer findings, it checks properties: parse_payload agrees with nlohmann's own
// parser, reasons are one line of valid UTF-8, encoded values round-trip, and topic_matches
// agrees with a naive split-based matcher.
//
// Build (see the report of the component for the exact command):
//   clang++-14 -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
//     -Iinclude fuzz/payload_fuzzer.cpp src/core/payload.cpp src/core/payload_schema.cpp \
//     src/core/topic_filter.cpp -o /tmp/payload_fuzzer
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/payload.h"
#include "gateway/payload_schema.h"
#include "gateway/topic_filter.h"

namespace {

using gateway::PayloadLimits;
using nlohmann::json;

#define FUZZ_CHECK(condition, detail)                                                   \
  do {                                                                                  \
    if (!(condition)) {                                                                 \
      std::fprintf(stderr, "check failed at line %d: %s\n  %s\n", __LINE__, #condition, \
                   std::string(detail).c_str());                                        \
      std::abort();                                                                     \
    }                                                                                   \
  } while (false)

bool starts_with(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

// One line of valid UTF-8, without control characters, of bounded length.
void check_reason(const std::string& reason) {
  FUZZ_CHECK(!gateway::find_invalid_utf8(reason), reason);
  for (char c : reason) FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 && c != 0x7F, reason);
  FUZZ_CHECK(reason.size() < 1024, reason);
}

// Nesting depth without recursion: the reference parse may be arbitrarily deep.
int depth_of(const json& root) {
  int deepest = 0;
  std::vector<std::pair<const json*, int>> stack{{&root, 0}};
  while (!stack.empty()) {
    const auto [value, depth] = stack.back();
    stack.pop_back();
    if (!value->is_structured()) continue;
    deepest = std::max(deepest, depth + 1);
    for (const json& child : *value) stack.emplace_back(&child, depth + 1);
  }
  return deepest;
}

// parse_payload must agree with nlohmann's non-throwing parse, apart from its own limits.
void check_against_reference(std::string_view bytes, const PayloadLimits& limits,
                             const gateway::ParsedPayload& parsed) {
  check_reason(parsed.error);
  FUZZ_CHECK(parsed.ok() == parsed.object.is_object(), parsed.error);
  if (!parsed.ok()) FUZZ_CHECK(parsed.object.is_null(), parsed.error);

  const std::string_view error = parsed.error;
  if (bytes.size() > limits.max_bytes) {
    FUZZ_CHECK(error == "payload is " + std::to_string(bytes.size()) + " bytes, limit " +
                            std::to_string(limits.max_bytes),
               parsed.error);
    return;
  }
  if (error == "payload is empty") {
    FUZZ_CHECK(bytes.empty(), parsed.error);
    return;
  }
  const json reference = json::parse(bytes.begin(), bytes.end(), nullptr, false);
  // nlohmann stops at a NUL outside strings; parse_payload must not.
  const bool valid_json = !reference.is_discarded() && bytes.find('\0') == std::string_view::npos;
  if (parsed.ok()) {
    FUZZ_CHECK(valid_json && reference == parsed.object, "accepted what nlohmann rejects");
    FUZZ_CHECK(depth_of(parsed.object) <= limits.max_depth, "depth limit not enforced");
  } else if (starts_with(error, "payload is not valid UTF-8")) {
    FUZZ_CHECK(gateway::find_invalid_utf8(bytes).has_value(), parsed.error);
    FUZZ_CHECK(!valid_json, "rejected as bad UTF-8 what nlohmann accepts");
  } else if (starts_with(error, "payload nests deeper than")) {
    FUZZ_CHECK(!valid_json || depth_of(reference) > limits.max_depth, parsed.error);
  } else if (starts_with(error, "payload is not valid JSON: ") ||
             starts_with(error, "payload has a number out of range: ")) {
    FUZZ_CHECK(!valid_json, parsed.error);
  } else if (starts_with(error, "payload is a JSON ")) {
    FUZZ_CHECK(valid_json && !reference.is_object(), parsed.error);
  } else {
    FUZZ_CHECK(false, "unexpected reason: " + parsed.error);
  }
}

void check_validation(const json& payload, const gateway::PayloadSchema& schema,
                      const gateway::ValidationResult& result) {
  check_reason(result.error);
  if (result.ok()) {
    for (const auto& [name, type] : schema.fields) {
      FUZZ_CHECK(payload.contains(name), "valid without field " + name);
    }
  }
}

void fuzz_payload(std::string_view schema_text, std::string_view bytes, uint8_t mode) {
  PayloadLimits limits;
  if (mode & 0x02) {  // tight limits reach the limit paths with short inputs
    limits.max_bytes = 64 + (mode >> 2);
    limits.max_depth = 1 + (mode >> 5);
  }
  const gateway::ParsedPayload parsed = gateway::parse_payload(bytes, limits);
  check_against_reference(bytes, limits, parsed);
  if (!parsed.ok()) return;

  static const json kFixedSchema = {
      {"temperature", "number"}, {"humidity", "float"}, {"id", "int"},
      {"name", "string"},        {"on", "bool"},        {"meta", "object"},
      {"tags", "array"}};
  static const gateway::SchemaResult kFixed = gateway::compile_payload_schema(kFixedSchema);
  FUZZ_CHECK(kFixed.ok(), kFixed.error);
  const gateway::ValidationResult fixed = gateway::validate_payload(parsed.object, kFixed.schema);
  check_validation(parsed.object, kFixed.schema, fixed);
  FUZZ_CHECK(fixed.error == gateway::validate_payload(parsed.object, kFixedSchema).error,
             fixed.error);

  // A schema from the input, parsed without limits, as the flows table could hold anything.
  const json schema = json::parse(schema_text.begin(), schema_text.end(), nullptr, false);
  if (!schema.is_discarded()) {
    const gateway::SchemaResult compiled = gateway::compile_payload_schema(schema);
    check_reason(compiled.error);
    if (compiled.ok()) {
      FUZZ_CHECK(compiled.schema.fields.size() == (schema.is_null() ? 0 : schema.size()),
                 "field count");
      const gateway::ValidationResult result =
          gateway::validate_payload(parsed.object, compiled.schema);
      check_validation(parsed.object, compiled.schema, result);
      FUZZ_CHECK(result.error == gateway::validate_payload(parsed.object, schema).error,
                 result.error);
    } else {
      FUZZ_CHECK(compiled.schema.fields.empty(), compiled.error);
      FUZZ_CHECK(gateway::validate_payload(parsed.object, schema).error == compiled.error,
                 compiled.error);
    }
  }

  for (const auto& [name, value] : parsed.object.items()) {
    const std::string encoded = gateway::encode_field_value(value);
    FUZZ_CHECK(json::parse(encoded, nullptr, false) == value, name + " -> " + encoded);
  }
  if (const auto reason = gateway::check_field_names(parsed.object, 8)) check_reason(*reason);
}

std::vector<std::string_view> split_levels(std::string_view text) {
  std::vector<std::string_view> levels;
  std::size_t begin = 0;
  for (std::size_t slash; (slash = text.find('/', begin)) != std::string_view::npos;) {
    levels.push_back(text.substr(begin, slash - begin));
    begin = slash + 1;
  }
  levels.push_back(text.substr(begin));
  return levels;
}

// The naive matcher: split both, compare level by level.
bool reference_matches(std::string_view filter, std::string_view topic) {
  if (filter.empty() || topic.empty()) return false;
  if (topic.find_first_of("+#") != std::string_view::npos) return false;
  const std::vector<std::string_view> f = split_levels(filter);
  const std::vector<std::string_view> t = split_levels(topic);
  if (topic[0] == '$' && (f[0] == "+" || f[0] == "#")) return false;
  std::size_t i = 0;
  for (; i < f.size(); ++i) {
    if (f[i] == "#") return true;
    if (i >= t.size()) return false;
    if (f[i] != "+" && f[i] != t[i]) return false;
  }
  return i == t.size();
}

void fuzz_topic(std::string_view filter, std::string_view topic) {
  const std::optional<std::string> invalid = gateway::validate_topic_filter(filter);
  const bool matched = gateway::topic_matches(filter, topic);  // must be safe for any filter
  if (invalid) {
    check_reason(*invalid);
    return;
  }
  FUZZ_CHECK(matched == reference_matches(filter, topic),
             std::string(filter) + " vs " + std::string(topic));
  if (filter.find_first_of("+#") == std::string_view::npos) {
    FUZZ_CHECK(gateway::topic_matches(filter, filter), std::string(filter));
  }
  if (topic.find_first_of("+#") == std::string_view::npos && !topic.empty() && topic[0] != '$') {
    FUZZ_CHECK(gateway::topic_matches("#", topic), std::string(topic));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::size_t newline = rest.find('\n');
  const std::string_view first = rest.substr(0, newline);
  const std::string_view second =
      newline == std::string_view::npos ? std::string_view() : rest.substr(newline + 1);

  const std::string excerpt = gateway::printable_excerpt(rest, mode);
  check_reason(excerpt);
  FUZZ_CHECK(excerpt.size() <= static_cast<std::size_t>(mode) + 3, excerpt);

  if (mode & 0x01) {
    fuzz_topic(first, second);
  } else if (newline == std::string_view::npos) {
    fuzz_payload({}, rest, mode);
  } else {
    fuzz_payload(first, second, mode);
  }
  return 0;
}
