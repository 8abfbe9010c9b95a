#include "gateway/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "gateway/errors.h"
#include "gateway/redact.h"

namespace gateway {
namespace {

constexpr const char* kFilePattern = "%Y-%m-%d %H:%M:%S.%e %-5l [%n] %v";
// journald stamps each line itself and reads the "<N>" syslog priority prefix.
constexpr const char* kJournalPattern = "%*[%n] %v";

// "%*": the syslog priority of the message as "<N>" (sd-daemon(3) prefixes).
class SyslogPriorityFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm& /*time*/,
              spdlog::memory_buf_t& dest) override {
    // trace, debug, info, warn, err, critical, off
    static constexpr char kPriority[] = {'7', '7', '6', '4', '3', '2', '6'};
    const auto level = static_cast<std::size_t>(msg.level);
    dest.push_back('<');
    dest.push_back(level < sizeof kPriority ? kPriority[level] : '6');
    dest.push_back('>');
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<SyslogPriorityFlag>();
  }
};

// Formats with `inner`, after taking URL passwords out of the message: a net under every log
// line, whatever a component puts in it (an endpoint URL, a curl error, a database message).
class RedactingFormatter final : public spdlog::formatter {
 public:
  explicit RedactingFormatter(std::unique_ptr<spdlog::formatter> inner)
      : inner_(std::move(inner)) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view text(msg.payload.data(), msg.payload.size());
    if (!has_url_credentials(text)) {
      inner_->format(msg, dest);
      return;
    }
    const std::string redacted = redact_url_credentials(text);
    spdlog::details::log_msg copy = msg;
    copy.payload = spdlog::string_view_t(redacted.data(), redacted.size());
    inner_->format(copy, dest);
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<RedactingFormatter>(inner_->clone());
  }

 private:
  std::unique_ptr<spdlog::formatter> inner_;
};

std::unique_ptr<spdlog::formatter> redacting(const char* pattern) {
  return std::make_unique<RedactingFormatter>(std::make_unique<spdlog::pattern_formatter>(pattern));
}

// True when stderr is the journal stream systemd connected (JOURNAL_STREAM is "device:inode" of
// it), not merely inherited from a parent that was.
bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  struct stat st {};
  if (stream == nullptr || fstat(STDERR_FILENO, &st) != 0) return false;
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) == stream;
}

}  // namespace

struct Logging::Impl {
  std::filesystem::path dir;
  std::string path;
  std::size_t max_bytes;
  std::size_t max_files;
  spdlog::level::level_enum level;
  // A dist sink in front of the file sink lets reopen() swap the file without touching loggers.
  std::shared_ptr<spdlog::sinks::dist_sink_mt> file =
      std::make_shared<spdlog::sinks::dist_sink_mt>();
  std::shared_ptr<spdlog::sinks::stderr_sink_mt> err =
      std::make_shared<spdlog::sinks::stderr_sink_mt>();
  std::mutex mu;
  std::vector<std::shared_ptr<spdlog::logger>> loggers;  // guarded by mu

  // Throws spdlog::spdlog_ex when the file cannot be opened.
  std::shared_ptr<spdlog::sinks::rotating_file_sink_mt> open_file() const {
    auto sink = std::make_shared<spdlog::sinks::rotating_file_sink_mt>(path, max_bytes, max_files);
    sink->set_formatter(redacting(kFilePattern));
    return sink;
  }
};

Logging::Logging(const Settings& s) : impl_(std::make_unique<Impl>()) {
  impl_->dir = s.log_dir;
  std::error_code ec;
  std::filesystem::create_directories(impl_->dir, ec);
  // Run-time I/O faults (exit 1, systemd retries), not bad settings: the directory may be on a
  // volume that is not mounted yet.
  if (ec) throw Error("LOG_DIR: cannot create '" + s.log_dir + "': " + ec.message());
  impl_->path = (impl_->dir / "mqtt-gateway.log").string();
  impl_->max_bytes = s.log_max_bytes;
  impl_->max_files = static_cast<std::size_t>(s.log_max_files);
  impl_->level = spdlog::level::from_str(s.log_level);
  try {
    impl_->file->add_sink(impl_->open_file());
  } catch (const spdlog::spdlog_ex& e) {
    throw Error("LOG_DIR: cannot write '" + impl_->path + "': " + e.what());
  }
  if (stderr_is_journal()) {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<SyslogPriorityFlag>('*').set_pattern(kJournalPattern);
    impl_->err->set_formatter(std::make_unique<RedactingFormatter>(std::move(formatter)));
  } else {
    impl_->err->set_formatter(redacting(kFilePattern));
  }
}

Logging::~Logging() { flush(); }

std::shared_ptr<spdlog::logger> Logging::get(const std::string& component) {
  std::lock_guard lock(impl_->mu);
  for (auto& l : impl_->loggers) {
    if (l->name() == component) return l;
  }
  // The loggers never set a pattern themselves: each sink keeps its own (file vs journal).
  auto l =
      std::make_shared<spdlog::logger>(component, spdlog::sinks_init_list{impl_->file, impl_->err});
  l->set_level(impl_->level);
  l->flush_on(spdlog::level::info);
  impl_->loggers.push_back(l);
  return l;
}

bool Logging::reopen() {
  std::string error;
  try {
    // logrotate may have removed the directory along with the file.
    std::error_code ec;
    std::filesystem::create_directories(impl_->dir, ec);
    impl_->file->set_sinks({impl_->open_file()});
    return true;
  } catch (const spdlog::spdlog_ex& e) {
    error = e.what();
  }
  get("main")->error("cannot reopen the log file {} (still writing to the old one): {}",
                     impl_->path, error);
  return false;
}

void Logging::flush() {
  std::lock_guard lock(impl_->mu);
  for (auto& l : impl_->loggers) l->flush();
}

}  // namespace gateway
