// UTF-8 validation, for every edge where text comes in (requests, task
// names, tokenizer input). Strict: overlong forms, surrogates and code
// points past U+10FFFF are invalid, as in Rust's str and Unicode §3.9.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace premoe::common {

// Byte offset of the first invalid UTF-8 sequence in `text`, or -1 if valid.
std::int64_t FindInvalidUtf8(absl::string_view text);

// OK, or INVALID_ARGUMENT "<field> is not valid UTF-8 at byte N (of M)".
absl::Status CheckUtf8(absl::string_view text, absl::string_view field);

// Rust's String::from_utf8_lossy: each maximal invalid subsequence -> U+FFFD.
std::string Utf8Lossy(absl::string_view bytes);

}  // namespace premoe::common
