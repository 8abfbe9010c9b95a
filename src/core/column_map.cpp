#include "gateway/column_map.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>

namespace gateway {
namespace {

enum class Kind {
  kInteger,
  kDecimal,
  kFloat,
  kDouble,
  kText,
  kBinary,
  kJson,
  kDate,
  kDateTime,
  kTimestamp,
  kEnum,
  kUnsupported
};

Kind kind_of(const ColumnInfo& c) {
  static constexpr std::array<std::string_view, 5> kInts = {"tinyint", "smallint", "mediumint",
                                                            "int", "bigint"};
  static constexpr std::array<std::string_view, 6> kTexts = {"char", "varchar",    "tinytext",
                                                             "text", "mediumtext", "longtext"};
  static constexpr std::array<std::string_view, 6> kBinaries = {"binary", "varbinary",  "tinyblob",
                                                                "blob",   "mediumblob", "longblob"};
  const std::string_view t = c.data_type;
  if (std::find(kInts.begin(), kInts.end(), t) != kInts.end()) return Kind::kInteger;
  if (t == "decimal") return Kind::kDecimal;
  if (t == "float") return Kind::kFloat;
  if (t == "double") return Kind::kDouble;
  if (t == "json") return Kind::kJson;
  if (std::find(kTexts.begin(), kTexts.end(), t) != kTexts.end()) return Kind::kText;
  if (std::find(kBinaries.begin(), kBinaries.end(), t) != kBinaries.end()) return Kind::kBinary;
  if (t == "date") return Kind::kDate;
  if (t == "datetime") return Kind::kDateTime;
  if (t == "timestamp") return Kind::kTimestamp;
  if (t == "enum") return Kind::kEnum;
  return Kind::kUnsupported;
}

bool is_unsigned(const ColumnInfo& c) {
  return c.column_type.find("unsigned") != std::string::npos;
}

// The range of an integer column.
std::pair<std::int64_t, std::uint64_t> integer_range(const ColumnInfo& c) {
  const bool u = is_unsigned(c);
  const std::string_view t = c.data_type;
  int bits = 64;
  if (t == "tinyint") bits = 8;
  if (t == "smallint") bits = 16;
  if (t == "mediumint") bits = 24;
  if (t == "int") bits = 32;
  if (u) {
    return {0, bits == 64 ? std::numeric_limits<std::uint64_t>::max() : (1ULL << bits) - 1};
  }
  if (bits == 64) {
    return {std::numeric_limits<std::int64_t>::min(),
            static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())};
  }
  return {-(1LL << (bits - 1)), (1ULL << (bits - 1)) - 1};
}

// The values an enum column allows: COLUMN_TYPE "enum('a','b''c')".
bool same_ascii_case(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

std::vector<std::string> enum_values(const std::string& column_type) {
  std::vector<std::string> values;
  std::size_t i = column_type.find('(');
  if (i == std::string::npos) return values;
  while (++i < column_type.size()) {
    if (column_type[i] != '\'') continue;
    std::string v;
    for (++i; i < column_type.size(); ++i) {
      if (column_type[i] == '\'') {
        if (i + 1 < column_type.size() && column_type[i + 1] == '\'') {
          v += '\'';
          ++i;
          continue;
        }
        break;
      }
      v += column_type[i];
    }
    values.push_back(std::move(v));
  }
  return values;
}

std::size_t utf8_length(std::string_view s) {
  return static_cast<std::size_t>(std::count_if(
      s.begin(), s.end(), [](char ch) { return (static_cast<unsigned char>(ch) & 0xC0) != 0x80; }));
}

std::string type_name(const nlohmann::json& v) {
  if (v.is_object()) return "an object";
  if (v.is_array()) return "an array";
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_float()) return "a number with a fraction";
  if (v.is_number()) return "an integer";
  return "null";
}

// Days since 1970-01-01 of a civil date (proleptic Gregorian; H. Hinnant's algorithm).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

bool parse_digits(std::string_view s, std::size_t& pos, std::size_t n, int& out) {
  if (pos + n > s.size()) return false;
  out = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const char ch = s[pos + i];
    if (ch < '0' || ch > '9') return false;
    out = out * 10 + (ch - '0');
  }
  pos += n;
  return true;
}

