// An in-memory FlowRepository for unit tests: flows, data_records, rejected_messages and spool
// offsets held in maps, with transactions that only become visible on commit(), and switches
// that inject the failures the real database produces.
#pragma once

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "gateway/errors.h"
#include "gateway/flow_repository.h"

namespace gateway::testing {

struct StoredRecord {
  std::int64_t flow_id;
  std::int64_t msg_id;
  std::string topic;
  std::string field_name;
  std::string field_value;
};

struct StoredRejection {
  std::int64_t flow_id;
  std::string topic;
  std::string payload;
  std::string reason;
  std::uint64_t spool_seq;
  bool payload_truncated = false;
  std::int64_t id = 0;  // rejected_messages.id, given at commit (1, 2, ...)
  int attempts = 1;
  std::optional<std::int64_t> replayed_msg_id{};  // set by a committed replay
};

// One STORE_TABLE row: the flow, the table and its cells in the map's column order.
struct StoredTableRow {
  std::int64_t flow_id;
  std::string table;
  WriteMode mode;
  std::vector<CellValue> cells;
};

class FakeFlowRepository final : public FlowRepository {
 public:
  std::map<std::int64_t, Flow> flows;
  std::map<std::string, TableInfo> tables;  // what describe_table() answers
  std::vector<StoredTableRow> table_rows;
  std::optional<MqttServer> server;
  std::vector<StoredRecord> records;
  std::vector<StoredRejection> rejections;
  std::map<std::pair<std::string, std::int64_t>, std::uint64_t> offsets;
  std::vector<std::pair<std::int64_t, OutboxEntry>> outbox;  // (flow_id, entry); views into batch
  std::map<std::int64_t, std::map<std::string, std::uint64_t>> retained;  // flow -> topic -> hash
  int commits = 0;
  int rollbacks = 0;
  std::int64_t last_rejected_id = 0;  // rejected_messages ids handed out so far

  // Failure switches: thrown by the next call of that kind, then cleared.
  std::function<void()> fail_next_lock;
  std::function<void()> fail_next_insert;
  std::function<void()> fail_next_commit;
  // Persistent faults: called on every call of that kind (may throw) until reset.
  std::function<void(std::int64_t flow_id)> on_lock;
  // Before a group transaction locks its rows (may throw, as NOWAIT on a busy row does).
  std::function<void(std::span<const std::int64_t> ids)> on_lock_group;
  std::function<void(const DataRecord&)> on_insert_record;
  std::function<void(const RejectedMessage&)> on_insert_rejected;
  std::function<void()> on_commit;  // every commit, before it takes effect (may throw)

  std::optional<MqttServer> load_mqtt_server() override { return server; }
  // Failover candidates (issue 15): `servers` when set, else `server`.
  std::vector<MqttServer> servers;
  std::vector<MqttServer> load_mqtt_servers() override {
    if (!servers.empty()) return servers;
    return FlowRepository::load_mqtt_servers();
  }
  std::vector<Flow> load_flows() override {
    std::vector<Flow> out;
    for (const auto& [id, f] : flows) {
      if (f.enabled) out.push_back(f);
    }
    return out;
  }
  TableInfo describe_table(std::string_view table) override {
    if (auto it = tables.find(std::string(table)); it != tables.end()) return it->second;
    return TableInfo{std::string(table), {}};
  }
  bool ping() override { return true; }
  std::uint64_t last_committed_seq(std::string_view spool_id) override {
    std::uint64_t seq = 0;
    for (const auto& [key, last] : offsets) {
      if (key.first == spool_id) seq = std::max(seq, last);
    }
    return seq;
  }

  std::unique_ptr<FlowTransaction> begin_unrouted(std::string_view spool_id) override {
    Flow none;
    none.id = kNoFlow;
    none.code = "(no flow)";
    std::uint64_t seq = 0;
    if (auto o = offsets.find({std::string(spool_id), kNoFlow}); o != offsets.end())
      seq = o->second;
    return std::make_unique<Tx>(*this, none, seq, std::string(spool_id));
  }

  std::unique_ptr<FlowTransaction> lock_flow(std::int64_t flow_id,
                                             std::string_view spool_id) override {
    fire(fail_next_lock);
    if (on_lock) on_lock(flow_id);
    return open(flow_id, spool_id);
  }

  // Group transactions made so far, and the flow ids each one locked.
  std::vector<std::vector<std::int64_t>> groups;

