// FakeMqttConnection: an in-memory broker session for unit tests of GatewayMqttClient. It records
// SUBSCRIBE/UNSUBSCRIBE packets and publishes, reports a configurable session-present flag, and
// can block broker calls (as Paho does while a message handler is blocked) or fail them.
// Thread-safe (one mutex).
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gateway/errors.h"
#include "gateway/mqtt_connection.h"

namespace gateway::testing {

class FakeMqttConnection final : public MqttConnection {
 public:
  explicit FakeMqttConnection(MqttHandlers handlers) : handlers(std::move(handlers)) {}

  MqttHandlers handlers;  // the client's callbacks, for the test to invoke

  // Switches, read by the next calls.
  void set_session_present(bool present) {
    std::lock_guard lock(mu_);
    session_present_ = present;
  }
  // While blocked, subscribe/unsubscribe/publish wait (like Paho behind a blocked handler).
  void block_calls(bool blocked) {
    {
      std::lock_guard lock(mu_);
      blocked_ = blocked;
    }
    cv_.notify_all();
  }
  void fail_calls(bool fail) {
    std::lock_guard lock(mu_);
    fail_ = fail;
  }

  // What the broker has for the session, and the packets it got.
  std::set<std::string> subscriptions() const {
    std::lock_guard lock(mu_);
    return broker_;
  }
  std::vector<std::vector<std::string>> subscribe_packets() const {
    std::lock_guard lock(mu_);
    return subscribe_packets_;
  }
  std::vector<std::vector<std::string>> unsubscribe_packets() const {
    std::lock_guard lock(mu_);
    return unsubscribe_packets_;
  }
  int publishes() const {
    std::lock_guard lock(mu_);
    return publishes_;
  }
  // The broker lost the session (a restart without persistence).
  void forget_session() {
    std::lock_guard lock(mu_);
    broker_.clear();
  }

  ~FakeMqttConnection() override {
    if (late_thread_.joinable()) late_thread_.join();
  }

  bool connect() override {
    std::lock_guard lock(mu_);
    connected_ = true;
    return session_present_;
  }
  std::vector<SubscribeRefusal> subscribe(const std::vector<std::string>& filters, bool) override {
    std::vector<std::pair<std::string, std::string>> resend;  // (topic, payload)
    std::vector<SubscribeRefusal> refused;
    {
      std::unique_lock lock(mu_);
      wait_unblocked(lock);
      if (fail_) throw Error("fake: subscribe failed");
      subscribe_packets_.push_back(filters);
      for (const auto& f : filters) {
        if (refuse_.count(f)) {
          refused.push_back({f, "0x87 Not authorized"});
        } else {
          broker_.insert(f);
        }
      }
      for (const auto& f : filters) {
        if (auto it = retained_.find(f); it != retained_.end()) resend.emplace_back(f, it->second);
      }
      if (retained_late_) {
        late_.insert(late_.end(), resend.begin(), resend.end());
        resend.clear();
      }
    }
    // Like a broker: the retained message of an exact filter, with RETAIN set, after the SUBACK.
    for (const auto& [topic, payload] : resend) {
      if (handlers.message) handlers.message(MqttMessage{topic, payload, 0, false, true, 1});
    }
    return refused;
  }
  // The broker refuses these filters (an ACL, say); the others in the packet are granted.
  void refuse(const std::string& filter) {
    std::lock_guard lock(mu_);
    refuse_.insert(filter);
  }
  // A retained message the broker holds (exact topics only).
  void set_retained(const std::string& topic, const std::string& payload) {
    std::lock_guard lock(mu_);
    retained_[topic] = payload;
  }
  std::string retained(const std::string& topic) const {
    std::lock_guard lock(mu_);
    auto it = retained_.find(topic);
    return it == retained_.end() ? std::string() : it->second;
  }
  void unsubscribe(const std::vector<std::string>& filters) override {
    std::unique_lock lock(mu_);
    wait_unblocked(lock);
    if (fail_) throw Error("fake: unsubscribe failed");
    unsubscribe_packets_.push_back(filters);
    for (const auto& f : filters) broker_.erase(f);
  }
  // From now on a publish to a topic this connection subscribed to (exact filters) comes back
  // to its message handler, as a broker delivers to a subscribed publisher.
  void echo_publishes() {
    std::lock_guard lock(mu_);
    echo_ = true;
  }
  // Retained messages for a SUBSCRIBE come only after the next echoed publish (20 ms later, from
  // another thread), as from a broker that sends them apart from live messages.
  void send_retained_late() {
    std::lock_guard lock(mu_);
    retained_late_ = true;
  }
  void publish(std::string_view topic, std::string_view payload, int, bool retain) override {
    std::unique_lock lock(mu_);
    wait_unblocked(lock);
    ++publishes_;
    if (echo_ && broker_.count(std::string(topic))) {
      const std::string t(topic), p(payload);
      std::vector<std::pair<std::string, std::string>> late;
      late.swap(late_);
      lock.unlock();
      if (handlers.message) handlers.message(MqttMessage{t, p, 0, false, retain, 0});
      if (!late.empty() && handlers.message) {
        if (late_thread_.joinable()) late_thread_.join();
        late_thread_ = std::thread([this, late] {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
          for (const auto& [lt, lp] : late)
            handlers.message(MqttMessage{lt, lp, 0, false, true, 1});
        });
      }
      lock.lock();
    }
    if (!retain) return;
    if (payload.empty()) {
      retained_.erase(std::string(topic));
    } else {
      retained_[std::string(topic)] = std::string(payload);
    }
  }
  void force_reconnect(const std::string&) override {}
  bool connected() const override {
    std::lock_guard lock(mu_);
    return connected_;
  }
  void disconnect(std::chrono::milliseconds) override {
    if (late_thread_.joinable()) late_thread_.join();  // no callbacks after disconnect()
    std::lock_guard lock(mu_);
    connected_ = false;
    blocked_ = false;
    cv_.notify_all();
  }

 private:
  void wait_unblocked(std::unique_lock<std::mutex>& lock) {
    cv_.wait(lock, [this] { return !blocked_; });
  }

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool session_present_ = false;                               // guarded by mu_
  bool blocked_ = false;                                       // guarded by mu_
  bool fail_ = false;                                          // guarded by mu_
  bool connected_ = false;                                     // guarded by mu_
  std::set<std::string> broker_;                               // guarded by mu_
  std::vector<std::vector<std::string>> subscribe_packets_;    // guarded by mu_
  std::vector<std::vector<std::string>> unsubscribe_packets_;  // guarded by mu_
  int publishes_ = 0;                                          // guarded by mu_
  bool echo_ = false;                                          // guarded by mu_
  bool retained_late_ = false;                                 // guarded by mu_
  std::vector<std::pair<std::string, std::string>> late_;      // guarded by mu_
  std::thread late_thread_;  // delivers late_ (send_retained_late); joined by disconnect()
  std::map<std::string, std::string> retained_;  // guarded by mu_
  std::set<std::string> refuse_;                 // guarded by mu_
};

}  // namespace gateway::testing
