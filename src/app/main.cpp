// The composition root: settings, logging, adapters, the spool, the pipeline, the MQTT client and
// the supervisor are built here, in this order, and torn down in reverse by scope. Nothing else
// lives here.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>

#include "gateway/adapters/curl_http_poster.h"
#include "gateway/adapters/metrics_server.h"
#include "gateway/adapters/mysql_delivery_repository.h"
#include "gateway/adapters/mysql_flow_repository.h"
#include "gateway/adapters/mysql_schema.h"
#include "gateway/adapters/paho_mqtt_connection.h"
#include "gateway/adapters/systemd_notifier.h"
#include "gateway/admin_cli.h"
#include "gateway/clock.h"
#include "gateway/column_map.h"
#include "gateway/command_line.h"
#include "gateway/constants.h"
#include "gateway/delivery_service.h"
#include "gateway/env_file.h"
#include "gateway/errors.h"
#include "gateway/flow_cache.h"
#include "gateway/flow_starts.h"
#include "gateway/gateway_mqtt_client.h"
#include "gateway/logging.h"
#include "gateway/pid_file.h"
#include "gateway/pipeline.h"
#include "gateway/redact.h"
#include "gateway/settings.h"
#include "gateway/shutdown_deadline.h"
#include "gateway/signal_mask.h"
#include "gateway/spool.h"
#include "gateway/supervisor.h"
#include "gateway/topic_filter.h"

extern char** environ;

