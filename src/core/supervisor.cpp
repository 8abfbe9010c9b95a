#include "gateway/supervisor.h"

#include <signal.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <utility>

#include "gateway/clock.h"
#include "gateway/gateway_mqtt_client.h"
#include "gateway/metrics.h"
#include "gateway/signal_mask.h"
#include "gateway/thread_name.h"

namespace gateway {
namespace {

// How often the timer thread looks at what is due: the resolution of both intervals.
constexpr std::chrono::milliseconds kTick{200};

}  // namespace

Supervisor::Supervisor(GatewayMqttClient& client, Metrics& metrics, SupervisorOptions options,
                       std::shared_ptr<spdlog::logger> log)
    : client_(client), metrics_(metrics), options_(std::move(options)), log_(std::move(log)) {}

Supervisor::~Supervisor() { stop(); }

void Supervisor::start() {
  timer_ = std::thread([this] {
    set_thread_name("gw-supervisor");
    const auto scope = options_.thread_scope ? options_.thread_scope() : nullptr;
    timer_loop();
  });
}

void Supervisor::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (timer_.joinable()) timer_.join();
}

void Supervisor::reload_flows() {
  try {
    client_.reload_flows();
  } catch (const std::exception& e) {
    log_->error("flow reload failed (keeping the current flows): {}", e.what());
  }
}

void Supervisor::timer_loop() {
  using std::chrono::steady_clock;
  auto next_reload = steady_clock::now() + options_.reload_every;
  auto next_db_probe = steady_clock::now();
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, kTick, [this] { return stopping_; })) {
    const auto now = steady_clock::now();
    lock.unlock();
    if (now >= next_reload) {
      next_reload = now + options_.reload_every;
      reload_flows();
    }
    if (now >= next_db_probe) {
      next_db_probe = now + options_.db_probe_every;
      probe_database();
    }
    lock.lock();
  }
}

void Supervisor::probe_database() {
  if (client_.ping_database()) {
    if (!metrics_.db_connected.exchange(true)) log_->info("database reachable again");
    metrics_.db_down_since_ms = 0;
  } else {
    if (metrics_.db_connected.exchange(false)) log_->error("database unreachable");
    if (metrics_.db_down_since_ms.load() == 0) metrics_.db_down_since_ms = steady_now_ms();
  }
}

int Supervisor::run_forever(const SignalMask& signals, const std::function<void()>& on_hangup,
                            const std::function<void()>& on_tick) {
  for (;;) {
    const std::optional<int> sig = signals.wait(std::chrono::seconds(1));
    if (on_tick) on_tick();
    if (!sig) continue;
    if (*sig == SIGHUP) {
      log_->info("SIGHUP: reloading flows and reopening log files");
      if (on_hangup) on_hangup();
      reload_flows();
      continue;
    }
    log_->info("{}: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    return *sig;
  }
}

}  // namespace gateway
