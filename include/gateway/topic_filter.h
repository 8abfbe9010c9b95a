// MQTT 3.1.1/5 topic filters (the `topic` column of a flow): validation, and matching a concrete
// topic name against a filter. Paho C++ 1.2 has no topic matcher, so this is ours. Pure functions:
// thread-safe.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace gateway {

// std::nullopt if `filter` is a valid subscription filter, else why not:
//   "empty filter", "longer than 65535 bytes", "contains NUL", "not valid UTF-8 (byte 3)",
//   "'#' must be the last level", "'#' must occupy a whole level", "'+' must occupy a whole level",
//   "shared subscriptions are set with MQTT_SHARED_GROUP" (for "$share/..." filters).
// The reason is valid UTF-8 and never echoes the filter.
std::optional<std::string> validate_topic_filter(std::string_view filter);

// True if the concrete topic name `topic` matches the valid filter `filter`:
//   - '+' matches exactly one level, including an empty one ("sport/+" matches "sport/");
//   - '#' matches the rest, including the parent level ("sport/#" matches "sport");
//   - a topic beginning with '$' is not matched by a filter whose first level is a wildcard
//     ("#" does not match "$SYS/x"; "$SYS/#" does).
// An empty topic, or one containing '+' or '#' (not a topic name), matches nothing. The result
// for an invalid filter is unspecified (but safe). No allocation.
bool topic_matches(std::string_view filter, std::string_view topic);

}  // namespace gateway
