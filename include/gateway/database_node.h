// DatabaseNode: the database node the gateway's connections reach, shared by them.
#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <utility>

namespace gateway {

// Which database node a gateway's connections reach (DB_HOST may list several; issue 15). main
// makes one and hands it to every MySQL adapter: each connection records the node it reached
// here, the next connection tries that node first (so that a gateway's connections stay together
// on one node), /metrics shows it, and a change is reported once, not per connection.
// Thread-safe.
class DatabaseNode {
 public:
  // Called with one line ("database node 127.0.0.1:3382 (node2)") when the node changes; the
  // composition root points it at a logger. Called with no lock held.
  using OnChange = std::function<void(const std::string& line)>;
  void set_on_change(OnChange on_change) {
    std::lock_guard lock(mu_);
    on_change_ = std::move(on_change);
  }

  // A connection reached the node at `address` ("host:port"), called `name` there
  // (wsrep_node_name or hostname; may be empty), over `tls` (e.g. "TLSv1.3
  // TLS_AES_256_GCM_SHA384"; "" in clear text). Returns true when that is a change.
  bool reached(const std::string& address, const std::string& name, const std::string& tls = {}) {
    OnChange notify;
    {
      std::lock_guard lock(mu_);
      if (address == address_ && name == name_ && tls == tls_) return false;
      address_ = address;
      name_ = name;
      tls_ = tls;
      notify = on_change_;
    }
    if (notify) {
      notify("database node " + address + (name.empty() ? "" : " (" + name + ")") + ", " +
             (tls.empty() ? std::string("not encrypted") : "TLS " + tls));
    }
    return true;
  }

  // The address the last connection reached; "" before the first.
  std::string address() const {
    std::lock_guard lock(mu_);
    return address_;
  }
  std::string name() const {
    std::lock_guard lock(mu_);
    return name_;
  }
  // The last connection's TLS protocol and cipher; "" when it was not encrypted.
  std::string tls() const {
    std::lock_guard lock(mu_);
    return tls_;
  }
  // Forgets the node (tests that start over with another DB_HOST in one process).
  void forget() {
    std::lock_guard lock(mu_);
    address_.clear();
    name_.clear();
    tls_.clear();
  }

 private:
  mutable std::mutex mu_;
  std::string address_;  // guarded by mu_
  std::string name_;     // guarded by mu_
  std::string tls_;      // guarded by mu_
  OnChange on_change_;   // guarded by mu_
};

}  // namespace gateway
