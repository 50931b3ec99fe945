// Byte sizes as people write them on command lines and in config files.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::common {

// "1024", "512B", "1.5KiB", "64MiB", "2GiB" -> bytes (truncated). Positive and
// finite; INVALID_ARGUMENT naming `text` otherwise.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);

}  // namespace premoe::common
