// Small-batch matrix products on the CPU: the decode path's kernel.
//
// A decode step multiplies a handful of activation rows (1-16 tokens) by
// every weight matrix it touches. libtorch runs each such product as its own
// op: a dispatch, an allocation, a parallel region and, for bf16 on CPUs
// without native bf16 dot products, a conversion pass, per matrix, so a MoE
// layer with 4 experts costs a dozen regions for 12 MB of reads. Here one call
// takes a list of products, splits their rows among libtorch's intra-op
// threads in one parallel region, and streams each weight row once for all
// the activation rows that use it, converting bf16 in registers.
//
// Numerics: each output is a dot product accumulated in fp32 in an order
// that depends only on K and the ISA (8 or 16 lanes over k, then the lanes
// summed in a fixed order), never on M, on which other products share the
// call, or on the thread count. So a token's result is the same alone or in
// any batch, and two engines running the same products on the same ISA
// agree bit for bit.
#ifndef PREMOE_MODEL_SRC_CPU_MATVEC_H_
#define PREMOE_MODEL_SRC_CPU_MATVEC_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace premoe::model::internal {

// kInt8 and kInt4 are checkpoint::QuantFormat's layouts (premoe/checkpoint/
// quant.h): the kernel dequantizes in registers exactly as Dequantize does
// (int4: fma(q, scale, min)); an int8 row's sum is multiplied by its scale
// at the end.
enum class WeightType { kF32, kBF16, kInt8, kInt4 };

// Y[m][n] = sum_k X[m][k] * W[n][k] for m < rows, n < out. Borrowed pointers;
// the caller keeps every buffer alive for the call. X rows and Y rows are
// given one pointer per row (so a product reads a gathered subset of a
// batch's tokens and writes anywhere); Y rows must not overlap each other or
// another job's.
struct MatvecJob {
  const void* w = nullptr;  // [out, in] row-major, `ldw` elements between rows
  WeightType type = WeightType::kBF16;
  int64_t out = 0, in = 0, ldw = 0;  // quantized types: ldw == in
  const float* const* x = nullptr;   // rows pointers, each to `in` floats
  float* const* y = nullptr;         // rows pointers, each to `out` floats
  int64_t rows = 0;
  // kInt8: float [out]. kInt4: bf16 (uint16) [out][in / group] each, and
  // `group` (a multiple of 16 dividing `in`). Unused for dense types.
  const void* scales = nullptr;
  const void* mins = nullptr;
  int64_t group = 0;
  // kInt4 with a group that is a multiple of 128, on a CPU with AVX512-VNNI
  // (and the AVX-512 ISA): quantize each activation row to int8 per 128
  // inputs and multiply in integers, as llama.cpp's Q4 x Q8 products do.
  // About 3x faster; each output then carries the activations' rounding
  // (at most max|x| / 254 of each element of a 128-input block) instead of
  // being the exact product of the dequantized weights. Ignored otherwise.
  bool int8_activations = false;
};

// Whether this CPU takes MatvecJob::int8_activations.
bool MatvecHasVnni();

// The instruction sets the kernel has code for, in increasing order.
// kAvx512 needs AVX-512 F, BW, VL and DQ; kAvx512Bf16 adds AVX512-BF16 and
// differs from kAvx512 only for bf16 weights, whose products then round
// each activation to bf16 and multiply pairs with vdpbf16ps (exact for
// activations that are bf16 values, as libtorch's bf16 products are). Each
// sums in its own fixed order (so results differ in the last bits between
// ISAs, never between batches, jobs or thread counts on one ISA).
enum class MatvecIsa { kPortable, kAvx2, kAvx512, kAvx512Bf16 };

// The best ISA this CPU runs (detected once).
MatvecIsa MatvecBestIsa();
const char* MatvecIsaName(MatvecIsa isa);
// "portable", "avx2", "avx512", "avx512bf16" (MatvecIsaName's spellings);
// nullopt else.
std::optional<MatvecIsa> ParseMatvecIsa(std::string_view name);

// Runs every job (any number, any sizes) in one parallel region of
// at::get_num_threads() threads (GCC builds; a build by another compiler
// runs them on the calling thread), work split by bytes of weight read, with
// the kernel for `isa` (capped at MatvecBestIsa(); the default is the best).
// Thread-safe: concurrent calls share nothing but the thread pool.
void RunMatvecs(std::span<const MatvecJob> jobs);
void RunMatvecs(std::span<const MatvecJob> jobs, MatvecIsa isa);

// Whether this CPU multiplies bf16 natively (AVX512-BF16, which every AMX
// CPU has too): there libtorch's bf16 GEMM (oneDNN) is fast for large products.
bool MatvecNativeBf16();

}  // namespace premoe::model::internal

#endif  // PREMOE_MODEL_SRC_CPU_MATVEC_H_
