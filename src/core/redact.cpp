#include "gateway/redact.h"

#include <optional>

namespace gateway {
namespace {

constexpr std::string_view kMask = "***";

bool is_scheme_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '-' || c == '.';
}

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Ends the authority part of a URL: its own delimiters, and what cannot be in a URL at all (so
// that a URL in running text ends where the text goes on).
bool ends_authority(char c) {
  switch (c) {
    case '/':
    case '?':
    case '#':
    case '"':
    case '<':
    case '>':
    case '\\':
    case '`':
    case '{':
    case '}':
    case '|':
    case '^':
      return true;
    default:
      return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
  }
}

// The userinfo of the URL whose "://" is at `sep`: [start, at) with the '@' at `at`.
struct UserInfo {
  std::size_t start = 0;
  std::size_t at = 0;
};

std::optional<UserInfo> userinfo_at(std::string_view text, std::size_t sep) {
  // A scheme: a letter, then letters, digits, '+', '-', '.'.
  std::size_t begin = sep;
  while (begin > 0 && is_scheme_char(text[begin - 1])) --begin;
  while (begin < sep && !is_alpha(text[begin])) ++begin;
  if (begin == sep) return std::nullopt;
  const std::size_t start = sep + 3;
  std::size_t end = start;
  std::size_t at = std::string_view::npos;
  for (; end < text.size() && !ends_authority(text[end]); ++end) {
    if (text[end] == '@') at = end;
  }
  if (at == std::string_view::npos) return std::nullopt;
  return UserInfo{start, at};
}

}  // namespace

bool has_url_credentials(std::string_view text) {
  for (std::size_t sep = text.find("://"); sep != std::string_view::npos;
       sep = text.find("://", sep + 3)) {
    if (userinfo_at(text, sep)) return true;
  }
  return false;
}

std::string redact_url_credentials(std::string_view text) {
  std::string out;
  std::size_t copied = 0;  // text[0, copied) is in out
  for (std::size_t sep = text.find("://"); sep != std::string_view::npos;
       sep = text.find("://", sep + 3)) {
    if (sep < copied) continue;  // inside a userinfo already replaced
    const auto info = userinfo_at(text, sep);
    if (!info) continue;
    if (out.empty()) out.reserve(text.size());
    out.append(text.substr(copied, info->start - copied));
    const std::string_view userinfo = text.substr(info->start, info->at - info->start);
    const std::size_t colon = userinfo.find(':');
    // "user:password": the user stays (it says which account); a lone user part may be a token.
    if (colon != std::string_view::npos) out.append(userinfo.substr(0, colon + 1));
    out.append(kMask);
    copied = info->at;  // the '@' and what follows are copied as they are
  }
  if (copied == 0) return std::string(text);
  out.append(text.substr(copied));
  return out;
}

}  // namespace gateway