  std::unique_ptr<FlowGroupTransaction> lock_flows(std::span<const std::int64_t> ids,
                                                   std::string_view spool_id) override {
    fire(fail_next_lock);
    groups.emplace_back(ids.begin(), ids.end());
    if (on_lock_group) on_lock_group(ids);
    auto group = std::make_unique<Group>(*this);
    for (std::int64_t id : ids) {
      if (on_lock) on_lock(id);
      group->parts.push_back(open(id, spool_id));
      if (group->parts.back()) group->parts.back()->grouped = true;
    }
    return group;
  }

 private:
  static void fire(std::function<void()>& f) {
    if (!f) return;
    auto once = std::move(f);
    f = nullptr;
    once();
  }

  class Tx;
  class Group;
  std::unique_ptr<Tx> open(std::int64_t flow_id, std::string_view spool_id) {
    auto it = flows.find(flow_id);
    if (it == flows.end()) return nullptr;
    std::uint64_t seq = 0;
    if (auto o = offsets.find({std::string(spool_id), flow_id}); o != offsets.end())
      seq = o->second;
    return std::make_unique<Tx>(*this, it->second, seq, std::string(spool_id));
  }

  class Tx final : public FlowTransaction {
   public:
    Tx(FakeFlowRepository& repo, Flow flow, std::uint64_t seq, std::string spool)
        : repo_(repo), flow_(std::move(flow)), seq_(seq), spool_(std::move(spool)) {}
    ~Tx() override {
      if (!committed_ && !grouped) ++repo_.rollbacks;
    }
    bool grouped = false;  // part of a Group: the group commits or rolls back
    friend class Group;
    const Flow& flow() const override { return flow_; }
    std::uint64_t committed_seq() const override { return seq_; }
    void insert_records(std::span<const DataRecord> rows) override {
      fire(repo_.fail_next_insert);
      for (const auto& r : rows) {
        // As the MySQL adapter: a group's rows go out at its commit, and are refused there.
        if (repo_.on_insert_record && !grouped) repo_.on_insert_record(r);
        records_.push_back(
            {flow_.id, r.msg_id, std::string(r.topic), std::string(r.field_name), r.field_value});
      }
    }
    void insert_rejected(std::span<const RejectedMessage> rows) override {
      for (const auto& r : rows) {
        if (repo_.on_insert_rejected) repo_.on_insert_rejected(r);
        rejected_.push_back({flow_.id, std::string(r.topic), std::string(r.payload), r.reason,
                             r.spool_seq, r.payload_truncated});
      }
    }
    void insert_deliveries(std::span<const OutboxEntry> rows) override {
      for (const auto& r : rows) outbox_.emplace_back(flow_.id, r);
    }
    void insert_table_rows(const TableRows& rows) override {
      fire(repo_.fail_next_insert);
      for (const auto& cells : rows.rows) {
        table_rows_.push_back({flow_.id, std::string(rows.table), rows.mode, cells});
      }
    }
    std::optional<std::uint64_t> retained_payload(std::string_view topic) override {
      if (auto it = retained_.find(std::string(topic)); it != retained_.end()) return it->second;
      auto& committed = repo_.retained[flow_.id];
      if (auto it = committed.find(std::string(topic)); it != committed.end()) return it->second;
      return std::nullopt;
    }
    void remember_retained(std::string_view topic, std::uint64_t hash, std::int64_t) override {
      retained_[std::string(topic)] = hash;
    }
    void advance(std::int64_t last_msg_id, std::uint64_t last_seq) override {
      last_msg_id_ = last_msg_id;
      last_seq_ = last_seq;
    }
    std::vector<std::int64_t> lock_rejected(std::span<const std::int64_t> ids) override {
      std::vector<std::int64_t> waiting;
      for (const auto& r : repo_.rejections) {
        if (!r.replayed_msg_id && std::find(ids.begin(), ids.end(), r.id) != ids.end())
          waiting.push_back(r.id);
      }
      std::sort(waiting.begin(), waiting.end());
      return waiting;
    }
    void mark_replayed(std::int64_t rejected_id, std::int64_t msg_id) override {
      replayed_.emplace_back(rejected_id, msg_id);
    }
    void update_rejected(std::int64_t rejected_id, std::string_view reason) override {
      rereject_.emplace_back(rejected_id, std::string(reason));
    }
    void commit() override {
      if (repo_.on_commit) repo_.on_commit();
      fire(repo_.fail_next_commit);
      ++repo_.commits;
      apply();
    }
    // Makes the transaction's writes visible.
    void apply() {
      committed_ = true;
      repo_.records.insert(repo_.records.end(), records_.begin(), records_.end());
      repo_.table_rows.insert(repo_.table_rows.end(), table_rows_.begin(), table_rows_.end());
      for (auto& r : rejected_) r.id = ++repo_.last_rejected_id;
      repo_.rejections.insert(repo_.rejections.end(), rejected_.begin(), rejected_.end());
      for (auto& r : repo_.rejections) {
        for (const auto& [id, msg_id] : replayed_) {
          if (r.id == id) r.replayed_msg_id = msg_id, r.flow_id = flow_.id;
        }
        for (const auto& [id, reason] : rereject_) {
          if (r.id == id) r.reason = reason, ++r.attempts;
        }
      }
      repo_.outbox.insert(repo_.outbox.end(), outbox_.begin(), outbox_.end());
      if (last_msg_id_ && flow_.id != kNoFlow) repo_.flows[flow_.id].last_msg_id = *last_msg_id_;
      if (last_seq_ > 0) repo_.offsets[{spool_, flow_.id}] = last_seq_;
      for (const auto& [topic, hash] : retained_) repo_.retained[flow_.id][topic] = hash;
    }

