// The quantized formats: their grammar, sizes, byte layout and error bounds.
#include "premoe/checkpoint/quant.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace premoe::checkpoint {
namespace {

using ::testing::HasSubstr;

float FromBf16(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

TEST(QuantFormatTest, ParsesEverySpellingAndPrintsItCanonically) {
  struct Case {
    const char* text;
    QuantType type;
    int64_t group;
    const char* canonical;
  };
  for (const Case& c :
       {Case{"none", QuantType::kNone, 0, "none"}, Case{"int8", QuantType::kInt8, 0, "int8"},
        Case{"int4", QuantType::kInt4, 128, "int4:g128"},
        Case{"int4:g16", QuantType::kInt4, 16, "int4:g16"},
        Case{"int4:g256", QuantType::kInt4, 256, "int4:g256"}}) {
    absl::StatusOr<QuantFormat> f = QuantFormat::Parse(c.text);
    ASSERT_TRUE(f.ok()) << c.text << ": " << f.status();
    EXPECT_EQ(f->type, c.type) << c.text;
    EXPECT_EQ(f->group, c.group) << c.text;
    EXPECT_EQ(f->ToString(), c.canonical);
    EXPECT_EQ(QuantFormat::Parse(f->ToString())->group, f->group);
  }
}

TEST(QuantFormatTest, RefusesWhatItCannotRun) {
  for (const char* text : {"", "INT8", "int3", "bf16", "int4:", "int4:g", "int4:g8", "int4:g100",
                           "int4:g512", "int4:g064", "int4:g-32", "int4:g32x", "int4:32"}) {
    absl::StatusOr<QuantFormat> f = QuantFormat::Parse(text);
    ASSERT_FALSE(f.ok()) << text;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(f.status().message(), HasSubstr("want none, int8, int4"));
  }
  EXPECT_THAT(QuantFormat::Parse("in\x01t").status().message(), HasSubstr("in\\x01t"));
}

TEST(QuantFormatTest, ShapeCheckNamesTheTensorAndTheGroup) {
  const QuantFormat g128 = *QuantFormat::Parse("int4");
  EXPECT_TRUE(g128.CheckShape("x", 3, 256).ok());
  const absl::Status s = g128.CheckShape("layers.0.mlp.experts.3.down_proj.weight", 64, 96);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("layers.0.mlp.experts.3.down_proj.weight [64, 96]"));
  EXPECT_THAT(s.message(), HasSubstr("group size 128"));
  EXPECT_TRUE(QuantFormat::Parse("int8")->CheckShape("x", 3, 5).ok());
  EXPECT_TRUE(QuantFormat{}.CheckShape("x", 3, 5).ok());
}

TEST(QuantFormatTest, BytesCountWeightsAndScales) {
  EXPECT_EQ(QuantFormat{}.Bytes(3, 5, 2), 30);
  // int8 [3, 5]: 15 weights rounded up to 16, then three fp32 scales.
  EXPECT_EQ(QuantFormat::Parse("int8")->Bytes(3, 5, 2), 16 + 12);
  // int4 g32 [2, 64]: 64 bytes of nibbles, 2 x 2 bf16 scales and as many mins.
  EXPECT_EQ(QuantFormat::Parse("int4:g32")->Bytes(2, 64, 2), 64 + 8 + 8);
  // A 2048 x 768 expert projection at g128: 4.25 bits a weight.
  EXPECT_EQ(QuantFormat::Parse("int4")->Bytes(2048, 768, 2) * 8, 2048 * 768 * 17 / 4);
}

TEST(ExpertSlotLayoutTest, DenseMatricesFollowEachOtherAndQuantizedDownStartsAt64) {
  // H 96, I 40: dense bf16 gate_up [80, 96] then down [96, 40].
  auto dense = ExpertSlotLayout::For(QuantFormat{}, 96, 40, 2);
  ASSERT_TRUE(dense.ok()) << dense.status();
  EXPECT_EQ(dense->gate_up_bytes, 80 * 96 * 2);
  EXPECT_EQ(dense->down_offset, 80 * 96 * 2);
  EXPECT_EQ(dense->bytes, 3 * 40 * 96 * 2);
  // int8: gate_up 7680 codes (a multiple of 16) + 80 fp32 scales = 8000,
  // so down starts at 8000 rounded up to 64 = 8000; down 3840 + 384 = 4224.
  auto int8 = ExpertSlotLayout::For(QuantFormat::Parse("int8").value(), 96, 40, 2);
  ASSERT_TRUE(int8.ok()) << int8.status();
  EXPECT_EQ(int8->gate_up_bytes, 8000);
  EXPECT_EQ(int8->down_offset, 8000);
  EXPECT_EQ(int8->down_bytes, 4224);
  EXPECT_EQ(int8->bytes, 12224);
  // int4:g16 on H 96, I 48: gate_up [96, 96]: 4608 code bytes + 96 * 6
  // groups * (scale + min) * 2 bytes = 2304 -> 6912; down [96, 48]: 2304 +
  // 96 * 3 * 4 = 1152 -> 3456, starting at 6912 (a multiple of 64).
  auto int4 = ExpertSlotLayout::For(QuantFormat::Parse("int4:g16").value(), 96, 48, 2);
  ASSERT_TRUE(int4.ok()) << int4.status();
  EXPECT_EQ(int4->gate_up_bytes, 6912);
  EXPECT_EQ(int4->down_offset, 6912);
  EXPECT_EQ(int4->down_bytes, 3456);
  // H 80, I 32 with g16: gate_up [64, 80] = 2560 + 64 * 5 * 4 = 3840 (60
  // rows of 64), down [80, 32] = 1280 + 80 * 2 * 4 = 1920; 5760 in all.
  auto odd = ExpertSlotLayout::For(QuantFormat::Parse("int4:g16").value(), 80, 32, 2);
  ASSERT_TRUE(odd.ok()) << odd.status();
  EXPECT_EQ(odd->down_offset, 3840);
  EXPECT_EQ(odd->bytes, 3840 + 1920);
  // int8 with an odd size: gate_up [2, 24] = 48 codes + 8 scale bytes = 56,
  // down [24, 1] = 32 + 96 = 128 from 64; the slot ends at 192.
  auto tiny = ExpertSlotLayout::For(QuantFormat::Parse("int8").value(), 24, 1, 2);
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(tiny->gate_up_bytes, 56);
  EXPECT_EQ(tiny->down_offset, 64);
  EXPECT_EQ(tiny->down_bytes, 128);
  EXPECT_EQ(tiny->bytes, 192);
  // A group that does not divide the expert width names the matrix.
  auto bad = ExpertSlotLayout::For(QuantFormat::Parse("int4:g32").value(), 96, 40, 2,
                                   "model.layers.3.mlp.experts");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("model.layers.3.mlp.experts down [96, 40] cannot be held as int4:g32"));
}

