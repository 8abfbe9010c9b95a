// A 64-bit FNV-1a hash of bytes: stable across versions and machines (it is stored in the
// database), cheap, not cryptographic. Pure; thread-safe.
#pragma once

#include <cstdint>
#include <string_view>

namespace gateway {

constexpr std::uint64_t fnv1a64(std::string_view bytes) {
  std::uint64_t h = 14695981039346656037ull;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace gateway