// ISO 8601 ("2026-12-02", "2026-12-02T10:15:30", "...30.25Z", "...30+01:00", a space for the T)
// as Unix microseconds (UTC; no zone means UTC).
std::optional<std::int64_t> parse_iso8601(std::string_view s) {
  std::size_t p = 0;
  int y, mo, d, h = 0, mi = 0, sec = 0;
  if (!parse_digits(s, p, 4, y) || p >= s.size() || s[p++] != '-' || !parse_digits(s, p, 2, mo) ||
      p >= s.size() || s[p++] != '-' || !parse_digits(s, p, 2, d)) {
    return std::nullopt;
  }
  if (mo < 1 || mo > 12 || d < 1) return std::nullopt;
  static constexpr std::array<int, 12> kDays = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (d > kDays[mo - 1] || (mo == 2 && d == 29 && !leap)) return std::nullopt;
  std::int64_t micros = 0;
  std::int64_t offset_s = 0;
  if (p < s.size()) {
    if (s[p] != 'T' && s[p] != ' ') return std::nullopt;
    ++p;
    if (!parse_digits(s, p, 2, h) || p >= s.size() || s[p++] != ':' || !parse_digits(s, p, 2, mi)) {
      return std::nullopt;
    }
    if (p < s.size() && s[p] == ':') {
      ++p;
      if (!parse_digits(s, p, 2, sec)) return std::nullopt;
      if (p < s.size() && (s[p] == '.' || s[p] == ',')) {
        ++p;
        int digits = 0;
        while (p < s.size() && s[p] >= '0' && s[p] <= '9') {
          if (digits < 6) micros = micros * 10 + (s[p] - '0');
          ++digits;
          ++p;
        }
        if (digits == 0) return std::nullopt;
        for (int k = digits; k < 6; ++k) micros *= 10;
      }
    }
    if (h > 23 || mi > 59 || sec > 59) return std::nullopt;
    if (p < s.size()) {
      if (s[p] == 'Z') {
        ++p;
      } else if (s[p] == '+' || s[p] == '-') {
        const int sign = s[p] == '-' ? -1 : 1;
        ++p;
        int oh, om = 0;
        if (!parse_digits(s, p, 2, oh)) return std::nullopt;
        if (p < s.size() && s[p] == ':') ++p;
        if (p < s.size() && !parse_digits(s, p, 2, om)) return std::nullopt;
        if (oh > 23 || om > 59) return std::nullopt;
        offset_s = static_cast<std::int64_t>(sign) * (oh * 3600 + om * 60);
      }
    }
    if (p != s.size()) return std::nullopt;
  }
  const std::int64_t seconds =
      days_from_civil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d)) * 86400 +
      static_cast<std::int64_t>(h) * 3600 + static_cast<std::int64_t>(mi) * 60 + sec - offset_s;
  return seconds * 1000000 + micros;
}

// Every value map_row() can produce for a column, before its type is checked.
struct Found {
  nlohmann::json value;
  bool raw_payload = false;  // $payload: `text` is the payload as received
  // $topic, $topic[N], $user_property: text by nature, so a numeric column takes it when it is
  // a number written out ("plant/7/temp": level 1 into an INT column). A payload's "7" is not.
  bool text_source = false;
};

// The number written out in `text` ("7", "007", "-3", "2.5", "1e3"), the whole of it; std::nullopt
// for anything else (blanks and a leading '+' included).
std::optional<nlohmann::json> number_in_text(const std::string& text) {
  const char* first = text.data();
  const char* last = first + text.size();
  if (text.empty()) return std::nullopt;
  std::int64_t i = 0;
  if (auto [end, ec] = std::from_chars(first, last, i); ec == std::errc() && end == last) {
    return nlohmann::json(i);
  }
  std::uint64_t u = 0;
  if (auto [end, ec] = std::from_chars(first, last, u); ec == std::errc() && end == last) {
    return nlohmann::json(u);
  }
  double d = 0;
  if (auto [end, ec] = std::from_chars(first, last, d);
      ec == std::errc() && end == last && std::isfinite(d)) {
    return nlohmann::json(d);
  }
  return std::nullopt;
}

