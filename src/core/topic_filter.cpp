#include "gateway/topic_filter.h"

#include <algorithm>

#include "gateway/payload.h"

namespace gateway {
namespace {

constexpr std::size_t kMaxTopicBytes = 65535;  // MQTT strings carry a 16-bit length
constexpr std::string_view kSharePrefix = "$share/";

// The level of `text` starting at `begin`, ending before the next '/' or at the end.
std::size_t level_end(std::string_view text, std::size_t begin) {
  return std::min(text.find('/', begin), text.size());
}

}  // namespace

std::optional<std::string> validate_topic_filter(std::string_view filter) {
  if (filter.empty()) return "empty filter";
  if (filter.size() > kMaxTopicBytes) return "longer than 65535 bytes";
  if (filter.find('\0') != std::string_view::npos) return "contains NUL";
  if (const auto bad = find_invalid_utf8(filter)) {
    return "not valid UTF-8 (byte " + std::to_string(*bad) + ")";
  }
  if (filter.substr(0, kSharePrefix.size()) == kSharePrefix) {
    return "shared subscriptions are set with MQTT_SHARED_GROUP";
  }
  for (std::size_t begin = 0;;) {
    const std::size_t end = level_end(filter, begin);
    const std::string_view level = filter.substr(begin, end - begin);
    if (level == "#") {
      if (end != filter.size()) return "'#' must be the last level";
    } else if (level.find('#') != std::string_view::npos) {
      return "'#' must occupy a whole level";
    } else if (level != "+" && level.find('+') != std::string_view::npos) {
      return "'+' must occupy a whole level";
    }
    if (end == filter.size()) return std::nullopt;
    begin = end + 1;
  }
}

bool topic_matches(std::string_view filter, std::string_view topic) {
  if (filter.empty() || topic.empty()) return false;
  if (topic.find_first_of("+#") != std::string_view::npos) return false;
  // MQTT 4.7.2: $-topics (e.g. $SYS) are for the server, not for catch-all subscriptions.
  if (topic.front() == '$' && (filter.front() == '+' || filter.front() == '#')) return false;
  std::size_t f = 0;
  std::size_t t = 0;
  for (;;) {
    const std::size_t f_end = level_end(filter, f);
    const std::string_view level = filter.substr(f, f_end - f);
    if (level == "#") return true;
    const std::size_t t_end = level_end(topic, t);
    if (level != "+" && level != topic.substr(t, t_end - t)) return false;
    const bool filter_done = f_end == filter.size();
    const bool topic_done = t_end == topic.size();
    if (filter_done) return topic_done;
    // "sport/tennis/#" also matches its parent "sport/tennis".
    if (topic_done) return filter.substr(f_end + 1) == "#";
    f = f_end + 1;
    t = t_end + 1;
  }
}

}  // namespace gateway
