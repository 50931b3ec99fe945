#include "premoe/model/repack.h"

#include <ATen/ATen.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "engine_weights.h"
#include "premoe/checkpoint/config.h"
#include "premoe/checkpoint/expert_pack.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/status.h"

namespace premoe::model {

absl::Status WriteExpertPack(const std::string& model_dir, const std::string& path,
                             const ExpertPackWriteOptions& options) {
  ASSIGN_OR_RETURN(const int64_t element, checkpoint::ExpertPackElementBytes(options.dtype));
  const at::ScalarType dtype = element == 4 ? at::kFloat : at::kBFloat16;
  ASSIGN_OR_RETURN(checkpoint::ModelConfig config, checkpoint::LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<const checkpoint::Checkpoint> source,
                   checkpoint::Checkpoint::Open(model_dir));
  checkpoint::ExpertPackHeader h;
  h.dtype = options.dtype;
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
  // Each expert is read straight into the slot buffer, in the engine's
  // layout: gate_up [2I, H], then down [H, I].
  std::vector<uint8_t> slot(static_cast<size_t>(header.slot_bytes));
  const int64_t gate_up_elems = 2 * header.intermediate * header.hidden;
  const auto cpu = at::TensorOptions().dtype(dtype);
  for (size_t i = 0; i < header.layers.size(); ++i) {
    for (int64_t e = 0; e < header.experts; ++e) {
      try {
        at::Tensor gate_up =
            at::from_blob(slot.data(), {2 * header.intermediate, header.hidden}, cpu);
        at::Tensor down = at::from_blob(slot.data() + gate_up_elems * element,
                                        {header.hidden, header.intermediate}, cpu);
        RETURN_IF_ERROR(
            internal::LoadExpertInto(*source, config, header.layers[i], e, gate_up, down));
      } catch (const std::exception& ex) {
        return absl::InternalError(absl::StrCat("repack: layer ", header.layers[i], " expert ", e,
                                                ": libtorch: ", ex.what()));
      }
      RETURN_IF_ERROR(writer->Append(slot));
    }
    if (options.on_progress) {
      options.on_progress(static_cast<int64_t>(i) + 1, static_cast<int64_t>(header.layers.size()));
    }
  }
  return writer->Commit();
}

}  // namespace premoe::model
