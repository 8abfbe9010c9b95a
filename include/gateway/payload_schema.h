// A flow's payload_schema: which top-level fields a payload must have and of which JSON type.
// Compile the schema once per flow (compile_payload_schema), then validate each message against
// the compiled PayloadSchema. Pure functions over immutable values: thread-safe; a PayloadSchema
// may be shared by threads for reading.
//
// Type names, as in the reference gateway: string|str, number|float, int|integer, bool|boolean,
// object, array. Stricter than Python's isinstance: a boolean is neither an int nor a number.
// 1.0 is a number but not an int; signed and unsigned integers are ints and numbers. Fields not
// in the schema are allowed; an empty schema accepts any JSON object.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gateway {

enum class FieldType { kString, kNumber, kInteger, kBoolean, kObject, kArray };

// The type named `name` (case-sensitive, any of the names above), or std::nullopt.
std::optional<FieldType> parse_field_type(std::string_view name);

// The canonical name: string, number, int, bool, object, array.
std::string_view to_string(FieldType type);

struct PayloadSchema {
  std::vector<std::pair<std::string, FieldType>> fields;  // checked in this order
};

struct SchemaResult {
  PayloadSchema schema;  // empty unless ok()
  std::string error;
  bool ok() const { return error.empty(); }
};

// Compiles a flow's payload_schema column (already parsed JSON). null or {} gives an empty
// schema. Errors name the field and the bad type:
//   "payload_schema: expected a JSON object, got array"
//   "payload_schema: field 'temp' has unknown type 'decimal' (expected one of string, str, ...)"
// Never throws (except std::bad_alloc); does not recurse into `schema`.
SchemaResult compile_payload_schema(const nlohmann::json& schema);

struct ValidationResult {
  std::string error;  // empty when the payload is valid
  bool ok() const { return error.empty(); }
};

// Checks `payload` against `schema`; the first failing field (in schema order) is reported:
//   "missing field 'temperature' (expected number)"
//   "field 'temperature': expected number, got string"
// Actual types are named string, int, number (a non-integer), bool, object, array, null.
// A payload that is not an object fails ("payload is a JSON array, expected an object").
// Never throws (except std::bad_alloc); allocates nothing when the payload is valid.
ValidationResult validate_payload(const nlohmann::json& payload, const PayloadSchema& schema);

// The reference's shape: compiles `schema` and validates. A schema that does not compile is an
// error result carrying the compile error. Compiles on every call: prefer the overload above on
// the hot path.
ValidationResult validate_payload(const nlohmann::json& payload, const nlohmann::json& schema);

}  // namespace gateway
