// The gateway's domain rows: a broker to connect to and the flows that route its messages.
// Plain values; copying them is cheap enough (they change only on reload).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "gateway/constants.h"
#include "gateway/secret.h"

namespace gateway {

// A row of mqtt_servers.
struct MqttServer {
  std::int64_t id = 0;
  std::string host;
  int port = 1883;
  std::optional<std::string> username;  // NULL or empty: connect anonymously
  std::optional<Secret> password;
  bool use_tls = false;  // verify the broker against ca_file (or the system CAs when empty)
  std::string ca_file;
  // With use_tls, authenticate with a client certificate (PEM; may also hold the key), its key
  // (PEM; "" = in client_cert_file) and a file holding the key's password ("" = not encrypted).
  // NULL columns read as "".
  std::string client_cert_file;
  std::string client_key_file;
  std::string client_key_password_file;
};

// A row of flows, as loaded (or as locked by a transaction). A new field also goes into
// to_json/from_json in src/core/flow_cache.cpp (the copy a start during a database outage uses).
struct Flow {
  std::int64_t id = 0;
  std::string code;
  std::string topic;   // an MQTT filter: may hold + and #
  std::string action;  // as stored; parse_flow_action() tells whether it is known
  std::optional<std::string> endpoint_url;
  std::optional<std::string>
      payload_schema;  // the JSON text of the column; NULL accepts any object
  std::int64_t last_msg_id = 0;
  bool enabled = true;
  // STORE_TABLE (column_map.h): the table the rows go to, the column_map JSON text and "insert"
  // or "upsert" as stored (parse_write_mode() tells whether it is known). NULL for other actions.
  std::optional<std::string> target_table;
  std::optional<std::string> column_map;
  std::string write_mode = "insert";

  // True when the settings that decide routing and processing are the same (ignores last_msg_id).
  bool same_definition(const Flow& other) const {
    return code == other.code && topic == other.topic && action == other.action &&
           endpoint_url == other.endpoint_url && payload_schema == other.payload_schema &&
           enabled == other.enabled && target_table == other.target_table &&
           column_map == other.column_map && write_mode == other.write_mode;
  }
};

}  // namespace gateway
