#include "gateway/admin_cli.h"

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdlib>
#include <memory>

#include "gateway/adapters/mysql_flow_admin.h"
#include "gateway/adapters/mysql_flow_repository.h"
#include "gateway/errors.h"
#include "gateway/http_poster.h"
#include "gateway/pid_file.h"
#include "gateway/processor.h"

namespace gateway {
namespace {

// Replays queue POST_ENDPOINT messages in the outbox (post_inline is false): this poster is
// never called.
class NoHttpPoster final : public HttpPoster {
 public:
  HttpResult post(const HttpRequest&) override {
    HttpResult r;
    r.error = "the subcommands do not POST";
    return r;
  }
};

}  // namespace

int run_admin(const AdminRequest& request, const Settings& settings, std::ostream& out,
              std::ostream& err) {
  const auto node = std::make_shared<DatabaseNode>();  // both connections on one node
  MySqlFlowAdmin admin(settings, node);
  // Replays run the flow transaction on a connection of their own, as a worker would.
  MySqlFlowRepository repo(settings, node);
  NoHttpPoster http;
  ProcessorOptions po;
  po.http_timeout = std::chrono::seconds(settings.http_timeout_seconds);
  po.rejected_payload_max_bytes = settings.rejected_payload_max_bytes;
  po.post_inline = false;
  Processor processor(
      repo, http, po,
      std::make_shared<spdlog::logger>("admin", std::make_shared<spdlog::sinks::null_sink_mt>()));

  AdminOptions options;
  options.limits.max_bytes = settings.max_payload_bytes;
  options.limits.max_depth = settings.max_json_depth;
  options.reload = [](const DaemonTarget& target) {
    return send_reload(target, std::getenv("RUNTIME_DIRECTORY"));
  };
  AdminCommands commands(admin, processor, std::move(options), out, err);
  return commands.run(request);
}

}  // namespace gateway
