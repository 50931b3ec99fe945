#include "premoe/common/hash.h"

#include <cstdio>

#include "absl/strings/str_format.h"
#include "premoe/common/mapped_file.h"
#include "premoe/common/status.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace premoe::common {

std::uint64_t Hash64(std::span<const std::uint8_t> bytes) {
  return XXH3_64bits(bytes.data(), bytes.size());
}

std::uint64_t Hash64(absl::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

struct Hasher::State {
  XXH3_state_t xxh;
};

Hasher::Hasher() : state_(std::make_unique<State>()) { XXH3_128bits_reset(&state_->xxh); }
Hasher::~Hasher() = default;
Hasher::Hasher(Hasher&&) noexcept = default;
Hasher& Hasher::operator=(Hasher&&) noexcept = default;

Hasher& Hasher::Update(std::span<const std::uint8_t> bytes) {
  XXH3_128bits_update(&state_->xxh, bytes.data(), bytes.size());
  return *this;
}

Hasher& Hasher::Update(absl::string_view bytes) {
  XXH3_128bits_update(&state_->xxh, bytes.data(), bytes.size());
  return *this;
}

Hasher& Hasher::UpdateField(absl::string_view bytes) {
  const std::uint64_t size = bytes.size();
  XXH3_128bits_update(&state_->xxh, &size, sizeof(size));
  return Update(bytes);
}

std::string Hasher::HexDigest() const {
  const XXH128_hash_t h = XXH3_128bits_digest(&state_->xxh);
  return absl::StrFormat("%016x%016x", h.high64, h.low64);
}

absl::StatusOr<std::string> HashFile(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  Hasher hasher;
  hasher.Update(file->data());
  return hasher.HexDigest();
}

}  // namespace premoe::common
