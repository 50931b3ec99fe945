// Quantized weight formats: how a weight matrix is held in memory and in an
// expert pack when it is not held in the engine's dtype. It lives here, below
// the engine, because `premoe inspect` sizes formats from headers alone and
// packs are written without libtorch; the kernels that multiply by these
// matrices are the engine's (model/src/cpu_matvec.h).
//
// Spellings (QuantFormat::Parse):
//   "none"      the engine's dtype (bf16 or fp32), no quantization
//   "int8"      symmetric, one fp32 scale per output row:
//                 w[n][k] = scale[n] * q[n][k],  q in [-127, 127]
//   "int4"      asymmetric, one bf16 scale and one bf16 minimum per group of
//   "int4:gN"   N consecutive inputs of a row (N in {16, 32, 64, 128, 256};
//               default 128):
//                 w[n][k] = scale[n][g] * q[n][k] + min[n][g],  q in [0, 15],
//                 g = k / N
//
// Layout of one quantized [out, in] matrix: one contiguous buffer of
// QuantFormat::Bytes(out, in) bytes, holding
//   int8: q      int8   [out][in]           at 0
//         scale  fp32   [out]               at out*in rounded up to 16
//   int4: q      uint8  [out][in/2], per row blocks of 16 inputs, 8 bytes
//                each: byte i holds input i in its low nibble and input i+8
//                in its high nibble (so one load widens into two runs of 8)
//         scale  bf16   [out][in/N]         at out*in/2
//         min    bf16   [out][in/N]         after the scales
// The layout is premoe's own (kLayoutVersion); ATen's int4 packings differ
// and are converted to where they are used.
//
// Thread safety: plain values and pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::checkpoint {

enum class QuantType { kNone, kInt8, kInt4 };

struct QuantFormat {
  // Bumped whenever the byte layout above changes; packs record it.
  static constexpr int kLayoutVersion = 1;
  static constexpr int64_t kDefaultInt4Group = 128;

  QuantType type = QuantType::kNone;
  int64_t group = 0;  // kInt4: inputs per scale; 0 otherwise

  // Parses a spelling above. INVALID_ARGUMENT `quant "<text>": <what is
  // wrong> (want none, int8, int4 or int4:gN with N in 16..256, a power of 2)`.
  static absl::StatusOr<QuantFormat> Parse(absl::string_view text);
  // The canonical spelling ("int4:g128" for plain "int4").
  std::string ToString() const;

  bool quantized() const { return type != QuantType::kNone; }

  // Whether a [out, in] matrix can be held in this format: int4 needs `in`
  // to be a multiple of the group. INVALID_ARGUMENT naming `tensor`, its
  // shape and the constraint. kNone accepts every shape.
  absl::Status CheckShape(absl::string_view tensor, int64_t out, int64_t in) const;

  // Bytes held for a [out, in] matrix in this format, scales included, when
  // CheckShape accepts it. kNone: out * in * dense_element_bytes.
  int64_t Bytes(int64_t out, int64_t in, int64_t dense_element_bytes) const;
};

// Where one routed expert's two matrices sit in the bytes that hold it (an
// expert cache slot, a row of an engine's expert stack, an expert pack
// slot): gate_up [2I, H] (the gate projection's rows, then the up
// projection's) at 0, then down [H, I], each dense in the compute dtype or
// quantized in `format`'s layout. Quantized, down starts and the slot ends
// at a multiple of 64 bytes, so both buffers keep the 16-byte alignment the
// kernels need in slots laid end to end (an engine's resident stack); dense
// matrices follow each other directly.
struct ExpertSlotLayout {
  QuantFormat format;
  int64_t gate_up_bytes = 0;
  int64_t down_offset = 0;
  int64_t down_bytes = 0;
  // The bytes one expert holds, scales (and, quantized, the padding to 64)
  // included: what every memory figure counts per expert.
  int64_t bytes = 0;

  // The layout of an expert of hidden size H and expert width I, for dense
  // elements of `dense_element_bytes` (2 for bf16, 4 for fp32). For int4,
  // INVALID_ARGUMENT naming `what` (e.g. "model.layers.3.mlp.experts") when
  // the group does not divide H or I.
  static absl::StatusOr<ExpertSlotLayout> For(const QuantFormat& format, int64_t hidden,
                                              int64_t intermediate, int64_t dense_element_bytes,
                                              absl::string_view what = "routed expert");
};

// Views into one quantized matrix's buffer (layout above), which must be
// aligned to 16 bytes. Borrowed.
struct QuantizedView {
  const void* q = nullptr;
  const void* scales = nullptr;  // int8: float[out]; int4: uint16 bf16 [out][in/group]
  const void* mins = nullptr;    // int4: uint16 bf16 [out][in/group]; int8: nullptr
};
QuantizedView ViewQuantized(const QuantFormat& format, int64_t out, int64_t in,
                            const std::byte* data);

// Quantizes w (float [out][in], row-major) into dst (Bytes(out, in, 0)
// bytes, every byte written) with round-to-nearest. int8: scale =
// max|w_row| / 127. int4: per group, min rounded down and scale rounded up
// to bf16, so the group's range is covered and every weight is within
// scale/2 of its value. INVALID_ARGUMENT naming `tensor` and the element for
// a weight that is not finite or a group whose range bf16 cannot hold, and
// for a shape CheckShape refuses; dst is then unspecified.
// Precondition: format quantized, dst.size() == Bytes(out, in, 0), dst
// aligned to 16 bytes.
absl::Status Quantize(const QuantFormat& format, absl::string_view tensor, const float* w,
                      int64_t out, int64_t in, std::span<std::byte> dst);

// The inverse, for tests and references: w (float [out][in]) from a buffer.
void Dequantize(const QuantFormat& format, int64_t out, int64_t in, const std::byte* src, float* w);

}  // namespace premoe::checkpoint
