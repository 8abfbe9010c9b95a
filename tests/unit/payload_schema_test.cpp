#include "gateway/payload_schema.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

namespace gateway {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// One value of each JSON type the validator distinguishes, named as in its messages.
struct Sample {
  const char* label;
  json value;
};

std::vector<Sample> samples() {
  return {
      {"string", "abc"},
      {"empty string", ""},
      {"numeric string", "42"},
      {"int", 42},
      {"negative int", -3},
      {"zero", 0},
      {"unsigned", json(18446744073709551615u)},
      {"float", 23.5},
      {"float 1.0", 1.0},
      {"true", true},
      {"false", false},
      {"null", nullptr},
      {"object", json::object({{"a", 1}})},
      {"empty object", json::object()},
      {"array", json::array({1, 2})},
      {"empty array", json::array()},
  };
}

// The labels of `samples()` each schema type accepts. Booleans are not numbers, 1.0 is not an int.
const std::set<std::string>& accepted_by(FieldType type) {
  static const std::set<std::string> kString = {"string", "empty string", "numeric string"};
  static const std::set<std::string> kNumber = {"int",      "negative int", "zero",
                                                "unsigned", "float",        "float 1.0"};
  static const std::set<std::string> kInteger = {"int", "negative int", "zero", "unsigned"};
  static const std::set<std::string> kBoolean = {"true", "false"};
  static const std::set<std::string> kObject = {"object", "empty object"};
  static const std::set<std::string> kArray = {"array", "empty array"};
  switch (type) {
    case FieldType::kString:
      return kString;
    case FieldType::kNumber:
      return kNumber;
    case FieldType::kInteger:
      return kInteger;
    case FieldType::kBoolean:
      return kBoolean;
    case FieldType::kObject:
      return kObject;
    case FieldType::kArray:
      break;
  }
  return kArray;
}

std::string actual_type_name(const json& value) {
  if (value.is_boolean()) return "bool";
  if (value.is_number_integer()) return "int";
  if (value.is_number_float()) return "number";
  return value.type_name();
}

struct TypeRow {
  const char* name;
  FieldType type;
};

class TypeMappingTable : public ::testing::TestWithParam<TypeRow> {};

TEST_P(TypeMappingTable, AcceptsExactlyItsJsonTypes) {
  const TypeRow& row = GetParam();
  const json schema = {{"v", row.name}};
  for (const Sample& sample : samples()) {
    const ValidationResult result = validate_payload(json{{"v", sample.value}}, schema);
    if (accepted_by(row.type).count(sample.label)) {
      EXPECT_TRUE(result.ok()) << row.name << " should accept " << sample.label << ": "
                               << result.error;
    } else {
      EXPECT_EQ(result.error, "field 'v': expected " + std::string(to_string(row.type)) + ", got " +
                                  actual_type_name(sample.value))
          << row.name << " should reject " << sample.label;
    }
  }
}

TEST_P(TypeMappingTable, ParsesToItsType) {
  EXPECT_EQ(parse_field_type(GetParam().name), GetParam().type);
}

INSTANTIATE_TEST_SUITE_P(
    ReferenceNames, TypeMappingTable,
    ::testing::Values(TypeRow{"string", FieldType::kString}, TypeRow{"str", FieldType::kString},
                      TypeRow{"number", FieldType::kNumber}, TypeRow{"float", FieldType::kNumber},
                      TypeRow{"int", FieldType::kInteger}, TypeRow{"integer", FieldType::kInteger},
                      TypeRow{"bool", FieldType::kBoolean}, TypeRow{"boolean", FieldType::kBoolean},
                      TypeRow{"object", FieldType::kObject}, TypeRow{"array", FieldType::kArray}),
    [](const ::testing::TestParamInfo<TypeRow>& info) { return std::string(info.param.name); });

TEST(ParseFieldTypeTest, RejectsUnknownAndDifferentlyCasedNames) {
  for (const char* name : {"decimal", "String", "INT", "", " int", "double", "dict", "list"}) {
    EXPECT_EQ(parse_field_type(name), std::nullopt) << name;
  }
}

TEST(ToStringTest, GivesCanonicalNames) {
  EXPECT_EQ(to_string(FieldType::kString), "string");
  EXPECT_EQ(to_string(FieldType::kNumber), "number");
  EXPECT_EQ(to_string(FieldType::kInteger), "int");
  EXPECT_EQ(to_string(FieldType::kBoolean), "bool");
  EXPECT_EQ(to_string(FieldType::kObject), "object");
  EXPECT_EQ(to_string(FieldType::kArray), "array");
}

TEST(ValidatePayloadTest, AcceptsTheReferenceExample) {
  const json payload = {{"temperature", 23.5}, {"humidity", 65.2}};
  const json schema = {{"temperature", "float"}, {"humidity", "float"}};
  EXPECT_TRUE(validate_payload(payload, schema).ok());
}

TEST(ValidatePayloadTest, ReportsMissingFieldWithExpectedType) {
  const json payload = {{"humidity", 65.2}};
  const json schema = {{"temperature", "number"}, {"humidity", "number"}};
  EXPECT_EQ(validate_payload(payload, schema).error,
            "missing field 'temperature' (expected number)");
}

TEST(ValidatePayloadTest, ReportsWrongTypeWithExpectedAndActual) {
  const json payload = {{"temperature", "hot"}};
  EXPECT_EQ(validate_payload(payload, json{{"temperature", "number"}}).error,
            "field 'temperature': expected number, got string");
}

TEST(ValidatePayloadTest, NullValueIsNotAMissingField) {
  EXPECT_EQ(validate_payload(json{{"t", nullptr}}, json{{"t", "number"}}).error,
            "field 't': expected number, got null");
}

TEST(ValidatePayloadTest, AllowsFieldsNotInTheSchema) {
  const json payload = {{"temperature", 1}, {"extra", "x"}, {"more", json::array()}};
  EXPECT_TRUE(validate_payload(payload, json{{"temperature", "int"}}).ok());
}

TEST(ValidatePayloadTest, NullOrEmptySchemaAcceptsAnyObject) {
  for (const json& payload : {json::object(), json{{"a", 1}}, json{{"b", json{{"c", nullptr}}}}}) {
    EXPECT_TRUE(validate_payload(payload, json(nullptr)).ok());
    EXPECT_TRUE(validate_payload(payload, json::object()).ok());
    EXPECT_TRUE(validate_payload(payload, PayloadSchema{}).ok());
  }
}

TEST(ValidatePayloadTest, RejectsAPayloadThatIsNotAnObject) {
  EXPECT_EQ(validate_payload(json::array({1}), PayloadSchema{}).error,
            "payload is a JSON array, expected an object");
}

TEST(ValidatePayloadTest, UnknownSchemaTypeIsAnErrorResult) {
  const ValidationResult result = validate_payload(json{{"temp", 1}}, json{{"temp", "decimal"}});
  EXPECT_THAT(result.error, StartsWith("payload_schema: field 'temp' has unknown type 'decimal'"));
}

TEST(ValidatePayloadTest, ReportsTheFirstFailingFieldInSchemaOrder) {
  const PayloadSchema schema{{{"b", FieldType::kString}, {"a", FieldType::kString}}};
  EXPECT_EQ(validate_payload(json{{"a", 1}, {"b", 2}}, schema).error,
            "field 'b': expected string, got int");
}

TEST(ValidatePayloadTest, QuotesLongFieldNamesBriefly) {
  const std::string name(1000, 'n');
  const ValidationResult result = validate_payload(json::object(), json{{name, "int"}});
  EXPECT_THAT(result.error, StartsWith("missing field 'nnn"));
  EXPECT_LT(result.error.size(), 200u);
}

TEST(CompilePayloadSchemaTest, NullAndEmptyObjectGiveAnEmptySchema) {
  for (const json& schema : {json(nullptr), json::object()}) {
    const SchemaResult result = compile_payload_schema(schema);
    EXPECT_TRUE(result.ok()) << result.error;
    EXPECT_TRUE(result.schema.fields.empty());
  }
}

TEST(CompilePayloadSchemaTest, MapsEveryFieldToItsType) {
  const SchemaResult result =
      compile_payload_schema(json{{"t", "float"}, {"n", "integer"}, {"s", "str"}});
  ASSERT_TRUE(result.ok()) << result.error;
  const std::vector<std::pair<std::string, FieldType>> expected = {
      {"n", FieldType::kInteger}, {"s", FieldType::kString}, {"t", FieldType::kNumber}};
  EXPECT_EQ(result.schema.fields, expected);
}

TEST(CompilePayloadSchemaTest, RejectsANonObjectSchema) {
  EXPECT_EQ(compile_payload_schema(json::array({"a"})).error,
            "payload_schema: expected a JSON object, got array");
  EXPECT_EQ(compile_payload_schema(json("temp")).error,
            "payload_schema: expected a JSON object, got string");
  EXPECT_EQ(compile_payload_schema(json(5)).error,
            "payload_schema: expected a JSON object, got number");
}

TEST(CompilePayloadSchemaTest, NamesTheFieldAndTheUnknownType) {
  const SchemaResult result = compile_payload_schema(json{{"ok", "int"}, {"temp", "decimal"}});
  EXPECT_THAT(result.error, StartsWith("payload_schema: field 'temp' has unknown type 'decimal'"));
  EXPECT_THAT(result.error, HasSubstr("string, str, number, float, int, integer, bool, boolean"));
  EXPECT_TRUE(result.schema.fields.empty());
}

TEST(CompilePayloadSchemaTest, RejectsTypesThatAreNotStrings) {
  EXPECT_THAT(compile_payload_schema(json{{"t", 5}}).error,
              StartsWith("payload_schema: field 't' has unknown type 5"));
  EXPECT_THAT(compile_payload_schema(json{{"t", nullptr}}).error,
              StartsWith("payload_schema: field 't' has unknown type null"));
  EXPECT_THAT(compile_payload_schema(json{{"t", json::array({"int"})}}).error,
              StartsWith("payload_schema: field 't' has unknown type (a JSON array)"));
  EXPECT_THAT(compile_payload_schema(json{{"t", json{{"type", "int"}}}}).error,
              StartsWith("payload_schema: field 't' has unknown type (a JSON object)"));
}

TEST(CompilePayloadSchemaTest, DoesNotRecurseIntoDeeplyNestedTypes) {
  // Built by moving, never copying: copies and dumps of a tree this deep recurse past the stack.
  json deep = json::array();
  for (int i = 0; i < 100000; ++i) {
    json outer = json::array();
    outer.push_back(std::move(deep));
    deep = std::move(outer);
  }
  json schema = json::object();
  schema["t"] = std::move(deep);
  EXPECT_THAT(compile_payload_schema(schema).error,
              StartsWith("payload_schema: field 't' has unknown type (a JSON array)"));
}

}  // namespace
}  // namespace gateway
