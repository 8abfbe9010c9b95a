// Replacing a small file so that a crash or a power loss leaves the old copy or the new one, never
// half of one: the text goes to a temp file next to it (created with `mode`), which is synced,
// renamed over the file, and the directory synced (the rename must survive a power loss too).
// Used for the files the gateway keeps next to its spool (flow_cache.h, flow_starts.h).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string_view>

namespace gateway {

// Throws Error "<what> <path>: cannot …: <reason>" on an I/O error; the old file then stays.
void replace_file_atomically(const std::filesystem::path& path, std::string_view text, mode_t mode,
                             std::string_view what);

}  // namespace gateway
