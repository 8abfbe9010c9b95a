#include "gateway/adapters/tls_probe.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

namespace gateway {
namespace {

using Clock = std::chrono::steady_clock;

struct CtxFree {
  void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
};
struct SslFree {
  void operator()(SSL* p) const { SSL_free(p); }
};
struct AddrFree {
  void operator()(addrinfo* p) const { freeaddrinfo(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};

class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// The reason of the oldest error in OpenSSL's queue ("bad decrypt"), then clears the queue.
std::string openssl_error(std::string_view fallback = "unknown error") {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return std::string(fallback);
  const char* reason = ERR_reason_error_string(code);
  return reason != nullptr ? reason : "error " + std::to_string(code);
}

// Waits until fd is ready for `events` or the deadline passes.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    return n > 0;
  }
}

int pem_password(char* buf, int size, int /*rwflag*/, void* userdata) {
  const auto* password = static_cast<const std::string*>(userdata);
  if (password == nullptr || size <= 0) return 0;
  const int n =
      static_cast<int>(std::min<std::size_t>(password->size(), static_cast<std::size_t>(size)));
  std::memcpy(buf, password->data(), static_cast<std::size_t>(n));
  return n;
}

// The client certificate's own problem that a broker would refuse it for, or "".
std::string client_certificate_problem(const std::string& path) {
  const std::unique_ptr<BIO, BioFree> bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return "";
  const std::unique_ptr<X509, X509Free> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (!cert) return "";
  if (X509_cmp_current_time(X509_get0_notAfter(cert.get())) < 0) {
    return "the client certificate '" + path + "' has expired";
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert.get())) > 0) {
    return "the client certificate '" + path + "' is not valid yet";
  }
  return "";
}

// A TCP connection to host:port before the deadline, or the reason there is none.
std::pair<int, std::string> tcp_connect(const TlsProbeOptions& o, Clock::time_point deadline) {
  const std::string where = o.host + ":" + std::to_string(o.port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(o.host.c_str(), std::to_string(o.port).c_str(), &hints, &found);
      rc != 0) {
    return {-1, "cannot resolve " + o.host + ": " + ::gai_strerror(rc)};
  }
  const std::unique_ptr<addrinfo, AddrFree> addresses(found);
  std::string error = "cannot connect to " + where;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd =
        ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    int err = ::connect(fd, a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      socklen_t len = sizeof err;
      if (!wait_for(fd, POLLOUT, deadline)) {
        err = ETIMEDOUT;
      } else if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
      }
    }
    if (err == 0) return {fd, ""};
    error = "cannot connect to " + where + ": " + std::strerror(err);
    ::close(fd);
  }
  return {-1, error};
}

bool is_ip_address(const std::string& name) {
  in6_addr v6{};
  in_addr v4{};
  return ::inet_pton(AF_INET, name.c_str(), &v4) == 1 ||
         ::inet_pton(AF_INET6, name.c_str(), &v6) == 1;
}

// What an alert or failure seen by the client says about whose certificate was refused.
std::string handshake_failure(SSL* ssl, bool client_certificate, const std::string& reason) {
  if (const long verify = SSL_get_verify_result(ssl); verify != X509_V_OK) {
    return "the broker's certificate failed verification: " +
           std::string(X509_verify_cert_error_string(verify));
  }
  const bool alert = reason.find("alert") != std::string::npos;
  if (alert && client_certificate)
    return "the broker refused the client certificate (" + reason + ")";
  if (alert && reason.find("certificate required") != std::string::npos) {
    return "the broker requires a client certificate and none is configured (" + reason + ")";
  }
  return "the TLS handshake failed: " + reason;
}

}  // namespace

std::string tls_problem(const TlsProbeOptions& o) {
  ERR_clear_error();
  const auto deadline = Clock::now() + o.timeout;
  const std::unique_ptr<SSL_CTX, CtxFree> ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return "cannot set up TLS: " + openssl_error();
  if (o.ca_file.empty()
          ? SSL_CTX_set_default_verify_paths(ctx.get()) != 1
          : SSL_CTX_load_verify_locations(ctx.get(), o.ca_file.c_str(), nullptr) != 1) {
    return "cannot load ca_file '" + o.ca_file + "': " + openssl_error();
  }
  const bool client_certificate = !o.client_cert_file.empty();
  std::string password;  // for the PEM callback, as long as ctx may call it
  if (client_certificate) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), o.client_cert_file.c_str()) != 1) {
      return "cannot load client_cert_file '" + o.client_cert_file + "': " + openssl_error();
    }
    if (o.key_password) password = o.key_password->reveal();
    SSL_CTX_set_default_passwd_cb(ctx.get(), pem_password);
    SSL_CTX_set_default_passwd_cb_userdata(ctx.get(), &password);
    const std::string& key = o.client_key_file.empty() ? o.client_cert_file : o.client_key_file;
    const std::string key_name = o.client_key_file.empty() ? "client_cert_file" : "client_key_file";
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), key.c_str(), SSL_FILETYPE_PEM) != 1) {
      std::string reason = openssl_error();
      if (!o.key_password && reason.find("bad decrypt") != std::string::npos) {
        reason += "; the key is encrypted and no client_key_password_file is set";
      }
      return "cannot load " + key_name + " '" + key + "': " + reason;
    }
    if (SSL_CTX_check_private_key(ctx.get()) != 1) {
      return "the client key '" + key + "' does not belong to the client certificate '" +
             o.client_cert_file + "'";
    }
    if (std::string problem = client_certificate_problem(o.client_cert_file); !problem.empty()) {
      return problem;
    }
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);

  auto [fd, error] = tcp_connect(o, deadline);
  if (fd < 0) return error;
  const Socket socket(fd);
  const std::unique_ptr<SSL, SslFree> ssl(SSL_new(ctx.get()));
  if (!ssl || SSL_set_fd(ssl.get(), fd) != 1) return "cannot set up TLS: " + openssl_error();
  if (is_ip_address(o.server_name)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), o.server_name.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl.get(), o.server_name.c_str());
    SSL_set1_host(ssl.get(), o.server_name.c_str());
  }
  for (;;) {
    const int rc = SSL_connect(ssl.get());
    if (rc == 1) break;
    const int err = SSL_get_error(ssl.get(), rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (wait_for(fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) continue;
      ERR_clear_error();
      return "the TLS handshake timed out";
    }
    const std::string reason =
        openssl_error(err == SSL_ERROR_SYSCALL ? "the broker closed the connection" : "");
    return handshake_failure(ssl.get(), client_certificate, reason);
  }
  // TLS 1.3: the broker checks the client certificate after the client's side of the handshake
  // is done; its refusal arrives as an alert on the first read. A broker that waits for the MQTT
  // CONNECT is content.
  const auto read_until = std::min(deadline, Clock::now() + std::chrono::milliseconds(1500));
  for (;;) {
    char byte = 0;
    const int rc = SSL_read(ssl.get(), &byte, 1);
    if (rc > 0) break;
    const int err = SSL_get_error(ssl.get(), rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (wait_for(fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, read_until)) continue;
      break;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
      ERR_clear_error();
      return "the broker closed the TLS connection right after the handshake";
    }
    const std::string reason = openssl_error("the broker closed the connection");
    return handshake_failure(ssl.get(), client_certificate, reason);
  }
  ERR_clear_error();
  return "";
}

}  // namespace gateway