std::optional<Found> lookup(const MappedColumn& m, const RowContext& msg) {
  const ColumnSource& s = m.source;
  switch (s.kind) {
    case SourceKind::kPointer:
      if (msg.payload == nullptr || !msg.payload->contains(s.pointer)) return std::nullopt;
      return Found{msg.payload->at(s.pointer)};
    case SourceKind::kTopic:
      return Found{std::string(msg.topic), false, true};
    case SourceKind::kTopicLevel: {
      std::size_t start = 0;
      for (int level = 0;; ++level) {
        const std::size_t end = msg.topic.find('/', start);
        if (level == s.level) {
          return Found{
              std::string(msg.topic.substr(
                  start, end == std::string_view::npos ? std::string_view::npos : end - start)),
              false, true};
        }
        if (end == std::string_view::npos) return std::nullopt;
        start = end + 1;
      }
    }
    case SourceKind::kMsgId:
      return Found{msg.msg_id};
    case SourceKind::kFlowCode:
      return Found{std::string(msg.flow_code)};
    case SourceKind::kReceivedAt:
      return Found{format_datetime_us(msg.received_us)};
    case SourceKind::kPayload:
      return Found{msg.payload ? *msg.payload : nlohmann::json(), true};
    case SourceKind::kUserProperty:
      if (msg.user_properties == nullptr) return std::nullopt;
      for (const auto& [name, value] : *msg.user_properties) {
        if (name == s.property) return Found{value, false, true};
      }
      return std::nullopt;
  }
  return std::nullopt;
}

