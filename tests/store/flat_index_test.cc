#include "store/src/flat_index.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace premoe::store {
namespace {

std::vector<float> Unit(std::vector<float> v) {
  double n = 0;
  for (float x : v) n += static_cast<double>(x) * x;
  for (float& x : v) x = static_cast<float>(x / std::sqrt(n));
  return v;
}

// Brute force in double over the rows kept beside the index: the exact
// top-k similarities, best first.
std::vector<float> ExactTop(const std::vector<std::vector<float>>& rows,
                            const std::vector<float>& q, std::size_t k) {
  std::vector<float> sims;
  for (const auto& r : rows) {
    double dot = 0;
    for (std::size_t d = 0; d < q.size(); ++d) dot += static_cast<double>(r[d]) * q[d];
    sims.push_back(static_cast<float>(dot));
  }
  std::sort(sims.rbegin(), sims.rend());
  sims.resize(std::min(k, sims.size()));
  return sims;
}

std::vector<float> Similarities(const std::vector<std::pair<float, std::uint64_t>>& got) {
  std::vector<float> out;
  for (const auto& [sim, key] : got) out.push_back(sim);
  return out;
}

// Rows crowded around one direction (similarities within ~1e-4 of each
// other), where int8 scores alone would rank wrongly: the rescoring must
// still give the exact top-k, for dims with and without a SIMD tail.
TEST(FlatIndexTest, NearTiesGiveTheExactTopK) {
  for (int dim : {128, 100, 7}) {
    SCOPED_TRACE(dim);
    std::mt19937 rng(dim);
    std::normal_distribution<float> normal;
    std::vector<float> centre(dim);
    for (float& x : centre) x = normal(rng);
    centre = Unit(centre);
    FlatIndex index(dim);
    std::vector<std::vector<float>> rows;
    std::vector<std::uint64_t> keys;
    std::vector<float> flat;
    for (int i = 0; i < 3000; ++i) {
      std::vector<float> v = centre;
      for (float& x : v) x += 1e-3f * normal(rng);
      v = Unit(v);
      rows.push_back(v);
      keys.push_back(1000 + i);
      flat.insert(flat.end(), v.begin(), v.end());
    }
    index.Add(flat, keys);
    ASSERT_EQ(index.size(), 3000);
    for (int t = 0; t < 20; ++t) {
      std::vector<float> q = centre;
      for (float& x : q) x += 1e-3f * normal(rng);
      q = Unit(q);
      for (std::int64_t k : {1, 5, 64}) {
        const auto got = index.Search(q, k);
        ASSERT_EQ(got.size(), static_cast<std::size_t>(k));
        EXPECT_EQ(Similarities(got), ExactTop(rows, q, k));
        for (const auto& [sim, key] : got) {  // each key is the row with that similarity
          const auto& r = rows[key - 1000];
          double dot = 0;
          for (int d = 0; d < dim; ++d) dot += static_cast<double>(r[d]) * q[d];
          EXPECT_EQ(sim, static_cast<float>(dot));
        }
      }
    }
  }
}

TEST(FlatIndexTest, RemoveRangeDropsExactlyThoseKeys) {
  const int dim = 16;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  FlatIndex index(dim);
  std::vector<float> flat;
  std::vector<std::uint64_t> keys;
  for (int i = 0; i < 50; ++i) {
    std::vector<float> v(dim);
    for (float& x : v) x = normal(rng);
    v = Unit(v);
    flat.insert(flat.end(), v.begin(), v.end());
    keys.push_back(i);
  }
  index.Add(flat, keys);
  EXPECT_EQ(index.RemoveRange(10, 20), 10);
  EXPECT_EQ(index.RemoveRange(10, 20), 0);
  ASSERT_EQ(index.size(), 40);
  std::vector<std::uint64_t> left(index.keys().begin(), index.keys().end());
  std::sort(left.begin(), left.end());
  std::vector<std::uint64_t> want;
  for (int i = 0; i < 50; ++i) {
    if (i < 10 || i >= 20) want.push_back(i);
  }
  EXPECT_EQ(left, want);
  for (std::int64_t r = 0; r < index.size(); ++r) {  // rows moved with their keys
    const std::uint64_t key = index.key(r);
    for (int d = 0; d < dim; ++d) EXPECT_EQ(index.row(r)[d], flat[key * dim + d]);
  }
  // Each remaining row finds itself first, with similarity 1.
  for (std::int64_t r = 0; r < index.size(); ++r) {
    std::vector<float> q(index.row(r).begin(), index.row(r).end());
    const auto got = index.Search(q, 1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].second, index.key(r));
    EXPECT_NEAR(got[0].first, 1.0f, 1e-6f);
  }
}

TEST(FlatIndexTest, AskingForMoreThanItHoldsReturnsAll) {
  FlatIndex index(2);
  EXPECT_TRUE(index.Search(std::vector<float>{1, 0}, 3).empty());
  index.Add(std::vector<float>{1, 0, 0, 1}, std::vector<std::uint64_t>{7, 8});
  const auto got = index.Search(std::vector<float>{1, 0}, 5);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], (std::pair<float, std::uint64_t>{1.0f, 7}));
  EXPECT_EQ(got[1], (std::pair<float, std::uint64_t>{0.0f, 8}));
}

}  // namespace
}  // namespace premoe::store
