// Helpers for parsing tensor names, shared by config-free readers.
#pragma once

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"

namespace premoe::checkpoint::internal {

// A decimal index of 1 to 9 digits without a leading zero (HF writes
// str(int)), consumed from the front of `s`; nullopt, consuming nothing,
// otherwise.
std::optional<int64_t> ConsumeIndex(absl::string_view& s);

}  // namespace premoe::checkpoint::internal
