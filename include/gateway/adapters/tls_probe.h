// tls_problem(): what is wrong with a TLS connection to a broker, found by a handshake of our own
// (OpenSSL) with the same files and name that Paho used, for the error line of a connect that
// failed. Paho C reports only "TCP/TLS connect failure", and its hook for OpenSSL's errors cannot
// be used safely from Paho C++ 1.2 (see paho_mqtt_connection.cpp).
//
// Thread-safe (OpenSSL's error queue is per thread). Opens one TCP connection, bounded by the
// timeout; sends no MQTT packet.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "gateway/settings.h"

namespace gateway {

struct TlsProbeOptions {
  std::string host;  // where to connect
  int port = 8883;
  std::string server_name;       // the name to verify the certificate against and send as SNI
  std::string ca_file;           // "" = the system CAs
  std::string client_cert_file;  // "" = no client certificate
  std::string client_key_file;   // "" = in client_cert_file
  std::optional<Secret> key_password;
  std::chrono::milliseconds timeout{10000};
};

// The problem in a few words, e.g. "the broker's certificate failed verification: hostname
// mismatch", "the broker refused the client certificate (tlsv1 alert unknown ca)", "cannot load
// client_key_file '/k.pem': bad decrypt"; "" when the handshake works and the broker keeps the
// connection open for a moment (the failure was not TLS's). Never throws.
std::string tls_problem(const TlsProbeOptions& options);

}  // namespace gateway
