// FlowCache: the last broker rows and flow table the gateway loaded from the database, kept in
// a small file next to the spool (SPOOL_DIR/flow-cache.json), so that a gateway started while
// the database is unreachable can still connect to its broker and spool (issue 15). Written at
// every successful load or reload; read only at start-up, and only when the database is down.
//
// The file is JSON: {"version": 1, "written_unix_ms": …, "spool_id": …, "committed_seq": …,
// "servers": [MqttServer…], "flows": [Flow…]}. Flow and MqttServer are serialized by one
// to_json/from_json pair each (below), so a new field is added in one place. It holds the
// brokers' passwords (mqtt_servers.password): it is written with mode 0600 and never logged.
// Writing is atomic (a temp file, fsync, rename, fsync of the directory): a crash leaves the old
// copy or the new one, never half of one.
//
// Thread-safety: save() and load() may be called from any thread; concurrent save()s are
// serialised by the caller (GatewayMqttClient's reload lock).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "gateway/flow.h"

namespace gateway {

void to_json(nlohmann::json& j, const Flow& flow);
void from_json(const nlohmann::json& j, Flow& flow);  // throws nlohmann::json::exception
void to_json(nlohmann::json& j, const MqttServer& server);
void from_json(const nlohmann::json& j, MqttServer& server);

// What the file holds.
struct FlowCacheContents {
  std::vector<MqttServer> servers;  // failover order (is_default first, then by id)
  std::vector<Flow> flows;
  std::string spool_id;             // the spool the copy was written for
  std::uint64_t committed_seq = 0;  // the highest spool seq the database had committed for it
  std::int64_t written_unix_ms = 0;
};

// The seq above which a spool started from this copy (the database down) must number new
// messages, given the spool's own next seq at open. The database may have committed records the
// spool no longer has: a power loss (SPOOL_FSYNC batch or never) takes the records of the last
// unsynced moments, which may have been committed meanwhile. A new message numbered like one of
// them would be skipped as committed when the database is back: lost. The copy's committed_seq
// is of its last reload (maybe long ago), so the floor is 2^32 seqs above the higher of the two:
// far more than a power loss can take (at most the largest uint64 minus 1).
std::uint64_t seq_floor_without_database(const FlowCacheContents& copy,
                                         std::uint64_t spool_next_seq);

class FlowCache {
 public:
  // The file's name inside SPOOL_DIR.
  static constexpr const char* kFileName = "flow-cache.json";

  explicit FlowCache(const std::filesystem::path& spool_dir);

  const std::filesystem::path& path() const { return path_; }

  // Replaces the file atomically, mode 0600. Throws Error naming the file on an I/O error (the
  // old copy stays).
  void save(const FlowCacheContents& contents) const;

  // The copy, or std::nullopt when there is no file. Throws Error naming the file when it exists
  // but cannot be read or parsed (never a half-read table).
  std::optional<FlowCacheContents> load() const;

 private:
  std::filesystem::path path_;
};

}  // namespace gateway
