#include "gateway/logging.h"

#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <mutex>

#include "gateway/errors.h"

namespace gateway {

struct Logging::Impl {
  std::string path;
  std::size_t max_bytes;
  std::size_t max_files;
  spdlog::level::level_enum level;
  // A dist sink in front of the file sink lets reopen() swap the file without touching loggers.
  std::shared_ptr<spdlog::sinks::dist_sink_mt> file = std::make_shared<spdlog::sinks::dist_sink_mt>();
  std::shared_ptr<spdlog::sinks::stderr_sink_mt> err = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  std::mutex mu;
  std::vector<std::shared_ptr<spdlog::logger>> loggers;  // guarded by mu

  std::shared_ptr<spdlog::sinks::rotating_file_sink_mt> open_file() const {
    return std::make_shared<spdlog::sinks::rotating_file_sink_mt>(path, max_bytes, max_files);
  }
};

Logging::Logging(const Settings& s) : impl_(std::make_unique<Impl>()) {
  std::error_code ec;
  std::filesystem::create_directories(s.log_dir, ec);
  if (ec) throw ConfigError("LOG_DIR: cannot create '" + s.log_dir + "': " + ec.message());
  impl_->path = (std::filesystem::path(s.log_dir) / "mqtt-gateway.log").string();
  impl_->max_bytes = s.log_max_bytes;
  impl_->max_files = static_cast<std::size_t>(s.log_max_files);
  impl_->level = spdlog::level::from_str(s.log_level);
  try {
    impl_->file->add_sink(impl_->open_file());
  } catch (const spdlog::spdlog_ex& e) {
    throw ConfigError("LOG_DIR: cannot write '" + impl_->path + "': " + e.what());
  }
  const std::string pattern = "%Y-%m-%d %H:%M:%S.%e %^%-5l%$ [%n] %v";
  impl_->file->set_pattern(pattern);
  impl_->err->set_pattern(pattern);
}

Logging::~Logging() { flush(); }

std::shared_ptr<spdlog::logger> Logging::get(const std::string& component) {
  std::lock_guard lock(impl_->mu);
  for (auto& l : impl_->loggers) {
    if (l->name() == component) return l;
  }
  auto l = std::make_shared<spdlog::logger>(
      component, spdlog::sinks_init_list{impl_->file, impl_->err});
  l->set_level(impl_->level);
  l->flush_on(spdlog::level::info);
  impl_->loggers.push_back(l);
  return l;
}

void Logging::reopen() {
  auto fresh = impl_->open_file();
  impl_->file->set_sinks({fresh});
  impl_->file->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-5l%$ [%n] %v");
}

void Logging::flush() {
  std::lock_guard lock(impl_->mu);
  for (auto& l : impl_->loggers) l->flush();
}

}  // namespace gateway
