// Whole-file reads and crash-safe whole-file writes.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace premoe::common {

// Reads `path`. Files over `max_bytes` are refused with INVALID_ARGUMENT
// before anything is allocated. Errors name the path.
absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     std::uint64_t max_bytes = std::uint64_t{1} << 32);

// Writes `contents` to a temporary file beside `path`, fsyncs it, renames it
// over `path` and fsyncs the directory: a crash leaves the old file or the
// new one, never a torn mix.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

}  // namespace premoe::common
