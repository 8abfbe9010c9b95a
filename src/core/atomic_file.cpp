#include "gateway/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "gateway/errors.h"

namespace gateway {
namespace {

// Writes all of `data` to `fd`. Returns 0 or the errno.
int write_all(int fd, std::string_view data) {
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += static_cast<std::size_t>(n);
  }
  return 0;
}

// A file descriptor closed when it goes out of scope (also when a read throws).
struct ClosedAtExit {
  explicit ClosedAtExit(int descriptor) : fd(descriptor) {}
  ClosedAtExit(const ClosedAtExit&) = delete;
  ClosedAtExit& operator=(const ClosedAtExit&) = delete;
  ~ClosedAtExit() {
    if (fd >= 0) ::close(fd);
  }
  const int fd;
};

void replace_file(const std::filesystem::path& path, std::string_view text, mode_t mode,
                  std::string_view what, bool sync) {
  const std::string temp = path.string() + ".tmp";
  const auto fail = [&](const std::string& step, int err) {
    ::unlink(temp.c_str());
    throw Error(std::string(what) + " " + path.string() + ": " + step + ": " + std::strerror(err));
  };
  // The mode from the start (O_CREAT), and again with fchmod for a temp file left by a crash.
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) fail("cannot create " + temp, errno);
  int err = ::fchmod(fd, mode) == 0 ? 0 : errno;
  if (err == 0) err = write_all(fd, text);
  if (err == 0 && sync && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) fail("cannot write " + temp, err);
  if (::rename(temp.c_str(), path.c_str()) != 0) fail("cannot rename " + temp, errno);
  if (!sync) return;
  const auto dir = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    throw Error(std::string(what) + " " + path.string() +
                ": cannot open its directory: " + std::strerror(errno));
  }
  err = ::fsync(dfd) == 0 ? 0 : errno;
  ::close(dfd);
  if (err != 0) {
    throw Error(std::string(what) + " " + path.string() +
                ": cannot sync its directory: " + std::strerror(err));
  }
}

}  // namespace

void replace_file_atomically(const std::filesystem::path& path, std::string_view text, mode_t mode,
                             std::string_view what) {
  replace_file(path, text, mode, what, true);
}

void replace_file_unsynced(const std::filesystem::path& path, std::string_view text, mode_t mode,
                           std::string_view what) {
  replace_file(path, text, mode, what, false);
}

std::optional<std::string> read_file_if_exists(const std::filesystem::path& path,
                                               std::string_view what) {
  const auto fail = [&](int err) {
    throw Error(std::string(what) + " " + path.string() + ": cannot read: " + std::strerror(err));
  };
  const ClosedAtExit fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    fail(errno);
  }
  std::string text;
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::read(fd.fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(errno);
    if (n == 0) return text;
    text.append(buffer, static_cast<std::size_t>(n));
  }
}

}  // namespace gateway
