// The small files the gateway keeps next to its spool (spool.id, flow_cache.h, flow_starts.h):
// replaced so that a crash or a power loss leaves the old copy or the new one, never half of one
// (the text goes to a temp file next to it, created with `mode`, which is synced, renamed over
// the file, and the directory synced: the rename must survive a power loss too), and read whole.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace gateway {

// Throws Error "<what> <path>: cannot …: <reason>" on an I/O error; the old file then stays.
void replace_file_atomically(const std::filesystem::path& path, std::string_view text, mode_t mode,
                             std::string_view what);

// The same without the fsyncs, for a file whose loss or older content a crash may bring back
// harmlessly: a reader sees the old text or the new, never part of one (rename), unless the
// machine itself goes down (then the file may be empty or older).
void replace_file_unsynced(const std::filesystem::path& path, std::string_view text, mode_t mode,
                           std::string_view what);

// The file's bytes, or std::nullopt if it does not exist. Throws Error "<what> <path>: cannot
// read: <reason>" on any other error.
std::optional<std::string> read_file_if_exists(const std::filesystem::path& path,
                                               std::string_view what);

}  // namespace gateway
