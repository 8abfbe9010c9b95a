#include "gateway/adapters/curl_http_poster.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>

#include "gateway/errors.h"
#include "gateway/redact.h"

namespace gateway {

namespace {

constexpr long kMaxConnectTimeoutMs = 5000;
constexpr std::string_view kAllowedProtocols = "http,https";

#ifdef GATEWAY_VERSION
constexpr const char* kUserAgent = "mqtt-gateway/" GATEWAY_VERSION;
#else
constexpr const char* kUserAgent = "mqtt-gateway";
#endif

using SlistPtr = std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)>;

bool has_line_break(std::string_view text) {
  return text.find_first_of("\r\n") != std::string_view::npos;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view text) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  return text;
}

// The response body is not needed; without a write callback libcurl would print it to stdout.
size_t discard_body(char*, size_t size, size_t count, void*) { return size * count; }

// Runs on the calling thread inside curl_easy_perform, once per header line.
size_t capture_retry_after(char* data, size_t size, size_t count, void* user) {
  const size_t length = size * count;
  auto* retry_after = static_cast<std::string*>(user);
  const std::string_view line(data, length);
  try {
    // A new status line starts a new header block (1xx answers): forget the previous one.
    if (line.rfind("HTTP/", 0) == 0) {
      retry_after->clear();
      return length;
    }
    const auto colon = line.find(':');
    if (colon != std::string_view::npos && iequals(trim(line.substr(0, colon)), "Retry-After")) {
      *retry_after = std::string(trim(line.substr(colon + 1)));
    }
  } catch (...) {
    return 0;  // aborts the transfer (CURLE_WRITE_ERROR) rather than unwinding through C
  }
  return length;
}

std::string curl_error_text(CURLcode code, const char* detail) {
  std::string text = curl_easy_strerror(code);
  text += " (curl " + std::to_string(static_cast<int>(code)) + ")";
  if (detail != nullptr && detail[0] != '\0') {
    text += ": ";
    text += trim(detail);
  }
  return text;
}

HttpResult transport_failure(std::string error) {
  HttpResult result;
  result.error = std::move(error);
  return result;
}

}  // namespace

CurlGlobal::CurlGlobal() {
  if (const CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT); code != CURLE_OK) {
    throw Error(std::string("curl_global_init failed: ") + curl_easy_strerror(code));
  }
}

CurlGlobal::~CurlGlobal() { curl_global_cleanup(); }

struct CurlHttpPoster::Handle {
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> easy{curl_easy_init(), &curl_easy_cleanup};
  char error_buffer[CURL_ERROR_SIZE] = {};
};

CurlHttpPoster::CurlHttpPoster() : handle_(std::make_unique<Handle>()) {
  if (!handle_->easy) throw Error("curl_easy_init failed");
}

CurlHttpPoster::~CurlHttpPoster() = default;

HttpResult CurlHttpPoster::post(const HttpRequest& request) {
  CURL* const easy = handle_->easy.get();

  SlistPtr headers(nullptr, &curl_slist_free_all);
  const auto add_header = [&headers](const std::string& line) {
    curl_slist* const appended = curl_slist_append(headers.get(), line.c_str());
    if (appended == nullptr) return false;
    (void)headers.release();  // `appended` is the head of the same list: keep owning it
    headers.reset(appended);
    return true;
  };
  bool headers_ok = add_header("Content-Type: application/json") && add_header("Expect:");
  for (const auto& [name, value] : request.headers) {
    if (name.empty() || has_line_break(name) || has_line_break(value) ||
        name.find(':') != std::string::npos) {
      return transport_failure("invalid header name or value for '" + name + "'");
    }
    std::string line = name;
    line += ": ";
    line += value;
    headers_ok = headers_ok && add_header(line);
  }
  if (!headers_ok) return transport_failure("out of memory building the request headers");

  // Reset per call so no option leaks from the previous request; live connections survive it.
  curl_easy_reset(easy);
  handle_->error_buffer[0] = '\0';
  std::string retry_after;
  const long timeout_ms = std::max<long>(1, static_cast<long>(request.timeout.count()));

  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, handle_->error_buffer);
  curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, kAllowedProtocols.data());
  curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, kAllowedProtocols.data());
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, std::min(timeout_ms, kMaxConnectTimeoutMs));
  curl_easy_setopt(easy, CURLOPT_USERAGENT, kUserAgent);
  curl_easy_setopt(easy, CURLOPT_POST, 1L);
  // POSTFIELDS is not copied: request.body outlives curl_easy_perform below.
  curl_easy_setopt(easy, CURLOPT_POSTFIELDS, request.body.data());
  curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &discard_body);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &capture_retry_after);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &retry_after);

  const CURLcode code = curl_easy_perform(easy);
  // Do not keep a pointer to the list that is freed when this function returns.
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, nullptr);

  HttpResult result;
  result.retry_after = std::move(retry_after);
  if (code != CURLE_OK) {
    // Even if a status line arrived, the answer is incomplete: report it as a transport failure
    // so the caller retries (at-least-once) rather than treating it as delivered.
    // curl's detail may quote the URL, credentials and all.
    result.error = redact_url_credentials(curl_error_text(code, handle_->error_buffer));
    return result;
  }
  long status = 0;
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
  result.status = static_cast<int>(status);
  if (!result.ok()) result.error = "HTTP " + std::to_string(result.status);
  return result;
}

}  // namespace gateway
