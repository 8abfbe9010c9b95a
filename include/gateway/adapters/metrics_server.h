// The optional HTTP endpoint for operators (METRICS_ADDRESS): Prometheus text at /metrics and a
// health check at /healthz: 503 when the broker or the database has been unreachable for longer
// than HEALTH_UNREACHABLE_SECONDS, and at once while the spool cannot be written or a flow is held
// because the database refuses its writes. Serves on its own thread; only reads Metrics.
#pragma once

#include <memory>
#include <string>

#include "gateway/metrics.h"
#include "gateway/settings.h"

namespace spdlog {
class logger;
}

namespace gateway {

class MetricsServer {
 public:
  // Binds `address` ("host:port", "[ipv6]:port") at once and serves on two threads. Throws
  // ConfigError naming METRICS_ADDRESS if the address is malformed, Error if it cannot be bound.
  MetricsServer(const std::string& address, const Metrics& metrics, const Settings& settings,
                const std::shared_ptr<spdlog::logger>& log);
  ~MetricsServer();  // stops serving and joins
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Why the gateway is unhealthy, or empty. Pure, for the endpoint and its tests.
std::string health_problem(const Metrics& metrics, std::int64_t now_ms, std::int64_t limit_ms);

}  // namespace gateway
