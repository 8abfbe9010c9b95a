#include "gateway/adapters/sql_literal.h"

#include <algorithm>
#include <charconv>

namespace gateway {

void append_sql_string(std::string& sql, std::string_view s) {
  const bool plain = std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x20 && u < 0x7F && c != '\\';
  });
  if (plain) {
    sql += '\'';
    for (std::size_t from = 0;;) {
      const std::size_t quote = s.find('\'', from);
      sql.append(s.substr(from, quote == std::string_view::npos ? quote : quote + 1 - from));
      if (quote == std::string_view::npos) break;
      sql += '\'';  // a quote is written twice
      from = quote + 1;
    }
    sql += '\'';
    return;
  }
  static constexpr char kHex[] = "0123456789ABCDEF";
  sql += "X'";
  std::size_t at = sql.size();
  sql.resize(at + 2 * s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    sql[at++] = kHex[u >> 4];
    sql[at++] = kHex[u & 0xF];
  }
  sql += '\'';
}

void append_sql_int(std::string& sql, std::int64_t v) {
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof digits, v).ptr;
  sql.append(digits, end);
}

}  // namespace gateway
