#include "cpu_matvec.h"

#include <ATen/Parallel.h>

#if defined(__x86_64__)
// GCC 12 reports its own AVX-512 intrinsics' _mm512_undefined_* pass-through
// operands as uninitialized (GCC bug 105593); the warnings point into the
// header, so they are silenced there only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
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

// ---- AVX-512 ---------------------------------------------------------------------
//
// Sixteen lanes, one accumulator per (weight row, activation row), tiles of
// up to 4 x 4. Each output sums, lane by lane, the products of 16-element
// blocks of k in increasing order (a partial block's missing lanes are zero
// in both operands), then Sum16; int8 is scaled at the end.
// int4 runs in chunks of 32 inputs (16 in a group's last chunk when 32 does
// not divide the group), each the low nibbles of 16 bytes then their high
// nibbles: lanes {0..7, 16..23} then {8..15, 24..31} of the chunk, so the
// activations are first permuted into that order (PermuteInt4Rows; lanes
// past a 16-input chunk are zero).
//
// Whole blocks use plain loads: masked loads of every block measured 1.5-2x
// slower on Zen 5. Tiles dequantize in registers at every batch size:
// converting four weight rows to an fp32 buffer once for all activation rows
// measured slower too (bf16, int8 and int4; 8 and 64 rows).

#define PREMOE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
// Tiles keep their accumulators in registers only when these loops unroll.
#define PREMOE_UNROLL _Pragma("GCC unroll 16")

// Positions in an int4 row's permuted layout: 32 floats per chunk.
int64_t Int4Chunks(int64_t in, int64_t group) { return in / group * ((group + 31) / 32); }

// Weights [k, k + 16) of a dense-type row as fp32. kMasked: only the lanes
// in `mask` are read, the others are zero (masked loads are slower on some
// CPUs, so whole blocks use plain ones).
template <WeightType T, bool kMasked>
PREMOE_AVX512 inline __m512 W16(const void* w, int64_t i, __mmask16 mask) {
  if constexpr (T == WeightType::kBF16) {
    const auto* p = static_cast<const uint16_t*>(w) + i;
    const __m256i v = kMasked ? _mm256_maskz_loadu_epi16(mask, p)
                              : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  } else if constexpr (T == WeightType::kInt8) {
    const auto* p = static_cast<const int8_t*>(w) + i;
    const __m128i v = kMasked ? _mm_maskz_loadu_epi8(mask, p)
                              : _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
  } else {
    const auto* p = static_cast<const float*>(w) + i;
    return kMasked ? _mm512_maskz_loadu_ps(mask, p) : _mm512_loadu_ps(p);
  }
}

// Software prefetch this many bytes ahead in each weight row: the few rows a
// tile streams at once leave the hardware prefetcher short of the memory
// bandwidth on its own (measured: all-int4 decode 1.3x with it).
constexpr int64_t kPrefetchBytes = 512;

template <WeightType T>
PREMOE_AVX512 inline void Prefetch(const void* w, int64_t i) {
  constexpr int64_t size = T == WeightType::kBF16 ? 2 : T == WeightType::kInt8 ? 1 : 4;
  _mm_prefetch(static_cast<const char*>(w) + i * size + kPrefetchBytes, _MM_HINT_T0);
}

inline __mmask16 TailMask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }

// The 16 lanes summed pairwise (lane i with i + 8, then + 4, ...). Not
// _mm512_reduce_add_ps: GCC 12 warns inside it (-Wuninitialized).
PREMOE_AVX512 inline float Sum16(__m512 v) {
  alignas(64) float a[16];
  _mm512_store_ps(a, v);
  for (int w = 8; w > 0; w /= 2) {
    for (int i = 0; i < w; ++i) a[i] += a[i + w];
  }
  return a[0];
}

template <int R, int MB>
PREMOE_AVX512 inline void Zero(__m512 (&acc)[R][MB]) {
  PREMOE_UNROLL
  for (int r = 0; r < R; ++r) {
    PREMOE_UNROLL
    for (int mb = 0; mb < MB; ++mb) acc[r][mb] = _mm512_setzero_ps();
  }
}

