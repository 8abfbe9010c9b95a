// Secret: a password that cannot reach a log line by accident. It prints as *** through
// operator<< and fmt/spdlog; reveal() is the one deliberate way to read it. Its own header so that
// the types that carry a password (flow.h's MqttServer, mqtt_connection.h's options) need not
// include all of the settings.
#pragma once

#include <fmt/format.h>

#include <ostream>
#include <string>
#include <string_view>
#include <utility>

namespace gateway {

class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string value) : value_(std::move(value)) {}

  const std::string& reveal() const { return value_; }
  bool empty() const { return value_.empty(); }

 private:
  std::string value_;
};

std::ostream& operator<<(std::ostream& out, const Secret& secret);  // writes ***

}  // namespace gateway

// Formats as *** (fmt 9 / spdlog), honouring width and alignment specs.
template <>
struct fmt::formatter<gateway::Secret> : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(const gateway::Secret& /*secret*/, FormatContext& ctx) const {
    return fmt::formatter<std::string_view>::format("***", ctx);
  }
};
