#include "gateway/adapters/metrics_server.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <thread>

#include "gateway/clock.h"
#include "gateway/errors.h"
#include "gateway/thread_name.h"

namespace gateway {
namespace {

constexpr std::size_t kServerThreads = 2;

}  // namespace

std::string health_problem(const Metrics& m, std::int64_t now_ms, std::int64_t limit_ms) {
  const std::int64_t broker_down = m.broker_down_since_ms.load();
  const std::int64_t db_down = m.db_down_since_ms.load();
  if (!m.broker_connected && broker_down != 0 && now_ms - broker_down > limit_ms) {
    return "broker unreachable for " + std::to_string((now_ms - broker_down) / 1000) + " s";
  }
  if (!m.db_connected && db_down != 0 && now_ms - db_down > limit_ms) {
    return "database unreachable for " + std::to_string((now_ms - db_down) / 1000) + " s";
  }
  if (m.spool_failing) return "spool not writable (disk full or I/O error); broker messages held";
  // A flow held by the database is a problem at once: the server answers but refuses its writes.
  const auto held = m.held();
  if (!held.empty()) {
    return "database refuses writes: " + std::to_string(held.size()) + " flow(s) held (" +
           held.begin()->first + ": " + held.begin()->second + ")";
  }
  return {};
}

struct MetricsServer::Impl {
  httplib::Server server;
  std::thread thread;
  int port = 0;
};

MetricsServer::MetricsServer(const std::string& address, const Metrics& metrics,
                             const Settings& settings, const std::shared_ptr<spdlog::logger>& log)
    : impl_(std::make_unique<Impl>()) {
  const std::optional<HostPort> where = parse_host_port(address);
  if (!where) throw ConfigError("METRICS_ADDRESS: expected host:port, got '" + address + "'");
  const std::int64_t limit_ms = 1000LL * settings.health_unreachable_seconds;
  // A scrape every few seconds needs no more; the default pool has a thread per core and more.
  impl_->server.new_task_queue = [] { return new httplib::ThreadPool(kServerThreads); };
  impl_->server.set_read_timeout(5, 0);
  impl_->server.set_write_timeout(5, 0);
  impl_->server.Get("/metrics", [&metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.prometheus_text(), "text/plain; version=0.0.4");
  });
  impl_->server.Get(
      "/healthz", [&metrics, limit_ms](const httplib::Request&, httplib::Response& res) {
        const std::string problem = health_problem(metrics, steady_now_ms(), limit_ms);
        res.status = problem.empty() ? 200 : 503;
        res.set_content(problem.empty() ? "ok\n" : problem + "\n", "text/plain");
      });
  if (!impl_->server.bind_to_port(where->host, where->port)) {
    // A port in use is a run-time fault (exit 1, systemd retries), not a bad setting.
    throw Error("METRICS_ADDRESS: cannot listen on " + address + " (in use or not permitted)");
  }
  impl_->port = where->port;
  impl_->thread = std::thread([this] {
    set_thread_name("gw-metrics");
    impl_->server.listen_after_bind();
  });
  log->info("metrics and health on http://{}/metrics and /healthz", address);
}

MetricsServer::~MetricsServer() {
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int MetricsServer::port() const { return impl_->port; }

}  // namespace gateway