// Dense types: R weight rows by MB activation rows.
template <WeightType T, int R, int MB>
PREMOE_AVX512 void TileAvx512(const MatvecJob& j, int64_t n0, int64_t m0) {
  __m512 acc[R][MB];
  Zero(acc);
  const float* xs[MB];
  PREMOE_UNROLL
  for (int mb = 0; mb < MB; ++mb) xs[mb] = j.x[m0 + mb];
  auto block = [&]<bool kMasked>(int64_t k, __mmask16 mask) PREMOE_AVX512 {
    __m512 xv[MB];
    PREMOE_UNROLL
    for (int mb = 0; mb < MB; ++mb) {
      xv[mb] = kMasked ? _mm512_maskz_loadu_ps(mask, xs[mb] + k) : _mm512_loadu_ps(xs[mb] + k);
    }
    PREMOE_UNROLL
    for (int r = 0; r < R; ++r) {
      if constexpr (!kMasked) Prefetch<T>(j.w, (n0 + r) * j.ldw + k);
      const __m512 wv = W16<T, kMasked>(j.w, (n0 + r) * j.ldw + k, mask);
      PREMOE_UNROLL
      for (int mb = 0; mb < MB; ++mb) acc[r][mb] = _mm512_fmadd_ps(wv, xv[mb], acc[r][mb]);
    }
  };
  const int64_t k16 = j.in & ~int64_t{15};
  for (int64_t k = 0; k < k16; k += 16) block.template operator()<false>(k, 0xFFFF);
  if (k16 < j.in) block.template operator()<true>(k16, TailMask(j.in - k16));
  PREMOE_UNROLL
  for (int r = 0; r < R; ++r) {
    PREMOE_UNROLL
    for (int mb = 0; mb < MB; ++mb) {
      j.y[m0 + mb][n0 + r] = Scaled<T>(j, n0 + r, Sum16(acc[r][mb]));
    }
  }
}

// One int4 chunk of row n at input k (`full`: 32 inputs, else 16), as the
// fp32 weights of its low and high nibbles.
PREMOE_AVX512 inline void Int4Chunk(const MatvecJob& j, int64_t n, int64_t k, bool full,
                                    __m512 scale, __m512 min, __m512& lo, __m512& hi) {
  const uint8_t* p = static_cast<const uint8_t*>(j.w) + n * (j.in / 2) + k / 2;
  const __m512i b =
      _mm512_cvtepu8_epi32(full ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                                : _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0xF))), scale, min);
  hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), scale, min);
}

// int4: R weight rows by MB activation rows, x already permuted (rows of
// 32 * Int4Chunks floats).
template <int R, int MB>
PREMOE_AVX512 void TileInt4Avx512(const MatvecJob& j, int64_t n0, int64_t m0) {
  __m512 acc[R][MB];
  Zero(acc);
  const float* xs[MB];
  PREMOE_UNROLL
  for (int mb = 0; mb < MB; ++mb) xs[mb] = j.x[m0 + mb];
  int64_t p = 0;
  for (int64_t g0 = 0; g0 < j.in; g0 += j.group) {
    __m512 scale[R], min[R];
    PREMOE_UNROLL
    for (int r = 0; r < R; ++r) {
      scale[r] = _mm512_set1_ps(Int4Param(j.scales, j, n0 + r, g0 / j.group));
      min[r] = _mm512_set1_ps(Int4Param(j.mins, j, n0 + r, g0 / j.group));
    }
    for (int64_t k = g0; k < g0 + j.group; p += 32) {
      const bool full = k + 32 <= g0 + j.group;
      __m512 xlo[MB], xhi[MB];
      PREMOE_UNROLL
      for (int mb = 0; mb < MB; ++mb) {
        xlo[mb] = _mm512_loadu_ps(xs[mb] + p);
        xhi[mb] = _mm512_loadu_ps(xs[mb] + p + 16);
      }
      PREMOE_UNROLL
      for (int r = 0; r < R; ++r) {
        __m512 lo, hi;
        _mm_prefetch(static_cast<const char*>(j.w) + (n0 + r) * (j.in / 2) + k / 2 + kPrefetchBytes,
                     _MM_HINT_T0);
        Int4Chunk(j, n0 + r, k, full, scale[r], min[r], lo, hi);
        PREMOE_UNROLL
        for (int mb = 0; mb < MB; ++mb) {
          acc[r][mb] = _mm512_fmadd_ps(lo, xlo[mb], acc[r][mb]);
          acc[r][mb] = _mm512_fmadd_ps(hi, xhi[mb], acc[r][mb]);
        }
      }
      k += full ? 32 : 16;
    }
  }
  PREMOE_UNROLL
  for (int r = 0; r < R; ++r) {
    PREMOE_UNROLL
    for (int mb = 0; mb < MB; ++mb) j.y[m0 + mb][n0 + r] = Sum16(acc[r][mb]);
  }
}