namespace gateway {
namespace {

// Exit statuses (also in --help): 1 for a failure at run time (database, broker, disk), 2 when the
// command line or a setting is wrong, so that retrying cannot help (systemd:
// RestartPreventExitStatus=2).
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
// The dispatcher stamps Metrics::last_progress_ms at least every 100 ms while it runs; this much
// silence means the processing loop is stuck, and the systemd watchdog is no longer fed.
constexpr std::int64_t kStuckAfterMs = 10000;

Settings settings_from(const CommandLine& cl) {
  EnvMap file;
  const auto path = cl.env_file.value_or(".env");
  if (auto parsed = read_env_file(path)) {
    file = std::move(*parsed);
  } else if (cl.env_file) {
    throw ConfigError("--env-file: " + path.string() + " does not exist");
  }
  return load_settings(merge_env(environment_map(environ), file));
}

int check(const Settings& settings) {
  const auto node = std::make_shared<DatabaseNode>();
  MySqlFlowRepository repo(settings, node);
  // With several nodes in DB_HOST, the one the connection took (the first that takes writes).
  const std::string name = node->name();
  std::cout << "database: " << settings.database_url_redacted() << " ok, node " << node->address()
            << (name.empty() ? "" : " (" + name + ")") << ", "
            << (node->tls().empty() ? "not encrypted" : "TLS " + node->tls()) << "\n";
  if (auto missing = MySqlSchema(settings, node).missing_tables(); !missing.empty()) {
    std::cout << "schema: missing tables:";
    for (const auto& t : missing) std::cout << ' ' << t;
    std::cout << " (run mqtt-gateway --init-db)\n";
    return kExitFailure;
  }
  // Tables an older version made: reading flows would fail on the missing columns.
  if (auto missing = MySqlSchema(settings, node).missing_columns(); !missing.empty()) {
    std::cout << "schema: missing columns:";
    for (const auto& c : missing) std::cout << ' ' << c;
    std::cout << " (run mqtt-gateway --init-db to upgrade)\n";
    return kExitFailure;
  }
  std::cout << "schema: ok\n";
  auto server = repo.load_mqtt_server();
  if (!server) {
    std::cout << "broker: no enabled MQTT server in table mqtt_servers\n";
    return kExitFailure;
  }
  std::cout << "broker: " << (server->use_tls ? "ssl://" : "tcp://") << server->host << ":"
            << server->port << " (server id " << server->id << ")\n";
  auto flows = repo.load_flows();
  std::cout << "flows: " << flows.size() << " enabled\n";
  int problems = 0;
  for (const Flow& f : flows) {
    std::cout << "  " << f.code << "  " << f.topic << "  " << f.action
              << (f.endpoint_url ? "  " + redact_url_credentials(*f.endpoint_url) : "")
              << (f.target_table ? "  table " + *f.target_table : "") << "\n";
    // The same faults that disable a flow or reject all its messages at run time.
    std::string problem;
    const auto action = parse_flow_action(f.action);
    if (auto why = validate_topic_filter(f.topic)) {
      problem = "invalid topic filter: " + *why;
    } else if (!action) {
      problem = "unknown action '" + f.action + "'";
    } else if (*action == FlowAction::kPostEndpoint && !f.endpoint_url) {
      problem = "POST_ENDPOINT without endpoint_url";
    } else if (*action == FlowAction::kStoreTable) {
      // What keeps the flow from being activated at a reload, one line per problem.
      const TableInfo table = f.target_table && !f.target_table->empty()
                                  ? repo.describe_table(*f.target_table)
                                  : TableInfo{};
      const FlowMapping m = compile_flow_mapping(f.target_table, f.column_map, f.write_mode, table);
      for (const std::string& p : m.map.problems) {
        std::cout << "    problem: STORE_TABLE " << p << "\n";
      }
      if (!m.ok()) ++problems;
    }
    if (!problem.empty()) {
      std::cout << "    problem: " << problem << "\n";
      ++problems;
    }
  }
  if (problems > 0) {
    std::cout << "flows: " << problems << " flow(s) with problems\n";
    return kExitFailure;
  }
  return 0;
}

// The database is unreachable at start-up: the copy of the last reload (flow_cache.h), or the
// database's error when there is none, as before (one line, exit 1).
FlowCacheContents start_copy(const Settings& settings, const DbError& db_error) {
  std::optional<FlowCacheContents> copy;
  try {
    copy = FlowCache(settings.spool_dir).load();
  } catch (const Error& e) {
    throw Error(std::string(db_error.what()) + "; and no usable cached copy: " + e.what());
  }
  if (!copy) {
    throw Error(std::string(db_error.what()) + " (no cached copy of the flows to start from)");
  }
  return std::move(*copy);
}

SpoolOptions spool_options(const Settings& s) {
  SpoolOptions o;
  o.dir = s.spool_dir;
  o.segment_bytes = s.spool_segment_bytes;
  o.max_bytes = s.spool_max_bytes;
  o.fsync = s.spool_fsync == FsyncPolicy::kAlways  ? SpoolFsync::kAlways
            : s.spool_fsync == FsyncPolicy::kNever ? SpoolFsync::kNever
                                                   : SpoolFsync::kBatch;
  o.fsync_interval = std::chrono::milliseconds(s.spool_fsync_interval_ms);
  return o;
}

PipelineOptions pipeline_options(const Settings& s) {
  PipelineOptions o;
  o.workers = static_cast<std::size_t>(s.db_pool_size);
  o.max_batch = static_cast<std::size_t>(s.max_batch);
  o.batch_linger = std::chrono::milliseconds(s.batch_linger_ms);
  o.limits.max_bytes = s.max_payload_bytes;
  o.limits.max_depth = s.max_json_depth;
  o.processor.http_timeout = std::chrono::seconds(s.http_timeout_seconds);
  o.processor.rejected_payload_max_bytes = s.rejected_payload_max_bytes;
  o.retry_max = std::chrono::seconds(s.db_retry_max_seconds);
  o.processor.post_inline = s.http_delivery == HttpDelivery::kInline;
  o.thread_scope = [] { return std::make_shared<MySqlThreadScope>(); };
  return o;
}

SupervisorOptions supervisor_options(const Settings& s) {
  SupervisorOptions o;
  o.reload_every = std::chrono::seconds(s.flows_reload_interval_seconds);
  o.db_probe_every = std::chrono::seconds(5);
  // The probe and the reloads reopen the control connection on the timer thread.
  o.thread_scope = [] { return std::make_shared<MySqlThreadScope>(); };
  return o;
}

DeliveryOptions delivery_options(const Settings& s) {
  DeliveryOptions o;
  // Inline, the flow workers POST themselves: one delivery worker drains what an earlier outbox
  // run left in the outbox (it starts empty otherwise and stays so).
  o.workers = s.http_delivery == HttpDelivery::kInline
                  ? 1
                  : static_cast<std::size_t>(std::max(2, s.db_pool_size));
  o.http_timeout = std::chrono::seconds(s.http_timeout_seconds);
  o.max_attempts = s.http_max_attempts;
  o.max_age = std::chrono::seconds(s.http_max_age_seconds);
  o.retry_max = std::chrono::seconds(s.http_retry_max_seconds);
  // Renewed every third; a POST (at most the HTTP timeout) must fit in that with room to spare.
  o.lease = std::max<std::chrono::milliseconds>(std::chrono::seconds(30),
                                                3 * o.http_timeout + std::chrono::seconds(5));
  o.thread_scope = [] { return std::make_shared<MySqlThreadScope>(); };
  return o;
}

std::string summary(const Metrics& m, const Spool& spool) {
  const auto st = spool.stats();
  return fmt::format(
      "summary: received {}, stored {}, posted {}, rejected {}, redeliveries dropped {}, backlog "
      "{}, spool {:.1f} MiB{}, broker {}, database {}, held flows {} ({} messages waiting)",
      m.received.load(), m.stored.load(), m.posted.load(), m.rejected.load(), m.redeliveries.load(),
      m.backlog.load(), static_cast<double>(st.bytes) / (1 << 20),
      m.spool_failing ? " (NOT WRITABLE)" : (st.full ? " (FULL)" : ""),
      m.broker_connected ? "up" : "down", m.db_connected ? "up" : "down", m.flows_held.load(),
      m.held_messages.load());
}

int run(const Settings& settings, Logging& logging, SystemdNotifier& notifier,
        const SignalMask& signals) {
  auto log = logging.get("main");
  // Declared first so that it is destroyed last: it bounds every destructor below as well.
  std::optional<ShutdownDeadline> deadline;
  Metrics metrics;
  // With several DB_HOST nodes: which one the connections reach, once per change.
  metrics.database_node->set_on_change(
      [db_log = logging.get("db")](const std::string& line) { db_log->info("{}", line); });
  Spool spool(spool_options(settings), logging.get("spool"));
  log->info("spool {} at {}: {} segment(s), {} bytes, next seq {}", spool.id(), settings.spool_dir,
            spool.stats().segments, spool.stats().bytes, spool.stats().next_seq);
  FlowTable flows;
  auto repositories = [&settings, node = metrics.database_node] {
    return std::make_unique<MySqlFlowRepository>(settings, node);
  };
  // Before anything is appended: never hand out a seq the database already committed. With the
  // database down, the copy of the last reload knows the offset as it was then (issue 15).
  std::optional<FlowCacheContents> cached;
  try {
    const std::uint64_t committed = repositories()->last_committed_seq(spool.id());
    spool.ensure_seq_above(committed,
                           fmt::format("the database already has seq {} of this spool (a power "
                                       "loss before the spool was synced, or a restored spool "
                                       "directory)",
                                       committed));
  } catch (const DbError& e) {
    // A refused login or a missing database is a setting to fix, not an outage to ride out.
    if (e.code == 1044 || e.code == 1045 || e.code == 1049) throw;
    cached = start_copy(settings, e);
    if (cached->spool_id == spool.id()) {
      spool.ensure_seq_above(
          seq_floor_without_database(*cached, spool.stats().next_seq),
          fmt::format("the database is down; seqs it may have committed that a power loss took "
                      "from the spool are skipped (the cached copy knew seq {})",
                      cached->committed_seq));
    }
  }

  GatewayMqttClient client(
      settings, repositories, flows, spool, metrics,
      [&logging](MqttConnectOptions o, MqttHandlers h) -> std::unique_ptr<MqttConnection> {
        return std::make_unique<PahoMqttConnection>(std::move(o), std::move(h),
                                                    logging.get("mqtt"));
      },
      logging.get("mqtt"));
  // Flows first: the pipeline replays what an earlier run left in the spool and must route it.
  if (cached) {
    client.use_cached(*cached);
    metrics.db_down_since_ms = steady_now_ms();
  } else {
    client.reload_flows();
    metrics.db_connected = true;
  }
  // Read before anything is appended: records below the spool's next seq are earlier runs'.
  std::optional<FlowStarts> flow_starts;
  try {
    flow_starts.emplace(settings.spool_dir, spool.stats().next_seq);
  } catch (const Error& e) {
    // Set aside (kept for a look), and routed as before the file existed; if it cannot even be
    // moved, the spool directory itself is in trouble: stop with the error.
    const auto path = std::filesystem::path(settings.spool_dir) / FlowStarts::kFileName;
    std::error_code ec;
    std::filesystem::rename(path, path.string() + ".corrupt", ec);
    if (ec) throw;
    log->warn("{}; moved aside to {}.corrupt: the records already in the spool go to today's flows",
              e.what(), path.string());
    flow_starts.emplace(settings.spool_dir, spool.stats().next_seq);
  }
  PipelineOptions pipeline_opts = pipeline_options(settings);
  pipeline_opts.flow_starts = &*flow_starts;
  Pipeline pipeline(
      spool, flows, repositories, [] { return std::make_unique<CurlHttpPoster>(); },
      std::move(pipeline_opts), metrics, logging.get("pipeline"));
  pipeline.start();
  // Always, also with HTTP_DELIVERY=inline: rows an earlier outbox run left in the outbox are
  // delivered, never stranded.
  auto delivery = std::make_unique<DeliveryService>(
      [&settings, node = metrics.database_node] {
        return std::make_unique<MySqlDeliveryRepository>(settings, node);
      },
      [] { return std::make_unique<CurlHttpPoster>(); }, delivery_options(settings), metrics,
      logging.get("delivery"));
  delivery->start();
  client.start();
  // Its lines (reloads, database probe, signals) keep the "mqtt" component they always had, so
  // that log searches and alerts on them still match.
  Supervisor supervisor(client, metrics, supervisor_options(settings), logging.get("mqtt"));
  supervisor.start();

  std::unique_ptr<MetricsServer> metrics_server;
  if (!settings.metrics_address.empty()) {
    metrics_server = std::make_unique<MetricsServer>(settings.metrics_address, metrics, settings,
                                                     logging.get("metrics"));
  }
  WatchdogFeeder watchdog(notifier);
  notifier.ready();
  notifier.status("running: " + std::to_string(flows.snapshot()->flows().size()) + " flow(s)");
  if (watchdog.enabled()) {
    log->info("ready (systemd watchdog every {} ms)", watchdog.interval().count() / 2000);
  } else {
    log->info("ready");
  }

  auto last_summary = std::chrono::steady_clock::now();
  const auto summary_every = std::chrono::seconds(settings.summary_interval_seconds);
  bool was_stuck = false;
  const int sig = supervisor.run_forever(
      signals, [&logging] { logging.reopen(); },
      [&] {
        // The watchdog is fed only while the dispatcher keeps moving.
        const bool stuck = steady_now_ms() - metrics.last_progress_ms.load() >= kStuckAfterMs;
        if (stuck != was_stuck) {
          was_stuck = stuck;
          if (stuck) {
            log->error("the processing loop made no progress for {} s; not feeding the watchdog",
                       kStuckAfterMs / 1000);
          } else {
            log->info("the processing loop moves again");
          }
        }
        watchdog.tick(!stuck);
        if (std::chrono::steady_clock::now() - last_summary >= summary_every) {
          last_summary = std::chrono::steady_clock::now();
          const std::string line = summary(metrics, spool);
          log->info("{}", line);
          notifier.status(line);
        }
      });

  notifier.stopping();
  notifier.status(std::string("stopping (") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") + ")");
  deadline.emplace(std::chrono::seconds(settings.shutdown_timeout_seconds), log);
  supervisor.stop();  // no reload or probe from now on
  client.stop();      // no new messages; disconnects cleanly
  pipeline.stop(std::chrono::seconds(settings.shutdown_timeout_seconds));
  if (delivery) delivery->stop();
  log->info("{}", summary(metrics, spool));
  log->info("stopped");
  return 0;
}

}  // namespace
}  // namespace gateway

