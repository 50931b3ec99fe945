// One routed expert of an on-demand engine, in fresh memory, for tests that
// compare or assemble experts outside the worker's cache (which loads into
// its own slots with Engine::LoadExpertInto).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "premoe/common/status.h"
#include "premoe/model/engine.h"

namespace premoe::testing {

inline absl::StatusOr<std::shared_ptr<const model::ExpertWeights>> LoadExpert(
    const model::Engine& engine, int64_t layer, int64_t expert) {
  const int64_t h = engine.config().hidden_size, inter = engine.config().moe_intermediate_size;
  const checkpoint::ExpertSlotLayout& layout = engine.expert_layout();
  auto out = std::make_shared<model::ExpertWeights>();
  if (layout.format.quantized()) {
    const auto bytes =
        at::TensorOptions().dtype(at::kByte).device(at::Device(engine.options().device));
    out->gate_up = at::empty({layout.gate_up_bytes}, bytes);
    out->down = at::empty({layout.down_bytes}, bytes);
  } else {
    const auto opts = at::TensorOptions()
                          .dtype(engine.options().dtype == "fp32" ? at::kFloat : at::kBFloat16)
                          .device(at::Device(engine.options().device));
    out->gate_up = at::empty({2 * inter, h}, opts);
    out->down = at::empty({h, inter}, opts);
  }
  RETURN_IF_ERROR(engine.LoadExpertInto(layer, expert, *out));
  return std::shared_ptr<const model::ExpertWeights>(std::move(out));
}

}  // namespace premoe::testing
