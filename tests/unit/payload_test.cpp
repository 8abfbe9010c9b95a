#include "gateway/payload.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace gateway {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

const PayloadLimits kDefaultLimits;

bool is_one_line_utf8(const std::string& text) {
  return !find_invalid_utf8(text) && text.find('\n') == std::string::npos &&
         text.find('\r') == std::string::npos;
}

ParsedPayload parse(std::string_view bytes) { return parse_payload(bytes, kDefaultLimits); }

std::string nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

// An object whose value nests `depth` levels in total, counting the object itself.
std::string nested_object(int depth) { return "{\"a\":" + nested(depth - 1) + "}"; }

TEST(ParsePayloadTest, AcceptsAnObject) {
  const ParsedPayload p = parse(R"({"temperature": 23.5, "humidity": 65, "ok": true, "tag": "x"})");
  ASSERT_TRUE(p.ok()) << p.error;
  EXPECT_EQ(p.object, json({{"temperature", 23.5}, {"humidity", 65}, {"ok", true}, {"tag", "x"}}));
}

TEST(ParsePayloadTest, AcceptsAnEmptyObjectAndSurroundingWhitespace) {
  EXPECT_TRUE(parse("{}").ok());
  EXPECT_TRUE(parse(" \n\t{ } \r\n").ok());
}

TEST(ParsePayloadTest, AcceptsNonAsciiUtf8) {
  const ParsedPayload p = parse("{\"caf\xC3\xA9\": \"\xF0\x9F\x8C\xA1 \xE2\x82\xAC\"}");
  ASSERT_TRUE(p.ok()) << p.error;
  EXPECT_EQ(p.object.at("caf\xC3\xA9"), "\xF0\x9F\x8C\xA1 \xE2\x82\xAC");
}

TEST(ParsePayloadTest, RejectsAnArray) {
  const ParsedPayload p = parse("[1,2]");
  EXPECT_EQ(p.error, "payload is a JSON array, expected an object");
  EXPECT_TRUE(p.object.is_null());
}

TEST(ParsePayloadTest, RejectsScalars) {
  EXPECT_EQ(parse("42").error, "payload is a JSON number, expected an object");
  EXPECT_EQ(parse("\"42\"").error, "payload is a JSON string, expected an object");
  EXPECT_EQ(parse("true").error, "payload is a JSON boolean, expected an object");
  EXPECT_EQ(parse("null").error, "payload is a JSON null, expected an object");
}

TEST(ParsePayloadTest, RejectsEmptyPayload) { EXPECT_EQ(parse("").error, "payload is empty"); }

TEST(ParsePayloadTest, RejectsWhitespaceOnlyAsNotJson) {
  EXPECT_THAT(parse("  ").error, StartsWith("payload is not valid JSON: "));
}

TEST(ParsePayloadTest, RejectsInvalidUtf8WithItsOffset) {
  EXPECT_EQ(parse("{\"a\":\"\xFF\"}").error, "payload is not valid UTF-8 (byte 6)");
  // A continuation byte without a lead.
  EXPECT_EQ(parse("{\"a\":\"\x80\"}").error, "payload is not valid UTF-8 (byte 6)");
  // Invalid bytes outside strings are reported the same way.
  EXPECT_EQ(parse("\xFE{}").error, "payload is not valid UTF-8 (byte 0)");
}

TEST(ParsePayloadTest, RejectsOverlongEncodings) {
  EXPECT_EQ(parse("{\"a\":\"\xC0\xAF\"}").error, "payload is not valid UTF-8 (byte 6)");
  EXPECT_EQ(parse("{\"a\":\"\xE0\x80\xAF\"}").error, "payload is not valid UTF-8 (byte 6)");
  EXPECT_EQ(parse("{\"a\":\"\xF0\x80\x80\xAF\"}").error, "payload is not valid UTF-8 (byte 6)");
}

TEST(ParsePayloadTest, RejectsTruncatedSequences) {
  EXPECT_EQ(parse("{\"a\":\"\xE2\x82\"}").error, "payload is not valid UTF-8 (byte 6)");
  EXPECT_EQ(parse("{\"a\":1}\xF0\x9F\x8C").error, "payload is not valid UTF-8 (byte 7)");
}