// Activation rows in the int4 tile's lane order (see above).
void PermuteInt4Rows(const MatvecJob& j, float* out) {
  const int64_t stride = 32 * Int4Chunks(j.in, j.group);
  for (int64_t m = 0; m < j.rows; ++m) {
    const float* x = j.x[m];
    float* o = out + m * stride;
    for (int64_t g0 = 0; g0 < j.in; g0 += j.group) {
      for (int64_t k = g0; k < g0 + j.group; o += 32) {
        const bool full = k + 32 <= g0 + j.group;
        std::memcpy(o, x + k, 8 * sizeof(float));
        std::memcpy(o + 16, x + k + 8, 8 * sizeof(float));
        if (full) {
          std::memcpy(o + 8, x + k + 16, 8 * sizeof(float));
          std::memcpy(o + 24, x + k + 24, 8 * sizeof(float));
        } else {
          std::fill(o + 8, o + 16, 0.0f);
          std::fill(o + 24, o + 32, 0.0f);
        }
        k += full ? 32 : 16;
      }
    }
  }
}

// ---- AVX512-BF16: bf16 weights against bf16 activations ---------------------------
//
// Under MatvecIsa::kAvx512Bf16 a bf16 product rounds each activation row to
// bf16 once (round to nearest even; PrepareBf16Rows, zero-padded to a
// multiple of 32) and multiplies pairs with vdpbf16ps: each lane adds two
// exact bf16 x bf16 products per instruction, half the instructions of
// widening the weights to fp32 and no widening at all. Each output sums, lane
// by lane, 32-element blocks of k in increasing order, then Sum16: an order
// that depends only on K, as in every tile. Activations that already are
// bf16 values (the engine's bf16 hidden states) lose nothing; others carry
// bf16's rounding, as in libtorch's bf16 products. vdpbf16ps treats
// subnormal inputs as zero.

#define PREMOE_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))

// A prepared row: bf16 pairs in float slots, padded to 32 elements.
int64_t Bf16RowFloats(const MatvecJob& j) { return (j.in + 31) / 32 * 16; }

PREMOE_AVX512BF16 void PrepareBf16Rows(const MatvecJob& j, float* out) {
  const int64_t k16 = j.in & ~int64_t{15};
  for (int64_t m = 0; m < j.rows; ++m) {
    const float* x = j.x[m];
    auto* o = reinterpret_cast<uint16_t*>(out + m * Bf16RowFloats(j));
    for (int64_t k = 0; k < k16; k += 16) {
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + k));
      std::memcpy(o + k, &v, sizeof(v));
    }
    if (k16 < j.in) {
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(TailMask(j.in - k16), x + k16));
      std::memcpy(o + k16, &v, sizeof(v));
    }
    std::fill(o + k16 + (k16 < j.in ? 16 : 0), o + 2 * Bf16RowFloats(j), uint16_t{0});
  }
}

