// Repacking a checkpoint's routed experts into an expert pack (`premoe
// repack`; the format is checkpoint/expert_pack.h): each expert converted to
// the engine's layout, in its compute dtype or quantized, as the on-demand
// engine reads it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace premoe::model {

struct ExpertPackWriteOptions {
  // "fp32" or "bf16": the compute dtype of the engines that will read it.
  // Default: "bf16".
  std::string dtype = "bf16";
  // How the experts are held: EngineOptions::expert_quant's spellings ("none",
  // "int8", "int4[:gN]"); engines read the pack only with the same
  // expert_quant. Default: "none".
  std::string quant = "none";
  // Called after each MoE layer with (layers done, layers). Default: none.
  std::function<void(int64_t, int64_t)> on_progress;
};

// Writes the pack of the model in `model_dir` to `path` (a temporary file,
// then renamed: a failed write leaves no pack behind). Peak memory: one
// expert. INVALID_ARGUMENT for a model without routed experts, a bad dtype
// or quant, or an int4 group that does not divide the expert's dimensions;
// the checkpoint's errors as Engine::Open reports them; INTERNAL on I/O.
// Thread-safe (nothing shared).
absl::Status WriteExpertPack(const std::string& model_dir, const std::string& path,
                             const ExpertPackWriteOptions& options = {});

}  // namespace premoe::model
