#include "gateway/constants.h"

namespace gateway {

std::optional<FlowAction> parse_flow_action(std::string_view text) {
  if (text == kFlowActionStoreDb) return FlowAction::kStoreDb;
  if (text == kFlowActionPostEndpoint) return FlowAction::kPostEndpoint;
  if (text == kFlowActionStoreTable) return FlowAction::kStoreTable;
  return std::nullopt;
}

std::string_view to_string(FlowAction action) {
  switch (action) {
    case FlowAction::kStoreDb:
      return kFlowActionStoreDb;
    case FlowAction::kPostEndpoint:
      return kFlowActionPostEndpoint;
    case FlowAction::kStoreTable:
      return kFlowActionStoreTable;
  }
  return kFlowActionStoreDb;
}

}  // namespace gateway
