// HttpSink: a real HTTP/1.1 server for tests (cpp-httplib on background threads, keep-alive on)
// on 127.0.0.1 that records every POST and answers as scripted (userver's HttpServerMock idea).
// Port 0 picks a free port; a fixed port lets a test stop() the endpoint and start() it again on
// the same port, as if it went down and came back.
//
// Thread-safe: the server threads record and the test reads concurrently.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gateway::testing {

struct RecordedRequest {
  std::string method;                                        // "POST"
  std::string path;                                          // without the query string
  std::vector<std::pair<std::string, std::string>> headers;  // as received, in order
  std::string body;
  int remote_port = 0;  // the client's port: equal across requests on one kept-alive connection
  int status_sent = 0;  // the status the sink answered with
  std::chrono::steady_clock::time_point received_at;

  // The first header with this name (case-insensitive), if any.
  std::optional<std::string> header(std::string_view name) const;
};

class HttpSink {
 public:
  // Starts listening on 127.0.0.1:port (0: any free port). Throws std::runtime_error if the port
  // cannot be bound.
  explicit HttpSink(int port = 0);
  // Stops the server and joins its threads.
  ~HttpSink();
  HttpSink(const HttpSink&) = delete;
  HttpSink& operator=(const HttpSink&) = delete;

  // Listens again on the same port after stop() (no-op while running). Recorded requests and the
  // script are kept. Throws std::runtime_error if the port cannot be bound.
  void start();
  // Closes the listening socket and every connection, waiting for handlers in progress (a
  // delayed handler is cut short and its client gets no answer). Clients then see "refused".
  void stop();
  bool running() const;

  int port() const;
  // "http://127.0.0.1:<port><path>"; path should start with '/'.
  std::string url(std::string_view path = "/") const;

  // Statuses for the next requests, consumed in order; afterwards the default status applies.
  void push_statuses(const std::vector<int>& statuses);
  // The default status (initially 200).
  void set_status(int status);
  // Every answer waits this long before it is sent (0: none).
  void set_delay(std::chrono::milliseconds delay);
  // Adds "Retry-After: <value>" to every answer while set.
  void set_retry_after(std::optional<std::string> value);

  // Copies of the POSTs received so far, in arrival order.
  std::vector<RecordedRequest> requests() const;
  std::size_t count() const;
  // Waits until at least n POSTs arrived. Returns false at the timeout.
  bool wait_for_count(std::size_t n, std::chrono::milliseconds timeout) const;
  void clear();

 private:
  struct State;   // the recordings and the script, shared with the handler
  struct Server;  // the running httplib server and its thread
  std::shared_ptr<State> state_;
  std::unique_ptr<Server> server_;
  int port_ = 0;
};

}  // namespace gateway::testing
