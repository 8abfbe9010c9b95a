#include "gateway/constants.h"

namespace gateway {

std::optional<FlowAction> parse_flow_action(std::string_view text) {
  if (text == kFlowActionStoreDb) return FlowAction::kStoreDb;
  if (text == kFlowActionPostEndpoint) return FlowAction::kPostEndpoint;
  return std::nullopt;
}

std::string_view to_string(FlowAction action) {
  return action == FlowAction::kStoreDb ? kFlowActionStoreDb : kFlowActionPostEndpoint;
}

}  // namespace gateway
