// SampleToken over the whole range of temperatures GenerationOptions
// accepts: a tiny positive temperature is greedy (it once overflowed to inf
// and sampled garbage), a huge one is uniform, and every sample is a token.
#include "premoe/model/decoding.h"

#include <ATen/ATen.h>

#include <cfloat>
#include <map>

#include "gtest/gtest.h"

namespace premoe::model {
namespace {

TEST(SampleTokenTest, TinyTemperaturesAreGreedy) {
  at::manual_seed(3);
  const at::Tensor logits = at::randn({5000}, at::kFloat) * 8;
  const int64_t argmax = logits.argmax().item<int64_t>();
  std::uint64_t seed = 0;
  for (double t : {5e-324, 1e-320, 1e-300, 1e-100, 1e-40, 1e-38, 1e-20, 1e-8}) {
    for (int64_t top_k : {0, 1, 50}) {
      for (double top_p : {1.0, 0.9}) {
        GenerationOptions o;
        o.temperature = t;
        o.top_k = top_k;
        o.top_p = top_p;
        ASSERT_TRUE(o.Validate().ok());
        std::mt19937_64 rng(++seed);
        for (int i = 0; i < 5; ++i) {
          EXPECT_EQ(SampleToken(logits, o, rng), argmax) << "temperature " << t;
        }
      }
    }
  }
}

TEST(SampleTokenTest, HugeTemperaturesAreUniform) {
  const at::Tensor logits = at::tensor({-30.0f, 0.0f, 10.0f, 40.0f});
  for (double t : {1e30, 1e300, DBL_MAX}) {
    GenerationOptions o;
    o.temperature = t;
    ASSERT_TRUE(o.Validate().ok());
    std::mt19937_64 rng(1);
    std::map<int64_t, int> counts;
    for (int i = 0; i < 4000; ++i) ++counts[SampleToken(logits, o, rng)];
    ASSERT_EQ(counts.size(), 4u) << "temperature " << t;
    for (const auto& [token, n] : counts) {
      EXPECT_GE(token, 0);
      EXPECT_LT(token, 4);
      EXPECT_NEAR(n, 1000, 150) << "token " << token << " at temperature " << t;
    }
  }
}

// Between the extremes, the sampled frequencies follow softmax(x / T),
// computed here independently.
TEST(SampleTokenTest, FrequenciesFollowTheTemperedSoftmax) {
  const std::vector<float> x = {1.0f, 2.0f, 3.0f};
  for (double t : {0.5, 1.0, 2.0}) {
    GenerationOptions o;
    o.temperature = t;
    std::mt19937_64 rng(9);
    std::vector<int> counts(3);
    const int n = 20000;
    for (int i = 0; i < n; ++i) ++counts[SampleToken(at::tensor(x), o, rng)];
    double z = 0;
    for (float v : x) z += std::exp(v / t);
    for (int k = 0; k < 3; ++k) {
      const double p = std::exp(x[k] / t) / z;
      EXPECT_NEAR(counts[k] / static_cast<double>(n), p, 0.015) << "token " << k << ", T " << t;
    }
  }
}

}  // namespace
}  // namespace premoe::model