   private:
    FakeFlowRepository& repo_;
    Flow flow_;
    std::uint64_t seq_;
    std::string spool_;
    bool committed_ = false;
    std::vector<StoredRecord> records_;
    std::vector<StoredTableRow> table_rows_;
    std::vector<StoredRejection> rejected_;
    std::vector<std::pair<std::int64_t, OutboxEntry>> outbox_;
    std::optional<std::int64_t> last_msg_id_;
    std::uint64_t last_seq_ = 0;
    std::map<std::string, std::uint64_t> retained_;
    std::vector<std::pair<std::int64_t, std::int64_t>> replayed_;  // (rejected id, msg_id)
    std::vector<std::pair<std::int64_t, std::string>> rereject_;   // (rejected id, reason)
  };

  class Group final : public FlowGroupTransaction {
   public:
    explicit Group(FakeFlowRepository& repo) : repo_(repo) {}
    ~Group() override {
      if (!committed_) ++repo_.rollbacks;
    }
    LockedFlow* flow(std::size_t i) override { return parts.at(i).get(); }
    void commit() override {
      if (repo_.on_insert_record) {
        for (auto& p : parts) {
          if (!p) continue;
          for (const StoredRecord& r : p->records_) {
            repo_.on_insert_record(DataRecord{r.msg_id, r.topic, r.field_name, r.field_value});
          }
        }
      }
      if (repo_.on_commit) repo_.on_commit();
      fire(repo_.fail_next_commit);
      committed_ = true;
      ++repo_.commits;
      for (auto& p : parts) {
        if (p) p->apply();
      }
    }
    std::vector<std::unique_ptr<Tx>> parts;

   private:
    FakeFlowRepository& repo_;
    bool committed_ = false;
  };
};

// Another owner's handle on a FakeFlowRepository the test keeps (a component that takes its
// repository as a unique_ptr from a factory). Not thread-safe, like the fake.
class FakeFlowRepositoryView final : public FlowRepository {
 public:
  explicit FakeFlowRepositoryView(FakeFlowRepository& r) : r_(r) {}
  std::optional<MqttServer> load_mqtt_server() override { return r_.load_mqtt_server(); }
  std::vector<MqttServer> load_mqtt_servers() override { return r_.load_mqtt_servers(); }
  std::vector<Flow> load_flows() override { return r_.load_flows(); }
  TableInfo describe_table(std::string_view t) override { return r_.describe_table(t); }
  std::unique_ptr<FlowTransaction> lock_flow(std::int64_t id, std::string_view s) override {
    return r_.lock_flow(id, s);
  }
  std::unique_ptr<FlowTransaction> begin_unrouted(std::string_view s) override {
    return r_.begin_unrouted(s);
  }
  std::unique_ptr<FlowGroupTransaction> lock_flows(std::span<const std::int64_t> ids,
                                                   std::string_view s) override {
    return r_.lock_flows(ids, s);
  }
  bool ping() override { return true; }
  std::uint64_t last_committed_seq(std::string_view s) override { return r_.last_committed_seq(s); }

 private:
  FakeFlowRepository& r_;
};

}  // namespace gateway::testing
