#include "gateway/env_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include "gateway/errors.h"

namespace gateway {

namespace {

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\f' || c == '\v'; }
bool is_eol(char c) { return c == '\n' || c == '\r'; }
bool is_key_start(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
bool is_key_char(char c) { return is_key_start(c) || (c >= '0' && c <= '9'); }

// A cursor over the whole text, so that quoted values can span lines while line numbers stay
// right for error messages.
class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;  // UTF-8 byte order mark
  }

  EnvMap parse() {
    EnvMap result;
    while (!at_end()) {
      skip_blanks();
      if (at_end()) break;
      if (is_eol(peek())) {
        take_eol();
        continue;
      }
      if (peek() == '#') {
        skip_to_eol();
        continue;
      }
      statement_line_ = line_;
      auto [key, value] = parse_binding();
      result.insert_or_assign(std::move(key), std::move(value));
    }
    return result;
  }

 private:
  std::pair<std::string, std::string> parse_binding() {
    skip_export_prefix();
    std::string key = parse_key();
    skip_blanks();
    if (at_end() || peek() != '=') {
      // The text is not quoted back: a line without '=' may be a password on its own.
      fail("expected KEY=VALUE, found no '=' (the line is not shown: it may hold a secret)");
    }
    ++pos_;
    // `KEY= # note` is an empty value with a comment, not the value "# note".
    bool blank_after_equals = !at_end() && is_blank(peek());
    skip_blanks();
    std::string value;
    if (!at_end() && peek() == '\'') {
      value = parse_single_quoted(key);
      finish_after_quote(key);
    } else if (!at_end() && peek() == '"') {
      value = parse_double_quoted(key);
      finish_after_quote(key);
    } else if (blank_after_equals && !at_end() && peek() == '#') {
      skip_to_eol();
    } else {
      value = parse_unquoted();
    }
    return {std::move(key), std::move(value)};
  }

  void skip_export_prefix() {
    constexpr std::string_view kExport = "export";
    if (text_.substr(pos_, kExport.size()) == kExport && pos_ + kExport.size() < text_.size() &&
        is_blank(text_[pos_ + kExport.size()])) {
      pos_ += kExport.size();
      skip_blanks();
    }
  }

  std::string parse_key() {
    std::size_t start = pos_;
    while (!at_end() && !is_eol(peek()) && !is_blank(peek()) && peek() != '=') ++pos_;
    std::string key(text_.substr(start, pos_ - start));
    if (key.empty()) fail("expected KEY=VALUE, found no key before '='");
    std::size_t bad = is_key_start(key.front()) ? 1 : 0;
    while (bad > 0 && bad < key.size() && is_key_char(key[bad])) ++bad;
    if (bad < key.size()) {
      // Only where: the text before '=' may be a mistyped `DB_PASSWORD:secret`.
      fail("invalid key: its character " + std::to_string(bad + 1) +
           " is not allowed (a key is [A-Za-z_][A-Za-z0-9_]*; the line is not shown: it may "
           "hold a secret)");
    }
    return key;
  }

  std::string parse_single_quoted(const std::string& key) {
    ++pos_;
    std::string value;
    while (!at_end() && peek() != '\'') value += take();
    if (at_end()) fail("unterminated single quote in the value of " + key);
    ++pos_;
    return value;
  }

  std::string parse_double_quoted(const std::string& key) {
    ++pos_;
    std::string value;
    while (!at_end() && peek() != '"') {
      char c = take();
      if (c != '\\' || at_end()) {
        value += c;
        continue;
      }
      char escaped = take();
      switch (escaped) {
        case 'n':
          value += '\n';
          break;
        case 't':
          value += '\t';
          break;
        case 'r':
          value += '\r';
          break;
        case 'a':
          value += '\a';
          break;
        case 'b':
          value += '\b';
          break;
        case 'f':
          value += '\f';
          break;
        case 'v':
          value += '\v';
          break;
        case '"':
        case '\'':
        case '\\':
          value += escaped;
          break;
        default:  // python-dotenv leaves unknown escapes as written
          value += '\\';
          value += escaped;
      }
    }
    if (at_end()) fail("unterminated double quote in the value of " + key);
    ++pos_;
    return value;
  }

  // After a closing quote only blanks and a comment may follow on that line.
  void finish_after_quote(const std::string& key) {
    skip_blanks();
    if (at_end() || is_eol(peek())) return;
    if (peek() == '#') {
      skip_to_eol();
      return;
    }
    fail("unexpected text after the closing quote in the value of " + key);
  }

  std::string parse_unquoted() {
    std::size_t start = pos_;
    while (!at_end() && !is_eol(peek())) ++pos_;
    std::string_view raw = text_.substr(start, pos_ - start);
    for (std::size_t i = 1; i < raw.size(); ++i) {
      if (raw[i] == '#' && is_blank(raw[i - 1])) {
        raw = raw.substr(0, i);
        break;
      }
    }
    while (!raw.empty() && is_blank(raw.back())) raw.remove_suffix(1);
    return std::string(raw);
  }

  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return text_[pos_]; }

  // Consumes one character, counting line breaks (\n, \r\n and a lone \r).
  char take() {
    char c = text_[pos_++];
    if (c == '\n' || (c == '\r' && (at_end() || peek() != '\n'))) ++line_;
    return c;
  }

  void take_eol() {
    if (peek() == '\r' && pos_ + 1 < text_.size() && text_[pos_ + 1] == '\n') ++pos_;
    ++pos_;
    ++line_;
  }

  void skip_blanks() {
    while (!at_end() && is_blank(peek())) ++pos_;
  }

  void skip_to_eol() {
    while (!at_end() && !is_eol(peek())) ++pos_;
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw ConfigError("line " + std::to_string(statement_line_) + ": " + what);
  }

  std::string_view text_;
  std::size_t pos_ = 0;
  int line_ = 1;
  int statement_line_ = 1;
};

}  // namespace

EnvMap parse_env_file(std::string_view text) { return Parser(text).parse(); }

std::optional<EnvMap> read_env_file(const std::filesystem::path& path) {
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  if (status.type() == std::filesystem::file_type::not_found) return std::nullopt;
  if (ec) throw ConfigError(path.string() + ": cannot read: " + ec.message());
  if (std::filesystem::is_directory(status)) {
    throw ConfigError(path.string() + ": cannot read: is a directory");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path.string() + ": cannot read: " + std::strerror(errno));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) throw ConfigError(path.string() + ": cannot read: " + std::strerror(errno));
  try {
    return parse_env_file(contents.str());
  } catch (const ConfigError& e) {
    throw ConfigError(path.string() + ": " + e.what());
  }
}

EnvMap environment_map(char** envp) {
  EnvMap result;
  if (envp == nullptr) return result;
  for (char** entry = envp; *entry != nullptr; ++entry) {
    std::string_view text(*entry);
    std::size_t equals = text.find('=');
    if (equals == std::string_view::npos) continue;
    result.emplace(text.substr(0, equals), text.substr(equals + 1));
  }
  return result;
}

EnvMap merge_env(const EnvMap& process_env, const EnvMap& file_env) {
  EnvMap result = process_env;
  result.insert(file_env.begin(), file_env.end());  // insert() keeps existing (process) entries
  return result;
}

}  // namespace gateway
