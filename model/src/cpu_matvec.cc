#include "cpu_matvec.h"

#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/container/inlined_vector.h"

namespace premoe::model::internal {
namespace {

// Rows of W per tile: four weight rows stream together so each activation
// load feeds four FMAs.
constexpr int64_t kTileRows = 4;

// Below this many weight bytes a call runs on the calling thread: waking the
// pool costs more than it saves.
constexpr double kParallelMinBytes = 256 * 1024;

inline float Bf16ToFloat(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <WeightType T>
inline float WeightAt(const void* w, int64_t i) {
  if constexpr (T == WeightType::kBF16) {
    return Bf16ToFloat(static_cast<const uint16_t*>(w)[i]);
  } else if constexpr (T == WeightType::kInt8) {
    return static_cast<float>(static_cast<const int8_t*>(w)[i]);
  } else {
    return static_cast<const float*>(w)[i];
  }
}

// An int8 row's sum times its scale; dense sums as they are.
template <WeightType T>
inline float Scaled(const MatvecJob& j, int64_t n, float s) {
  if constexpr (T == WeightType::kInt8) {
    return s * static_cast<const float*>(j.scales)[n];
  } else {
    return s;
  }
}

// Input k of row n of an int4 matrix (checkpoint/quant.h's layout).
inline float Int4At(const MatvecJob& j, int64_t n, int64_t k) {
  const uint8_t byte = static_cast<const uint8_t*>(j.w)[n * (j.in / 2) + k / 16 * 8 + k % 8];
  return static_cast<float>(k % 16 < 8 ? byte & 0xF : byte >> 4);
}

inline float Int4Param(const void* p, const MatvecJob& j, int64_t n, int64_t g) {
  return Bf16ToFloat(static_cast<const uint16_t*>(p)[n * (j.in / j.group) + g]);
}

// ---- Portable: the AVX2 kernel's summation order, lane by lane ----------------

template <WeightType T, int R, int MB>
void TilePortable(const MatvecJob& j, int64_t n0, int64_t m0) {
  const int64_t k16 = j.in & ~int64_t{15}, k8 = j.in & ~int64_t{7};
  float acc[R][MB][2][8] = {};
  auto block = [&](int64_t k, int set) {
    for (int r = 0; r < R; ++r) {
      for (int l = 0; l < 8; ++l) {
        const float w = WeightAt<T>(j.w, (n0 + r) * j.ldw + k + l);
        for (int mb = 0; mb < MB; ++mb) acc[r][mb][set][l] += w * j.x[m0 + mb][k + l];
      }
    }
  };
  for (int64_t k = 0; k < k16; k += 16) {
    block(k, 0);
    block(k + 8, 1);
  }
  if (k8 > k16) block(k16, 0);
  for (int r = 0; r < R; ++r) {
    for (int mb = 0; mb < MB; ++mb) {
      float a[8];
      for (int l = 0; l < 8; ++l) a[l] = acc[r][mb][0][l] + acc[r][mb][1][l];
      float s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
      for (int64_t k = k8; k < j.in; ++k) {
        s += WeightAt<T>(j.w, (n0 + r) * j.ldw + k) * j.x[m0 + mb][k];
      }
      j.y[m0 + mb][n0 + r] = Scaled<T>(j, n0 + r, s);
    }
  }
}

// int4: whole 16-input blocks (in % group == 0, group % 16 == 0), weights
// dequantized as fma(q, scale, min), low nibbles into the even set and high
// nibbles into the odd one, as in the AVX2 tile.
template <int R, int MB>
void TileInt4Portable(const MatvecJob& j, int64_t n0, int64_t m0) {
  float acc[R][MB][2][8] = {};
  for (int64_t k = 0; k < j.in; k += 16) {
    const int64_t g = k / j.group;
    for (int r = 0; r < R; ++r) {
      const float scale = Int4Param(j.scales, j, n0 + r, g);
      const float min = Int4Param(j.mins, j, n0 + r, g);
      for (int set = 0; set < 2; ++set) {
        for (int l = 0; l < 8; ++l) {
          const float w = std::fma(Int4At(j, n0 + r, k + 8 * set + l), scale, min);
          for (int mb = 0; mb < MB; ++mb) {
            acc[r][mb][set][l] += w * j.x[m0 + mb][k + 8 * set + l];
          }
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int mb = 0; mb < MB; ++mb) {
      float a[8];
      for (int l = 0; l < 8; ++l) a[l] = acc[r][mb][0][l] + acc[r][mb][1][l];
      j.y[m0 + mb][n0 + r] = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    }
  }
}

#if defined(__x86_64__)
// ---- AVX2 + FMA ------------------------------------------------------------------

template <WeightType T>
__attribute__((target("avx2,fma"))) inline __m256 Load8(const void* w, int64_t i) {
  if constexpr (T == WeightType::kBF16) {
    const __m128i v =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  } else if constexpr (T == WeightType::kInt8) {
    const __m128i v =
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(w) + i));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  }
}

// Lanes (0+4) (2+6) (1+5) (3+7), as TilePortable sums them.
__attribute__((target("avx2,fma"))) inline float HorizontalSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// acc[r][mb] += W[n0 + r][k, k + 8) * X[mb][k, k + 8).
template <WeightType T, int R, int MB>
__attribute__((target("avx2,fma"), always_inline)) inline void Block8(__m256 (&acc)[R][MB],
                                                                      const MatvecJob& j,
                                                                      const float* const (&xs)[MB],
                                                                      int64_t n0, int64_t k) {
  __m256 xv[MB];
  for (int mb = 0; mb < MB; ++mb) xv[mb] = _mm256_loadu_ps(xs[mb] + k);
  for (int r = 0; r < R; ++r) {
    const __m256 wv = Load8<T>(j.w, (n0 + r) * j.ldw + k);
    for (int mb = 0; mb < MB; ++mb) acc[r][mb] = _mm256_fmadd_ps(wv, xv[mb], acc[r][mb]);
  }
}

// Two accumulator sets (alternate 8-element blocks of k) keep twice the
// loads in flight per weight row.
template <WeightType T, int R, int MB>
__attribute__((target("avx2,fma"))) void TileAvx2(const MatvecJob& j, int64_t n0, int64_t m0) {
  const int64_t k16 = j.in & ~int64_t{15}, k8 = j.in & ~int64_t{7};
  __m256 even[R][MB], odd[R][MB];
  for (int r = 0; r < R; ++r) {
    for (int mb = 0; mb < MB; ++mb) even[r][mb] = odd[r][mb] = _mm256_setzero_ps();
  }
  const float* xs[MB];
  for (int mb = 0; mb < MB; ++mb) xs[mb] = j.x[m0 + mb];
  for (int64_t k = 0; k < k16; k += 16) {
    Block8<T, R, MB>(even, j, xs, n0, k);
    Block8<T, R, MB>(odd, j, xs, n0, k + 8);
  }
  if (k8 > k16) Block8<T, R, MB>(even, j, xs, n0, k16);
  for (int r = 0; r < R; ++r) {
    for (int mb = 0; mb < MB; ++mb) {
      float s = HorizontalSum(_mm256_add_ps(even[r][mb], odd[r][mb]));
      for (int64_t k = k8; k < j.in; ++k) s += WeightAt<T>(j.w, (n0 + r) * j.ldw + k) * xs[mb][k];
      j.y[m0 + mb][n0 + r] = Scaled<T>(j, n0 + r, s);
    }
  }
}

template <int R, int MB>
__attribute__((target("avx2,fma"))) void TileInt4Avx2(const MatvecJob& j, int64_t n0, int64_t m0) {
  __m256 even[R][MB], odd[R][MB];
  for (int r = 0; r < R; ++r) {
    for (int mb = 0; mb < MB; ++mb) even[r][mb] = odd[r][mb] = _mm256_setzero_ps();
  }
  const float* xs[MB];
  for (int mb = 0; mb < MB; ++mb) xs[mb] = j.x[m0 + mb];
  const auto* q = static_cast<const uint8_t*>(j.w);
  const int64_t row_bytes = j.in / 2;
  const __m256i nibble = _mm256_set1_epi32(0xF);
  for (int64_t g0 = 0; g0 < j.in; g0 += j.group) {
    __m256 scale[R], min[R];
    for (int r = 0; r < R; ++r) {
      scale[r] = _mm256_set1_ps(Int4Param(j.scales, j, n0 + r, g0 / j.group));
      min[r] = _mm256_set1_ps(Int4Param(j.mins, j, n0 + r, g0 / j.group));
    }
    for (int64_t k = g0; k < g0 + j.group; k += 16) {
      __m256 xlo[MB], xhi[MB];
      for (int mb = 0; mb < MB; ++mb) {
        xlo[mb] = _mm256_loadu_ps(xs[mb] + k);
        xhi[mb] = _mm256_loadu_ps(xs[mb] + k + 8);
      }
      for (int r = 0; r < R; ++r) {
        const __m256i b = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + (n0 + r) * row_bytes + k / 2)));
        const __m256 lo =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, nibble)), scale[r], min[r]);
        const __m256 hi =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), scale[r], min[r]);
        for (int mb = 0; mb < MB; ++mb) {
          even[r][mb] = _mm256_fmadd_ps(lo, xlo[mb], even[r][mb]);
          odd[r][mb] = _mm256_fmadd_ps(hi, xhi[mb], odd[r][mb]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int mb = 0; mb < MB; ++mb) {
      j.y[m0 + mb][n0 + r] = HorizontalSum(_mm256_add_ps(even[r][mb], odd[r][mb]));
    }
  }
}

