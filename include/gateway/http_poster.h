// Port to HTTP: POST one JSON body to a URL. The processor and the delivery workers see only
// this interface; CurlHttpPoster is the real adapter, tests/fakes has a scripted fake.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace gateway {

struct HttpRequest {
  std::string url;
  std::string body;  // sent as is, with Content-Type: application/json
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
  std::chrono::milliseconds timeout{10000};                  // whole request
};

// The outcome of one POST. A transport failure (refused, timeout, TLS) has status 0 and an error.
struct HttpResult {
  int status = 0;
  std::string error;        // empty on a 2xx answer
  std::string retry_after;  // the Retry-After header, if the server sent one
  bool ok() const { return status >= 200 && status < 300; }
};

// Not thread-safe: one instance per worker thread (it keeps connections alive between calls).
class HttpPoster {
 public:
  virtual ~HttpPoster() = default;
  // Never throws for HTTP or network failures: they are reported in the result.
  virtual HttpResult post(const HttpRequest& request) = 0;
};

}  // namespace gateway
