// Content hashing (XXH3) for fingerprints: models, patterns, data files.
//
// XXH3 is not cryptographic; fingerprints guard against mistakes (a pattern
// applied to the wrong model), not adversaries. Thread safety: Hasher is a
// value type, one per thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::common {

// 64-bit XXH3 of `bytes`.
std::uint64_t Hash64(std::span<const std::uint8_t> bytes);
std::uint64_t Hash64(absl::string_view bytes);

// Incremental 128-bit XXH3. Digest() may be called at any point; Update()
// after Digest() continues the same stream.
class Hasher {
 public:
  Hasher();
  ~Hasher();
  Hasher(Hasher&&) noexcept;
  Hasher& operator=(Hasher&&) noexcept;

  Hasher& Update(std::span<const std::uint8_t> bytes);
  Hasher& Update(absl::string_view bytes);
  // Feeds a length prefix first, so ("ab","c") and ("a","bc") differ.
  Hasher& UpdateField(absl::string_view bytes);

  // 32 lowercase hex digits.
  std::string HexDigest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// 128-bit XXH3 of a whole file, as 32 hex digits.
absl::StatusOr<std::string> HashFile(const std::string& path);

}  // namespace premoe::common