int main(int argc, char** argv) {
  using namespace gateway;
  auto parsed = parse_command_line(argc, argv, std::cout, std::cerr);
  if (auto* code = std::get_if<int>(&parsed)) return *code;
  const CommandLine& cl = std::get<CommandLine>(parsed);

  Settings settings;
  try {
    settings = settings_from(cl);
  } catch (const ConfigError& e) {
    std::cerr << "mqtt-gateway: " << e.what() << "\n";
    return kExitUsage;
  }
  CurlGlobal curl;
  mysql_global_init();
  MySqlThreadScope mysql_thread;

  try {
    if (cl.init_db) {
      MySqlSchema schema(settings);
      schema.apply_script(builtin_schema_sql());
      for (const std::string& change : schema.upgrade_schema())
        std::cout << "upgraded: " << change << "\n";
      std::cout << "schema applied to " << settings.database_url_redacted() << "\n";
      return 0;
    }
    if (cl.check) return check(settings);
    // --init-db, --check and the subcommands keep the default signal actions (Ctrl-C stops them).
    if (cl.admin) return run_admin(*cl.admin, settings, std::cout, std::cerr);
    // The daemon: before any thread exists, so that every thread inherits the mask and only
    // sigwait sees these signals.
    SignalMask signals{SIGTERM, SIGINT, SIGHUP};
    require_paho_c_version();  // at-least-once rests on when Paho C sends the PUBACK

    Logging logging(settings);
    auto log = logging.get("main");
    log->info("mqtt-gateway {} starting (pid {})", GATEWAY_VERSION, getpid());
    for (const auto& line : describe_settings(settings)) log->info("setting {}", line);
    // For `flows ... --reload`; systemd's RuntimeDirectory= sets RUNTIME_DIRECTORY.
    const auto pid_file = write_daemon_pid_file(std::getenv("RUNTIME_DIRECTORY"), *log);
    SystemdNotifier notifier;
    try {
      return run(settings, logging, notifier, signals);
    } catch (const std::exception& e) {
      log->critical("fatal: {}", e.what());
      notifier.stopping();
      return dynamic_cast<const ConfigError*>(&e) ? kExitUsage : kExitFailure;
    }
  } catch (const ConfigError& e) {
    std::cerr << "mqtt-gateway: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "mqtt-gateway: " << e.what() << "\n";
    return kExitFailure;
  }
}
