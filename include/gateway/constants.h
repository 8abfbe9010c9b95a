// What a flow can do with a message (reference: src/constants.py, which has the first two;
// STORE_TABLE writes one row per message into a table of the operator's: column_map.h).
#pragma once

#include <optional>
#include <string_view>

namespace gateway {

inline constexpr std::string_view kFlowActionStoreDb = "STORE_DB";
inline constexpr std::string_view kFlowActionPostEndpoint = "POST_ENDPOINT";
inline constexpr std::string_view kFlowActionStoreTable = "STORE_TABLE";

enum class FlowAction { kStoreDb, kPostEndpoint, kStoreTable };

// Returns std::nullopt for any spelling other than the constants above.
std::optional<FlowAction> parse_flow_action(std::string_view text);
std::string_view to_string(FlowAction action);

}  // namespace gateway
