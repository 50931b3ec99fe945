#include "premoe/checkpoint/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "premoe/common/status.h"

namespace premoe::checkpoint {
namespace {

constexpr char kWant[] = "want none, int8, int4 or int4:gN with N in 16..256, a power of 2";
constexpr int64_t kInt8ScaleAlign = 16;

int64_t Int8ScaleOffset(int64_t out, int64_t in) {
  return (out * in + kInt8ScaleAlign - 1) / kInt8ScaleAlign * kInt8ScaleAlign;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

float Bf16ToFloat(uint16_t v) { return FromBits(static_cast<uint32_t>(v) << 16); }

// The nearest bf16 at or below (down) or at or above (!down) a finite f.
uint16_t Bf16Directed(float f, bool down) {
  const uint32_t b = Bits(f);
  uint16_t t = static_cast<uint16_t>(b >> 16);             // truncation: toward zero
  if ((b & 0xFFFF) != 0 && ((b >> 31) != 0) == down) ++t;  // away from zero
  return t;
}

}  // namespace

absl::StatusOr<QuantFormat> QuantFormat::Parse(absl::string_view text) {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrFormat("quant \"%s\": %s (%s)", absl::CHexEscape(text), what, kWant));
  };
  if (text == "none") return QuantFormat{};
  if (text == "int8") return QuantFormat{QuantType::kInt8, 0};
  if (text == "int4") return QuantFormat{QuantType::kInt4, kDefaultInt4Group};
  if (!absl::StartsWith(text, "int4:g")) return bad("unknown format");
  const absl::string_view digits = text.substr(6);
  int64_t group = 0;
  if (digits.empty() || digits.size() > 3 || digits[0] == '0' ||
      !std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(digits, &group)) {
    return bad("group is not a number");
  }
  if (group < 16 || group > 256 || (group & (group - 1)) != 0) {
    return bad(absl::StrCat("group ", group, " unsupported"));
  }
  return QuantFormat{QuantType::kInt4, group};
}

std::string QuantFormat::ToString() const {
  switch (type) {
    case QuantType::kNone:
      return "none";
    case QuantType::kInt8:
      return "int8";
    case QuantType::kInt4:
      return absl::StrCat("int4:g", group);
  }
  return "?";
}

absl::Status QuantFormat::CheckShape(absl::string_view tensor, int64_t out, int64_t in) const {
  if (type != QuantType::kInt4 || (in > 0 && in % group == 0 && out > 0)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrFormat(
      "%s [%d, %d] cannot be held as %s: its input dimension %d is not a positive multiple of "
      "the group size %d (pick a group that divides it)",
      tensor, out, in, ToString(), in, group));
}

int64_t QuantFormat::Bytes(int64_t out, int64_t in, int64_t dense_element_bytes) const {
  switch (type) {
    case QuantType::kNone:
      return out * in * dense_element_bytes;
    case QuantType::kInt8:
      return Int8ScaleOffset(out, in) + out * 4;
    case QuantType::kInt4:
      return out * in / 2 + 2 * out * (in / group) * 2;
  }
  return 0;
}

absl::StatusOr<ExpertSlotLayout> ExpertSlotLayout::For(const QuantFormat& format, int64_t hidden,
                                                       int64_t intermediate,
                                                       int64_t dense_element_bytes,
                                                       absl::string_view what) {
  RETURN_IF_ERROR(format.CheckShape(absl::StrCat(what, " gate_up"), 2 * intermediate, hidden));
  RETURN_IF_ERROR(format.CheckShape(absl::StrCat(what, " down"), hidden, intermediate));
  ExpertSlotLayout l;
  l.format = format;
  l.gate_up_bytes = format.Bytes(2 * intermediate, hidden, dense_element_bytes);
  l.down_offset = format.quantized() ? (l.gate_up_bytes + 63) / 64 * 64 : l.gate_up_bytes;
  l.down_bytes = format.Bytes(hidden, intermediate, dense_element_bytes);
  l.bytes = l.down_offset + l.down_bytes;
  if (format.quantized()) l.bytes = (l.bytes + 63) / 64 * 64;
  return l;
}

QuantizedView ViewQuantized(const QuantFormat& format, int64_t out, int64_t in,
                            const std::byte* data) {
  switch (format.type) {
    case QuantType::kNone:
      return {data, nullptr, nullptr};
    case QuantType::kInt8:
      return {data, data + Int8ScaleOffset(out, in), nullptr};
    case QuantType::kInt4: {
      const std::byte* scales = data + out * in / 2;
      return {data, scales, scales + out * (in / format.group) * 2};
    }
  }
  return {};
}