template <int R, int MB>
PREMOE_AVX512BF16 void TileBf16Dp(const MatvecJob& j, int64_t n0, int64_t m0) {
  __m512 acc[R][MB];
  Zero(acc);
  const uint16_t* xs[MB];
  PREMOE_UNROLL
  for (int mb = 0; mb < MB; ++mb) xs[mb] = reinterpret_cast<const uint16_t*>(j.x[m0 + mb]);
  const auto* w = static_cast<const uint16_t*>(j.w);
  auto block = [&]<bool kMasked>(int64_t k, __mmask32 mask) PREMOE_AVX512BF16 {
    __m512bh xv[MB];
    PREMOE_UNROLL
    for (int mb = 0; mb < MB; ++mb) xv[mb] = (__m512bh)_mm512_loadu_si512(xs[mb] + k);
    PREMOE_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint16_t* p = w + (n0 + r) * j.ldw + k;
      if constexpr (!kMasked)
        _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
      const __m512bh wv =
          (__m512bh)(kMasked ? _mm512_maskz_loadu_epi16(mask, p) : _mm512_loadu_si512(p));
      PREMOE_UNROLL
      for (int mb = 0; mb < MB; ++mb) acc[r][mb] = _mm512_dpbf16_ps(acc[r][mb], wv, xv[mb]);
    }
  };
  const int64_t k32 = j.in & ~int64_t{31};
  for (int64_t k = 0; k < k32; k += 32) block.template operator()<false>(k, 0);
  if (k32 < j.in) {
    block.template operator()<true>(k32, static_cast<__mmask32>((uint64_t{1} << (j.in - k32)) - 1));
  }
  PREMOE_UNROLL
  for (int r = 0; r < R; ++r) {
    PREMOE_UNROLL
    for (int mb = 0; mb < MB; ++mb) j.y[m0 + mb][n0 + r] = Sum16(acc[r][mb]);
  }
}

// kDp: bf16 weights against prepared bf16 rows (TileBf16Dp).
template <WeightType T, int R, int MB, bool kDp>
void Tile512(const MatvecJob& j, int64_t n0, int64_t m0) {
  if constexpr (kDp) {
    TileBf16Dp<R, MB>(j, n0, m0);
  } else if constexpr (T == WeightType::kInt4) {
    TileInt4Avx512<R, MB>(j, n0, m0);
  } else {
    TileAvx512<T, R, MB>(j, n0, m0);
  }
}

// All activation rows, four at a time, against R weight rows from n0.
template <WeightType T, int R, bool kDp>
void Columns512(const MatvecJob& j, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= j.rows; m += 4) Tile512<T, R, 4, kDp>(j, n0, m);
  switch (j.rows - m) {
    case 3:
      Tile512<T, R, 3, kDp>(j, n0, m);
      break;
    case 2:
      Tile512<T, R, 2, kDp>(j, n0, m);
      break;
    case 1:
      Tile512<T, R, 1, kDp>(j, n0, m);
      break;
    default:
      break;
  }
}

// Rows [n_begin, n_end) of job j, four weight rows at a time while they sit
// in L1 for every activation row.
template <WeightType T, bool kDp = false>
void RunRowsAvx512(const MatvecJob& j, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; n += kTileRows) {
    if (n + kTileRows <= n_end) {
      Columns512<T, kTileRows, kDp>(j, n);
    } else {
      for (int64_t r = n; r < n_end; ++r) Columns512<T, 1, kDp>(j, r);
    }
  }
}

