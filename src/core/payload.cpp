#include "gateway/payload.h"

#include <algorithm>
#include <string>

namespace gateway {
namespace {

using nlohmann::json;

// Reasons quote nlohmann's messages, whose "last read: '...'" part can hold a whole string token.
constexpr std::size_t kMaxReasonBytes = 240;
constexpr std::size_t kMaxFieldNamePreviewBytes = 40;

// Length of the well-formed UTF-8 sequence starting at text[i], or 0 if it is ill-formed
// (Unicode Table 3-7).
std::size_t utf8_sequence_length(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[i + k]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) return 1;
  const std::size_t left = text.size() - i;
  const auto continuation = [&](std::size_t k) { return k < left && (byte(k) & 0xC0) == 0x80; };
  if (lead >= 0xC2 && lead <= 0xDF) return continuation(1) ? 2 : 0;
  if (lead >= 0xE0 && lead <= 0xF4) {
    if (left < 2) return 0;
    // The second byte's range excludes overlong forms (E0, F0), surrogates (ED), > U+10FFFF (F4).
    unsigned char low = 0x80;
    unsigned char high = 0xBF;
    if (lead == 0xE0) low = 0xA0;
    if (lead == 0xED) high = 0x9F;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;
    if (byte(1) < low || byte(1) > high) return 0;
    if (lead <= 0xEF) return continuation(2) ? 3 : 0;
    return continuation(2) && continuation(3) ? 4 : 0;
  }
  return 0;  // 80..C1 (continuation or overlong lead), F5..FF
}

struct ScanResult {
  std::optional<std::size_t> bad_utf8_at;
  std::optional<std::size_t> nul_at;
  bool too_deep = false;
};

// One pass over the payload: UTF-8 well-formedness, and the nesting depth of brackets outside
// strings. For valid JSON that depth is exactly the document's nesting; for invalid JSON the
// parser rejects the payload anyway, so only the reason can differ. This is cheaper than a parser
// callback, which costs a std::function call per value and makes nlohmann build via its
// callback parser.
ScanResult scan_payload(std::string_view bytes, int max_depth) {
  ScanResult result;
  bool in_string = false;
  bool escaped = false;
  int depth = 0;
  for (std::size_t i = 0; i < bytes.size();) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x80) {
      const std::size_t length = utf8_sequence_length(bytes, i);
      if (length == 0) {
        result.bad_utf8_at = i;
        return result;
      }
      i += length;
      escaped = false;
      continue;
    }
    // nlohmann's lexer takes a NUL outside a string for the end of input and would silently
    // ignore whatever follows it ("{}\0garbage" parses); inside a string it is an error anyway.
    if (c == 0 && !result.nul_at) result.nul_at = i;
    ++i;
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      // Keep scanning after this so an invalid UTF-8 byte further on is still reported first.
      if (++depth > max_depth) result.too_deep = true;
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return result;
}

std::string describe_json_type(const json& value) {
  return std::string("a JSON ") + value.type_name();
}

}  // namespace

std::optional<std::size_t> find_invalid_utf8(std::string_view bytes) {
  for (std::size_t i = 0; i < bytes.size();) {
    const std::size_t length = utf8_sequence_length(bytes, i);
    if (length == 0) return i;
    i += length;
  }
  return std::nullopt;
}

std::string printable_excerpt(std::string_view text, std::size_t max_bytes) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 4);
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    std::size_t length = utf8_sequence_length(text, i);
    // C1 controls (U+0080..U+009F) are C2 80..C2 9F: escaping byte by byte covers them too.
    const bool control =
        c < 0x20 || c == 0x7F ||
        (c == 0xC2 && length == 2 && static_cast<unsigned char>(text[i + 1]) < 0xA0);
    char escape[4] = {'\\', 'x', kHex[c >> 4], kHex[c & 0xF]};
    std::string_view piece = text.substr(i, length);
    if (length == 0 || control) {
      piece = std::string_view(escape, sizeof escape);
      length = 1;
    }
    if (out.size() + piece.size() > max_bytes) {
      out += "\u2026";
      break;
    }
    out += piece;
    i += length;
  }
  return out;
}

ParsedPayload parse_payload(std::string_view bytes, const PayloadLimits& limits) {
  ParsedPayload result;
  if (bytes.size() > limits.max_bytes) {
    result.error = "payload is " + std::to_string(bytes.size()) + " bytes, limit " +
                   std::to_string(limits.max_bytes);
    return result;
  }
  if (bytes.empty()) {
    result.error = "payload is empty";
    return result;
  }
  const ScanResult scan = scan_payload(bytes, limits.max_depth);
  if (scan.bad_utf8_at) {
    result.error = "payload is not valid UTF-8 (byte " + std::to_string(*scan.bad_utf8_at) + ")";
    return result;
  }
  if (scan.nul_at) {
    result.error =
        "payload is not valid JSON: NUL byte (byte " + std::to_string(*scan.nul_at) + ")";
    return result;
  }
  if (scan.too_deep) {
    result.error = "payload nests deeper than " + std::to_string(limits.max_depth) + " levels";
    return result;
  }
  try {
    result.object = json::parse(bytes.data(), bytes.data() + bytes.size());
  } catch (const json::parse_error& e) {
    result.error = "payload is not valid JSON: " + printable_excerpt(e.what(), kMaxReasonBytes);
  } catch (const json::out_of_range& e) {
    result.error =
        "payload has a number out of range: " + printable_excerpt(e.what(), kMaxReasonBytes);
  } catch (const json::exception& e) {
    result.error = "payload is not valid JSON: " + printable_excerpt(e.what(), kMaxReasonBytes);
  }
  if (result.ok() && !result.object.is_object()) {
    result.error = "payload is " + describe_json_type(result.object) + ", expected an object";
  }
  if (!result.ok()) result.object = nullptr;
  return result;
}

std::string encode_field_value(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::optional<std::string> check_field_names(const nlohmann::json& object, std::size_t max_length) {
  if (!object.is_object()) return std::nullopt;
  for (auto it = object.cbegin(); it != object.cend(); ++it) {
    const std::string& name = it.key();
    if (name.size() <= max_length) continue;  // bytes >= characters: cannot be too long
    const auto characters =
        static_cast<std::size_t>(std::count_if(name.begin(), name.end(), [](char c) {
          return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
        }));
    if (characters > max_length) {
      return "field name longer than " + std::to_string(max_length) + " characters: '" +
             printable_excerpt(name, kMaxFieldNamePreviewBytes) + "'";
    }
  }
  return std::nullopt;
}

}  // namespace gateway
