#include "premoe/model/repack.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "engine_weights.h"
#include "premoe/checkpoint/config.h"
#include "premoe/checkpoint/expert_pack.h"
#include "premoe/checkpoint/quant.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/status.h"

namespace premoe::model {

absl::Status WriteExpertPack(const std::string& model_dir, const std::string& path,
                             const ExpertPackWriteOptions& options) {
  ASSIGN_OR_RETURN(const int64_t element, checkpoint::ExpertPackElementBytes(options.dtype));
  const at::ScalarType dtype = element == 4 ? at::kFloat : at::kBFloat16;
  ASSIGN_OR_RETURN(const checkpoint::QuantFormat quant,
                   checkpoint::QuantFormat::Parse(options.quant));
  ASSIGN_OR_RETURN(checkpoint::ModelConfig config, checkpoint::LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<const checkpoint::Checkpoint> source,
                   checkpoint::Checkpoint::Open(model_dir));
  checkpoint::ExpertPackHeader h;
  h.dtype = options.dtype;
  h.quant = quant;
  h.hidden = config.hidden_size;
  h.intermediate = config.moe_intermediate_size;
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    if (config.IsMoeLayer(l)) h.layers.push_back(l);
  }
  h.experts = config.num_routed_experts;
  if (h.layers.empty() || h.experts <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, ": the model has no routed experts to pack"));
  }
  ASSIGN_OR_RETURN(h.source, checkpoint::SourceFingerprint(*source));
  ASSIGN_OR_RETURN(std::unique_ptr<checkpoint::ExpertPackWriter> writer,
                   checkpoint::ExpertPackWriter::Create(path, std::move(h)));
  const checkpoint::ExpertPackHeader& header = writer->header();
  ASSIGN_OR_RETURN(const checkpoint::ExpertSlotLayout layout,
                   checkpoint::ExpertSlotLayout::For(quant, header.hidden, header.intermediate,
                                                     element, model_dir));
  // Each expert is read (and quantized) straight into the slot buffer, in
  // the engine's layout. 64-byte aligned, as the quantizer wants; the
  // padding between gate_up and down stays zero, so checksums are stable.
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  const size_t bytes = static_cast<size_t>((layout.bytes + 63) / 64 * 64);
  std::unique_ptr<std::byte, Free> slot(static_cast<std::byte*>(std::aligned_alloc(64, bytes)));
  if (slot == nullptr) return absl::ResourceExhaustedError("repack: no memory for one expert");
  for (size_t i = 0; i < header.layers.size(); ++i) {
    for (int64_t e = 0; e < header.experts; ++e) {
      std::memset(slot.get(), 0, bytes);
      try {
        RETURN_IF_ERROR(internal::LoadExpertBytes(*source, config, header.layers[i], e, layout,
                                                  dtype, slot.get(),
                                                  slot.get() + layout.down_offset));
      } catch (const std::exception& ex) {
        return absl::InternalError(absl::StrCat("repack: layer ", header.layers[i], " expert ", e,
                                                ": libtorch: ", ex.what()));
      }
      RETURN_IF_ERROR(writer->Append(std::span<const uint8_t>(
          reinterpret_cast<const uint8_t*>(slot.get()), static_cast<size_t>(layout.bytes))));
    }
    if (options.on_progress) {
      options.on_progress(static_cast<int64_t>(i) + 1, static_cast<int64_t>(header.layers.size()));
    }
  }
  return writer->Commit();
}

}  // namespace premoe::model