std::string text_of(const nlohmann::json& v) {
  return v.is_string() ? v.get<std::string>()
                       : v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The cell for `v` in column `c`, or why it does not fit.
std::variant<CellValue, std::string> convert(const MappedColumn& m, const Found& found,
                                             const RowContext& msg) {
  const ColumnInfo& c = m.column;
  const nlohmann::json& v = found.value;
  const Kind kind = kind_of(c);
  if (v.is_null() && !found.raw_payload) {
    if (c.nullable) return CellValue{std::monostate{}};
    return std::string("is NOT NULL, got null");
  }
  const bool numeric = kind == Kind::kInteger || kind == Kind::kDecimal || kind == Kind::kFloat ||
                       kind == Kind::kDouble;
  if (found.text_source && numeric && v.is_string()) {
    const auto& text = v.get_ref<const std::string&>();
    std::optional<nlohmann::json> number = number_in_text(text);
    if (!number) return "expected a number, got '" + text.substr(0, 64) + "'";
    return convert(m, Found{std::move(*number)}, msg);
  }
  switch (kind) {
    case Kind::kInteger: {
      const auto [lo, hi] = integer_range(c);
      if (v.is_boolean()) return CellValue{std::int64_t{v.get<bool>() ? 1 : 0}};
      if (v.is_number_unsigned()) {
        const auto u = v.get<std::uint64_t>();
        if (u > hi) return "value " + v.dump() + " is out of range for " + c.column_type;
        return u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
                   ? CellValue{u}
                   : CellValue{static_cast<std::int64_t>(u)};
      }
      if (v.is_number_integer()) {
        const auto i = v.get<std::int64_t>();
        if (i < lo || (i > 0 && static_cast<std::uint64_t>(i) > hi)) {
          return "value " + v.dump() + " is out of range for " + c.column_type;
        }
        return CellValue{i};
      }
      if (v.is_number_float()) {
        const double d = v.get<double>();
        if (std::trunc(d) != d) return "expected an integer, got " + v.dump();
        // hi + 1 as a double is exact (2^63, 2^64 or a small number): the casts below stay
        // defined for every d that passes.
        if (d < static_cast<double>(lo) || d >= static_cast<double>(hi) + 1.0) {
          return "value " + v.dump() + " is out of range for " + c.column_type;
        }
        // Below 2^63 as a signed integer; the rest of an unsigned BIGINT as unsigned.
        return d < 9223372036854775808.0 ? CellValue{static_cast<std::int64_t>(d)}
                                         : CellValue{static_cast<std::uint64_t>(d)};
      }
      return "expected an integer, got " + type_name(v);
    }
    case Kind::kDecimal:
    case Kind::kFloat:
    case Kind::kDouble: {
      if (!v.is_number()) return "expected a number, got " + type_name(v);
      const double d = v.get<double>();
      if (kind == Kind::kDecimal) {
        // As the server stores it: rounded to the scale (999.995 is 1000.00 in DECIMAL(5,2)).
        const double limit = std::pow(10.0, c.numeric_precision - c.numeric_scale);
        const double unit = std::pow(10.0, c.numeric_scale);
        if (std::fabs(std::round(d * unit) / unit) >= limit) {
          return "value " + v.dump() + " is out of range for " + c.column_type;
        }
        if (is_unsigned(c) && d < 0) {
          return "value " + v.dump() + " is out of range for " + c.column_type;
        }
      }
      if (kind == Kind::kFloat && std::fabs(d) > 3.402823466e38) {
        return "value " + v.dump() + " is out of range for " + c.column_type;
      }
      if (v.is_number_integer() && kind != Kind::kFloat) {
        return v.is_number_unsigned() ? CellValue{v.get<std::uint64_t>()}
                                      : CellValue{v.get<std::int64_t>()};
      }
      return CellValue{d};
    }
    case Kind::kText:
    case Kind::kBinary: {
      if (!found.raw_payload && (v.is_object() || v.is_array())) {
        return "expected a scalar (the column is not JSON), got " + type_name(v);
      }
      std::string text = found.raw_payload ? std::string(msg.payload_text) : text_of(v);
      // CHAR/VARCHAR limits count characters; the TEXT types' (and binaries') count bytes.
      const bool in_chars = kind == Kind::kText && !c.data_type.ends_with("text");
      const std::size_t length = in_chars ? utf8_length(text) : text.size();
      if (c.max_chars && length > *c.max_chars) {
        return "value of " + std::to_string(length) + (in_chars ? " characters" : " bytes") +
               " is longer than " + c.column_type;
      }
      return CellValue{std::move(text)};
    }
    case Kind::kJson:
      return CellValue{found.raw_payload
                           ? std::string(msg.payload_text)
                           : v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)};
    case Kind::kDate:
    case Kind::kDateTime:
    case Kind::kTimestamp: {
      std::optional<std::int64_t> us;
      if (v.is_string()) {
        us = parse_iso8601(v.get<std::string>());
        if (!us) return "'" + v.get<std::string>().substr(0, 64) + "' is not an ISO 8601 date-time";
      } else if (v.is_number() && !v.is_boolean()) {
        // Epoch seconds, or milliseconds when too large to be seconds (after 5138).
        const double n = v.get<double>();
        // Beyond year 9999 in milliseconds is out of range below; the bound keeps the cast defined.
        if (!std::isfinite(n) || std::fabs(n) > 1e15) {
          return "expected a date-time, got " + v.dump();
        }
        us = std::llround(std::fabs(n) < 1e11 ? n * 1e6 : n * 1e3);
      } else {
        return "expected a date-time (ISO 8601 or epoch seconds/milliseconds), got " + type_name(v);
      }
      // DATETIME: years 1000-9999; TIMESTAMP: 1970-01-01 00:00:01 to 2038-01-19 03:14:07 UTC.
      const std::int64_t lo = kind == Kind::kTimestamp ? 1000000LL : -30610224000LL * 1000000;
      const std::int64_t hi =
          kind == Kind::kTimestamp ? 2147483647LL * 1000000 : 253402300799LL * 1000000 + 999999;
      if (*us < lo || *us > hi) return "date-time out of range for " + c.column_type;
      std::string text = format_datetime_us(*us);
      if (kind == Kind::kDate) text.resize(10);
      return CellValue{std::move(text)};
    }
    case Kind::kEnum: {
      if (!v.is_string()) return "expected one of " + c.column_type + ", got " + type_name(v);
      const auto values = enum_values(c.column_type);
      const std::string s = v.get<std::string>();
      // The server compares with the column's collation, case-insensitive by default: "ON" is
      // 'on'. The value is written as the column spells it.
      const auto it = std::find_if(values.begin(), values.end(),
                                   [&](const std::string& e) { return same_ascii_case(e, s); });
      if (it == values.end()) return "'" + s.substr(0, 64) + "' is not one of " + c.column_type;
      return CellValue{*it};
    }
    case Kind::kUnsupported:
      break;
  }
  return "type " + c.column_type + " is not supported";
}

}  // namespace

std::optional<std::int64_t> parse_datetime_us(std::string_view text) { return parse_iso8601(text); }