TEST(ParsePayloadTest, RejectsEncodedSurrogatesAndCodePointsBeyondUnicode) {
  EXPECT_EQ(parse("{\"a\":\"\xED\xA0\x80\"}").error, "payload is not valid UTF-8 (byte 6)");
  EXPECT_EQ(parse("{\"a\":\"\xF4\x90\x80\x80\"}").error, "payload is not valid UTF-8 (byte 6)");
}

TEST(ParsePayloadTest, ErrorForInvalidUtf8IsItselfValidUtf8) {
  for (const char* bytes : {"{\"\xC3\":1}", "\xC3", "{\"a\":\"\xFF\xFE\"}", "tru\xE2\x82"}) {
    const ParsedPayload p = parse(bytes);
    EXPECT_FALSE(p.ok());
    EXPECT_TRUE(is_one_line_utf8(p.error)) << p.error;
  }
}

TEST(ParsePayloadTest, NotJsonErrorDoesNotEchoPartialCharacters) {
  // Valid UTF-8 as a whole, but nlohmann's "last read" stops in the middle of the euro sign.
  const ParsedPayload p = parse("tru\xE2\x82\xAC");
  EXPECT_THAT(p.error, StartsWith("payload is not valid JSON: "));
  EXPECT_TRUE(is_one_line_utf8(p.error)) << p.error;
}

TEST(ParsePayloadTest, NotJsonErrorIsBounded) {
  const std::string long_token = "{\"a\":\"" + std::string(100000, 'x') + "\x01\"}";
  const ParsedPayload p = parse(long_token);
  EXPECT_THAT(p.error, StartsWith("payload is not valid JSON: "));
  EXPECT_LT(p.error.size(), 400u);
  EXPECT_TRUE(is_one_line_utf8(p.error)) << p.error;
}

TEST(ParsePayloadTest, RejectsLoneSurrogateEscape) {
  const ParsedPayload p = parse(R"({"a":"\ud800"})");
  EXPECT_THAT(p.error, StartsWith("payload is not valid JSON: "));
  EXPECT_THAT(p.error, HasSubstr("surrogate"));
}

TEST(ParsePayloadTest, AcceptsSurrogatePairEscape) {
  const ParsedPayload p = parse(R"({"a":"\ud83c\udf21"})");
  ASSERT_TRUE(p.ok()) << p.error;
  EXPECT_EQ(p.object.at("a"), "\xF0\x9F\x8C\xA1");
}

TEST(ParsePayloadTest, RejectsTrailingGarbage) {
  EXPECT_THAT(parse(R"({"a":1} x)").error, StartsWith("payload is not valid JSON: "));
  EXPECT_THAT(parse(R"({"a":1}{"b":2})").error, StartsWith("payload is not valid JSON: "));
}

TEST(ParsePayloadTest, RejectsNulByteInsteadOfStoppingThere) {
  // nlohmann alone parses this as {"a":1}, ignoring everything after the NUL.
  EXPECT_EQ(parse(std::string_view("{\"a\":1}\0{\"b\":2}", 15)).error,
            "payload is not valid JSON: NUL byte (byte 7)");
  EXPECT_EQ(parse(std::string_view("{\"a\":\"x\0\"}", 10)).error,
            "payload is not valid JSON: NUL byte (byte 7)");
}

