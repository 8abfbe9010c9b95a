// One FakeFlowRepository shared by every connection a component opens (a pipeline's workers),
// behind one mutex held for a call or for a transaction's whole life, so that the test thread
// can read it meanwhile (with_db-style, under the same mutex).
#pragma once

#include <functional>
#include <memory>
#include <mutex>

#include "fakes/fake_flow_repository.h"

namespace gateway::testing {

struct SharedFakeDatabase {
  std::mutex mu;
  FakeFlowRepository repo;  // guarded by mu
  // Called by lock_flow() before it takes `mu`: a wait for a row another session holds, during
  // which the other connections go on. Set before the connections are used.
  std::function<void(std::int64_t flow_id)> row_lock_wait;
};

// One connection to a SharedFakeDatabase.
class SharedFakeConnection final : public FlowRepository {
 public:
  explicit SharedFakeConnection(SharedFakeDatabase& db) : db_(db) {}
  std::optional<MqttServer> load_mqtt_server() override {
    std::lock_guard lock(db_.mu);
    return db_.repo.load_mqtt_server();
  }
  std::vector<Flow> load_flows() override {
    std::lock_guard lock(db_.mu);
    return db_.repo.load_flows();
  }
  TableInfo describe_table(std::string_view table) override {
    std::lock_guard lock(db_.mu);
    return db_.repo.describe_table(table);
  }
  bool ping() override { return true; }
  std::uint64_t last_committed_seq(std::string_view spool_id) override {
    std::lock_guard lock(db_.mu);
    return db_.repo.last_committed_seq(spool_id);
  }
  std::unique_ptr<FlowTransaction> begin_unrouted(std::string_view spool_id) override {
    std::unique_lock lock(db_.mu);
    return std::make_unique<Tx>(std::move(lock), db_.repo.begin_unrouted(spool_id));
  }
  std::unique_ptr<FlowTransaction> lock_flow(std::int64_t flow_id,
                                             std::string_view spool_id) override {
    if (db_.row_lock_wait) db_.row_lock_wait(flow_id);
    std::unique_lock lock(db_.mu);
    auto tx = db_.repo.lock_flow(flow_id, spool_id);
    if (!tx) return nullptr;
    return std::make_unique<Tx>(std::move(lock), std::move(tx));
  }
  std::unique_ptr<FlowGroupTransaction> lock_flows(std::span<const std::int64_t> ids,
                                                   std::string_view spool_id) override {
    std::unique_lock lock(db_.mu);
    return std::make_unique<Group>(std::move(lock), db_.repo.lock_flows(ids, spool_id));
  }

 private:
  class Group final : public FlowGroupTransaction {
   public:
    Group(std::unique_lock<std::mutex> lock, std::unique_ptr<FlowGroupTransaction> tx)
        : lock_(std::move(lock)), tx_(std::move(tx)) {}
    LockedFlow* flow(std::size_t i) override { return tx_->flow(i); }
    void commit() override { tx_->commit(); }

   private:
    std::unique_lock<std::mutex> lock_;  // released after tx_ is gone (declared first)
    std::unique_ptr<FlowGroupTransaction> tx_;
  };

  class Tx final : public FlowTransaction {
   public:
    Tx(std::unique_lock<std::mutex> lock, std::unique_ptr<FlowTransaction> tx)
        : lock_(std::move(lock)), tx_(std::move(tx)) {}
    const Flow& flow() const override { return tx_->flow(); }
    std::uint64_t committed_seq() const override { return tx_->committed_seq(); }
    void insert_records(std::span<const DataRecord> rows) override { tx_->insert_records(rows); }
    void insert_rejected(std::span<const RejectedMessage> rows) override {
      tx_->insert_rejected(rows);
    }
    void insert_deliveries(std::span<const OutboxEntry> rows) override {
      tx_->insert_deliveries(rows);
    }
    void insert_table_rows(const TableRows& rows) override { tx_->insert_table_rows(rows); }
    std::optional<std::uint64_t> retained_payload(std::string_view topic) override {
      return tx_->retained_payload(topic);
    }
    void remember_retained(std::string_view topic, std::uint64_t hash,
                           std::int64_t msg_id) override {
      tx_->remember_retained(topic, hash, msg_id);
    }
    void advance(std::int64_t last_msg_id, std::uint64_t last_seq) override {
      tx_->advance(last_msg_id, last_seq);
    }
    void commit() override { tx_->commit(); }

   private:
    std::unique_lock<std::mutex> lock_;  // released after tx_ is gone (declared first)
    std::unique_ptr<FlowTransaction> tx_;
  };

  SharedFakeDatabase& db_;
};

}  // namespace gateway::testing