std::optional<WriteMode> parse_write_mode(std::string_view text) {
  if (text == "insert") return WriteMode::kInsert;
  if (text == "upsert") return WriteMode::kUpsert;
  return std::nullopt;
}

std::variant<ColumnSource, std::string> parse_column_source(std::string_view text) {
  ColumnSource s;
  const std::string shown = "'" + std::string(text.substr(0, 64)) + "'";
  if (!text.empty() && text.front() == '/') {
    try {
      s.pointer = nlohmann::json::json_pointer(std::string(text));
    } catch (const nlohmann::json::exception&) {
      return "source " + shown + " is not a valid JSON Pointer (escape '~' as ~0, '/' as ~1)";
    }
    return s;
  }
  if (text == "$topic") {
    s.kind = SourceKind::kTopic;
  } else if (text == "$msg_id") {
    s.kind = SourceKind::kMsgId;
  } else if (text == "$flow_code") {
    s.kind = SourceKind::kFlowCode;
  } else if (text == "$received_at") {
    s.kind = SourceKind::kReceivedAt;
  } else if (text == "$payload") {
    s.kind = SourceKind::kPayload;
  } else if (text.starts_with("$topic[") && text.ends_with("]") && text.size() > 8) {
    const std::string_view digits = text.substr(7, text.size() - 8);
    int level = -1;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), level);
    if (ec != std::errc() || end != digits.data() + digits.size() || level < 0 || level > 1000) {
      return "source " + shown + ": the level must be a number from 0 to 1000";
    }
    s.kind = SourceKind::kTopicLevel;
    s.level = level;
  } else if (text.starts_with("$user_property:") && text.size() > 15) {
    s.kind = SourceKind::kUserProperty;
    s.property = std::string(text.substr(15));
  } else {
    return "source " + shown +
           " is not a JSON Pointer (\"/field\") nor one of $topic, $topic[N], $msg_id, "
           "$flow_code, $received_at, $payload, $user_property:NAME";
  }
  return s;
}

CompiledColumnMap compile_column_map(const nlohmann::json& column_map, const TableInfo& table) {
  CompiledColumnMap out;
  std::vector<std::string> problems;
  if (table.columns.empty()) {
    // information_schema also hides a table the gateway's user has no privilege on.
    problems.push_back("table '" + table.name +
                       "' does not exist (or the gateway's database user cannot see it)");
  }
  if (!column_map.is_object() || column_map.empty()) {
    problems.emplace_back("column_map must be a JSON object of column name -> source");
  } else {
    for (const auto& [column, source] : column_map.items()) {
      if (!source.is_string()) {
        problems.push_back("column '" + column + "': the source must be a string");
        continue;
      }
      auto parsed = parse_column_source(source.get<std::string>());
      if (auto* why = std::get_if<std::string>(&parsed)) {
        problems.push_back("column '" + column + "': " + *why);
        continue;
      }
      if (table.columns.empty()) continue;
      // Column names compare case-insensitively in MariaDB. (A copy: a lambda may not capture a
      // structured binding before C++20 compilers all allow it.)
      const std::string& wanted = column;
      const auto info =
          std::find_if(table.columns.begin(), table.columns.end(),
                       [&](const auto& c) { return same_ascii_case(c.name, wanted); });
      if (info == table.columns.end()) {
        problems.push_back("column '" + column + "' does not exist in table '" + table.name + "'");
        continue;
      }
      if (info->generated) {
        problems.push_back("column '" + column + "' is a generated column and cannot be written");
        continue;
      }
      if (std::any_of(out.columns.begin(), out.columns.end(),
                      [&](const MappedColumn& m) { return m.column.name == info->name; })) {
        problems.push_back("column '" + column + "' is mapped twice (names ignore case)");
        continue;
      }
      if (kind_of(*info) == Kind::kUnsupported) {
        problems.push_back("column '" + column + "' has type " + info->column_type +
                           ", which STORE_TABLE does not support");
        continue;
      }
      out.columns.push_back(
          MappedColumn{*info, std::get<ColumnSource>(parsed), source.get<std::string>()});
    }
    // The INSERT names only the mapped columns: any other must be able to take its default.
    for (const ColumnInfo& c : table.columns) {
      const bool mapped =
          std::any_of(out.columns.begin(), out.columns.end(),
                      [&](const MappedColumn& m) { return m.column.name == c.name; });
      if (!mapped && !c.nullable && !c.has_default && !c.generated) {
        problems.push_back("column '" + c.name +
                           "' is NOT NULL without a default and must be mapped");
      }
    }
  }
  for (const std::string& p : problems) {
    if (!out.error.empty()) out.error += "; ";
    out.error += p;
  }
  out.problems = std::move(problems);
  return out;
}

