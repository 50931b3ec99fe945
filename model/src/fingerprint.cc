#include "premoe/model/fingerprint.h"

#include <ATen/ATen.h>

#include <span>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "premoe/common/hash.h"

namespace premoe::model {

absl::StatusOr<std::string> ModelFingerprint(const Engine& engine) {
  const checkpoint::ModelConfig& c = engine.config();
  common::Hasher h;
  h.UpdateField(absl::StrCat(
      "arch=", checkpoint::ModelTypeName(c.architecture), ";layers=", c.num_hidden_layers,
      ";hidden=", c.hidden_size, ";vocab=", c.vocab_size, ";experts=", c.num_routed_experts,
      ";top_k=", c.num_experts_per_tok, ";moe_intermediate=", c.moe_intermediate_size));
  bool any = false;
  for (const auto& [name, t] : engine.Parameters()) {
    if (!absl::EndsWith(name, ".moe.gate")) continue;
    if (t.size(0) != c.num_routed_experts) {
      return absl::FailedPreconditionError(
          "a reduced model cannot be fingerprinted: it does not hold the pruned experts' gate "
          "rows");
    }
    at::Tensor g = t.detach().to(at::kCPU, at::kFloat).contiguous();
    h.UpdateField(name);
    h.Update(std::span<const uint8_t>(static_cast<const uint8_t*>(g.data_ptr()), g.nbytes()));
    any = true;
  }
  if (!any) return absl::InvalidArgumentError("the model has no router gates to fingerprint");
  return h.HexDigest();
}

}  // namespace premoe::model
