#include "gateway/processor.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>

#include "gateway/clock.h"
#include "gateway/errors.h"
#include "gateway/hash.h"
#include "gateway/metrics.h"
#include "gateway/redact.h"

namespace gateway {
namespace {

void append_rows(std::vector<DataRecord>& rows, std::int64_t msg_id, const InboundMessage& m) {
  for (const auto& [name, value] : m.parsed.object.items()) {
    rows.push_back(DataRecord{msg_id, m.topic, name, encode_field_value(value)});
  }
}

// What a STORE_TABLE mapping reads of message `m` numbered `msg_id`.
RowContext row_context(const Flow& flow, const InboundMessage& m, std::int64_t msg_id) {
  return RowContext{m.topic,   &m.parsed.object, m.payload,         msg_id,
                    flow.code, m.arrival_us,     &m.user_properties};
}

}  // namespace

Processor::Processor(FlowRepository& repo, HttpPoster& http, ProcessorOptions options,
                     std::shared_ptr<spdlog::logger> log)
    : repo_(repo), http_(http), options_(options), log_(std::move(log)) {}

const SchemaResult& Processor::schema_for(const Flow& flow) {
  auto it = schemas_.find(flow.id);
  if (it != schemas_.end() && it->second.first == flow.payload_schema) return it->second.second;
  SchemaResult compiled;
  if (flow.payload_schema) {
    auto json = nlohmann::json::parse(*flow.payload_schema, nullptr, false);
    if (json.is_discarded()) {
      compiled.error = "payload_schema is not valid JSON";
    } else {
      compiled = compile_payload_schema(json);
    }
  }
  auto& slot = schemas_[flow.id];
  slot = {flow.payload_schema, std::move(compiled)};
  return slot.second;
}

const Processor::TableMap& Processor::table_map_for(const Flow& flow) {
  auto it = tables_.find(flow.id);
  const std::uint64_t reloads = options_.reloads ? options_.reloads->load() : 0;
  if (it == tables_.end() || it->second.table != flow.target_table ||
      it->second.map != flow.column_map || it->second.mode != flow.write_mode ||
      it->second.reloads != reloads) {
    const TableInfo table = flow.target_table && !flow.target_table->empty()
                                ? repo_.describe_table(*flow.target_table)
                                : TableInfo{};
    FlowMapping mapping =
        compile_flow_mapping(flow.target_table, flow.column_map, flow.write_mode, table);
    TableMap entry{flow.target_table, flow.column_map,        flow.write_mode,
                   reloads,           std::move(mapping.map), mapping.mode};
    it = tables_.insert_or_assign(flow.id, std::move(entry)).first;
  }
  if (!it->second.compiled.ok()) {
    throw Error("flow " + flow.code +
                ": STORE_TABLE mapping cannot be used: " + it->second.compiled.error);
  }
  return it->second;
}

std::string Processor::check(const Flow& flow, const InboundMessage& m) {
  if (!flow.enabled) return "flow is disabled";
  auto action = parse_flow_action(flow.action);
  if (!action) return "flow has unknown action '" + flow.action + "'";
  if (!m.parsed.ok()) return m.parsed.error;
  const SchemaResult& schema = schema_for(flow);
  if (!schema.ok()) return "flow schema error: " + schema.error;
  ValidationResult valid = validate_payload(m.parsed.object, schema.schema);
  if (!valid.ok()) return valid.error;
  if (m.topic.size() > options_.max_topic_length) {
    return "topic longer than " + std::to_string(options_.max_topic_length) + " bytes";
  }
  if (*action == FlowAction::kPostEndpoint) {
    if (!flow.endpoint_url || flow.endpoint_url->empty()) return "flow has no endpoint_url";
    return {};
  }
  if (*action == FlowAction::kStoreTable) return {};  // the mapping checks each value
  if (auto bad = check_field_names(m.parsed.object, options_.max_field_name_length)) return *bad;
  return {};
}

HttpResult Processor::post(const Flow& flow, const InboundMessage& m, std::int64_t msg_id) {
  HttpRequest req;
  req.url = *flow.endpoint_url;
  req.body = m.payload;  // the payload as received
  req.timeout = options_.http_timeout;
  const std::string id = std::to_string(msg_id);
  req.headers = {{"X-Gateway-Flow", flow.code},
                 {"X-Gateway-Msg-Id", id},
                 {"X-Gateway-Topic", m.topic},
                 {"Idempotency-Key", flow.code + ":" + id}};
  return http_.post(req);
}

RejectedMessage Processor::dead_letter(const InboundMessage& m, const std::string& why,
                                       std::string& topic) const {
  const auto valid = [](std::string_view s, std::size_t max) {
    return find_invalid_utf8(s) ? printable_excerpt(s, max) : std::string(s);
  };
  topic = valid(m.topic, options_.max_topic_length);
  const std::string_view payload =
      std::string_view(m.payload).substr(0, options_.rejected_payload_max_bytes);
  return RejectedMessage{topic, payload, m.original_size > 0 || payload.size() < m.payload.size(),
                         valid(why, 1024), m.seq};
}

BatchResult Processor::process_batch(std::int64_t flow_id,
                                     std::span<const InboundMessage* const> batch,
                                     std::string_view spool_id) {
  std::unique_ptr<FlowTransaction> tx = repo_.lock_flow(flow_id, spool_id);
  if (!tx) {
    BatchResult result;
    result.flow_missing = true;
    return result;
  }
  BatchResult result = process_locked(*tx, batch);
  tx->commit();
  return result;
}

std::vector<BatchResult> Processor::process_group(
    std::span<const std::int64_t> flow_ids,
    std::span<const std::span<const InboundMessage* const>> batches, std::string_view spool_id) {
  std::unique_ptr<FlowGroupTransaction> tx = repo_.lock_flows(flow_ids, spool_id);
  std::vector<BatchResult> results(flow_ids.size());
  for (std::size_t i = 0; i < flow_ids.size(); ++i) {
    if (LockedFlow* flow = tx->flow(i)) {
      results[i] = process_locked(*flow, batches[i]);
    } else {
      results[i].flow_missing = true;
    }
  }
  tx->commit();
  return results;
}

BatchResult Processor::process_locked(LockedFlow& tx, std::span<const InboundMessage* const> batch,
                                      std::vector<MessageOutcome>* outcomes) {
  BatchResult result;
  const Flow& flow = tx.flow();
  result.flow_code = flow.code;
  const auto action = parse_flow_action(flow.action);
  const bool post_endpoint = action == FlowAction::kPostEndpoint;
  const TableMap* table = action == FlowAction::kStoreTable ? &table_map_for(flow) : nullptr;
  std::vector<std::vector<CellValue>> table_rows;
  std::int64_t msg_id = flow.last_msg_id;
  std::uint64_t last_seq = 0;
  std::vector<DataRecord> rows;
  std::vector<RejectedMessage> rejects;
  std::deque<std::string> reject_topics;  // stable addresses for the rows' views
  std::vector<OutboxEntry> outbox;
  const bool post_now = post_endpoint && options_.post_inline;
  const std::int64_t now_us = unix_now_us();
  const std::int64_t now_ms = now_us / 1000;
  rows.reserve(batch.size() * 4);

  for (const InboundMessage* m : batch) {
    if (m->seq != 0 && m->seq <= tx.committed_seq()) {
      ++result.skipped;
      if (outcomes) outcomes->emplace_back();
      continue;
    }
    last_seq = std::max(last_seq, m->seq);
    std::string why;
    if (m->expiry_deadline_us != 0 && now_us >= m->expiry_deadline_us) {
      // MQTT 5 message expiry passed while it waited in the spool (a database outage): not
      // stored as data, but kept as a dead letter, so that nothing leaves the spool unrecorded
      // and the operator can still replay it.
      ++result.expired;
      why = "MQTT 5 message expiry passed " +
            std::to_string((now_us - m->expiry_deadline_us) / 1000000) +
            " s before it could be stored";
    } else {
      why = check(flow, *m);
    }
    std::uint64_t retained_hash = 0;
    if (why.empty() && m->retained) {
      retained_hash = fnv1a64(m->payload);
      if (tx.retained_payload(m->topic) == retained_hash) {
        ++result.retained_resends;
        if (outcomes) outcomes->emplace_back();
        continue;
      }
    }
    if (why.empty() && post_now) {
      HttpResult r = post(flow, *m, msg_id + 1);
      if (r.ok()) {
        ++result.posted;
      } else {
        why = redact_url_credentials("POST " + *flow.endpoint_url + " failed: " + r.error);
      }
    }
    if (why.empty() && table) {
      MappedRow row = map_row(table->compiled, row_context(flow, *m, msg_id + 1));
      if (row.ok()) {
        table_rows.push_back(std::move(row.cells));
      } else {
        why = std::move(row.error);
      }
    }
    if (!why.empty()) {
      RejectedMessage row = dead_letter(*m, why, reject_topics.emplace_back());
      if (outcomes) {
        outcomes->push_back({0, std::move(row.reason)});
      } else {
        rejects.push_back(std::move(row));
      }
      result.rejections.push_back("flow " + flow.code + " topic " + m->topic + ": " + why);
      ++result.rejected;
      continue;
    }
    ++msg_id;
    if (outcomes) outcomes->push_back({msg_id, {}});
    if (result.first_msg_id == 0) result.first_msg_id = msg_id;
    ++result.accepted;
    if (m->retained) tx.remember_retained(m->topic, retained_hash, msg_id);
    if (!post_endpoint && !table) {
      append_rows(rows, msg_id, *m);
    } else if (post_endpoint && !post_now) {
      outbox.push_back(OutboxEntry{msg_id, m->topic, m->payload, now_ms});
      ++result.queued;
    }
  }
  result.last_msg_id = msg_id;

  if (!rows.empty()) tx.insert_records(rows);
  if (!table_rows.empty()) {
    tx.insert_table_rows(
        TableRows{*flow.target_table, &table->compiled, table->write_mode, table_rows});
  }
  if (!rejects.empty()) tx.insert_rejected(rejects);
  if (!outbox.empty()) tx.insert_deliveries(outbox);
  tx.advance(msg_id, last_seq);
  log_->debug("flow {}: batch of {}: {} accepted (msg_id {}..{}), {} rejected, {} skipped",
              flow.code, batch.size(), result.accepted, result.first_msg_id, result.last_msg_id,
              result.rejected, result.skipped);
  return result;
}

ReplayResult Processor::replay(std::int64_t flow_id, std::span<const ReplayItem> items,
                               bool commit) {
  ReplayResult result;
  std::unique_ptr<FlowTransaction> tx = repo_.lock_flow(flow_id, {});
  if (!tx) {
    result.flow_missing = true;
    return result;
  }
  result.flow_code = tx->flow().code;
  std::vector<std::int64_t> ids;
  ids.reserve(items.size());
  for (const ReplayItem& item : items) ids.push_back(item.rejected_id);
  const std::vector<std::int64_t> waiting = tx->lock_rejected(ids);
  std::vector<const InboundMessage*> batch;
  std::vector<std::size_t> index;  // batch position -> item position
  result.outcomes.resize(items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    result.outcomes[i].rejected_id = items[i].rejected_id;
    if (std::binary_search(waiting.begin(), waiting.end(), items[i].rejected_id)) {
      batch.push_back(&items[i].message);
      index.push_back(i);
    } else {
      result.outcomes[i].already_replayed = true;
    }
  }
  std::vector<MessageOutcome> outcomes;
  if (!batch.empty()) process_locked(*tx, batch, &outcomes);
  for (std::size_t b = 0; b < outcomes.size(); ++b) {
    ReplayOutcome& out = result.outcomes[index[b]];
    out.msg_id = outcomes[b].msg_id;
    out.reason = std::move(outcomes[b].reason);
    if (out.msg_id > 0) {
      tx->mark_replayed(out.rejected_id, out.msg_id);
    } else if (!out.reason.empty()) {
      tx->update_rejected(out.rejected_id, out.reason);
    }
  }
  if (commit) tx->commit();
  return result;
}

bool Processor::replay_refused(std::int64_t flow_id, std::int64_t rejected_id,
                               const std::string& why, bool commit) {
  std::unique_ptr<FlowTransaction> tx = repo_.lock_flow(flow_id, {});
  if (!tx) return false;
  if (tx->lock_rejected(std::span(&rejected_id, 1)).empty()) return false;
  InboundMessage none;  // only for the reason's clean-up
  std::string topic;
  tx->update_rejected(rejected_id, dead_letter(none, why, topic).reason);
  if (commit) tx->commit();
  return true;
}

void Processor::reject(std::int64_t flow_id, const InboundMessage& m, const std::string& why,
                       std::string_view spool_id) {
  std::unique_ptr<FlowTransaction> tx = repo_.lock_flow(flow_id, spool_id);
  // No row to record it under: the caller holds the message (never counted as written).
  if (!tx) throw Error("flow " + std::to_string(flow_id) + ": no row to record the dead letter");
  if (m.seq != 0 && m.seq <= tx->committed_seq()) return;
  std::string topic;
  const RejectedMessage row = dead_letter(m, why, topic);
  tx->insert_rejected(std::span(&row, 1));
  tx->advance(tx->flow().last_msg_id, m.seq);
  tx->commit();
}

std::size_t Processor::reject_unrouted(std::span<const InboundMessage* const> batch,
                                       std::string_view spool_id, const std::string& why,
                                       bool track_offset) {
  std::unique_ptr<FlowTransaction> tx = repo_.begin_unrouted(track_offset ? spool_id : "");
  std::vector<RejectedMessage> rows;
  std::deque<std::string> topics;  // stable addresses for the rows' views
  std::uint64_t last_seq = 0;
  for (const InboundMessage* m : batch) {
    if (track_offset && m->seq != 0 && m->seq <= tx->committed_seq()) continue;
    last_seq = std::max(last_seq, m->seq);
    rows.push_back(dead_letter(*m, why, topics.emplace_back()));
  }
  if (!rows.empty()) tx->insert_rejected(rows);
  if (track_offset) tx->advance(tx->flow().last_msg_id, last_seq);
  tx->commit();
  return rows.size();
}

ProcessResult Processor::process_flow_message(std::int64_t flow_id, const nlohmann::json& payload,
                                              std::string_view topic) {
  std::unique_ptr<FlowTransaction> tx = repo_.lock_flow(flow_id, {});
  if (!tx) throw Error("flow " + std::to_string(flow_id) + " does not exist");
  const Flow& flow = tx->flow();
  InboundMessage m;
  m.topic = topic;
  m.payload = payload.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (payload.is_object()) {
    m.parsed.object = payload;
  } else {
    m.parsed.error = "payload is not a JSON object";
  }
  std::string why = check(flow, m);
  const auto action = parse_flow_action(flow.action).value_or(FlowAction::kStoreDb);
  const std::int64_t msg_id = flow.last_msg_id + 1;
  if (why.empty() && action == FlowAction::kPostEndpoint) {
    HttpResult r = post(flow, m, msg_id);
    if (!r.ok()) {
      why = redact_url_credentials("POST " + *flow.endpoint_url + " failed: " + r.error);
    }
  }
  const TableMap* table = action == FlowAction::kStoreTable ? &table_map_for(flow) : nullptr;
  MappedRow row;
  if (why.empty() && table) {
    m.arrival_us = unix_now_us();
    row = map_row(table->compiled, row_context(flow, m, msg_id));
    why = row.error;
  }
  if (!why.empty()) throw MessageRejected("flow " + flow.code + ": " + why);
  if (action == FlowAction::kStoreDb) {
    std::vector<DataRecord> rows;
    append_rows(rows, msg_id, m);
    if (!rows.empty()) tx->insert_records(rows);
  } else if (table) {
    tx->insert_table_rows(TableRows{*flow.target_table, &table->compiled, table->write_mode,
                                    std::span(&row.cells, 1)});
  }
  tx->advance(msg_id, 0);
  tx->commit();
  return ProcessResult{flow.code, msg_id, action};
}

}  // namespace gateway