TEST(ParsePayloadTest, RejectsTruncatedDocument) {
  EXPECT_THAT(parse(R"({"a":)").error, StartsWith("payload is not valid JSON: "));
  EXPECT_THAT(parse(R"({"a":"x)").error, StartsWith("payload is not valid JSON: "));
}

TEST(ParsePayloadTest, RejectsNanInfinityCommentsAndTrailingCommas) {
  for (const char* bytes : {R"({"a":NaN})", R"({"a":Infinity})", R"({"a":1,})", "{\"a\":1 /* c */}",
                            "{'a':1}", "{\"a\":\"tab\there\"}"}) {
    EXPECT_THAT(parse(bytes).error, StartsWith("payload is not valid JSON: ")) << bytes;
  }
}

TEST(ParsePayloadTest, RejectsNumberOutOfRange) {
  const ParsedPayload p = parse(R"({"a":1e400})");
  EXPECT_THAT(p.error, StartsWith("payload has a number out of range: "));
  EXPECT_THAT(p.error, HasSubstr("1e400"));
  EXPECT_TRUE(p.object.is_null());
}

TEST(ParsePayloadTest, AcceptsIntegersBeyond64BitsAsDouble) {
  const ParsedPayload p = parse(R"({"a":18446744073709551616})");
  ASSERT_TRUE(p.ok()) << p.error;
  EXPECT_TRUE(p.object.at("a").is_number_float());
}

TEST(ParsePayloadTest, AcceptsNestingAtTheDepthLimit) {
  const ParsedPayload p = parse(nested_object(32));
  EXPECT_TRUE(p.ok()) << p.error;
}

TEST(ParsePayloadTest, RejectsNestingOneBeyondTheDepthLimit) {
  EXPECT_EQ(parse(nested_object(33)).error, "payload nests deeper than 32 levels");
  EXPECT_EQ(parse("{\"a\":" + std::string(200000, '[')).error,
            "payload nests deeper than 32 levels");
}

TEST(ParsePayloadTest, DepthCountsObjectsAndArraysAlike) {
  // {"k":[{"k":[... 32 levels, alternating.
  std::string mixed = "{\"k\":";
  std::string closers = "}";
  for (int i = 1; i < 32; ++i) {
    mixed += i % 2 ? "[" : "{\"k\":";
    closers.insert(closers.begin(), i % 2 ? ']' : '}');
  }
  mixed += "1" + closers;
  ASSERT_TRUE(parse(mixed).ok()) << parse(mixed).error;
  PayloadLimits tighter;
  tighter.max_depth = 31;
  EXPECT_EQ(parse_payload(mixed, tighter).error, "payload nests deeper than 31 levels");
}

TEST(ParsePayloadTest, BracketsInsideStringsDoNotCountAsNesting) {
  const std::string brackets(100, '[');
  const ParsedPayload p = parse("{\"" + brackets + "\":\"" + brackets + "\\\"" + brackets + "\"}");
  ASSERT_TRUE(p.ok()) << p.error;
  // An escaped backslash ends right before the closing quote; the '[' after it is structural.
  const ParsedPayload q = parse("{\"a\\\\\":" + nested(31) + "}");
  EXPECT_TRUE(q.ok()) << q.error;
  EXPECT_EQ(parse("{\"a\\\\\":" + nested(32) + "}").error, "payload nests deeper than 32 levels");
}

TEST(ParsePayloadTest, AcceptsPayloadOfExactlyTheSizeLimit) {
  PayloadLimits limits;
  limits.max_bytes = 64;
  const std::string body = "{\"a\":\"" + std::string(64 - 8, 'x') + "\"}";
  ASSERT_EQ(body.size(), 64u);
  EXPECT_TRUE(parse_payload(body, limits).ok());
}

TEST(ParsePayloadTest, RejectsPayloadOneByteOverTheSizeLimit) {
  PayloadLimits limits;
  limits.max_bytes = 64;
  const std::string body = "{\"a\":\"" + std::string(64 - 7, 'x') + "\"}";
  EXPECT_EQ(parse_payload(body, limits).error, "payload is 65 bytes, limit 64");
}

TEST(ParsePayloadTest, DefaultSizeLimitIs256KiB) {
  const std::string body = "{\"a\":\"" + std::string(300000 - 8, 'x') + "\"}";
  EXPECT_EQ(parse(body).error, "payload is 300000 bytes, limit 262144");
}

TEST(ParsePayloadTest, DuplicateKeysKeepTheLastValue) {
  const ParsedPayload p = parse(R"({"a":1,"a":2})");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p.object.at("a"), 2);
}

TEST(ParsePayloadTest, ParsesFromAViewIntoALargerBuffer) {
  const std::string buffer = R"({"a":1}{"b":2})";
  const ParsedPayload p = parse(std::string_view(buffer).substr(0, 7));
  ASSERT_TRUE(p.ok()) << p.error;
  EXPECT_EQ(p.object, json({{"a", 1}}));
}

TEST(EncodeFieldValueTest, EncodesEachJsonType) {
  EXPECT_EQ(encode_field_value(23.5), "23.5");
  EXPECT_EQ(encode_field_value(-7), "-7");
  EXPECT_EQ(encode_field_value(18446744073709551615u), "18446744073709551615");
  EXPECT_EQ(encode_field_value("abc"), "\"abc\"");
  EXPECT_EQ(encode_field_value(true), "true");
  EXPECT_EQ(encode_field_value(nullptr), "null");
  EXPECT_EQ(encode_field_value(json::parse(R"({"a":1})")), R"({"a":1})");
  EXPECT_EQ(encode_field_value(json::parse(R"([1,"x",null])")), R"([1,"x",null])");
}

