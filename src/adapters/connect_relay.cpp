#include "gateway/adapters/connect_relay.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <list>
#include <mutex>
#include <string_view>
#include <thread>
#include <utility>

#include "gateway/errors.h"

namespace gateway {
namespace {

constexpr std::size_t kMaxRequestBytes = 8192;
constexpr std::size_t kPumpBytes = std::size_t{64} * 1024;
constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection established\r\n\r\n";
constexpr std::string_view kBadGateway = "HTTP/1.1 502 Bad Gateway\r\n\r\n";
constexpr std::string_view kBadRequest = "HTTP/1.1 400 Bad Request\r\n\r\n";

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

std::string errno_text(int err) { return std::strerror(err); }

bool set_blocking(int fd, bool blocking) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return false;
  return ::fcntl(fd, F_SETFL, blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK) == 0;
}

void no_delay(int fd) {
  const int on = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Waits for `events` on fd, or for the stop eventfd, until `deadline`. True when fd is ready.
bool wait_ready(int fd, short events, int stop_fd, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd fds[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
    const int n = ::poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || fds[1].revents != 0) return false;
    return true;
  }
}

// Copies one direction of a tunnel until EOF or an error, then ends the whole tunnel: MQTT never
// half-closes, and a broker that vanished without a FIN must not keep the other pump waiting.
void pump(int from, int to) {
  std::string buffer(kPumpBytes, '\0');
  for (;;) {
    const ssize_t n = ::recv(from, buffer.data(), buffer.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (!send_all(to, std::string_view(buffer.data(), static_cast<std::size_t>(n)))) break;
  }
  ::shutdown(to, SHUT_RDWR);
  ::shutdown(from, SHUT_RDWR);
}

// An open tunnel: two sockets and a thread per direction. Destroying it closes both.
class Tunnel {
 public:
  Tunnel(UniqueFd client, UniqueFd upstream)
      : client_(std::move(client)), upstream_(std::move(upstream)) {
    up_ = std::thread([this] {
      pump(client_.get(), upstream_.get());
      ++finished_;
    });
    down_ = std::thread([this] {
      pump(upstream_.get(), client_.get());
      ++finished_;
    });
  }
  ~Tunnel() {
    // Wakes both pumps out of recv/send.
    ::shutdown(client_.get(), SHUT_RDWR);
    ::shutdown(upstream_.get(), SHUT_RDWR);
    up_.join();
    down_.join();
  }
  Tunnel(const Tunnel&) = delete;
  Tunnel& operator=(const Tunnel&) = delete;

  bool done() const { return finished_ == 2; }

 private:
  UniqueFd client_;
  UniqueFd upstream_;
  std::atomic<int> finished_{0};
  std::thread up_;
  std::thread down_;
};

}  // namespace

class ConnectRelay::Impl {
 public:
  Impl(std::string host, int port, std::chrono::milliseconds connect_timeout,
       std::shared_ptr<spdlog::logger> log)
      : host_(std::move(host)),
        port_(port),
        connect_timeout_(connect_timeout),
        log_(std::move(log)),
        stop_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!stop_) throw Error("MQTT TLS relay: eventfd: " + errno_text(errno));
    listener_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener_) throw Error("MQTT TLS relay: socket: " + errno_text(errno));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener_.get(), 8) != 0 ||
        ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      throw Error("MQTT TLS relay: cannot listen on 127.0.0.1: " + errno_text(errno));
    }
    listen_port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }

  ~Impl() {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(stop_.get(), &one, sizeof one);
    acceptor_.join();
    tunnels_.clear();  // joins their threads
  }

  std::string proxy_address() const { return "127.0.0.1:" + std::to_string(listen_port_); }

  std::string last_error() const {
    std::lock_guard lock(mu_);
    return last_error_;
  }

 private:
  void set_error(std::string error) {
    std::lock_guard lock(mu_);
    last_error_ = std::move(error);
  }

  void accept_loop() {
    for (;;) {
      pollfd fds[2] = {{listener_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
      const int n = ::poll(fds, 2, -1);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || fds[1].revents != 0) return;
      UniqueFd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!client) continue;
      tunnels_.remove_if([](const std::unique_ptr<Tunnel>& t) { return t->done(); });
      open_tunnel(std::move(client));
    }
  }

  // Reads the CONNECT request, connects upstream and answers; starts the tunnel on success.
  void open_tunnel(UniqueFd client) {
    const auto deadline = std::chrono::steady_clock::now() + connect_timeout_;
    std::string request;
    std::size_t head_end = std::string::npos;
    while (head_end == std::string::npos) {
      if (request.size() >= kMaxRequestBytes ||
          !wait_ready(client.get(), POLLIN, stop_.get(), deadline)) {
        return;
      }
      char buffer[1024];
      const ssize_t n = ::recv(client.get(), buffer, sizeof buffer, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      request.append(buffer, static_cast<std::size_t>(n));
      head_end = request.find("\r\n\r\n");
    }
    if (request.rfind("CONNECT ", 0) != 0) {
      send_all(client.get(), kBadRequest);
      return;
    }
    std::string error;
    UniqueFd upstream = connect_upstream(deadline, error);
    if (!upstream) {
      set_error(error);
      log_->debug("mqtt: TLS relay: {}", error);
      send_all(client.get(), kBadGateway);
      return;
    }
    set_error("");
    // Paho sends nothing after the request until it has the answer; should it, pass it on.
    const std::string_view early = std::string_view(request).substr(head_end + 4);
    if (!set_blocking(client.get(), true) || !send_all(client.get(), kEstablished) ||
        !send_all(upstream.get(), early)) {
      return;
    }
    no_delay(client.get());
    tunnels_.push_back(std::make_unique<Tunnel>(std::move(client), std::move(upstream)));
  }

  UniqueFd connect_upstream(std::chrono::steady_clock::time_point deadline, std::string& error) {
    const std::string where = host_ + ":" + std::to_string(port_);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    if (const int rc = ::getaddrinfo(host_.c_str(), std::to_string(port_).c_str(), &hints, &found);
        rc != 0) {
      error = "cannot resolve " + host_ + ": " + ::gai_strerror(rc);
      return {};
    }
    const std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> addresses(found, ::freeaddrinfo);
    error = "cannot connect to " + where;
    for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
      UniqueFd fd(
          ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
      if (!fd) continue;
      int err = ::connect(fd.get(), a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
      if (err == EINPROGRESS) {
        if (!wait_ready(fd.get(), POLLOUT, stop_.get(), deadline)) {
          error = "cannot connect to " + where + ": timed out";
          continue;
        }
        socklen_t len = sizeof err;
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      }
      if (err != 0) {
        error = "cannot connect to " + where + ": " + errno_text(err);
        continue;
      }
      if (!set_blocking(fd.get(), true)) continue;
      no_delay(fd.get());
      return fd;
    }
    return {};
  }

  const std::string host_;
  const int port_;
  const std::chrono::milliseconds connect_timeout_;
  std::shared_ptr<spdlog::logger> log_;
  UniqueFd stop_;
  UniqueFd listener_;
  int listen_port_ = 0;
  mutable std::mutex mu_;
  std::string last_error_;                      // guarded by mu_
  std::list<std::unique_ptr<Tunnel>> tunnels_;  // the accepting thread's, then the destructor's
  std::thread acceptor_;
};

ConnectRelay::ConnectRelay(std::string host, int port, std::chrono::milliseconds connect_timeout,
                           std::shared_ptr<spdlog::logger> log)
    : impl_(std::make_unique<Impl>(std::move(host), port, connect_timeout, std::move(log))) {}

ConnectRelay::~ConnectRelay() = default;

std::string ConnectRelay::proxy_address() const { return impl_->proxy_address(); }

std::string ConnectRelay::last_error() const { return impl_->last_error(); }

}  // namespace gateway
