#include "mysql_table_rows.h"

#include <cppconn/datatype.h>

#include <set>
#include <variant>

#include "gateway/errors.h"

namespace gateway {
namespace {

constexpr const char* kColumnsSql =
    "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA, "
    "CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION";
// MariaDB's JSON type is LONGTEXT with this CHECK on the column.
constexpr const char* kJsonChecksSql =
    "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = ?";

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

// `name` as a quoted identifier.
std::string sql_identifier(std::string_view name) {
  std::string out = "`";
  for (char c : name) {
    out += c;
    if (c == '`') out += '`';
  }
  return out + "`";
}

// How a cell of the column is written: a plain value, or one that may be the column's DEFAULT
// (bound as a flag and a value: DEFAULT(col) may only be named for a column that has a default).
bool takes_default_flag(const ColumnInfo& c) { return c.has_default && !c.auto_increment; }

std::string statement_head(const TableRows& t) {
  std::string head = "INSERT INTO " + sql_identifier(t.table) + " (";
  for (std::size_t i = 0; i < t.map->columns.size(); ++i) {
    head += (i ? ", " : "") + sql_identifier(t.map->columns[i].column.name);
  }
  return head + ") VALUES ";
}

std::string row_placeholders(const TableRows& t) {
  std::string row = "(";
  for (std::size_t i = 0; i < t.map->columns.size(); ++i) {
    const ColumnInfo& c = t.map->columns[i].column;
    row += i ? ", " : "";
    row += takes_default_flag(c) ? "IF(?, DEFAULT(" + sql_identifier(c.name) + "), ?)" : "?";
  }
  return row + ")";
}

std::string statement_tail(const TableRows& t) {
  if (t.mode != WriteMode::kUpsert) return {};
  std::string tail = " ON DUPLICATE KEY UPDATE ";
  for (std::size_t i = 0; i < t.map->columns.size(); ++i) {
    const std::string name = sql_identifier(t.map->columns[i].column.name);
    tail.append(i ? ", " : "").append(name).append(" = VALUES(").append(name).append(")");
  }
  return tail;
}

void bind_cell(sql::PreparedStatement& stmt, int& p, const ColumnInfo& c, const CellValue& v) {
  if (takes_default_flag(c)) stmt.setInt(p++, std::holds_alternative<UseDefault>(v) ? 1 : 0);
  if (const auto* i = std::get_if<std::int64_t>(&v)) {
    stmt.setInt64(p++, *i);
  } else if (const auto* u = std::get_if<std::uint64_t>(&v)) {
    stmt.setUInt64(p++, *u);
  } else if (const auto* d = std::get_if<double>(&v)) {
    stmt.setDouble(p++, *d);
  } else if (const auto* s = std::get_if<std::string>(&v)) {
    stmt.setString(p++, *s);
  } else {
    // NULL, or the default: an AUTO_INCREMENT column takes its next value for NULL.
    stmt.setNull(p++, sql::DataType::VARCHAR);
  }
}

// Bytes of a row's bound values in an execute packet, with each parameter's type and length
// prefix (and the flag of a column that may take its default) counted.
std::size_t cells_size(const std::vector<CellValue>& cells) {
  constexpr std::size_t kPerParameter = 24;
  std::size_t bytes = 0;
  for (const CellValue& v : cells) {
    const auto* s = std::get_if<std::string>(&v);
    bytes += (s ? s->size() : 8) + 2 * kPerParameter;
  }
  return bytes;
}

std::size_t placeholders(const TableRows& t) {
  std::size_t n = 0;
  for (const MappedColumn& m : t.map->columns) n += takes_default_flag(m.column) ? 2 : 1;
  return n;
}

}  // namespace

TableInfo describe_table(MySqlSession& db, std::string_view table) {
  TableInfo info;
  info.name = std::string(table);
  const sql::SQLString name(table.data(), table.size());
  std::set<std::string> json_columns;
  {
    auto& stmt = db.prepare(kJsonChecksSql);
    stmt.setString(1, name);
    std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
    while (rs->next()) {
      const std::string clause = rs->getString(1);
      constexpr std::string_view kPrefix = "json_valid(`";
      if (clause.starts_with(kPrefix) && clause.ends_with("`)")) {
        json_columns.insert(
            clause.substr(kPrefix.size(), clause.size() - kPrefix.size() - std::size_t{2}));
      }
    }
  }
  auto& stmt = db.prepare(kColumnsSql);
  stmt.setString(1, name);
  std::unique_ptr<sql::ResultSet> rs(stmt.executeQuery());
  while (rs->next()) {
    ColumnInfo c;
    c.name = rs->getString(1);
    c.data_type = rs->getString(2);
    c.column_type = rs->getString(3);
    c.nullable = rs->getString(4) == "YES";
    const std::string extra = rs->getString(6);
    c.auto_increment = contains(extra, "auto_increment");
    c.generated = contains(extra, "GENERATED");
    // MariaDB shows a NULL default as the text NULL (a string default is quoted: 'NULL').
    const std::optional<std::string> def = nullable_string(*rs, 5);
    c.has_default = (def && *def != "NULL") || c.auto_increment;
    if (!rs->isNull(7)) c.max_chars = static_cast<std::uint64_t>(rs->getUInt64(7));
    c.numeric_precision = rs->isNull(8) ? 0 : rs->getInt(8);
    c.numeric_scale = rs->isNull(9) ? 0 : rs->getInt(9);
    if (json_columns.contains(c.name)) c.data_type = "json";
    info.columns.push_back(std::move(c));
  }
  return info;
}

void insert_table_rows(MySqlSession& db, const TableRows& t) {
  if (t.rows.empty()) return;
  const std::string head = statement_head(t);
  const std::string row = row_placeholders(t);
  const std::string tail = statement_tail(t);
  const std::string key = head + row + tail;
  const std::string what = "insert into " + sql_identifier(t.table);
  try {
    insert_in_chunks(
        db, t.rows,
        [&](std::size_t n) -> sql::PreparedStatement& {
          return db.prepare_keyed(
              key, n, [&] { return repeated_rows(head.c_str(), row.c_str(), n, tail.c_str()); });
        },
        what,
        [&](sql::PreparedStatement& stmt, int& p, const std::vector<CellValue>& cells) {
          for (std::size_t i = 0; i < cells.size(); ++i) {
            bind_cell(stmt, p, t.map->columns[i].column, cells[i]);
          }
        },
        cells_size, placeholders(t));
  } catch (const DbRefused& e) {
    // In the operator's table a unique key or a foreign key is part of the data's contract.
    if (e.code == 1062 || e.code == 1452) throw DbDataError(e.what(), e.code);
    throw;
  }
}

}  // namespace gateway
