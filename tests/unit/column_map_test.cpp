// STORE_TABLE's column mapping: every source kind, every reason a map does not compile, every
// reason a value does not fit its column.
#include "gateway/column_map.h"

#include <gtest/gtest.h>

namespace gateway {
namespace {

using nlohmann::json;

ColumnInfo column(std::string name, std::string data_type, std::string column_type,
                  bool nullable = true, bool has_default = false,
                  std::optional<std::uint64_t> max_chars = std::nullopt) {
  ColumnInfo c;
  c.name = std::move(name);
  c.data_type = std::move(data_type);
  c.column_type = std::move(column_type);
  c.nullable = nullable;
  c.has_default = has_default;
  c.max_chars = max_chars;
  return c;
}

TableInfo readings() {
  TableInfo t;
  t.name = "readings";
  t.columns = {
      column("id", "bigint", "bigint(20)", false, true),
      column("device", "varchar", "varchar(8)", false, false, 8),
      column("site", "int", "int(10) unsigned", true),
      column("temp", "decimal", "decimal(5,2)"),
      column("level", "tinyint", "tinyint(4)"),
      column("ratio", "double", "double"),
      column("at", "datetime", "datetime(6)"),
      column("day", "date", "date"),
      column("ts", "timestamp", "timestamp(6)", true, true),
      column("doc", "json", "longtext"),
      column("note", "text", "text", true, false, 65535),
      column("state", "enum", "enum('on','off','it''s')"),
      column("msg", "bigint", "bigint(20) unsigned"),
      column("shape", "geometry", "geometry"),
  };
  t.columns[3].numeric_precision = 5;
  t.columns[3].numeric_scale = 2;
  return t;
}

struct Message {
  std::string topic = "plant/7/temp";
  json payload = json::object();
  std::string text;
  std::vector<std::pair<std::string, std::string>> properties;
  RowContext context() {
    text = payload.dump();
    RowContext c;
    c.topic = topic;
    c.payload = &payload;
    c.payload_text = text;
    c.msg_id = 42;
    c.flow_code = "f1";
    c.received_us = 1764670530123456;  // 2025-12-02 10:15:30.123456 UTC
    c.user_properties = &properties;
    return c;
  }
};

// readings() cut to the mapped columns, so that an unmapped NOT NULL column does not stop the map.
TableInfo readings_of(const json& column_map) {
  TableInfo t = readings();
  std::erase_if(t.columns, [&](const ColumnInfo& c) {
    for (const auto& [key, source] : column_map.items()) {
      if (std::equal(key.begin(), key.end(), c.name.begin(), c.name.end(),
                     [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
        return false;
    }
    return true;
  });
  return t;
}

MappedRow map_one(const json& column_map, Message& m) {
  const CompiledColumnMap compiled = compile_column_map(column_map, readings_of(column_map));
  EXPECT_TRUE(compiled.ok()) << compiled.error;
  return map_row(compiled, m.context());
}

// The one cell of a one-column map, or the rejection.
CellValue cell(const json& column_map, Message& m) {
  MappedRow row = map_one(column_map, m);
  EXPECT_TRUE(row.ok()) << row.error;
  return row.ok() ? row.cells.at(0) : CellValue{};
}

std::string rejection(const json& column_map, Message& m) {
  MappedRow row = map_one(column_map, m);
  EXPECT_FALSE(row.ok()) << "mapped although it should be rejected";
  return row.error;
}

TEST(ColumnSourceTest, ParsesEveryKind) {
  EXPECT_EQ(std::get<ColumnSource>(parse_column_source("/a/b")).kind, SourceKind::kPointer);
  EXPECT_EQ(std::get<ColumnSource>(parse_column_source("$topic")).kind, SourceKind::kTopic);
  const auto level = std::get<ColumnSource>(parse_column_source("$topic[3]"));
  EXPECT_EQ(level.kind, SourceKind::kTopicLevel);
  EXPECT_EQ(level.level, 3);
  EXPECT_EQ(std::get<ColumnSource>(parse_column_source("$msg_id")).kind, SourceKind::kMsgId);
  EXPECT_EQ(std::get<ColumnSource>(parse_column_source("$flow_code")).kind, SourceKind::kFlowCode);
  EXPECT_EQ(std::get<ColumnSource>(parse_column_source("$received_at")).kind,
            SourceKind::kReceivedAt);
  EXPECT_EQ(std::get<ColumnSource>(parse_column_source("$payload")).kind, SourceKind::kPayload);
  const auto prop = std::get<ColumnSource>(parse_column_source("$user_property:unit"));
  EXPECT_EQ(prop.kind, SourceKind::kUserProperty);
  EXPECT_EQ(prop.property, "unit");
}

TEST(ColumnSourceTest, RefusesWhatIsNotASource) {
  for (const char* bad : {"temperature", "", "$topic[x]", "$topic[-1]", "$topic[]", "$nope",
                          "/a~2b", "$user_property:"}) {
    EXPECT_TRUE(std::holds_alternative<std::string>(parse_column_source(bad))) << bad;
  }
}

TEST(CompileColumnMapTest, NamesEveryProblem) {
  const json map = {{"device", "/d"}, {"nope", "/x"}, {"shape", "/s"}, {"site", "bad"}};
  const CompiledColumnMap c = compile_column_map(map, readings());
  EXPECT_FALSE(c.ok());
  EXPECT_NE(c.error.find("column 'nope' does not exist in table 'readings'"), std::string::npos)
      << c.error;
  EXPECT_NE(c.error.find("column 'shape' has type geometry"), std::string::npos) << c.error;
  EXPECT_NE(c.error.find("column 'site': source 'bad'"), std::string::npos) << c.error;
}

TEST(CompileColumnMapTest, MissingTableAndEmptyMap) {
  TableInfo missing;
  missing.name = "gone";
  EXPECT_NE(
      compile_column_map(json{{"a", "/a"}}, missing).error.find("table 'gone' does not exist"),
      std::string::npos);
  EXPECT_FALSE(compile_column_map(json::object(), readings()).ok());
  EXPECT_FALSE(compile_column_map(json::array(), readings()).ok());
  EXPECT_FALSE(compile_column_map(json{{"device", 5}}, readings()).ok());
}

TEST(CompileColumnMapTest, RefusesAGeneratedColumn) {
  TableInfo t = readings();
  t.columns.push_back(column("total", "int", "int(11)"));
  t.columns.back().generated = true;
  const CompiledColumnMap c = compile_column_map(json{{"total", "/t"}}, t);
  EXPECT_NE(c.error.find("column 'total' is a generated column"), std::string::npos) << c.error;
}

TEST(CompileColumnMapTest, ColumnNamesCompareWithoutCase) {
  EXPECT_TRUE(compile_column_map(json{{"DEVICE", "/d"}}, readings()).ok());
  const CompiledColumnMap twice =
      compile_column_map(json{{"DEVICE", "/d"}, {"device", "/e"}}, readings());
  EXPECT_NE(twice.error.find("is mapped twice"), std::string::npos) << twice.error;
}

// The INSERT names only the mapped columns, so a NOT NULL column without a default must be one.
TEST(CompileColumnMapTest, AnUnmappedNotNullColumnWithoutADefaultIsAProblem) {
  const CompiledColumnMap c = compile_column_map(json{{"site", "/s"}}, readings());
  EXPECT_EQ(c.problems, std::vector<std::string>{
                            "column 'device' is NOT NULL without a default and must be mapped"});
}

TEST(CompileFlowMappingTest, NamesTheRowsOwnProblemsAndRefusesTheGatewaysTables) {
  const TableInfo t = readings();
  EXPECT_TRUE(compile_flow_mapping("readings", R"({"device": "/d"})", "upsert", t).ok());
  EXPECT_EQ(compile_flow_mapping("readings", R"({"device": "/d"})", "upsert", t).mode,
            WriteMode::kUpsert);
  EXPECT_EQ(compile_flow_mapping(std::nullopt, std::nullopt, "merge", TableInfo{}).map.problems,
            (std::vector<std::string>{"target_table is not set",
                                      "write_mode 'merge' is not 'insert' or 'upsert'",
                                      "column_map is not set"}));
  EXPECT_EQ(compile_flow_mapping("readings", "{nope", "insert", t).map.problems,
            std::vector<std::string>{"column_map is not valid JSON"});
  const auto own = compile_flow_mapping("Spool_Offsets", R"({"last_seq": "/x"})", "upsert", t);
  ASSERT_FALSE(own.ok());
  EXPECT_EQ(own.map.problems.front(),
            "target_table 'Spool_Offsets' is one of the gateway's own tables");
}

TEST(MapRowTest, EverySourceKind) {
  Message m;
  m.payload = {{"d", "dev-1"}, {"meta", {{"site", 7}}}, {"values", {1.5, 2.5}}};
  m.properties = {{"unit", "C"}};
  EXPECT_EQ(std::get<std::string>(cell(json{{"device", "/d"}}, m)), "dev-1");
  EXPECT_EQ(std::get<std::int64_t>(cell(json{{"site", "/meta/site"}}, m)), 7);
  EXPECT_DOUBLE_EQ(std::get<double>(cell(json{{"ratio", "/values/1"}}, m)), 2.5);
  EXPECT_EQ(std::get<std::string>(cell(json{{"note", "$topic"}}, m)), "plant/7/temp");
  EXPECT_EQ(std::get<std::string>(cell(json{{"device", "$topic[1]"}}, m)), "7");
  EXPECT_EQ(std::get<std::int64_t>(cell(json{{"msg", "$msg_id"}}, m)), 42);
  EXPECT_EQ(std::get<std::string>(cell(json{{"device", "$flow_code"}}, m)), "f1");
  EXPECT_EQ(std::get<std::string>(cell(json{{"at", "$received_at"}}, m)),
            "2025-12-02 10:15:30.123456");
  EXPECT_EQ(std::get<std::string>(cell(json{{"doc", "$payload"}}, m)), m.payload.dump());
  EXPECT_EQ(std::get<std::string>(cell(json{{"note", "$payload"}}, m)), m.payload.dump());
  EXPECT_EQ(std::get<std::string>(cell(json{{"device", "$user_property:unit"}}, m)), "C");
  EXPECT_EQ(std::get<std::string>(cell(json{{"doc", "/meta"}}, m)), R"({"site":7})");
}

TEST(MapRowTest, MissingSourceIsNullOrDefaultElseRejected) {
  Message m;
  m.payload = {{"d", "x"}};
  EXPECT_TRUE(std::holds_alternative<std::monostate>(cell(json{{"site", "/nope"}}, m)));
  EXPECT_TRUE(std::holds_alternative<UseDefault>(cell(json{{"ts", "/nope"}}, m)));
  EXPECT_TRUE(std::holds_alternative<std::monostate>(cell(json{{"site", "$topic[9]"}}, m)));
  EXPECT_TRUE(std::holds_alternative<std::monostate>(cell(json{{"note", "$user_property:x"}}, m)));
  EXPECT_EQ(rejection(json{{"device", "/nope"}}, m),
            "column 'device': source '/nope' is missing and the column is NOT NULL without a "
            "default");
  m.payload = {{"d", nullptr}};
  EXPECT_EQ(rejection(json{{"device", "/d"}}, m), "column 'device': is NOT NULL, got null");
  EXPECT_TRUE(std::holds_alternative<std::monostate>(cell(json{{"site", "/d"}}, m)));
}

TEST(MapRowTest, NumbersAreCheckedAgainstTheColumn) {
  Message m;
  m.payload = {{"s", "12"},   {"f", 2.5},     {"big", 300},
               {"neg", -1},   {"t", 123.45},  {"t2", 1234.5},
               {"yes", true}, {"whole", 7.0}, {"huge", 18446744073709551615ULL}};
  EXPECT_EQ(rejection(json{{"site", "/s"}}, m), "column 'site': expected an integer, got a string");
  EXPECT_EQ(rejection(json{{"site", "/f"}}, m), "column 'site': expected an integer, got 2.5");
  EXPECT_EQ(rejection(json{{"level", "/big"}}, m),
            "column 'level': value 300 is out of range for tinyint(4)");
  EXPECT_EQ(rejection(json{{"site", "/neg"}}, m),
            "column 'site': value -1 is out of range for int(10) unsigned");
  EXPECT_EQ(std::get<std::int64_t>(cell(json{{"level", "/yes"}}, m)), 1);
  EXPECT_EQ(std::get<std::int64_t>(cell(json{{"level", "/whole"}}, m)), 7);
  EXPECT_DOUBLE_EQ(std::get<double>(cell(json{{"temp", "/t"}}, m)), 123.45);
  EXPECT_EQ(rejection(json{{"temp", "/t2"}}, m),
            "column 'temp': value 1234.5 is out of range for decimal(5,2)");
  EXPECT_EQ(rejection(json{{"ratio", "/s"}}, m), "column 'ratio': expected a number, got a string");
  EXPECT_EQ(std::get<std::uint64_t>(cell(json{{"msg", "/huge"}}, m)), 18446744073709551615ULL);
  // Just past the top as a float (2^64, 2^63): refused, not cast.
  m.payload["past"] = 18446744073709551616.0;
  EXPECT_EQ(rejection(json{{"msg", "/past"}}, m),
            "column 'msg': value 1.8446744073709552e+19 is out of range for bigint(20) unsigned");
  m.payload["round"] = 999.995;  // 1000.00 once rounded to DECIMAL(5,2)'s scale
  EXPECT_EQ(rejection(json{{"temp", "/round"}}, m),
            "column 'temp': value 999.995 is out of range for decimal(5,2)");
}

// Topic levels and user properties are text by nature: a number written out fits a numeric
// column (what "$topic[1]" is for); anything else is still refused.
TEST(MapRowTest, TopicLevelsAndUserPropertiesThatAreNumbersFitNumericColumns) {
  Message m;
  m.properties = {{"count", "12"}, {"word", "twelve"}, {"spaced", " 3"}, {"zeros", "007"}};
  EXPECT_EQ(std::get<std::int64_t>(cell(json{{"site", "$topic[1]"}}, m)), 7);
  EXPECT_EQ(std::get<std::int64_t>(cell(json{{"site", "$user_property:zeros"}}, m)), 7);
  EXPECT_EQ(std::get<std::int64_t>(cell(json{{"level", "$user_property:count"}}, m)), 12);
  EXPECT_EQ(rejection(json{{"site", "$topic[2]"}}, m),
            "column 'site': expected a number, got 'temp'");
  EXPECT_EQ(rejection(json{{"ratio", "$user_property:word"}}, m),
            "column 'ratio': expected a number, got 'twelve'");
  EXPECT_EQ(rejection(json{{"ratio", "$user_property:spaced"}}, m),
            "column 'ratio': expected a number, got ' 3'");
  m.topic = "plant/300/temp";
  EXPECT_EQ(rejection(json{{"level", "$topic[1]"}}, m),
            "column 'level': value 300 is out of range for tinyint(4)");
}

TEST(MapRowTest, TextIsCheckedForLengthInCharactersAndForObjects) {
  Message m;
  m.payload = {{"ok", "äöüäöüäö"}, {"long", "123456789"}, {"obj", {{"a", 1}}}, {"n", 21.5}};
  EXPECT_EQ(std::get<std::string>(cell(json{{"device", "/ok"}}, m)), "äöüäöüäö");
  EXPECT_EQ(rejection(json{{"device", "/long"}}, m),
            "column 'device': value of 9 characters is longer than varchar(8)");
  EXPECT_EQ(rejection(json{{"note", "/obj"}}, m),
            "column 'note': expected a scalar (the column is not JSON), got an object");
  EXPECT_EQ(std::get<std::string>(cell(json{{"device", "/n"}}, m)), "21.5");
}

// TEXT's limit is in bytes (TINYTEXT 255, TEXT 65535), whatever the character set.
TEST(MapRowTest, TextTypesCountBytes) {
  Message m;
  m.payload = {{"s", std::string(40000, 'a') + std::string(20000, 'x')},
               {"wide", [] {
                  std::string s;
                  for (int i = 0; i < 33000; ++i) s += "\xc3\xa9";  // 33,000 characters
                  return s;
                }()}};
  EXPECT_EQ(std::get<std::string>(cell(json{{"note", "/s"}}, m)).size(), 60000u);
  EXPECT_EQ(rejection(json{{"note", "/wide"}}, m),
            "column 'note': value of 66000 bytes is longer than text");
}

TEST(MapRowTest, DateTimesAcceptIso8601AndEpochSecondsOrMilliseconds) {
  Message m;
  m.payload = {{"iso", "2026-12-02T10:15:30Z"},
               {"frac", "2026-12-02 10:15:30.25"},
               {"zone", "2026-12-02T11:15:30+01:00"},
               {"day", "2026-12-02"},
               {"s", 1764670530},
               {"ms", 1764670530123LL},
               {"bad", "yesterday"},
               {"feb", "2025-02-29"},
               {"old", "1969-12-31T23:59:59Z"}};
  EXPECT_EQ(std::get<std::string>(cell(json{{"at", "/iso"}}, m)), "2026-12-02 10:15:30.000000");
  EXPECT_EQ(std::get<std::string>(cell(json{{"at", "/frac"}}, m)), "2026-12-02 10:15:30.250000");
  EXPECT_EQ(std::get<std::string>(cell(json{{"at", "/zone"}}, m)), "2026-12-02 10:15:30.000000");
  EXPECT_EQ(std::get<std::string>(cell(json{{"at", "/day"}}, m)), "2026-12-02 00:00:00.000000");
  EXPECT_EQ(std::get<std::string>(cell(json{{"at", "/s"}}, m)), "2025-12-02 10:15:30.000000");
  EXPECT_EQ(std::get<std::string>(cell(json{{"at", "/ms"}}, m)), "2025-12-02 10:15:30.123000");
  EXPECT_EQ(std::get<std::string>(cell(json{{"day", "/iso"}}, m)), "2026-12-02");
  EXPECT_EQ(rejection(json{{"at", "/bad"}}, m),
            "column 'at': 'yesterday' is not an ISO 8601 date-time");
  EXPECT_EQ(rejection(json{{"at", "/feb"}}, m),
            "column 'at': '2025-02-29' is not an ISO 8601 date-time");
  EXPECT_EQ(rejection(json{{"ts", "/old"}}, m),
            "column 'ts': date-time out of range for timestamp(6)");
}

TEST(DateTimeTest, ParseIsTheReverseOfFormat) {
  EXPECT_EQ(parse_datetime_us(format_datetime_us(1764670530123456)), 1764670530123456);
  EXPECT_EQ(parse_datetime_us("2025-12-02 10:15:30"), 1764670530000000);
  EXPECT_EQ(parse_datetime_us("not a time"), std::nullopt);
}

TEST(MapRowTest, EnumsTakeOnlyTheirValues) {
  Message m;
  m.payload = {{"on", "on"}, {"q", "it's"}, {"no", "maybe"}, {"num", 1}};
  EXPECT_EQ(std::get<std::string>(cell(json{{"state", "/on"}}, m)), "on");
  EXPECT_EQ(std::get<std::string>(cell(json{{"state", "/q"}}, m)), "it's");
  m.payload["upper"] = "OFF";  // the column's collation ignores case; written as the column has it
  EXPECT_EQ(std::get<std::string>(cell(json{{"state", "/upper"}}, m)), "off");
  EXPECT_EQ(rejection(json{{"state", "/no"}}, m),
            "column 'state': 'maybe' is not one of enum('on','off','it''s')");
  EXPECT_EQ(rejection(json{{"state", "/num"}}, m),
            "column 'state': expected one of enum('on','off','it''s'), got an integer");
}

TEST(MapRowTest, TheFirstBadColumnRejectsTheRow) {
  Message m;
  m.payload = {{"d", "ok"}, {"s", "x"}};
  const MappedRow row = map_one(json{{"device", "/d"}, {"site", "/s"}}, m);
  EXPECT_FALSE(row.ok());
  EXPECT_TRUE(row.cells.empty());
}

TEST(WriteModeTest, ParsesTheTwoModes) {
  EXPECT_EQ(parse_write_mode("insert"), WriteMode::kInsert);
  EXPECT_EQ(parse_write_mode("upsert"), WriteMode::kUpsert);
  EXPECT_FALSE(parse_write_mode("UPSERT").has_value());
}

TEST(FormatDateTimeTest, BeforeAndAfterTheEpoch) {
  EXPECT_EQ(format_datetime_us(0), "1970-01-01 00:00:00.000000");
  EXPECT_EQ(format_datetime_us(-1), "1969-12-31 23:59:59.999999");
  EXPECT_EQ(format_datetime_us(951782400000000), "2000-02-29 00:00:00.000000");
}

}  // namespace
}  // namespace gateway
