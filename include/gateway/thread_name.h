// Names the calling thread (Linux: at most 15 bytes are kept), so that `top -H`, `ps -L`, perf
// and gdb tell the gateway's threads apart: gw-dispatch, gw-worker-3, gw-fsync, ...
#pragma once

#include <string>

namespace gateway {

void set_thread_name(const std::string& name);

}  // namespace gateway
