#include "gateway/thread_name.h"

#include <pthread.h>

namespace gateway {

void set_thread_name(const std::string& name) {
  // Best effort: a name is a diagnostic aid, never a reason to fail.
  (void)pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

}  // namespace gateway