// ---- AVX-512 VNNI: int4 weights against int8 activations --------------------------
//
// With MatvecJob::int8_activations, an int4 product whose group is a
// multiple of 128 quantizes each activation row per block of 128 inputs
// (dx = max|x| / 127, xq = round(x / dx)) and multiplies the nibbles by xq
// in integers (vpdpbusd: unsigned nibble x signed int8, four products into
// each int32 lane, exact). Per block, the int32 sums become fp32 times
// scale_group * dx_block; the minimum's share, min_group * sum(x) over the
// group, uses the exact fp32 sums of x. Each product then carries the
// activations' rounding, at most dx / 2 per element, as llama.cpp's Q4 x
// Q8 products do, for about a quarter of the instructions a weight.
//
// A prepared row is [dx per block][sum of x per group][xq: per block 64
// bytes matching the low nibbles of its 64 weight bytes, then 64 matching
// the high ones] (byte i of a block's weights holds inputs 16(i/8) + i%8
// and that + 8).

#define PREMOE_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma")))

constexpr int64_t kVnniBlock = 128;

int64_t VnniRowFloats(const MatvecJob& j) {
  const int64_t blocks = j.in / kVnniBlock;
  return blocks + j.in / j.group + blocks * kVnniBlock / 4;
}

void PrepareVnniRows(const MatvecJob& j, float* out) {
  const int64_t blocks = j.in / kVnniBlock, groups = j.in / j.group;
  for (int64_t m = 0; m < j.rows; ++m) {
    const float* x = j.x[m];
    float* dx = out + m * VnniRowFloats(j);
    float* sx = dx + blocks;
    auto* xq = reinterpret_cast<int8_t*>(sx + groups);
    for (int64_t g = 0; g < groups; ++g) {
      float sum = 0;
      for (int64_t k = g * j.group; k < (g + 1) * j.group; ++k) sum += x[k];
      sx[g] = sum;
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + b * kVnniBlock;
      float amax = 0;
      for (int64_t k = 0; k < kVnniBlock; ++k) amax = std::max(amax, std::abs(xb[k]));
      dx[b] = amax / 127.0f;
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      int8_t* q = xq + b * kVnniBlock;
      for (int64_t i = 0; i < 64; ++i) {
        const int64_t k = 16 * (i / 8) + i % 8;
        q[i] = static_cast<int8_t>(std::clamp(std::nearbyint(xb[k] * inv), -127.0f, 127.0f));
        q[64 + i] =
            static_cast<int8_t>(std::clamp(std::nearbyint(xb[k + 8] * inv), -127.0f, 127.0f));
      }
    }
  }
}

template <int R, int MB>
PREMOE_VNNI void TileInt4Vnni(const MatvecJob& j, int64_t n0, int64_t m0) {
  const int64_t blocks = j.in / kVnniBlock, groups = j.in / j.group;
  const int64_t per_group = j.group / kVnniBlock, row_bytes = j.in / 2;
  const auto* q = static_cast<const uint8_t*>(j.w);
  __m512 acc[R][MB];
  Zero(acc);
  const float* dx[MB];
  const int8_t* xq[MB];
  PREMOE_UNROLL
  for (int mb = 0; mb < MB; ++mb) {
    dx[mb] = j.x[m0 + mb];
    xq[mb] = reinterpret_cast<const int8_t*>(dx[mb] + blocks + groups);
  }
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t g = b / per_group;
    __m512i lo[R], hi[R];
    float scale[R];
    PREMOE_UNROLL
    for (int r = 0; r < R; ++r) {
      const uint8_t* row = q + (n0 + r) * row_bytes;
      _mm_prefetch(reinterpret_cast<const char*>(row + b * 64 + kPrefetchBytes), _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(row + b * 64);
      lo[r] = _mm512_and_si512(v, nibble);
      hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      scale[r] = Int4Param(j.scales, j, n0 + r, g);
    }
    PREMOE_UNROLL
    for (int mb = 0; mb < MB; ++mb) {
      const __m512i xlo = _mm512_loadu_si512(xq[mb] + b * kVnniBlock);
      const __m512i xhi = _mm512_loadu_si512(xq[mb] + b * kVnniBlock + 64);
      PREMOE_UNROLL
      for (int r = 0; r < R; ++r) {
        __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[r], xlo);
        s = _mm512_dpbusd_epi32(s, hi[r], xhi);
        acc[r][mb] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(scale[r] * dx[mb][b]),
                                     acc[r][mb]);
      }
    }
  }
  PREMOE_UNROLL
  for (int r = 0; r < R; ++r) {
    PREMOE_UNROLL
    for (int mb = 0; mb < MB; ++mb) {
      const float* sx = dx[mb] + blocks;
      float mins = 0;
      for (int64_t g = 0; g < groups; ++g) mins += Int4Param(j.mins, j, n0 + r, g) * sx[g];
      j.y[m0 + mb][n0 + r] = Sum16(acc[r][mb]) + mins;
    }
  }
}

