// The MySQL Connector/C++ driver's process and thread set-up, for every thread that opens a
// database connection (MySqlFlowRepository, MySqlDeliveryRepository, MySqlSchema).
#pragma once

namespace gateway {

// Process-wide driver set-up; the driver's first use is not thread-safe. Call once in main (and in
// test mains) before any thread opens a connection.
void mysql_global_init();

// RAII per-thread client-library state (driver threadInit/threadEnd). Every thread that opens a
// connection holds one for its lifetime.
class MySqlThreadScope {
 public:
  MySqlThreadScope();
  ~MySqlThreadScope();
  MySqlThreadScope(const MySqlThreadScope&) = delete;
  MySqlThreadScope& operator=(const MySqlThreadScope&) = delete;
};

}  // namespace gateway
