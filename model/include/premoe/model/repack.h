// Repacking a checkpoint's routed experts into an expert pack (`premoe
// repack`; the format is checkpoint/expert_pack.h): each expert converted to
// the engine's layout and compute dtype, as the on-demand engine reads it.
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
  // Called after each MoE layer with (layers done, layers). Default: none.
  std::function<void(int64_t, int64_t)> on_progress;
};

// Writes the pack of the model in `model_dir` to `path` (a temporary file,
// then renamed: a failed write leaves no pack behind). Peak memory: one
// expert. INVALID_ARGUMENT for a model without routed experts or a bad dtype;
// the checkpoint's errors as Engine::Open reports them; INTERNAL on I/O.
// Thread-safe (nothing shared).
absl::Status WriteExpertPack(const std::string& model_dir, const std::string& path,
                             const ExpertPackWriteOptions& options = {});

}  // namespace premoe::model
