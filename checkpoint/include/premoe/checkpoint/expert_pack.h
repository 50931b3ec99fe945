// ExpertPack: a model's routed experts repacked expert-major for reassembly
// (`premoe repack`).
//
// A checkpoint stores an expert as three tensors (or as rows of fused
// [N, ...] tensors), in its own dtype, wherever its writer put them. A pack
// stores each expert as one page-aligned slot in the engine's layout, the
// bytes of ExpertWeights: gate_up [2I, H] then down [H, I], in the compute
// dtype or quantized (premoe/checkpoint/quant.h; ExpertSlotLayout says where
// each sits). An on-demand engine opened with EngineOptions::expert_pack
// reads an expert with one pread(2) into its cache slot, no conversion.
//
// File layout (little-endian):
//   "PREMOEXP" | u64 N | N bytes of JSON header | zeros to data_offset |
//   slots, slot_stride bytes apart, in (MoE layer, expert) order.
// The header records the shape, the dtype, the quantized format and its
// layout version (version 2; a version-1 pack is a dense one), a fingerprint of the source
// checkpoint (SourceFingerprint) and an XXH3-64 checksum of every slot.
// Open validates the header and the file size; CheckFits refuses a pack made
// for another model, shape or dtype, or from a checkpoint changed since.
// Reads do not verify checksums (Verify does, for `premoe repack --check`).
//
// Ownership: an ExpertPack keeps its file open. Thread safety: immutable
// after Open; Read and Verify may run concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/checkpoint/config.h"
#include "premoe/checkpoint/quant.h"

namespace premoe::common {
class AtomicFileWriter;
class MappedFile;
}  // namespace premoe::common

namespace premoe::checkpoint {

class Checkpoint;

struct ExpertPackHeader {
  int64_t version = 2;
  std::string dtype;                // "fp32" or "bf16": the compute dtype it is for
  QuantFormat quant;                // how the slots hold the matrices (none: dtype)
  int64_t hidden = 0;               // H
  int64_t intermediate = 0;         // I
  std::vector<int64_t> layers;      // the MoE decoder layers, ascending
  int64_t experts = 0;              // routed experts per MoE layer
  int64_t slot_bytes = 0;           // ExpertSlotLayout::bytes
  int64_t slot_stride = 0;          // slot_bytes rounded up to 4096
  int64_t data_offset = 0;          // multiple of 4096
  std::string source;               // SourceFingerprint of the checkpoint
  std::vector<uint64_t> checksums;  // XXH3-64 per slot, layers.size() * experts
};

// XXH3-128 (hex) of every shard's safetensors header and of every router
// weight's bytes: changes when the checkpoint's tensors, shapes or dtypes
// change, or when it is retrained (the routers change). An edit confined to
// expert weights is not seen. Cheap: headers and routers only.
absl::StatusOr<std::string> SourceFingerprint(const Checkpoint& checkpoint);

// Bytes of one element of an expert pack's `dtype`: 4 for "fp32", 2 for
// "bf16"; INVALID_ARGUMENT for any other.
absl::StatusOr<int64_t> ExpertPackElementBytes(const std::string& dtype);

// Writes a pack slot by slot, to a temporary file renamed into place by
// Commit (a writer destroyed before Commit leaves no pack behind). The
// caller fills the slots (model/repack.h converts a checkpoint's experts).
// Not thread-safe.
class ExpertPackWriter {
 public:
  // `header` gives the shape, dtype and source; its sizes and checksums are
  // computed here. INVALID_ARGUMENT for an empty or implausible shape.
  static absl::StatusOr<std::unique_ptr<ExpertPackWriter>> Create(const std::string& path,
                                                                  ExpertPackHeader header);
  ~ExpertPackWriter();

  // The shape with slot_bytes, slot_stride and data_offset filled in.
  const ExpertPackHeader& header() const { return header_; }
  // Appends the next slot, in (MoE layer, expert) order: exactly
  // header().slot_bytes bytes, gate_up [2I, H] then down [H, I].
  absl::Status Append(std::span<const uint8_t> slot);
  // Writes the footer once every slot is in; FAILED_PRECONDITION before.
  absl::Status Commit();

 private:
  ExpertPackWriter(ExpertPackHeader header, std::unique_ptr<common::AtomicFileWriter> out);
  ExpertPackHeader header_;
  std::unique_ptr<common::AtomicFileWriter> out_;
  std::string padding_;
};

class ExpertPack {
 public:
  // Opens and validates `path`: magic, header, version, sizes, and that the
  // file holds every slot. NOT_FOUND / INVALID_ARGUMENT naming the path and
  // what is wrong.
  static absl::StatusOr<std::unique_ptr<const ExpertPack>> Open(const std::string& path);
  ~ExpertPack();

  // OK when this pack holds `config`'s experts for `dtype` ("fp32"/"bf16";
  // any, for a quantized pack: its slots do not depend on it)
  // in format `quant`, made from `checkpoint` as it is now;
  // FAILED_PRECONDITION naming both sides of the difference otherwise
  // (re-run premoe repack).
  absl::Status CheckFits(const Checkpoint& checkpoint, const ModelConfig& config,
                         const std::string& dtype, const QuantFormat& quant) const;

  // Where gate_up and down sit in a slot.
  const ExpertSlotLayout& layout() const { return layout_; }

  // Reads expert `expert` of decoder layer `layer` into `gate_up` and `down`,
  // exactly layout().gate_up_bytes and down_bytes long (two preads).
  // INVALID_ARGUMENT for an unknown layer/expert or wrong sizes; INTERNAL on
  // a read error.
  absl::Status Read(int64_t layer, int64_t expert, std::span<uint8_t> gate_up,
                    std::span<uint8_t> down) const;
  // The same into one slot of exactly layout().bytes laid out as layout()
  // says (gate_up at 0, down at down_offset, padding written too): one pread.
  absl::Status ReadSlot(int64_t layer, int64_t expert, std::span<uint8_t> slot) const;

  // Recomputes every slot's checksum; DATA_LOSS naming the first slot that
  // differs. `on_progress(done, total)` per slot. Reads the whole file.
  absl::Status Verify(const std::function<void(int64_t, int64_t)>& on_progress = {}) const;

  const ExpertPackHeader& header() const { return header_; }
  const std::string& path() const { return path_; }

 private:
  ExpertPack(std::string path, std::shared_ptr<const common::MappedFile> file,
             ExpertPackHeader header, ExpertSlotLayout layout);
  absl::StatusOr<int64_t> SlotIndex(int64_t layer, int64_t expert) const;

  std::string path_;
  std::shared_ptr<const common::MappedFile> file_;
  ExpertPackHeader header_;
  ExpertSlotLayout layout_;
};

}  // namespace premoe::checkpoint
