// cpu_matvec against a double-precision reference, and the property the
// engine relies on: a row's result does not depend on the batch around it.
// Quantized weights against the product of their dequantized values
// (checkpoint::Dequantize) and against ATen's own int8 and int4 kernels.
#include "model/src/cpu_matvec.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "premoe/checkpoint/quant.h"

namespace premoe::model::internal {
namespace {

uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);  // nearest even
}

float FromBf16(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// A weight matrix [out, ldw] in one type, with its values as float.
struct Weights {
  WeightType type;
  int64_t out, in, ldw;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  float At(int64_t n, int64_t k) const {
    return type == WeightType::kF32 ? f32[n * ldw + k] : FromBf16(bf16[n * ldw + k]);
  }
  const void* data() const {
    return type == WeightType::kF32 ? static_cast<const void*>(f32.data()) : bf16.data();
  }
  MatvecJob Job(const float* const* x, float* const* y, int64_t rows) const {
    return {data(), type, out, in, ldw, x, y, rows};
  }
};

Weights RandomWeights(WeightType type, int64_t out, int64_t in, int64_t ldw, std::mt19937& rng) {
  std::normal_distribution<float> d;
  Weights w{type, out, in, ldw, {}, {}};
  std::vector<float> v(out * ldw);
  for (float& x : v) x = d(rng);
  if (type == WeightType::kF32) {
    w.f32 = v;
  } else {
    for (float x : v) w.bf16.push_back(ToBf16(x));
  }
  return w;
}

std::vector<std::vector<float>> RandomRows(int64_t rows, int64_t in, std::mt19937& rng) {
  std::normal_distribution<float> d;
  std::vector<std::vector<float>> x(rows, std::vector<float>(in));
  for (auto& r : x) {
    for (float& v : r) v = d(rng);
  }
  return x;
}

// Y = X W^T for every row of x, through one job (w: Weights or Quantized).
// Every ISA this CPU runs, so each kernel is checked where the CPU has it.
std::vector<MatvecIsa> Isas() {
  std::vector<MatvecIsa> isas;
  for (MatvecIsa isa :
       {MatvecIsa::kPortable, MatvecIsa::kAvx2, MatvecIsa::kAvx512, MatvecIsa::kAvx512Bf16}) {
    if (isa <= MatvecBestIsa()) isas.push_back(isa);
  }
  return isas;
}

template <typename W>
std::vector<std::vector<float>> Multiply(const W& w, const std::vector<std::vector<float>>& x,
                                         MatvecIsa isa = MatvecBestIsa()) {
  std::vector<std::vector<float>> y(x.size(), std::vector<float>(w.out, NAN));
  std::vector<const float*> xr;
  std::vector<float*> yr;
  for (size_t m = 0; m < x.size(); ++m) {
    xr.push_back(x[m].data());
    yr.push_back(y[m].data());
  }
  const MatvecJob job = w.Job(xr.data(), yr.data(), static_cast<int64_t>(x.size()));
  RunMatvecs({&job, 1}, isa);
  return y;
}

TEST(CpuMatvecTest, EqualsADoublePrecisionProduct) {
  std::mt19937 rng(7);
  for (MatvecIsa isa : Isas()) {
    for (WeightType type : {WeightType::kF32, WeightType::kBF16}) {
      for (int64_t out : {1, 3, 4, 7, 33}) {
        for (int64_t in : {1, 7, 8, 9, 64, 515}) {
          for (int64_t rows : {1, 2, 3, 5, 16}) {
            SCOPED_TRACE(::testing::Message()
                         << MatvecIsaName(isa) << " type " << static_cast<int>(type) << " out "
                         << out << " in " << in << " rows " << rows);
            const int64_t ldw = in + (out % 2);  // rows with padding between them too
            const Weights w = RandomWeights(type, out, in, ldw, rng);
            const auto x = RandomRows(rows, in, rng);
            const auto y = Multiply(w, x, isa);
            // avx512bf16 multiplies bf16 weights by the activations rounded
            // to bf16 (nearest even); every other path by the activations.
            const bool bf16_x = isa == MatvecIsa::kAvx512Bf16 && type == WeightType::kBF16;
            for (int64_t m = 0; m < rows; ++m) {
              for (int64_t n = 0; n < out; ++n) {
                double want = 0, magnitude = 0;
                for (int64_t k = 0; k < in; ++k) {
                  const double xv = bf16_x ? FromBf16(ToBf16(x[m][k])) : x[m][k];
                  want += static_cast<double>(w.At(n, k)) * xv;
                  magnitude += std::abs(static_cast<double>(w.At(n, k)) * xv);
                }
                // fp32 summation of `in` terms: |error| <= in * 2^-24 * sum |terms|.
                const double bound = static_cast<double>(in) * 6e-8 * magnitude + 1e-30;
                ASSERT_LE(std::abs(y[m][n] - want), bound) << "row " << m << " output " << n;
              }
            }
          }
        }
      }
    }
  }
}

TEST(CpuMatvecTest, ARowsResultIsTheSameAloneInABatchAndOnAnyThreadCount) {
  std::mt19937 rng(11);
  const int threads = at::get_num_threads();
  for (MatvecIsa isa : Isas()) {
    for (WeightType type : {WeightType::kF32, WeightType::kBF16}) {
      SCOPED_TRACE(MatvecIsaName(isa));
      // Large enough to be split among threads (over 256 KiB of weights).
      const Weights w = RandomWeights(type, 301, 1029, 1029, rng);
      const auto x = RandomRows(9, 1029, rng);
      const auto batch = Multiply(w, x, isa);
      for (int t : {1, 2, 3}) {
        at::set_num_threads(t);
        for (size_t m = 0; m < x.size(); ++m) {
          const auto alone = Multiply(w, {x[m]}, isa);
          ASSERT_EQ(alone[0], batch[m]) << "row " << m << ", " << t << " threads";
        }
      }
      at::set_num_threads(threads);
    }
  }
}

TEST(CpuMatvecTest, ManyJobsInOneCallEqualEachAlone) {
  std::mt19937 rng(3);
  std::vector<Weights> ws;
  std::vector<std::vector<std::vector<float>>> xs, ys;
  for (int i = 0; i < 7; ++i) {
    const WeightType type = i % 2 == 0 ? WeightType::kBF16 : WeightType::kF32;
    ws.push_back(RandomWeights(type, 50 + 61 * i, 200 + 33 * i, 200 + 33 * i, rng));
    xs.push_back(RandomRows(1 + i % 3, 200 + 33 * i, rng));
    ys.emplace_back(xs.back().size(), std::vector<float>(ws.back().out, NAN));
  }
  std::vector<std::vector<const float*>> xr(ws.size());
  std::vector<std::vector<float*>> yr(ws.size());
  std::vector<MatvecJob> jobs;
  for (size_t i = 0; i < ws.size(); ++i) {
    for (size_t m = 0; m < xs[i].size(); ++m) {
      xr[i].push_back(xs[i][m].data());
      yr[i].push_back(ys[i][m].data());
    }
    jobs.push_back({ws[i].data(), ws[i].type, ws[i].out, ws[i].in, ws[i].ldw, xr[i].data(),
                    yr[i].data(), static_cast<int64_t>(xs[i].size())});
  }
  // An empty job (no rows) is allowed and writes nothing.
  jobs.push_back({ws[0].data(), ws[0].type, ws[0].out, ws[0].in, ws[0].ldw, nullptr, nullptr, 0});
  for (MatvecIsa isa : Isas()) {
    RunMatvecs(jobs, isa);
    for (size_t i = 0; i < ws.size(); ++i) {
      EXPECT_EQ(ys[i], Multiply(ws[i], xs[i], isa)) << MatvecIsaName(isa) << " job " << i;
    }
  }
}

// A quantized [out, in] matrix: its buffer and its dequantized values.
struct Quantized {
  checkpoint::QuantFormat format;
  int64_t out, in;
  std::vector<float> source;  // what was quantized
  std::vector<float> values;  // Dequantize(buffer)
  std::vector<std::byte> buffer;
  checkpoint::QuantizedView view() const {
    return checkpoint::ViewQuantized(format, out, in, buffer.data());
  }
  MatvecJob Job(const float* const* x, float* const* y, int64_t rows) const {
    const checkpoint::QuantizedView v = view();
    MatvecJob j{
        v.q, format.type == checkpoint::QuantType::kInt8 ? WeightType::kInt8 : WeightType::kInt4,
        out, in,
        in,  x,
        y,   rows};
    j.scales = v.scales;
    j.mins = v.mins;
    j.group = format.group;
    return j;
  }
};

Quantized RandomQuantized(absl::string_view spelling, int64_t out, int64_t in, std::mt19937& rng) {
  Quantized w{*checkpoint::QuantFormat::Parse(spelling), out, in, {}, {}, {}};
  std::normal_distribution<float> d;
  w.source.resize(out * in);
  for (float& v : w.source) v = d(rng);
  w.buffer.resize(w.format.Bytes(out, in, 0));
  EXPECT_TRUE(checkpoint::Quantize(w.format, "w", w.source.data(), out, in, w.buffer).ok());
  w.values.resize(out * in);
  checkpoint::Dequantize(w.format, out, in, w.buffer.data(), w.values.data());
  return w;
}

TEST(CpuMatvecTest, QuantizedEqualsTheProductOfItsDequantizedValues) {
  std::mt19937 rng(5);
  for (MatvecIsa isa : Isas()) {
    for (const char* spelling : {"int8", "int4:g16", "int4:g32", "int4:g128"}) {
      const bool int4 = spelling[3] == '4';
      for (int64_t out : {1, 3, 4, 7, 33}) {
        const std::vector<int64_t> ins =
            int4 ? std::vector<int64_t>{128, 256, 384} : std::vector<int64_t>{1, 7, 8, 9, 64, 515};
        for (int64_t in : ins) {
          for (int64_t rows : {1, 2, 3, 16}) {
            SCOPED_TRACE(::testing::Message() << MatvecIsaName(isa) << " " << spelling << " out "
                                              << out << " in " << in << " rows " << rows);
            const Quantized w = RandomQuantized(spelling, out, in, rng);
            const auto x = RandomRows(rows, in, rng);
            const auto y = Multiply(w, x, isa);
            for (int64_t m = 0; m < rows; ++m) {
              for (int64_t n = 0; n < out; ++n) {
                double want = 0, magnitude = 0;
                for (int64_t k = 0; k < in; ++k) {
                  want += static_cast<double>(w.values[n * in + k]) * x[m][k];
                  magnitude += std::abs(static_cast<double>(w.values[n * in + k]) * x[m][k]);
                }
                // As for dense weights, plus int8's final multiply by the scale.
                const double bound = static_cast<double>(in + 2) * 6e-8 * magnitude + 1e-30;
                ASSERT_LE(std::abs(y[m][n] - want), bound) << "row " << m << " output " << n;
              }
            }
          }
        }
      }
    }
  }
}

TEST(CpuMatvecTest, QuantizedMatchesATensKernels) {
  std::mt19937 rng(13);
  for (const char* spelling : {"int8", "int4:g32", "int4:g64", "int4:g128"}) {
    SCOPED_TRACE(spelling);
    const int64_t out = 48, in = 256, rows = 5;  // ATen's int4 packing wants out % 16 == 0
    const Quantized w = RandomQuantized(spelling, out, in, rng);
    const auto x = RandomRows(rows, in, rng);
    const auto y = Multiply(w, x);
    at::Tensor xt = at::empty({rows, in}, at::kFloat);
    for (int64_t m = 0; m < rows; ++m) {
      std::memcpy(xt[m].data_ptr<float>(), x[m].data(), in * sizeof(float));
    }
    at::Tensor want;
    const checkpoint::QuantizedView v = w.view();
    if (w.format.type == checkpoint::QuantType::kInt8) {
      const at::Tensor q = at::from_blob(const_cast<void*>(v.q), {out, in}, at::kChar).clone();
      const at::Tensor scales =
          at::from_blob(const_cast<void*>(v.scales), {out}, at::kFloat).clone();
      want = at::_weight_int8pack_mm(xt, q, scales);
    } else {
      // ATen's int4: w = (q - 8) * scale + zero, q as int32 [out, in], scales
      // and zeros as [in / group, out, 2].
      const int64_t g = w.format.group, groups = in / g;
      at::Tensor q = at::empty({out, in}, at::kInt);
      at::Tensor sz = at::empty({groups, out, 2}, at::kFloat);
      const auto* bytes = static_cast<const uint8_t*>(v.q);
      const auto* scales = static_cast<const uint16_t*>(v.scales);
      const auto* mins = static_cast<const uint16_t*>(v.mins);
      auto qa = q.accessor<int32_t, 2>();
      auto sza = sz.accessor<float, 3>();
      for (int64_t n = 0; n < out; ++n) {
        for (int64_t k = 0; k < in; ++k) {
          const uint8_t b = bytes[n * in / 2 + k / 16 * 8 + k % 8];
          qa[n][k] = k % 16 < 8 ? b & 0xF : b >> 4;
        }
        for (int64_t gi = 0; gi < groups; ++gi) {
          const float scale = FromBf16(scales[n * groups + gi]);
          sza[gi][n][0] = scale;
          sza[gi][n][1] = FromBf16(mins[n * groups + gi]) + 8 * scale;
        }
      }
      want =
          at::_weight_int4pack_mm_for_cpu(xt, at::_convert_weight_to_int4pack_for_cpu(q, 2), g, sz);
    }
    ASSERT_EQ(want.sizes(), (at::IntArrayRef{rows, out}));
    auto wa = want.accessor<float, 2>();
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t n = 0; n < out; ++n) {
        double magnitude = 0;
        for (int64_t k = 0; k < in; ++k) magnitude += std::abs(w.values[n * in + k] * x[m][k]);
        // Different summation orders (and ATen's own rounding of the zero
        // point): far below the size of a misplaced nibble or scale.
        ASSERT_NEAR(y[m][n], wa[m][n], 1e-5 * magnitude) << "row " << m << " output " << n;
      }
    }
  }
}