template <int R>
void ColumnsVnni(const MatvecJob& j, int64_t n0) {
  int64_t m = 0;
  for (; m + 4 <= j.rows; m += 4) TileInt4Vnni<R, 4>(j, n0, m);
  switch (j.rows - m) {
    case 3:
      TileInt4Vnni<R, 3>(j, n0, m);
      break;
    case 2:
      TileInt4Vnni<R, 2>(j, n0, m);
      break;
    case 1:
      TileInt4Vnni<R, 1>(j, n0, m);
      break;
    default:
      break;
  }
}

void RunRowsVnni(const MatvecJob& j, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; n += kTileRows) {
    if (n + kTileRows <= n_end) {
      ColumnsVnni<kTileRows>(j, n);
    } else {
      for (int64_t r = n; r < n_end; ++r) ColumnsVnni<1>(j, r);
    }
  }
}

bool DetectVnni() { return __builtin_cpu_supports("avx512vnni"); }

// Whether job j takes the VNNI path under `isa`.
bool UsesVnni(const MatvecJob& j, MatvecIsa isa) {
  static const bool vnni = DetectVnni();
  return vnni && isa >= MatvecIsa::kAvx512 && j.type == WeightType::kInt4 && j.int8_activations &&
         j.group % kVnniBlock == 0;
}

// Whether job j takes the vdpbf16ps path under `isa`.
bool UsesBf16Dp(const MatvecJob& j, MatvecIsa isa) {
  return isa == MatvecIsa::kAvx512Bf16 && j.type == WeightType::kBF16;
}

MatvecIsa DetectIsa() {
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return __builtin_cpu_supports("avx512bf16") ? MatvecIsa::kAvx512Bf16 : MatvecIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return MatvecIsa::kAvx2;
  return MatvecIsa::kPortable;
}
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
MatvecIsa DetectIsa() { return MatvecIsa::kPortable; }
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

MatvecIsa MatvecBestIsa() {
  static const MatvecIsa isa = DetectIsa();
  return isa;
}

const char* MatvecIsaName(MatvecIsa isa) {
  switch (isa) {
    case MatvecIsa::kPortable:
      return "portable";
    case MatvecIsa::kAvx2:
      return "avx2";
    case MatvecIsa::kAvx512:
      return "avx512";
    case MatvecIsa::kAvx512Bf16:
      return "avx512bf16";
  }
  return "?";
}

bool MatvecHasVnni() {
#if defined(__x86_64__)
  static const bool vnni = DetectVnni() && MatvecBestIsa() >= MatvecIsa::kAvx512;
  return vnni;
#else
  return false;
#endif
}

std::optional<MatvecIsa> ParseMatvecIsa(std::string_view name) {
  for (MatvecIsa isa :
       {MatvecIsa::kPortable, MatvecIsa::kAvx2, MatvecIsa::kAvx512, MatvecIsa::kAvx512Bf16}) {
    if (name == MatvecIsaName(isa)) return isa;
  }
  return std::nullopt;
}

bool MatvecNativeBf16() {
#if defined(__x86_64__)
  static const bool bf16 = __builtin_cpu_supports("avx512bf16");
  return bf16;
#else
  return true;  // no measurement elsewhere: keep libtorch's GEMM for large products
#endif
}

void RunMatvecs(std::span<const MatvecJob> jobs) { RunMatvecs(jobs, MatvecBestIsa()); }

