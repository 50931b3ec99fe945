// ExpertSource: where an ExpertCache reads routed experts from.
//
// The cache decides which experts are resident; a source only reads one
// expert when asked. The engine's on-demand loader (EngineExpertSource) is
// the real one; tests use a fake that counts reads and can hold them back
// (tests/testutil/fake_expert_source.h).
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/checkpoint/config.h"
#include "premoe/model/engine.h"

namespace premoe::worker {

// Thread safety: every method may be called from any number of threads at
// once; the cache calls Load concurrently for different experts.
class ExpertSource {
 public:
  virtual ~ExpertSource() = default;

  // The model whose experts these are (its MoE layers and routed experts per
  // layer). Lives as long as the source.
  virtual const checkpoint::ModelConfig& config() const = 0;
  // Bytes one resident expert takes (> 0).
  virtual int64_t expert_bytes() const = 0;
  // Reads routed expert `expert` of MoE layer `layer`. The weights stay valid
  // for as long as someone holds them, even past the source's destruction.
  // Errors are the source's own (a damaged checkpoint, RESOURCE_EXHAUSTED
  // when no memory is left); never throws.
  virtual absl::StatusOr<std::shared_ptr<const model::ExpertWeights>> Load(
      int64_t layer, int64_t expert) const = 0;
  // Makes memory for `experts` experts ready now, so that later loads only
  // copy. RESOURCE_EXHAUSTED when there is not that much. Default: does
  // nothing.
  virtual absl::Status Reserve(int64_t experts) const {
    (void)experts;
    return absl::OkStatus();
  }
};

// The engine's on-demand loader: experts are read with
// Engine::LoadExpertInto into slots of reused memory (CPU) or fresh device
// tensors (CUDA). `engine` is not owned, must be opened with
// EngineOptions::experts_on_demand (INVALID_ARGUMENT otherwise) and must
// outlive the source.
absl::StatusOr<std::unique_ptr<ExpertSource>> EngineExpertSource(const model::Engine* engine);

}  // namespace premoe::worker
