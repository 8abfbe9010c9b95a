#include "gateway/secret.h"

namespace gateway {

std::ostream& operator<<(std::ostream& out, const Secret& /*secret*/) { return out << "***"; }

}  // namespace gateway
