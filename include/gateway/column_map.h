// STORE_TABLE (issue 13): how a message becomes one row of the operator's own table.
//
// A flow's `column_map` is a JSON object, column name -> source. A source is a string:
//   "/temperature", "/meta/site", "/values/0"   a JSON Pointer into the payload (RFC 6901)
//   "$topic"                                   the topic the message arrived on
//   "$topic[N]"                                topic level N, 0-based ("plant/7/temp": [1] is "7")
//   "$msg_id"                                  the msg_id the flow transaction gives the message
//   "$flow_code"                               the flow's code
//   "$received_at"                             arrival time, UTC, microseconds (DATETIME(6) text)
//   "$payload"                                 the whole payload, as JSON
//   "$user_property:NAME"                      an MQTT 5 user property (missing on 3.1.1)
//
// compile_column_map() checks the map against the table as information_schema describes it (the
// table exists, every mapped column exists and has a type this module can check); a flow whose
// map does not compile is not activated. map_row() then turns one message into typed cell values,
// or into a reason naming the column: a missing source is NULL where the column is nullable, its
// default where it has one, else a rejection; a value that does not fit the column's type (a
// string into a number, a fraction into an integer, a number out of range, a string longer than
// the column, an object into a non-JSON column, a date-time that does not parse) is rejected
// before the INSERT, so the database never refuses the row for its data.
//
// Pure functions: thread-safe, no I/O; they never throw for bad input (except std::bad_alloc).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace gateway {

// One column of the target table, from information_schema.COLUMNS.
struct ColumnInfo {
  std::string name;
  std::string data_type;        // DATA_TYPE, lower case: int, varchar, datetime, json, ...
  std::string column_type;      // COLUMN_TYPE: "int(10) unsigned", "tinyint(1)", "decimal(8,2)"
  bool nullable = true;         // IS_NULLABLE = 'YES'
  bool has_default = false;     // COLUMN_DEFAULT set, or AUTO_INCREMENT
  bool generated = false;       // a generated (computed) column: it cannot be written
  bool auto_increment = false;  // has_default too: its "default" is the next value
  std::optional<std::uint64_t> max_chars;  // CHARACTER_MAXIMUM_LENGTH (characters or bytes)
  int numeric_precision = 0;               // NUMERIC_PRECISION (decimal)
  int numeric_scale = 0;                   // NUMERIC_SCALE (decimal)
};

// The target table; empty columns when it does not exist.
struct TableInfo {
  std::string name;
  std::vector<ColumnInfo> columns;
};

enum class WriteMode { kInsert, kUpsert };
// "insert" or "upsert" (exact spelling); std::nullopt otherwise.
std::optional<WriteMode> parse_write_mode(std::string_view text);

enum class SourceKind {
  kPointer,
  kTopic,
  kTopicLevel,
  kMsgId,
  kFlowCode,
  kReceivedAt,
  kPayload,
  kUserProperty
};

struct ColumnSource {
  SourceKind kind = SourceKind::kPointer;
  nlohmann::json::json_pointer pointer;  // kPointer
  int level = 0;                         // kTopicLevel
  std::string property;                  // kUserProperty
};

struct MappedColumn {
  ColumnInfo column;
  ColumnSource source;
  std::string source_text;  // as written in column_map, for messages
};

struct CompiledColumnMap {
  std::vector<MappedColumn> columns;  // in the map's (sorted) key order
  std::vector<std::string> problems;  // one line each; empty when usable
  std::string error;                  // the problems "; "-joined
  bool ok() const { return problems.empty(); }
};

// Parses a source string ("/a/b", "$topic[2]", ...). Returns the reason it is not one.
std::variant<ColumnSource, std::string> parse_column_source(std::string_view text);

// Checks `column_map` (the flows.column_map JSON) against `table`. Every problem is named: an
// empty or non-object map, a source that does not parse, a column the table does not have, a
// generated column, a column type not supported, a table that does not exist.
CompiledColumnMap compile_column_map(const nlohmann::json& column_map, const TableInfo& table);

// A STORE_TABLE flow's mapping as its row stores it (flows.target_table, column_map as JSON text,
// write_mode), compiled against `table` (the target table as described; pass an empty TableInfo
// when target_table is unset). Problems of the row itself come first in map.error: no
// target_table, no or invalid column_map JSON, an unknown write_mode.
struct FlowMapping {
  CompiledColumnMap map;
  WriteMode mode = WriteMode::kInsert;
  bool ok() const { return map.ok(); }
};
FlowMapping compile_flow_mapping(const std::optional<std::string>& target_table,
                                 const std::optional<std::string>& column_map,
                                 std::string_view write_mode, const TableInfo& table);

// A cell of the row: NULL, the column's default, or a value bound as integer, unsigned, double
// or text (numbers in range, date-times normalised to "YYYY-MM-DD HH:MM:SS.ffffff", JSON as its
// compact text).
struct UseDefault {};
using CellValue =
    std::variant<std::monostate, UseDefault, std::int64_t, std::uint64_t, double, std::string>;

// What map_row() reads of one message.
struct RowContext {
  std::string_view topic;
  const nlohmann::json* payload = nullptr;  // the parsed payload object
  std::string_view payload_text;            // the payload as received
  std::int64_t msg_id = 0;
  std::string_view flow_code;
  std::int64_t received_us = 0;  // Unix microseconds
  const std::vector<std::pair<std::string, std::string>>* user_properties = nullptr;
};

struct MappedRow {
  std::vector<CellValue> cells;  // one per CompiledColumnMap::columns
  std::string error;             // "column 'temp': expected a number, got a string"
  bool ok() const { return error.empty(); }
};

MappedRow map_row(const CompiledColumnMap& map, const RowContext& message);

// Unix microseconds as "YYYY-MM-DD HH:MM:SS.ffffff" (UTC).
std::string format_datetime_us(std::int64_t unix_us);
// The reverse, for any ISO 8601 date-time a DATETIME column takes ('T' or ' ', optional
// fraction and zone; UTC when none); std::nullopt when it does not parse.
std::optional<std::int64_t> parse_datetime_us(std::string_view text);

}  // namespace gateway
