#include "premoe/common/bytes.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace premoe::common {

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  absl::string_view rest = text;
  double scale = 1;
  for (const auto& [suffix, mult] : {std::pair{"GiB", double{1 << 30}},
                                     {"MiB", double{1 << 20}},
                                     {"KiB", double{1 << 10}},
                                     {"B", 1.0}}) {
    if (absl::ConsumeSuffix(&rest, suffix)) {
      scale = mult;
      break;
    }
  }
  double v = 0;
  // 2^62 bytes leaves headroom for sums without overflow.
  if (!absl::SimpleAtod(rest, &v) || !(v > 0) || !std::isfinite(v) || v * scale > 0x1p62) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text,
                     "\" is not a byte size (want a positive number with an optional B, KiB, "
                     "MiB or GiB suffix)"));
  }
  return static_cast<int64_t>(v * scale);
}

}  // namespace premoe::common