TEST(QuantizeTest, Int4LayoutPutsInputIInTheLowNibbleAndIPlus8InTheHigh) {
  const QuantFormat f = *QuantFormat::Parse("int4:g16");
  std::vector<float> w(16);
  for (int k = 0; k < 16; ++k) w[k] = static_cast<float>(k);  // min 0, scale 1: q = k
  std::vector<std::byte> buf(f.Bytes(1, 16, 0));
  ASSERT_TRUE(Quantize(f, "w", w.data(), 1, 16, buf).ok());
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(static_cast<int>(buf[i]), i | (i + 8) << 4) << "byte " << i;
  }
  const QuantizedView v = ViewQuantized(f, 1, 16, buf.data());
  EXPECT_EQ(FromBf16(*static_cast<const uint16_t*>(v.scales)), 1.0f);
  EXPECT_EQ(FromBf16(*static_cast<const uint16_t*>(v.mins)), 0.0f);
  std::vector<float> back(16);
  Dequantize(f, 1, 16, buf.data(), back.data());
  EXPECT_EQ(back, w);
}

TEST(QuantizeTest, EveryWeightIsWithinHalfAStepOfItsValue) {
  std::mt19937 rng(1);
  std::normal_distribution<float> d(0.0f, 0.02f);
  const int64_t out = 9, in = 512;
  std::vector<float> w(out * in);
  for (float& v : w) v = d(rng);
  w[5] = 0.5f;  // an outlier widens its row's (or group's) step
  for (const char* spelling : {"int8", "int4:g16", "int4:g64", "int4:g256"}) {
    SCOPED_TRACE(spelling);
    const QuantFormat f = *QuantFormat::Parse(spelling);
    std::vector<std::byte> buf(f.Bytes(out, in, 0));
    ASSERT_TRUE(Quantize(f, "w", w.data(), out, in, buf).ok());
    std::vector<float> back(out * in);
    Dequantize(f, out, in, buf.data(), back.data());
    const QuantizedView v = ViewQuantized(f, out, in, buf.data());
    for (int64_t n = 0; n < out; ++n) {
      for (int64_t k = 0; k < in; ++k) {
        const float* row = w.data() + n * in;
        float step;
        if (f.type == QuantType::kInt8) {
          float amax = 0;
          for (int64_t i = 0; i < in; ++i) amax = std::max(amax, std::abs(row[i]));
          step = amax / 127;
          ASSERT_EQ(static_cast<const float*>(v.scales)[n], step);
        } else {
          const int64_t g = k / f.group;
          float lo = row[g * f.group], hi = lo;
          for (int64_t i = g * f.group; i < (g + 1) * f.group; ++i) {
            lo = std::min(lo, row[i]);
            hi = std::max(hi, row[i]);
          }
          step = FromBf16(static_cast<const uint16_t*>(v.scales)[n * (in / f.group) + g]);
          const float min = FromBf16(static_cast<const uint16_t*>(v.mins)[n * (in / f.group) + g]);
          // bf16 keeps 8 significant bits: the stored minimum is at most
          // one bf16 step below the true one, the scale at most one above.
          ASSERT_LE(min, lo);
          ASSERT_GE(min, lo - std::abs(lo) / 128);
          ASSERT_GE(step * 15, hi - min);
          ASSERT_LE(step * 15, (hi - min) * (1 + 1.0f / 128 + 1e-6f));
        }
        // Plus the rounding of the division and of the dequantizing product.
        ASSERT_LE(std::abs(back[n * in + k] - row[k]),
                  step / 2 * (1 + 1e-4f) + std::abs(row[k]) * 1e-6f)
            << "[" << n << "][" << k << "]";
      }
    }
  }
}