bool DetectAvx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
// Other CPUs run the portable tiles (TileAvx2 is never reached there).
template <WeightType T, int R, int MB>
void TileAvx2(const MatvecJob& j, int64_t n0, int64_t m0) {
  TilePortable<T, R, MB>(j, n0, m0);
}
template <int R, int MB>
void TileInt4Avx2(const MatvecJob& j, int64_t n0, int64_t m0) {
  TileInt4Portable<R, MB>(j, n0, m0);
}
bool DetectAvx2() { return false; }
#endif

// One tile of R weight rows by MB activation rows, in the kernel for T.
template <WeightType T, int R, int MB>
inline void Tile(const MatvecJob& j, int64_t n0, int64_t m0, bool avx2) {
  if constexpr (T == WeightType::kInt4) {
    avx2 ? TileInt4Avx2<R, MB>(j, n0, m0) : TileInt4Portable<R, MB>(j, n0, m0);
  } else {
    avx2 ? TileAvx2<T, R, MB>(j, n0, m0) : TilePortable<T, R, MB>(j, n0, m0);
  }
}

// Rows [n_begin, n_end) of job j: four weight rows at a time, applied to two
// activation rows at a time while they sit in L1.
template <WeightType T>
void RunRows(const MatvecJob& j, int64_t n_begin, int64_t n_end, bool avx2) {
  for (int64_t n = n_begin; n < n_end; n += kTileRows) {
    const bool full = n + kTileRows <= n_end;
    for (int64_t m = 0; m < j.rows; m += 2) {
      const bool pair = m + 2 <= j.rows;
      if (full) {
        // Sixteen accumulators at most: four rows for one activation row,
        // two for two.
        if (pair) {
          for (int64_t h = n; h < n + kTileRows; h += 2) Tile<T, 2, 2>(j, h, m, avx2);
        } else {
          Tile<T, 4, 1>(j, n, m, avx2);
        }
        continue;
      }
      for (int64_t r = n; r < n_end; ++r) {
        pair ? Tile<T, 1, 2>(j, r, m, avx2) : Tile<T, 1, 1>(j, r, m, avx2);
      }
    }
  }
}

