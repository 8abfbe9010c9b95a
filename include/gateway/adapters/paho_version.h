// The Paho MQTT C version the gateway needs, the comparison that checks it and the start-up error
// (pure, no Paho header: the unit tests use it without the library). CMakeLists.txt checks the
// same minimum at configure time; require_paho_c_version() (paho_mqtt_connection.h) checks the
// library loaded at run time. Thread-safe: constants and pure functions.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace gateway {

// Our at-least-once guarantee rests on Paho C sending the QoS 1 PUBACK only after the message
// callback returned (the callback returns once the message is in the spool). Paho C does so from
// 1.3.10 on; older versions acknowledged first, so a crash in between lost the message.
// Keep in step with GATEWAY_MIN_PAHO_C_VERSION in CMakeLists.txt.
inline constexpr std::string_view kMinPahoCVersion = "1.3.10";

// "1.3.12" -> {1, 3, 12}. The three numbers are plain decimal; after them, only a suffix that
// starts with something other than a digit or a dot is allowed ("1.3.13-rc1", "1.3.9 (git)").
// Returns std::nullopt for anything else ("1.3", "1.3.x", "1.3.10.2", "v1.3.10", "").
constexpr std::optional<std::array<int, 3>> parse_dotted_version(std::string_view text) {
  std::array<int, 3> parts{};
  std::size_t i = 0;
  for (std::size_t part = 0; part < parts.size(); ++part) {
    if (part > 0) {
      if (i >= text.size() || text[i] != '.') return std::nullopt;
      ++i;
    }
    const std::size_t start = i;
    long value = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      value = value * 10 + (text[i] - '0');
      if (value > 1'000'000) return std::nullopt;
      ++i;
    }
    if (i == start) return std::nullopt;
    parts[part] = static_cast<int>(value);
  }
  if (i < text.size() && ((text[i] >= '0' && text[i] <= '9') || text[i] == '.')) {
    return std::nullopt;
  }
  return parts;
}

// True when version `found` is at least `required`, compared number by number (so "1.3.9" is
// older than "1.3.10"). False when either is not a dotted version: an unknown version is not
// trusted.
constexpr bool version_at_least(std::string_view found, std::string_view required) {
  const auto have = parse_dotted_version(found);
  const auto need = parse_dotted_version(required);
  return have && need && *have >= *need;
}

// The one-line reason why Paho C version `found` (as MQTTAsync_getVersionInfo() reports it; ""
// when it reports none) will not do, naming it and kMinPahoCVersion; std::nullopt when it will.
inline std::optional<std::string> paho_c_version_problem(std::string_view found) {
  if (version_at_least(found, kMinPahoCVersion)) return std::nullopt;
  return "the Paho MQTT C library loaded is " +
         (found.empty() ? std::string("of unknown version") : "version " + std::string(found)) +
         "; mqtt-gateway needs " + std::string(kMinPahoCVersion) +
         " or newer (older versions acknowledge a QoS 1 message before it is spooled)";
}

}  // namespace gateway
