#include "store/src/flat_index.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <queue>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace premoe::store {
namespace {

// out[i] = scale[i] * <codes[i], q> over n int8 rows of `dim`, in fp32.
void ScanPortable(const std::int8_t* codes, const float* scale, std::int64_t n, std::int32_t dim,
                  const float* q, float* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int8_t* c = codes + i * dim;
    float dot = 0;
    for (std::int32_t d = 0; d < dim; ++d) dot += static_cast<float>(c[d]) * q[d];
    out[i] = dot * scale[i];
  }
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void ScanAvx2(const std::int8_t* codes, const float* scale,
                                                  std::int64_t n, std::int32_t dim, const float* q,
                                                  float* out) {
  const std::int32_t vec = dim / 8 * 8;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int8_t* c = codes + i * dim;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    std::int32_t d = 0;
    for (; d + 16 <= vec; d += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + d));
      const __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
      const __m256 b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)));
      acc0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(q + d), acc0);
      acc1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(q + d + 8), acc1);
    }
    for (; d < vec; d += 8) {
      const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + d));
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), _mm256_loadu_ps(q + d),
                             acc0);
    }
    const __m256 acc = _mm256_add_ps(acc0, acc1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    float dot = _mm_cvtss_f32(s);
    for (; d < dim; ++d) dot += static_cast<float>(c[d]) * q[d];
    out[i] = dot * scale[i];
  }
}

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

void Scan(const std::int8_t* codes, const float* scale, std::int64_t n, std::int32_t dim,
          const float* q, float* out) {
#if defined(__x86_64__)
  if (HasAvx2()) return ScanAvx2(codes, scale, n, dim, q, out);
#endif
  ScanPortable(codes, scale, n, dim, q, out);
}

}  // namespace

void FlatIndex::Add(std::span<const float> rows, std::span<const std::uint64_t> keys) {
  rows_.insert(rows_.end(), rows.begin(), rows.end());
  keys_.insert(keys_.end(), keys.begin(), keys.end());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const float* x = rows.data() + i * dim_;
    float max = 0;
    for (std::int32_t d = 0; d < dim_; ++d) max = std::max(max, std::abs(x[d]));
    const float scale = max / 127;
    double err2 = 0;
    for (std::int32_t d = 0; d < dim_; ++d) {
      const long c = scale > 0 ? std::clamp(std::lrint(x[d] / scale), -127L, 127L) : 0L;
      codes_.push_back(static_cast<std::int8_t>(c));
      const double e = static_cast<double>(x[d]) - static_cast<double>(scale) * c;
      err2 += e * e;
    }
    scale_.push_back(scale);
    // Rounded up, so the bound stays a bound in fp32.
    error_.push_back(std::nextafter(static_cast<float>(std::sqrt(err2)), 1.0f));
  }
}

std::int64_t FlatIndex::RemoveRange(std::uint64_t lo, std::uint64_t hi) {
  // Each removed row takes the last row in its place: O(removed x dim), not
  // O(size x dim). Order only decides ties, and both left-right copies apply
  // the same changes, so they stay identical.
  std::int64_t removed = 0;
  for (std::int64_t i = 0; i < size();) {
    if (keys_[i] < lo || keys_[i] >= hi) {
      ++i;
      continue;
    }
    const std::int64_t last = size() - 1;
    if (i != last) {
      std::copy_n(rows_.begin() + last * dim_, dim_, rows_.begin() + i * dim_);
      std::copy_n(codes_.begin() + last * dim_, dim_, codes_.begin() + i * dim_);
      scale_[i] = scale_[last];
      error_[i] = error_[last];
      keys_[i] = keys_[last];
    }
    rows_.resize(rows_.size() - dim_);
    codes_.resize(codes_.size() - dim_);
    scale_.pop_back();
    error_.pop_back();
    keys_.pop_back();
    ++removed;
  }
  return removed;
}

std::vector<std::pair<float, std::uint64_t>> FlatIndex::Search(std::span<const float> query,
                                                               std::int64_t k) const {
  const std::int64_t n = size();
  k = std::min(k, n);
  if (k <= 0) return {};
  // Reused: a fresh 4n-byte buffer per call would be an mmap and page faults.
  thread_local std::vector<float> approx;
  approx.resize(n);
  Scan(codes_.data(), scale_.data(), n, dim_, query.data(), approx.data());
  // Both scores accumulate in floating point; |<q, x>| <= 1 bounds each
  // sum's rounding by about dim x 2^-24. Generous, and still tiny.
  const float slack = 4e-7f * static_cast<float>(dim_);
  // theta: the k-th largest lower bound. At least k rows score >= theta
  // exactly, so every row of the exact top-k has an upper bound >= theta.
  std::priority_queue<float, std::vector<float>, std::greater<float>> lowest_of_top;
  for (std::int64_t i = 0; i < n; ++i) {
    const float lower = approx[i] - error_[i] - slack;
    if (static_cast<std::int64_t>(lowest_of_top.size()) < k) {
      lowest_of_top.push(lower);
    } else if (lower > lowest_of_top.top()) {
      lowest_of_top.pop();
      lowest_of_top.push(lower);
    }
  }
  const float theta = lowest_of_top.top();
  struct Candidate {
    float similarity;
    std::int64_t row;
  };
  std::vector<Candidate> candidates;
  for (std::int64_t i = 0; i < n; ++i) {
    if (approx[i] + error_[i] + slack < theta) continue;
    const float* r = rows_.data() + i * dim_;
    double dot = 0;
    for (std::int32_t d = 0; d < dim_; ++d) dot += static_cast<double>(r[d]) * query[d];
    candidates.push_back({static_cast<float>(dot), i});
  }
  auto better = [](const Candidate& a, const Candidate& b) {
    return a.similarity != b.similarity ? a.similarity > b.similarity : a.row < b.row;
  };
  const auto top = std::min<std::size_t>(candidates.size(), static_cast<std::size_t>(k));
  std::partial_sort(candidates.begin(), candidates.begin() + top, candidates.end(), better);
  std::vector<std::pair<float, std::uint64_t>> out;
  out.reserve(top);
  for (std::size_t i = 0; i < top; ++i) {
    out.emplace_back(candidates[i].similarity, keys_[candidates[i].row]);
  }
  return out;
}

}  // namespace premoe::store
