#include "premoe/common/utf8.h"

#include "absl/strings/str_cat.h"

namespace premoe::common {

namespace {

// Length of the valid UTF-8 sequence at bytes[i], or, if invalid, the negated
// length of its maximal subpart (Unicode §3.9, "U+FFFD substitution of
// maximal subparts", which is what Rust's from_utf8_lossy does).
int ValidSequenceAt(absl::string_view bytes, size_t i) {
  const auto at = [&](size_t k) -> int {
    return i + k < bytes.size() ? static_cast<unsigned char>(bytes[i + k]) : -1;
  };
  const int b0 = at(0);
  if (b0 < 0x80) return 1;
  int need;
  int lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k <= need; ++k) {
    const int b = at(k);
    const int l = k == 1 ? lo : 0x80;
    const int h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return -k;
  }
  return need + 1;
}

}  // namespace

std::int64_t FindInvalidUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const int n = ValidSequenceAt(text, i);
    if (n < 0) return static_cast<std::int64_t>(i);
    i += n;
  }
  return -1;
}

std::string Utf8Lossy(absl::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const int n = ValidSequenceAt(bytes, i);
    if (n > 0) {
      out.append(bytes.data() + i, n);
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");
      i += -n;
    }
  }
  return out;
}

absl::Status CheckUtf8(absl::string_view text, absl::string_view field) {
  if (const std::int64_t bad = FindInvalidUtf8(text); bad >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " is not valid UTF-8 at byte ", bad, " (of ", text.size(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace premoe::common
