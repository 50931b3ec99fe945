#include "premoe/checkpoint/budget.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "premoe/common/bytes.h"

namespace premoe::checkpoint {
namespace {

constexpr absl::string_view kGrammar =
    "want K/M, e.g. 8/128 (top-8 routing over 128 kept experts per MoE layer), N% (50%), "
    "bytes:SIZE (bytes:2GiB) or coverage:F (coverage:0.9)";

absl::Status Refuse(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("budget \"", absl::CHexEscape(text), "\": ", why));
}

// Up to 9 decimal digits and nothing else: no sign, no spaces (which
// absl::SimpleAtoi would let through), no overflow.
std::optional<int64_t> Count(absl::string_view s) {
  if (s.empty() || s.size() > 9) return std::nullopt;
  int64_t value = 0;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return std::nullopt;
    value = value * 10 + (c - '0');
  }
  return value;
}

// "12", "0.5", ".5", "12." -> the value; anything else (signs, exponents,
// "nan", spaces) -> nullopt.
std::optional<double> Decimal(absl::string_view s) {
  int digits = 0, dots = 0;
  for (char c : s) {
    if (absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      ++digits;
    } else if (c == '.') {
      ++dots;
    } else {
      return std::nullopt;
    }
  }
  double v = 0;
  if (digits == 0 || dots > 1 || !absl::SimpleAtod(s, &v)) return std::nullopt;
  return v;
}

}  // namespace

absl::StatusOr<Budget> Budget::Parse(absl::string_view text) {
  Budget b;
  absl::string_view rest = text;
  if (absl::ConsumePrefix(&rest, "bytes:")) {
    b.kind = Kind::kBytes;
    // The number before the unit must be a plain decimal (ParseByteSize
    // alone would take " 2GiB" or "+2GiB").
    const size_t split = std::min(rest.find_first_not_of("0123456789."), rest.size());
    const absl::string_view unit = rest.substr(split);
    const bool known_unit =
        unit.empty() || unit == "B" || unit == "KiB" || unit == "MiB" || unit == "GiB";
    absl::StatusOr<int64_t> bytes = common::ParseByteSize(rest);
    if (!Decimal(rest.substr(0, split)).has_value() || !known_unit || !bytes.ok() || *bytes < 1) {
      return Refuse(text,
                    "the size must be a positive number of bytes with an optional B, KiB, MiB "
                    "or GiB suffix, e.g. bytes:2GiB");
    }
    b.bytes = *bytes;
    return b;
  }
  if (absl::ConsumePrefix(&rest, "coverage:")) {
    b.kind = Kind::kCoverage;
    const std::optional<double> f = Decimal(rest);
    if (!f.has_value() || !(*f > 0 && *f <= 1)) {
      return Refuse(text, "coverage must be in (0, 1], e.g. coverage:0.9");
    }
    b.fraction = *f;
    return b;
  }
  if (absl::ConsumeSuffix(&rest, "%")) {
    b.kind = Kind::kFraction;
    const std::optional<double> pct = Decimal(rest);
    if (!pct.has_value() || !(*pct > 0 && *pct <= 100)) {
      return Refuse(text, "the percentage must be in (0, 100], e.g. 50%");
    }
    b.fraction = *pct / 100;
    return b;
  }
  if (const size_t slash = text.find('/'); slash != absl::string_view::npos) {
    const std::optional<int64_t> k = Count(text.substr(0, slash));
    const std::optional<int64_t> m = Count(text.substr(slash + 1));
    if (!k.has_value() || !m.has_value()) {
      return Refuse(text,
                    absl::StrCat(kGrammar, "; K and M are decimal integers of at most 9 digits"));
    }
    b.top_k = *k;
    b.count = *m;
    if (b.top_k < 1) return Refuse(text, "top-k K must be at least 1 (want 1 <= K <= M)");
    if (b.count < b.top_k) {
      return Refuse(
          text, absl::StrCat("M = ", b.count, " kept experts is fewer than the top-k K = ", b.top_k,
                             " each token is routed to (want 1 <= K <= M)"));
    }
    return b;
  }
  return Refuse(text, absl::StrCat(kGrammar, "; this spelling is unrecognised"));
}

std::string Budget::ToString() const {
  switch (kind) {
    case Kind::kUniform:
      return absl::StrCat(top_k, "/", count);
    case Kind::kFraction:
      return absl::StrCat(fraction * 100, "%");
    case Kind::kBytes:
      return absl::StrCat("bytes:", bytes);
    case Kind::kCoverage:
      return absl::StrCat("coverage:", fraction);
  }
  return "?";
}

absl::StatusOr<int64_t> Budget::UniformCount(int64_t num_experts, int64_t model_top_k) const {
  switch (kind) {
    case Kind::kUniform:
      return count;
    case Kind::kFraction:
      // The epsilon keeps 0.5 * 16 at 8 when the fraction is a hair above.
      return std::max<int64_t>(
          model_top_k,
          static_cast<int64_t>(std::ceil(fraction * static_cast<double>(num_experts) - 1e-9)));
    case Kind::kBytes:
    case Kind::kCoverage:
      break;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("budget \"", ToString(),
                   "\" keeps a number of experts per layer that depends on a pattern's scores"));
}

}  // namespace premoe::checkpoint
