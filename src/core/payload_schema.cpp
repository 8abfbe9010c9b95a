#include "gateway/payload_schema.h"

#include <array>

#include "gateway/payload.h"

namespace gateway {
namespace {

using nlohmann::json;

// Field names come from the flows table or a payload; quote them without flooding the log.
constexpr std::size_t kMaxNameBytes = 100;

constexpr std::array<std::pair<std::string_view, FieldType>, 10> kTypeNames = {{
    {"string", FieldType::kString},
    {"str", FieldType::kString},
    {"number", FieldType::kNumber},
    {"float", FieldType::kNumber},
    {"int", FieldType::kInteger},
    {"integer", FieldType::kInteger},
    {"bool", FieldType::kBoolean},
    {"boolean", FieldType::kBoolean},
    {"object", FieldType::kObject},
    {"array", FieldType::kArray},
}};

constexpr std::string_view kKnownTypes =
    "expected one of string, str, number, float, int, integer, bool, boolean, object, array";

std::string quote_name(std::string_view name) {
  // Built with += : g++ 12 -O3 reports a false -Wrestrict on "'" + std::string&&.
  std::string quoted = "'";
  quoted += printable_excerpt(name, kMaxNameBytes);
  quoted += '\'';
  return quoted;
}

// The type names of validation messages: int and number are told apart because a schema can ask
// for either.
std::string_view json_type_name(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "bool";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "int";
    case json::value_t::number_float:
      return "number";
    case json::value_t::string:
      return "string";
    case json::value_t::object:
      return "object";
    case json::value_t::array:
      return "array";
    case json::value_t::binary:
      return "binary";
    case json::value_t::discarded:
      break;
  }
  return "discarded";
}

bool has_type(const json& value, FieldType type) {
  switch (type) {
    case FieldType::kString:
      return value.is_string();
    case FieldType::kNumber:
      return value.is_number();  // integers too; never booleans
    case FieldType::kInteger:
      return value.is_number_integer();  // signed or unsigned; never 1.0
    case FieldType::kBoolean:
      return value.is_boolean();
    case FieldType::kObject:
      return value.is_object();
    case FieldType::kArray:
      return value.is_array();
  }
  return false;
}

// How a bad type value is shown: strings quoted, scalars as JSON, containers by kind only (a
// dump would be unbounded and recursive).
std::string describe_bad_type(const json& type) {
  if (type.is_string()) return quote_name(type.get_ref<const std::string&>());
  if (type.is_object() || type.is_array()) return std::string("(a JSON ") + type.type_name() + ")";
  return printable_excerpt(type.dump(-1, ' ', false, json::error_handler_t::replace),
                           kMaxNameBytes);
}

}  // namespace

std::optional<FieldType> parse_field_type(std::string_view name) {
  for (const auto& [type_name, type] : kTypeNames) {
    if (type_name == name) return type;
  }
  return std::nullopt;
}

std::string_view to_string(FieldType type) {
  switch (type) {
    case FieldType::kString:
      return "string";
    case FieldType::kNumber:
      return "number";
    case FieldType::kInteger:
      return "int";
    case FieldType::kBoolean:
      return "bool";
    case FieldType::kObject:
      return "object";
    case FieldType::kArray:
      return "array";
  }
  return "unknown";
}

SchemaResult compile_payload_schema(const nlohmann::json& schema) {
  SchemaResult result;
  if (schema.is_null()) return result;
  if (!schema.is_object()) {
    result.error = std::string("payload_schema: expected a JSON object, got ") + schema.type_name();
    return result;
  }
  result.schema.fields.reserve(schema.size());
  for (auto it = schema.cbegin(); it != schema.cend(); ++it) {
    std::optional<FieldType> type;
    if (it->is_string()) type = parse_field_type(it->get_ref<const std::string&>());
    if (!type) {
      result.schema.fields.clear();
      result.error = "payload_schema: field " + quote_name(it.key()) + " has unknown type " +
                     describe_bad_type(*it) + " (" + std::string(kKnownTypes) + ")";
      return result;
    }
    result.schema.fields.emplace_back(it.key(), *type);
  }
  return result;
}

ValidationResult validate_payload(const nlohmann::json& payload, const PayloadSchema& schema) {
  ValidationResult result;
  if (!payload.is_object()) {
    result.error = std::string("payload is a JSON ") + payload.type_name() + ", expected an object";
    return result;
  }
  for (const auto& [name, type] : schema.fields) {
    const auto it = payload.find(name);
    if (it == payload.end()) {
      result.error =
          "missing field " + quote_name(name) + " (expected " + std::string(to_string(type)) + ")";
      return result;
    }
    if (!has_type(*it, type)) {
      result.error = "field " + quote_name(name) + ": expected " + std::string(to_string(type)) +
                     ", got " + std::string(json_type_name(*it));
      return result;
    }
  }
  return result;
}

ValidationResult validate_payload(const nlohmann::json& payload, const nlohmann::json& schema) {
  SchemaResult compiled = compile_payload_schema(schema);
  if (!compiled.ok()) return ValidationResult{std::move(compiled.error)};
  return validate_payload(payload, compiled.schema);
}

}  // namespace gateway
