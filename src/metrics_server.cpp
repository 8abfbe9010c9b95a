#include "gateway/metrics_server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "gateway/errors.h"

namespace gateway {

std::string health_problem(const Metrics& m, std::int64_t now_ms, std::int64_t limit_ms) {
  const std::int64_t broker_down = m.broker_down_since_ms.load();
  const std::int64_t db_down = m.db_down_since_ms.load();
  if (!m.broker_connected && broker_down != 0 && now_ms - broker_down > limit_ms) {
    return "broker unreachable for " + std::to_string((now_ms - broker_down) / 1000) + " s";
  }
  if (!m.db_connected && db_down != 0 && now_ms - db_down > limit_ms) {
    return "database unreachable for " + std::to_string((now_ms - db_down) / 1000) + " s";
  }
  return {};
}

struct MetricsServer::Impl {
  httplib::Server server;
  std::thread thread;
  int port = 0;
};

MetricsServer::MetricsServer(const std::string& address, const Metrics& metrics,
                             const Settings& settings, std::shared_ptr<spdlog::logger> log)
    : impl_(std::make_unique<Impl>()) {
  const auto colon = address.rfind(':');
  const std::string host = address.substr(0, colon);
  const int port = std::stoi(address.substr(colon + 1));
  const std::int64_t limit_ms = 1000LL * settings.health_unreachable_seconds;
  impl_->server.Get("/metrics", [&metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.prometheus_text(), "text/plain; version=0.0.4");
  });
  impl_->server.Get("/healthz", [&metrics, limit_ms](const httplib::Request&,
                                                     httplib::Response& res) {
    const std::string problem = health_problem(metrics, steady_now_ms(), limit_ms);
    res.status = problem.empty() ? 200 : 503;
    res.set_content(problem.empty() ? "ok\n" : problem + "\n", "text/plain");
  });
  impl_->port = port == 0 ? impl_->server.bind_to_any_port(host)
                          : (impl_->server.bind_to_port(host, port) ? port : -1);
  if (impl_->port <= 0) throw ConfigError("METRICS_ADDRESS: cannot listen on " + address);
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
  log->info("metrics and health on http://{}:{}/metrics and /healthz", host, impl_->port);
}

MetricsServer::~MetricsServer() {
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int MetricsServer::port() const { return impl_->port; }

}  // namespace gateway