TEST(CpuMatvecTest, AQuantizedRowsResultIsTheSameAloneInABatchAndOnAnyThreadCount) {
  std::mt19937 rng(17);
  const int threads = at::get_num_threads();
  for (MatvecIsa isa : Isas()) {
    for (const char* spelling : {"int8", "int4:g64", "int4:g16"}) {
      SCOPED_TRACE(::testing::Message() << MatvecIsaName(isa) << " " << spelling);
      // Over 256 KiB (split among threads); 9 rows take the staged path of
      // the AVX-512 kernel, a row alone the in-register one.
      const Quantized w = RandomQuantized(spelling, 1001, 1024, rng);
      const auto x = RandomRows(9, 1024, rng);
      const auto batch = Multiply(w, x, isa);
      for (int t : {1, 2, 3}) {
        at::set_num_threads(t);
        for (size_t m = 0; m < x.size(); ++m) {
          ASSERT_EQ(Multiply(w, {x[m]}, isa)[0], batch[m])
              << "row " << m << ", " << t << " threads";
        }
      }
      at::set_num_threads(threads);
    }
  }
}

// int8 activations (VNNI): each output within the bound the activations'
// rounding allows, computed from the data: sum over k of |w_k - min_k| (the
// part multiplied in integers) times half the step of k's 128-input block,
// plus fp32 summation. Where the CPU lacks VNNI the flag is ignored and the
// result is the exact path's, bit for bit.
TEST(CpuMatvecTest, Int8ActivationsStayWithinTheirRoundingBound) {
  std::mt19937 rng(23);
  for (const char* spelling : {"int4:g128", "int4:g256"}) {
    for (int64_t out : {4, 7, 33}) {
      for (int64_t rows : {1, 3, 5, 9}) {
        SCOPED_TRACE(::testing::Message() << spelling << " out " << out << " rows " << rows);
        const int64_t in = 512;
        const Quantized w = RandomQuantized(spelling, out, in, rng);
        const auto x = RandomRows(rows, in, rng);
        const auto exact = Multiply(w, x);
        std::vector<std::vector<float>> y(rows, std::vector<float>(out, NAN));
        std::vector<const float*> xr;
        std::vector<float*> yr;
        for (int64_t m = 0; m < rows; ++m) {
          xr.push_back(x[m].data());
          yr.push_back(y[m].data());
        }
        MatvecJob job = w.Job(xr.data(), yr.data(), rows);
        job.int8_activations = true;
        RunMatvecs({&job, 1});
        if (!MatvecHasVnni()) {
          EXPECT_EQ(y, exact);
          continue;
        }
        const checkpoint::QuantizedView v = w.view();
        const int64_t groups = in / w.format.group;
        for (int64_t m = 0; m < rows; ++m) {
          for (int64_t n = 0; n < out; ++n) {
            double want = 0, magnitude = 0, bound = 0;
            for (int64_t b = 0; b < in / 128; ++b) {
              double amax = 0;
              for (int64_t k = 128 * b; k < 128 * (b + 1); ++k) {
                amax = std::max(amax, std::abs(static_cast<double>(x[m][k])));
              }
              for (int64_t k = 128 * b; k < 128 * (b + 1); ++k) {
                const double wk = w.values[n * in + k];
                const double min =
                    FromBf16(static_cast<const uint16_t*>(v.mins)[n * groups + k / w.format.group]);
                want += wk * x[m][k];
                magnitude += std::abs(wk * x[m][k]);
                bound += std::abs(wk - min) * amax / 254 * (1 + 1e-5);
              }
            }
            bound += static_cast<double>(in + 2) * 6e-8 * magnitude + 1e-30;
            ASSERT_LE(std::abs(y[m][n] - want), bound) << "row " << m << " output " << n;
          }
        }
        // The rounding is per row: a row's result is the same alone.
        for (int64_t m = 0; m < rows; ++m) {
          std::vector<float> alone(out, NAN);
          const float* xa = x[m].data();
          float* ya = alone.data();
          MatvecJob one = w.Job(&xa, &ya, 1);
          one.int8_activations = true;
          RunMatvecs({&one, 1});
          ASSERT_EQ(alone, y[m]) << "row " << m;
        }
      }
    }
  }
}

}  // namespace
}  // namespace premoe::model::internal