TEST(QuantizeTest, ConstantRowsAndGroupsAreExactOrNearlySo) {
  const int64_t in = 32;
  std::vector<float> w(2 * in, 0.0f);
  for (int64_t k = 0; k < in; ++k) w[in + k] = 0.3f;
  for (const char* spelling : {"int8", "int4:g16"}) {
    SCOPED_TRACE(spelling);
    const QuantFormat f = *QuantFormat::Parse(spelling);
    std::vector<std::byte> buf(f.Bytes(2, in, 0));
    ASSERT_TRUE(Quantize(f, "w", w.data(), 2, in, buf).ok());
    std::vector<float> back(2 * in);
    Dequantize(f, 2, in, buf.data(), back.data());
    for (int64_t k = 0; k < in; ++k) {
      EXPECT_EQ(back[k], 0.0f);
      EXPECT_NEAR(back[in + k], 0.3f, 0.3f / 128);
    }
  }
}

TEST(QuantizeTest, RefusesWeightsItCannotHold) {
  const QuantFormat int8 = *QuantFormat::Parse("int8");
  std::vector<float> w(2 * 16, 1.0f);
  std::vector<std::byte> buf(int8.Bytes(2, 16, 0));
  w[16 + 3] = std::numeric_limits<float>::quiet_NaN();
  absl::Status s = Quantize(int8, "experts.7.up_proj.weight", w.data(), 2, 16, buf);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("experts.7.up_proj.weight [2, 16]: element [1][3]"));

  // A group spanning nearly all of fp32: no bf16 scale holds its range.
  const QuantFormat int4 = *QuantFormat::Parse("int4:g16");
  std::vector<float> wide(16, 0.0f);
  wide[0] = -3e38f;
  wide[1] = 3e38f;
  std::vector<std::byte> buf4(int4.Bytes(1, 16, 0));
  s = Quantize(int4, "wide", wide.data(), 1, 16, buf4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("wide [1, 16]: row 0, inputs [0, 16)"));

  std::vector<std::byte> buf_shape(int4.Bytes(1, 16, 0));
  s = Quantize(*QuantFormat::Parse("int4:g32"), "short", wide.data(), 1, 16, buf_shape);
  EXPECT_THAT(s.message(), HasSubstr("group size 32"));
}

}  // namespace
}  // namespace premoe::checkpoint
