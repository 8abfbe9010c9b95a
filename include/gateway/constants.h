// The two things a flow can do with a message (reference: src/constants.py).
#pragma once

#include <optional>
#include <string_view>

namespace gateway {

inline constexpr std::string_view kFlowActionStoreDb = "STORE_DB";
inline constexpr std::string_view kFlowActionPostEndpoint = "POST_ENDPOINT";

enum class FlowAction { kStoreDb, kPostEndpoint };

// Returns std::nullopt for any spelling other than the two constants above.
std::optional<FlowAction> parse_flow_action(std::string_view text);
std::string_view to_string(FlowAction action);

}  // namespace gateway
