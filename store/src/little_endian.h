// Fixed-width little-endian integers for premoe's own file formats (pattern
// archives, index snapshots). Internal to premoe::store.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace premoe::store::internal {

// The formats are defined little-endian; on such hosts (every one premoe
// targets) the bytes are the in-memory ones. A big-endian port swaps here.
static_assert(std::endian::native == std::endian::little);

template <typename T>
void AppendLittleEndian(std::string* out, T value) {
  static_assert(std::is_integral_v<T>);
  out->append(reinterpret_cast<const char*>(&value), sizeof value);
}

// Reads a T at `p` (which need not be aligned).
template <typename T>
T LoadLittleEndian(const void* p) {
  static_assert(std::is_integral_v<T>);
  T value;
  std::memcpy(&value, p, sizeof value);
  return value;
}

}  // namespace premoe::store::internal