FlowMapping compile_flow_mapping(const std::optional<std::string>& target_table,
                                 const std::optional<std::string>& column_map,
                                 std::string_view write_mode, const TableInfo& table) {
  FlowMapping out;
  std::vector<std::string> problems;
  // The gateway's own tables: an upsert into spool_offsets or flows would skip messages.
  static constexpr std::array<std::string_view, 8> kOwnTables = {
      "mqtt_servers",  "flows",      "data_records",    "rejected_messages",
      "spool_offsets", "deliveries", "delivery_leases", "retained_messages"};
  if (!target_table || target_table->empty()) {
    problems.emplace_back("target_table is not set");
  } else if (std::any_of(kOwnTables.begin(), kOwnTables.end(),
                         [&](std::string_view t) { return same_ascii_case(t, *target_table); })) {
    problems.push_back("target_table '" + *target_table + "' is one of the gateway's own tables");
  }
  const auto mode = parse_write_mode(write_mode);
  if (mode) {
    out.mode = *mode;
  } else {
    problems.push_back("write_mode '" + std::string(write_mode) + "' is not 'insert' or 'upsert'");
  }
  if (!column_map) {
    problems.emplace_back("column_map is not set");
  } else if (auto json = nlohmann::json::parse(*column_map, nullptr, false); json.is_discarded()) {
    problems.emplace_back("column_map is not valid JSON");
  } else if (problems.empty()) {
    out.map = compile_column_map(json, table);
    return out;
  } else {
    // Report the map's own problems too, so that one --check shows everything to fix.
    if (target_table && !target_table->empty()) {
      for (std::string& p : compile_column_map(json, table).problems) problems.push_back(p);
    }
  }
  for (const std::string& p : problems) {
    if (!out.map.error.empty()) out.map.error += "; ";
    out.map.error += p;
  }
  out.map.problems = std::move(problems);
  return out;
}

MappedRow map_row(const CompiledColumnMap& map, const RowContext& message) {
  MappedRow row;
  row.cells.reserve(map.columns.size());
  for (const MappedColumn& m : map.columns) {
    std::optional<Found> found = lookup(m, message);
    if (!found) {
      if (m.column.has_default) {
        row.cells.emplace_back(UseDefault{});
      } else if (m.column.nullable) {
        row.cells.emplace_back(std::monostate{});
      } else {
        row.error = "column '" + m.column.name + "': source '" + m.source_text +
                    "' is missing and the column is NOT NULL without a default";
        row.cells.clear();
        return row;
      }
      continue;
    }
    auto cell = convert(m, *found, message);
    if (auto* why = std::get_if<std::string>(&cell)) {
      row.error = "column '" + m.column.name + "': " + *why;
      row.cells.clear();
      return row;
    }
    row.cells.push_back(std::move(std::get<CellValue>(cell)));
  }
  return row;
}

std::string format_datetime_us(std::int64_t unix_us) {
  std::int64_t secs = unix_us / 1000000;
  std::int64_t micros = unix_us % 1000000;
  if (micros < 0) {
    micros += 1000000;
    --secs;
  }
  std::int64_t days = secs / 86400;
  std::int64_t rem = secs % 86400;
  if (rem < 0) {
    rem += 86400;
    --days;
  }
  // civil_from_days (H. Hinnant).
  days += 719468;
  const std::int64_t era = (days >= 0 ? days : days - 146096) / 146097;
  const auto doe = static_cast<unsigned>(days - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t y = static_cast<std::int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04lld-%02u-%02u %02lld:%02lld:%02lld.%06lld",
                static_cast<long long>(y) + (m <= 2 ? 1 : 0), m, d,
                static_cast<long long>(rem / 3600), static_cast<long long>(rem / 60 % 60),
                static_cast<long long>(rem % 60), static_cast<long long>(micros));
  return buf;
}

}  // namespace gateway
