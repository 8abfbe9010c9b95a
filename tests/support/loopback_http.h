// Loopback helpers for tests of the metrics/health endpoint: a free port, and a plain HTTP GET.
// No client library, so nothing in the test shares code with the server under test.
#pragma once

#include <string>

namespace gateway::testing {

// A TCP port on 127.0.0.1 that was free a moment ago. Throws std::runtime_error.
int free_port();

struct HttpAnswer {
  int status = 0;  // 0: no answer (refused, timeout)
  std::string body;
};

// A plain HTTP/1.1 GET on 127.0.0.1 with a 5 s bound.
HttpAnswer http_get(int port, const std::string& path);

}  // namespace gateway::testing
