#include "premoe/checkpoint/expert_tensors.h"

#include "absl/strings/str_cat.h"
#include "names.h"

namespace premoe::checkpoint {
namespace internal {

// Non-negative decimal without leading zeros (HF writes str(int)), at most 9
// digits so it fits any int. Consumes it from the front of `s`.
std::optional<int64_t> ConsumeIndex(absl::string_view& s) {
  size_t n = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9') ++n;
  if (n == 0 || n > 9 || (n > 1 && s[0] == '0')) return std::nullopt;
  int64_t value = 0;
  for (size_t i = 0; i < n; ++i) value = value * 10 + (s[i] - '0');
  s.remove_prefix(n);
  return value;
}

}  // namespace internal

namespace {

bool ConsumePrefix(absl::string_view& s, absl::string_view prefix) {
  if (s.substr(0, prefix.size()) != prefix) return false;
  s.remove_prefix(prefix.size());
  return true;
}

using internal::ConsumeIndex;

}  // namespace

std::optional<ExpertTensorRef> ParseExpertTensorName(absl::string_view name) {
  absl::string_view s = name;
  ConsumePrefix(s, "model.");
  if (!ConsumePrefix(s, "layers.")) return std::nullopt;
  ExpertTensorRef ref;
  const std::optional<int64_t> layer = ConsumeIndex(s);
  if (!layer.has_value()) return std::nullopt;
  ref.layer = *layer;

  bool mixtral_names = false;
  if (ConsumePrefix(s, ".block_sparse_moe.experts.")) {
    mixtral_names = true;
  } else if (!ConsumePrefix(s, ".mlp.experts.")) {
    return std::nullopt;
  }

  if (s.empty() || s[0] < '0' || s[0] > '9') {
    // Fused parameters exist only under mlp.experts (transformers renames
    // mixtral's block_sparse_moe on load).
    if (mixtral_names) return std::nullopt;
    static constexpr struct {
      absl::string_view suffix;
      ExpertProjection projection;
      ExpertTensorKind kind;
    } kFused[] = {
        {"gate_up_proj", ExpertProjection::kGateUp, ExpertTensorKind::kWeight},
        {"down_proj", ExpertProjection::kDown, ExpertTensorKind::kWeight},
        {"gate_up_proj_scale_inv", ExpertProjection::kGateUp, ExpertTensorKind::kWeightScaleInv},
        {"down_proj_scale_inv", ExpertProjection::kDown, ExpertTensorKind::kWeightScaleInv},
    };
    for (const auto& f : kFused) {
      if (s == f.suffix) {
        ref.projection = f.projection;
        ref.kind = f.kind;
        return ref;
      }
    }
    return std::nullopt;
  }

  ref.expert = ConsumeIndex(s);
  if (!ref.expert.has_value() || !ConsumePrefix(s, ".")) return std::nullopt;
  static constexpr struct {
    absl::string_view name;
    ExpertProjection projection;
    bool mixtral;
  } kProjections[] = {
      {"gate_proj", ExpertProjection::kGate, false}, {"up_proj", ExpertProjection::kUp, false},
      {"down_proj", ExpertProjection::kDown, false}, {"w1", ExpertProjection::kGate, true},
      {"w3", ExpertProjection::kUp, true},           {"w2", ExpertProjection::kDown, true},
  };
  bool matched = false;
  for (const auto& p : kProjections) {
    if (p.mixtral == mixtral_names && ConsumePrefix(s, p.name)) {
      ref.projection = p.projection;
      matched = true;
      break;
    }
  }
  if (!matched) return std::nullopt;
  if (s == ".weight") {
    ref.kind = ExpertTensorKind::kWeight;
  } else if (s == ".weight_scale_inv") {
    ref.kind = ExpertTensorKind::kWeightScaleInv;
  } else {
    return std::nullopt;
  }
  return ref;
}

std::string ExpertTensorName(Architecture architecture, int64_t layer, int64_t expert,
                             ExpertProjection projection, ExpertTensorKind kind) {
  const bool mixtral = architecture == Architecture::kMixtral;
  absl::string_view proj;
  switch (projection) {
    case ExpertProjection::kGate:
      proj = mixtral ? "w1" : "gate_proj";
      break;
    case ExpertProjection::kUp:
      proj = mixtral ? "w3" : "up_proj";
      break;
    case ExpertProjection::kDown:
      proj = mixtral ? "w2" : "down_proj";
      break;
    case ExpertProjection::kGateUp:
      return "";
  }
  return absl::StrCat("model.layers.", layer, mixtral ? ".block_sparse_moe" : ".mlp", ".experts.",
                      expert, ".", proj,
                      kind == ExpertTensorKind::kWeight ? ".weight" : ".weight_scale_inv");
}

}  // namespace premoe::checkpoint
