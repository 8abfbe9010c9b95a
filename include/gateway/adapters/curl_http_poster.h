// CurlHttpPoster: the libcurl adapter behind HttpPoster. It POSTs with one reused easy handle, so
// the connection to an endpoint stays open between calls (HTTP keep-alive).
//
// Not thread-safe: one instance per thread. libcurl's process-wide setup must be done once,
// before any thread starts and before the first CurlHttpPoster is constructed: main (and the test
// main) holds a CurlGlobal for that ("call curl_global_init once before constructing").
//
// Policy applied to every request: only http:// and https:// URLs, redirects are not followed,
// TLS certificates and host names are verified (libcurl defaults, never disabled), no signals.
#pragma once

#include <memory>

#include "gateway/http_poster.h"

namespace gateway {

// RAII for curl_global_init / curl_global_cleanup. Not thread-safe: construct exactly one, in
// main, before any other thread runs. Throws Error if libcurl cannot be initialised.
class CurlGlobal {
 public:
  CurlGlobal();
  ~CurlGlobal();
  CurlGlobal(const CurlGlobal&) = delete;
  CurlGlobal& operator=(const CurlGlobal&) = delete;
};

class CurlHttpPoster final : public HttpPoster {
 public:
  // Throws Error if libcurl cannot create a handle (out of memory).
  CurlHttpPoster();
  ~CurlHttpPoster() override;
  CurlHttpPoster(const CurlHttpPoster&) = delete;
  CurlHttpPoster& operator=(const CurlHttpPoster&) = delete;

  // POSTs request.body to request.url with Content-Type: application/json, an empty Expect header
  // (no 100-continue round trip) and request.headers; request.timeout bounds the whole request
  // (connecting alone is bounded by min(timeout, 5 s)). Returns the status of the answer, or
  // status 0 with the curl error ("Timeout was reached (curl 28): ...") when no complete answer
  // arrived. Non-2xx answers carry error "HTTP <status>".
  // A header name or value containing CR/LF is refused (status 0) instead of being sent.
  // Never throws for HTTP or network failures (only std::bad_alloc can escape).
  HttpResult post(const HttpRequest& request) override;

 private:
  struct Handle;  // keeps <curl/curl.h> out of this header
  std::unique_ptr<Handle> handle_;
};

}  // namespace gateway