TEST(EncodeFieldValueTest, RoundTripsEveryValueOfAParsedPayload) {
  const ParsedPayload p =
      parse(R"({"f":0.1,"i":-42,"u":18446744073709551615,"s":"caf\u00e9 \"q\" \\ \n","b":false,)"
            R"("n":null,"o":{"x":[1,{"y":2.5e-8}]},"a":[],"e":{}})");
  ASSERT_TRUE(p.ok()) << p.error;
  for (const auto& [key, value] : p.object.items()) {
    const std::string encoded = encode_field_value(value);
    EXPECT_EQ(json::parse(encoded), value) << key << " -> " << encoded;
  }
}

TEST(EncodeFieldValueTest, KeepsNonAsciiAsUtf8) {
  EXPECT_EQ(encode_field_value("caf\xC3\xA9"), "\"caf\xC3\xA9\"");
}

TEST(EncodeFieldValueTest, ReplacesInvalidUtf8InsteadOfThrowing) {
  EXPECT_EQ(encode_field_value(std::string("a\xFF"
                                           "b")),
            "\"a\xEF\xBF\xBD"
            "b\"");
}

TEST(CheckFieldNamesTest, AcceptsNamesUpToTheLimit) {
  const json object = {{std::string(255, 'a'), 1}, {"b", 2}};
  EXPECT_EQ(check_field_names(object, 255), std::nullopt);
}

TEST(CheckFieldNamesTest, ReportsANameOverTheLimit) {
  const json object = {{std::string(256, 'a'), 1}, {"b", 2}};
  const auto reason = check_field_names(object, 255);
  ASSERT_TRUE(reason.has_value());
  EXPECT_THAT(*reason, StartsWith("field name longer than 255 characters: 'aaaa"));
  EXPECT_THAT(*reason, ::testing::EndsWith("\xE2\x80\xA6'"));
  EXPECT_LT(reason->size(), 100u);
}

TEST(CheckFieldNamesTest, CountsCharactersNotBytes) {
  std::string name;
  for (int i = 0; i < 255; ++i) name += "\xC3\xA9";  // 255 characters, 510 bytes
  EXPECT_EQ(check_field_names(json{{name, 1}}, 255), std::nullopt);
  name += "\xC3\xA9";
  const auto reason = check_field_names(json{{name, 1}}, 255);
  ASSERT_TRUE(reason.has_value());
  EXPECT_TRUE(is_one_line_utf8(*reason)) << *reason;
}

TEST(CheckFieldNamesTest, IgnoresNestedKeysAndNonObjects) {
  EXPECT_EQ(check_field_names(json{{"a", {{std::string(300, 'x'), 1}}}}, 255), std::nullopt);
  EXPECT_EQ(check_field_names(json::array({std::string(300, 'x')}), 255), std::nullopt);
}

TEST(FindInvalidUtf8Test, ReportsTheFirstIllFormedSequence) {
  EXPECT_EQ(find_invalid_utf8(""), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("\xF4\x8F\xBF\xBF"), std::nullopt);  // U+10FFFF
  EXPECT_EQ(find_invalid_utf8("\xEF\xBF\xBF"), std::nullopt);      // U+FFFF
  EXPECT_EQ(find_invalid_utf8("ab\xC1\xBF"), 2u);                  // overlong
  EXPECT_EQ(find_invalid_utf8("\xE2\x82\xAC\xE2\x82"), 3u);        // truncated at the end
  EXPECT_EQ(find_invalid_utf8("\xF5\x80\x80\x80"), 0u);            // beyond U+10FFFF
}

TEST(PrintableExcerptTest, EscapesControlAndInvalidBytes) {
  EXPECT_EQ(printable_excerpt("a\nb\x01\xFF\xC2\x85z", 100), "a\\x0Ab\\x01\\xFF\\xC2\\x85z");
}

TEST(PrintableExcerptTest, CutsAtACharacterBoundary) {
  EXPECT_EQ(printable_excerpt("ab\xC3\xA9"
                              "cd",
                              3),
            "ab\xE2\x80\xA6");
  EXPECT_EQ(printable_excerpt("abc", 3), "abc");
}

}  // namespace
}  // namespace gateway