// Bytes of weight (scales included) per element.
double ElementBytes(const MatvecJob& j) {
  switch (j.type) {
    case WeightType::kF32:
      return 4;
    case WeightType::kBF16:
      return 2;
    case WeightType::kInt8:
      return 1;
    case WeightType::kInt4:
      return 0.5 + 4.0 / static_cast<double>(j.group);
  }
  return 2;
}

// Work of one weight row: its bytes, plus a little per activation row.
double RowCost(const MatvecJob& j) {
  return static_cast<double>(j.in) * (ElementBytes(j) + 0.5 * static_cast<double>(j.rows));
}

}  // namespace

bool MatvecUsesAvx2() {
  static const bool avx2 = DetectAvx2();
  return avx2;
}

bool MatvecNativeBf16() {
#if defined(__x86_64__)
  static const bool bf16 = __builtin_cpu_supports("avx512bf16");
  return bf16;
#else
  return true;  // no measurement elsewhere: keep libtorch's GEMM for large products
#endif
}

void RunMatvecs(std::span<const MatvecJob> jobs) {
  const bool avx2 = MatvecUsesAvx2();
  absl::InlinedVector<double, 16> start(jobs.size() + 1, 0.0);
  double bytes = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const MatvecJob& j = jobs[i];
    start[i + 1] = start[i] + (j.rows > 0 ? RowCost(j) * static_cast<double>(j.out) : 0.0);
    bytes += static_cast<double>(j.out * j.in) * ElementBytes(j);
  }
  const double total = start.back();
  if (total == 0) return;
  const int64_t threads = bytes < kParallelMinBytes ? 1 : std::max(1, at::get_num_threads());
  // Thread t takes the cost range [total*t/threads, total*(t+1)/threads),
  // cut at tile boundaries; neighbours compute a shared cut identically, so
  // the ranges partition every job's rows.
  auto cut = [&](size_t i, int64_t t) -> int64_t {
    const MatvecJob& j = jobs[i];
    if (t >= threads) return j.out;
    const double at_cost = total * static_cast<double>(t) / static_cast<double>(threads);
    if (at_cost <= start[i]) return 0;
    if (at_cost >= start[i + 1]) return j.out;
    const int64_t row = static_cast<int64_t>((at_cost - start[i]) / RowCost(j));
    return std::min(j.out, (row + kTileRows - 1) / kTileRows * kTileRows);
  };
  auto work = [&](int64_t t) {
    for (size_t i = 0; i < jobs.size(); ++i) {
      const MatvecJob& j = jobs[i];
      if (j.rows == 0) continue;
      const int64_t begin = cut(i, t), end = cut(i, t + 1);
      if (begin >= end) continue;
      switch (j.type) {
        case WeightType::kF32:
          RunRows<WeightType::kF32>(j, begin, end, avx2);
          break;
        case WeightType::kBF16:
          RunRows<WeightType::kBF16>(j, begin, end, avx2);
          break;
        case WeightType::kInt8:
          RunRows<WeightType::kInt8>(j, begin, end, avx2);
          break;
        case WeightType::kInt4:
          RunRows<WeightType::kInt4>(j, begin, end, avx2);
          break;
      }
    }
  };
  if (threads == 1) {
    work(0);
    return;
  }
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) work(t);
  });
}

}  // namespace premoe::model::internal
