// FakeHttpPoster: a scripted HttpPoster for unit tests. It records every request and answers
// from a queue of results (then from a default result, 200 unless changed).
// Thread-safe (one mutex), so a test may inspect it while worker threads post.
#pragma once

#include <cstddef>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "gateway/http_poster.h"

namespace gateway::testing {

class FakeHttpPoster final : public HttpPoster {
 public:
  // A plain answer with this status ("HTTP <status>" as error unless 2xx).
  static HttpResult status_result(int status, std::string retry_after = {}) {
    HttpResult result;
    result.status = status;
    if (!result.ok()) result.error = "HTTP " + std::to_string(status);
    result.retry_after = std::move(retry_after);
    return result;
  }

  // Records the request, then returns the next scripted result or the default one.
  HttpResult post(const HttpRequest& request) override {
    std::lock_guard lock(mu_);
    requests_.push_back(request);
    if (results_.empty()) return default_result_;
    HttpResult result = std::move(results_.front());
    results_.pop_front();
    return result;
  }

  // Queues results consumed in order by the next posts.
  void push_result(HttpResult result) {
    std::lock_guard lock(mu_);
    results_.push_back(std::move(result));
  }
  // The answer once the queue is empty.
  void set_default_result(HttpResult result) {
    std::lock_guard lock(mu_);
    default_result_ = std::move(result);
  }

  std::vector<HttpRequest> requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }
  std::size_t count() const {
    std::lock_guard lock(mu_);
    return requests_.size();
  }

 private:
  mutable std::mutex mu_;
  std::vector<HttpRequest> requests_;               // guarded by mu_
  std::deque<HttpResult> results_;                  // guarded by mu_
  HttpResult default_result_ = status_result(200);  // guarded by mu_
};

}  // namespace gateway::testing
