#include "support/http_sink.h"

// The feature macros Debian's libcpp-httplib was built with (CMake passes them from its .pc
// Cflags; repeated here for standalone builds), so the library's and our httplib::Request agree.
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#ifndef CPPHTTPLIB_ZLIB_SUPPORT
#define CPPHTTPLIB_ZLIB_SUPPORT
#endif
#ifndef CPPHTTPLIB_BROTLI_SUPPORT
#define CPPHTTPLIB_BROTLI_SUPPORT
#endif
#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace gateway::testing {

namespace {

constexpr const char* kHost = "127.0.0.1";
// httplib holds a worker per open connection and joins them in stop(); an idle kept-alive
// connection is only noticed after this timeout, so it bounds how long stop() can take.
constexpr time_t kKeepAliveTimeoutSeconds = 1;
constexpr std::size_t kKeepAliveMaxRequests = 1'000'000;
constexpr std::size_t kWorkerThreads = 16;
constexpr std::chrono::seconds kStartTimeout{5};

// httplib's own pseudo headers (client/server addresses), not sent by the client.
bool is_pseudo_header(const std::string& name) {
  return name == "REMOTE_ADDR" || name == "REMOTE_PORT" || name == "LOCAL_ADDR" ||
         name == "LOCAL_PORT";
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

void answer_unavailable(httplib::Response& response) {
  response.status = 503;
  response.set_header("Connection", "close");
}

}  // namespace

std::optional<std::string> RecordedRequest::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (iequals(key, name)) return value;
  }
  return std::nullopt;
}

struct HttpSink::State {
  mutable std::mutex mu;
  mutable std::condition_variable changed;  // a request arrived, or stopping was set
  std::vector<RecordedRequest> requests;    // guarded by mu
  std::deque<int> scripted_statuses;        // guarded by mu
  int default_status = 200;                 // guarded by mu
  std::chrono::milliseconds delay{0};       // guarded by mu
  std::optional<std::string> retry_after;   // guarded by mu
  bool stopping = false;                    // guarded by mu

  // Runs on an httplib worker thread.
  void handle(const httplib::Request& request, httplib::Response& response) {
    RecordedRequest record;
    record.method = request.method;
    record.path = request.path;
    for (const auto& [name, value] : request.headers) {
      if (!is_pseudo_header(name)) record.headers.emplace_back(name, value);
    }
    record.body = request.body;
    record.remote_port = request.remote_port;
    record.received_at = std::chrono::steady_clock::now();

    std::unique_lock lock(mu);
    if (stopping) {  // arrived on a kept-alive connection while stop() waits for the workers
      answer_unavailable(response);
      return;
    }
    int status = default_status;
    if (!scripted_statuses.empty()) {
      status = scripted_statuses.front();
      scripted_statuses.pop_front();
    }
    record.status_sent = status;
    requests.push_back(std::move(record));
    const auto wait = delay;
    const auto retry = retry_after;
    changed.notify_all();
    if (wait.count() > 0 && changed.wait_for(lock, wait, [this] { return stopping; })) {
      answer_unavailable(response);
      return;
    }
    lock.unlock();

    response.status = status;
    if (retry) response.set_header("Retry-After", *retry);
    if (status >= 200 && status != 204 && status != 304) {
      response.set_content("{\"status\":" + std::to_string(status) + "}\n", "application/json");
    }
  }
};

struct HttpSink::Server {
  httplib::Server http;
  std::thread thread;
};

HttpSink::HttpSink(int port) : state_(std::make_shared<State>()), port_(port) { start(); }

HttpSink::~HttpSink() { stop(); }

void HttpSink::start() {
  if (server_) return;
  auto server = std::make_unique<Server>();
  httplib::Server& http = server->http;
  // Only SO_REUSEADDR (httplib's default is SO_REUSEPORT, which would let two sinks share a
  // port): a restarted sink can bind its port again despite TIME_WAIT.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  http.set_tcp_nodelay(true);
  http.set_keep_alive_max_count(kKeepAliveMaxRequests);
  http.set_keep_alive_timeout(kKeepAliveTimeoutSeconds);
  http.new_task_queue = [] { return new httplib::ThreadPool(kWorkerThreads); };
  std::weak_ptr<State> weak_state = state_;
  http.Post(".*", [weak_state](const httplib::Request& request, httplib::Response& response) {
    if (auto state = weak_state.lock()) state->handle(request, response);
  });

  if (port_ == 0) {
    const int bound = http.bind_to_any_port(kHost);
    if (bound <= 0) throw std::runtime_error("HttpSink: cannot bind 127.0.0.1 to any port");
    port_ = bound;
  } else if (!http.bind_to_port(kHost, port_)) {
    throw std::runtime_error("HttpSink: cannot bind 127.0.0.1:" + std::to_string(port_));
  }
  {
    std::lock_guard lock(state_->mu);
    state_->stopping = false;
  }
  // The socket already listens (connections queue in the backlog), so clients could connect
  // now; but httplib's stop() is a no-op until listen_after_bind() has marked the server running,
  // so wait for that or an early stop() would leave the thread blocked in accept() for good.
  server->thread = std::thread([&http] { http.listen_after_bind(); });
  const auto deadline = std::chrono::steady_clock::now() + kStartTimeout;
  while (!http.is_running() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!http.is_running()) {
    // Cannot be stopped or joined safely: leak it (with its thread) rather than hang the test.
    server->thread.detach();
    (void)server.release();
    throw std::runtime_error("HttpSink: the server thread did not start within 5 s");
  }
  server_ = std::move(server);
}

void HttpSink::stop() {
  if (!server_) return;
  {
    std::lock_guard lock(state_->mu);
    state_->stopping = true;
  }
  state_->changed.notify_all();
  server_->http.stop();
  server_->thread.join();
  server_.reset();
}

bool HttpSink::running() const { return server_ != nullptr; }

int HttpSink::port() const { return port_; }

std::string HttpSink::url(std::string_view path) const {
  return "http://" + std::string(kHost) + ":" + std::to_string(port_) + std::string(path);
}

void HttpSink::push_statuses(const std::vector<int>& statuses) {
  std::lock_guard lock(state_->mu);
  state_->scripted_statuses.insert(state_->scripted_statuses.end(), statuses.begin(),
                                   statuses.end());
}

void HttpSink::set_status(int status) {
  std::lock_guard lock(state_->mu);
  state_->default_status = status;
}

void HttpSink::set_delay(std::chrono::milliseconds delay) {
  std::lock_guard lock(state_->mu);
  state_->delay = delay;
}

void HttpSink::set_retry_after(std::optional<std::string> value) {
  std::lock_guard lock(state_->mu);
  state_->retry_after = std::move(value);
}

std::vector<RecordedRequest> HttpSink::requests() const {
  std::lock_guard lock(state_->mu);
  return state_->requests;
}

std::size_t HttpSink::count() const {
  std::lock_guard lock(state_->mu);
  return state_->requests.size();
}

bool HttpSink::wait_for_count(std::size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(state_->mu);
  return state_->changed.wait_for(lock, timeout, [&] { return state_->requests.size() >= n; });
}

void HttpSink::clear() {
  std::lock_guard lock(state_->mu);
  state_->requests.clear();
}

}  // namespace gateway::testing