void RunMatvecs(std::span<const MatvecJob> given, MatvecIsa isa) {
  isa = std::min(isa, MatvecBestIsa());
  std::span<const MatvecJob> jobs = given;
#if defined(__x86_64__)
  // The AVX-512 int4 tile reads its activations permuted (PermuteInt4Rows),
  // the VNNI and vdpbf16ps tiles read them prepared: such jobs run on a copy
  // that points at permuted or prepared rows.
  std::vector<MatvecJob> permuted;
  std::vector<float> permuted_x;
  std::vector<const float*> permuted_rows;
  if (isa >= MatvecIsa::kAvx512) {
    auto prepared = [isa](const MatvecJob& j) {
      return j.type == WeightType::kInt4 || UsesBf16Dp(j, isa);
    };
    // A row's stride in floats.
    auto stride_of = [isa](const MatvecJob& j) {
      if (UsesBf16Dp(j, isa)) return Bf16RowFloats(j);
      return UsesVnni(j, isa) ? VnniRowFloats(j) : 32 * Int4Chunks(j.in, j.group);
    };
    size_t floats = 0, rows = 0;
    for (const MatvecJob& j : given) {
      if (!prepared(j)) continue;
      floats += static_cast<size_t>(j.rows * stride_of(j));
      rows += static_cast<size_t>(j.rows);
    }
    if (rows > 0) {
      permuted.assign(given.begin(), given.end());
      permuted_x.resize(floats);
      permuted_rows.resize(rows);
      size_t x_at = 0, row_at = 0;
      for (MatvecJob& j : permuted) {
        if (!prepared(j)) continue;
        const int64_t stride = stride_of(j);
        if (UsesBf16Dp(j, isa)) {
          PrepareBf16Rows(j, permuted_x.data() + x_at);
        } else if (UsesVnni(j, isa)) {
          PrepareVnniRows(j, permuted_x.data() + x_at);
        } else {
          PermuteInt4Rows(j, permuted_x.data() + x_at);
        }
        for (int64_t m = 0; m < j.rows; ++m) {
          permuted_rows[row_at + m] = permuted_x.data() + x_at + m * stride;
        }
        j.x = permuted_rows.data() + row_at;
        x_at += static_cast<size_t>(j.rows * stride);
        row_at += static_cast<size_t>(j.rows);
      }
      jobs = permuted;
    }
  }
#endif
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
  auto rows_of = [isa]<WeightType T>(const MatvecJob& j, int64_t begin, int64_t end) {
#if defined(__x86_64__)
    if constexpr (T == WeightType::kInt4) {
      if (UsesVnni(j, isa)) {
        RunRowsVnni(j, begin, end);
        return;
      }
    }
    if constexpr (T == WeightType::kBF16) {
      if (UsesBf16Dp(j, isa)) {
        RunRowsAvx512<T, /*kDp=*/true>(j, begin, end);
        return;
      }
    }
    if (isa >= MatvecIsa::kAvx512) {
      RunRowsAvx512<T>(j, begin, end);
      return;
    }
#endif
    RunRows<T>(j, begin, end, isa == MatvecIsa::kAvx2);
  };
  auto work = [&](int64_t t) {
    for (size_t i = 0; i < jobs.size(); ++i) {
      const MatvecJob& j = jobs[i];
      if (j.rows == 0) continue;
      const int64_t begin = cut(i, t), end = cut(i, t + 1);
      if (begin >= end) continue;
      switch (j.type) {
        case WeightType::kF32:
          rows_of.template operator()<WeightType::kF32>(j, begin, end);
          break;
        case WeightType::kBF16:
          rows_of.template operator()<WeightType::kBF16>(j, begin, end);
          break;
        case WeightType::kInt8:
          rows_of.template operator()<WeightType::kInt8>(j, begin, end);
          break;
        case WeightType::kInt4:
          rows_of.template operator()<WeightType::kInt4>(j, begin, end);
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
