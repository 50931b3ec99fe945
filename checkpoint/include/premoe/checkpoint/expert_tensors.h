// Routed-expert tensor names: which checkpoint tensors hold which expert's
// weights, in every layout transformers writes.
//
// transformers 5.24 keeps each MoE layer's routed experts in memory fused:
//   mlp.experts.gate_up_proj [E, 2 * I, H]  (gate rows first, then up)
//   mlp.experts.down_proj    [E, H, I]
// but save_pretrained() (save_original_format=True, the default) writes the
// per-expert hub layout that real checkpoints ship with:
//   model.layers.{l}.mlp.experts.{e}.{gate_proj,up_proj,down_proj}.weight
//       (qwen3_moe, qwen2_moe, olmoe, deepseek_v2, deepseek_v3)
//   model.layers.{l}.block_sparse_moe.experts.{e}.{w1,w3,w2}.weight
//       (mixtral; w1 = gate, w3 = up, w2 = down)
// FP8 checkpoints add `<same prefix>.weight_scale_inv` beside each `.weight`.
// With save_original_format=False the fused names are written instead:
//   model.layers.{l}.mlp.experts.{gate_up_proj,down_proj}
//   model.layers.{l}.mlp.experts.{gate_up_proj,down_proj}_scale_inv   (FP8)
// (mixtral too: its block_sparse_moe is renamed to mlp on load).
// Names of a bare base model (without the "model." prefix) are accepted as well.

#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "premoe/checkpoint/config.h"

namespace premoe::checkpoint {

enum class ExpertProjection {
  kGate,    // gate_proj / w1: [I, H]
  kUp,      // up_proj / w3: [I, H]
  kDown,    // down_proj / w2: [H, I]
  kGateUp,  // fused gate_up_proj: [E, 2 * I, H]
};

enum class ExpertTensorKind {
  kWeight,          // ".weight" (fused: the bare parameter name)
  kWeightScaleInv,  // ".weight_scale_inv" (fused: "<proj>_scale_inv")
};

struct ExpertTensorRef {
  // Decoder layer index (may be >= num_hidden_layers: DeepSeek-V3's MTP layer).
  int64_t layer = 0;
  // Expert index; nullopt for a fused tensor that holds every expert of the
  // layer along dimension 0.
  std::optional<int64_t> expert;
  ExpertProjection projection = ExpertProjection::kGate;
  ExpertTensorKind kind = ExpertTensorKind::kWeight;

  bool operator==(const ExpertTensorRef&) const = default;
};

// If `tensor_name` is a routed-expert tensor in one of the layouts above,
// returns which; otherwise nullopt (router gate, e_score_correction_bias,
// shared experts, attention, malformed names such as "experts.01" or indices
// over 9 digits). Works without a config: both naming schemes are recognised.
std::optional<ExpertTensorRef> ParseExpertTensorName(absl::string_view tensor_name);

// The per-expert hub name (with the "model." prefix) that a checkpoint of
// `architecture` uses for expert `expert` of `layer`, e.g.
// "model.layers.3.block_sparse_moe.experts.7.w1.weight" for mixtral's gate.
// `projection` must not be kGateUp (per-expert layouts store gate and up apart).
std::string ExpertTensorName(Architecture architecture, int64_t layer, int64_t expert,
                             ExpertProjection projection,
                             ExpertTensorKind kind = ExpertTensorKind::kWeight);

}  // namespace premoe::checkpoint
