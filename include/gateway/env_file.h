// Reading .env files and the process environment into a variable map, with python-dotenv's
// syntax and precedence. Pure functions over their arguments; safe to call from any thread
// (environment_map() only reads the array it is given).
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace gateway {

// Variable name -> value. std::less<> so lookups take a string_view without a copy.
using EnvMap = std::map<std::string, std::string, std::less<>>;

// Parses .env text the way python-dotenv does:
//   KEY=VALUE, with an optional `export ` prefix; blank lines and `#` comment lines are skipped;
//   whitespace around the key and the value is trimmed;
//   'single quoted' values are literal;
//   "double quoted" values decode \n \t \r \" \' \\ \a \b \f \v (other escapes are kept as
//   written); quoted values may span lines and may be followed by a `# comment`; an unquoted value
//   ends at whitespace followed by `#` (so `a#b` keeps its `#`).
// A later assignment of the same key replaces an earlier one. Keys are [A-Za-z_][A-Za-z0-9_]*.
// Throws ConfigError "line N: ..." (N = line where the statement starts) for a line that is not
// KEY=VALUE, an invalid key, an unterminated quote, or text after a closing quote. The message
// names the key but never echoes the value, which may be a password.
EnvMap parse_env_file(std::string_view text);

// Reads and parses the file at path. Returns std::nullopt if it does not exist. Throws
// ConfigError "<path>: ..." if it exists but cannot be read or does not parse.
std::optional<EnvMap> read_env_file(const std::filesystem::path& path);

// Copies a null-terminated "NAME=value" array (pass ::environ). Entries without '=' are ignored;
// for a duplicated name the first entry wins, as with getenv(). envp may be nullptr.
EnvMap environment_map(char** envp);

// python-dotenv precedence (load_dotenv without override): a variable that is present in the
// process environment wins over the file, even when its value is empty.
EnvMap merge_env(const EnvMap& process_env, const EnvMap& file_env);

}  // namespace gateway