absl::Status Quantize(const QuantFormat& format, absl::string_view tensor, const float* w,
                      int64_t out, int64_t in, std::span<std::byte> dst) {
  if (absl::Status s = format.CheckShape(tensor, out, in); !s.ok()) return s;
  for (int64_t i = 0; i < out * in; ++i) {
    if (!std::isfinite(w[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s [%d, %d]: element [%d][%d] is %f; only finite weights can be quantized", tensor, out,
          in, i / in, i % in, w[i]));
    }
  }
  std::fill(dst.begin(), dst.end(), std::byte{0});
  const QuantizedView v = ViewQuantized(format, out, in, dst.data());
  if (format.type == QuantType::kInt8) {
    auto* q = static_cast<int8_t*>(const_cast<void*>(v.q));
    auto* scales = static_cast<float*>(const_cast<void*>(v.scales));
    for (int64_t n = 0; n < out; ++n) {
      const float* row = w + n * in;
      float amax = 0;
      for (int64_t k = 0; k < in; ++k) amax = std::max(amax, std::abs(row[k]));
      const float scale = amax / 127.0f;
      scales[n] = scale;
      for (int64_t k = 0; k < in; ++k) {
        const float r = scale == 0 ? 0.0f : std::nearbyint(row[k] / scale);
        q[n * in + k] = static_cast<int8_t>(std::clamp(r, -127.0f, 127.0f));
      }
    }
    return absl::OkStatus();
  }
  const int64_t g = format.group, groups = in / g;
  auto* q = static_cast<uint8_t*>(const_cast<void*>(v.q));
  auto* scales = static_cast<uint16_t*>(const_cast<void*>(v.scales));
  auto* mins = static_cast<uint16_t*>(const_cast<void*>(v.mins));
  for (int64_t n = 0; n < out; ++n) {
    for (int64_t gi = 0; gi < groups; ++gi) {
      const float* x = w + n * in + gi * g;
      const auto [lo, hi] = std::minmax_element(x, x + g);
      const uint16_t min_b = Bf16Directed(*lo, /*down=*/true);
      const float min_f = Bf16ToFloat(min_b);
      const uint16_t scale_b = Bf16Directed((*hi - min_f) / 15.0f, /*down=*/false);
      const float scale_f = Bf16ToFloat(scale_b);
      if (!std::isfinite(min_f) || !std::isfinite(scale_f)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s [%d, %d]: row %d, inputs [%d, %d) span [%g, %g], beyond what a bf16 scale and "
            "minimum can hold",
            tensor, out, in, n, gi * g, (gi + 1) * g, *lo, *hi));
      }
      scales[n * groups + gi] = scale_b;
      mins[n * groups + gi] = min_b;
      for (int64_t i = 0; i < g; ++i) {
        const float r = scale_f == 0 ? 0.0f : std::nearbyint((x[i] - min_f) / scale_f);
        const auto nibble = static_cast<uint8_t>(std::clamp(r, 0.0f, 15.0f));
        const int64_t k = gi * g + i;  // block k/16, position k%16 in it
        const int64_t pos = k % 16;
        uint8_t& byte = q[n * (in / 2) + k / 16 * 8 + pos % 8];
        byte |= pos < 8 ? nibble : static_cast<uint8_t>(nibble << 4);
      }
    }
  }
  return absl::OkStatus();
}

void Dequantize(const QuantFormat& format, int64_t out, int64_t in, const std::byte* src,
                float* w) {
  const QuantizedView v = ViewQuantized(format, out, in, src);
  if (format.type == QuantType::kInt8) {
    const auto* q = static_cast<const int8_t*>(v.q);
    const auto* scales = static_cast<const float*>(v.scales);
    for (int64_t n = 0; n < out; ++n) {
      for (int64_t k = 0; k < in; ++k) w[n * in + k] = scales[n] * q[n * in + k];
    }
    return;
  }
  const int64_t groups = in / format.group;
  const auto* q = static_cast<const uint8_t*>(v.q);
  const auto* scales = static_cast<const uint16_t*>(v.scales);
  const auto* mins = static_cast<const uint16_t*>(v.mins);
  for (int64_t n = 0; n < out; ++n) {
    for (int64_t k = 0; k < in; ++k) {
      const uint8_t byte = q[n * (in / 2) + k / 16 * 8 + k % 8];
      const int nibble = k % 16 < 8 ? byte & 0xF : byte >> 4;
      const int64_t gi = n * groups + k / format.group;
      w[n * in + k] =
          std::fma(static_cast<float>(nibble), Bf16ToFloat(scales[gi]), Bf16ToFloat(mins[gi]));
    }
  }
}

}  // namespace premoe::checkpoint
