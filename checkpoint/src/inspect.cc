#include "premoe/checkpoint/inspect.h"

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "names.h"
#include "nlohmann/json.hpp"
#include "premoe/checkpoint/budget.h"
#include "premoe/checkpoint/expert_tensors.h"
#include "premoe/checkpoint/quant.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"

namespace premoe::checkpoint {
namespace {

// A bytes or coverage budget: its memory is not the checkpoint's to say.
absl::Status NotUniform(absl::string_view text) {
  return absl::InvalidArgumentError(absl::StrCat(
      "budget \"", absl::CHexEscape(text),
      "\": inspect estimates the memory of K/M and N% budgets; how many experts a bytes or "
      "coverage budget keeps in each layer depends on a pattern's scores (see premoe select)"));
}

using internal::ConsumeIndex;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// The "_scale_inv" companions of block-wise FP8 weights carry no parameters
// of their own: they are bytes of the weight they scale.
bool IsScaleTensor(absl::string_view name) { return absl::EndsWith(name, "_scale_inv"); }

int64_t ParamsOf(const TensorView& t) { return IsScaleTensor(t.name) ? 0 : t.numel(); }
int64_t BytesOf(const TensorView& t) { return static_cast<int64_t>(t.bytes.size()); }

// What a non-expert tensor is for, by its name (see WeightTally).
enum class Category {
  kEmbeddings,
  kAttention,
  kNorms,
  kDenseMlp,
  kSharedExperts,
  kRouters,
  kOther
};

struct NamePlace {
  std::optional<int64_t> layer;
  // The part after "layers.{l}." (or the whole name, "model." stripped).
  absl::string_view rest;
};

NamePlace PlaceOf(absl::string_view name) {
  NamePlace place;
  absl::string_view s = name;
  absl::ConsumePrefix(&s, "model.");
  place.rest = s;
  if (absl::ConsumePrefix(&s, "layers.")) {
    absl::string_view t = s;
    if (const std::optional<int64_t> l = ConsumeIndex(t);
        l.has_value() && !t.empty() && t[0] == '.') {
      place.layer = *l;
      place.rest = t.substr(1);
    }
  }
  return place;
}

// Whether `rest` (after layers.{l}.) is inside the layer's MLP block, and if
// so the part after "mlp." / "block_sparse_moe.".
std::optional<absl::string_view> MlpPart(absl::string_view rest) {
  if (absl::ConsumePrefix(&rest, "mlp.") || absl::ConsumePrefix(&rest, "block_sparse_moe.")) {
    return rest;
  }
  return std::nullopt;
}

Category Categorize(const NamePlace& place, bool moe_layer) {
  if (!place.layer.has_value()) {
    // lm_head sits outside "model.", embed_tokens and norm inside it; both
    // spellings reach here with "model." already stripped.
    if (absl::StartsWith(place.rest, "embed_tokens.") || absl::StartsWith(place.rest, "lm_head.")) {
      return Category::kEmbeddings;
    }
    if (absl::StartsWith(place.rest, "norm.")) return Category::kNorms;
    return Category::kOther;
  }
  const absl::string_view rest = place.rest;
  if (absl::StartsWith(rest, "self_attn.")) return Category::kAttention;
  if (const std::optional<absl::string_view> mlp = MlpPart(rest); mlp.has_value()) {
    if (!moe_layer) return Category::kDenseMlp;
    if (absl::StartsWith(*mlp, "gate.")) return Category::kRouters;
    if (absl::StartsWith(*mlp, "shared_expert")) return Category::kSharedExperts;
    return Category::kOther;
  }
  const absl::string_view module = rest.substr(0, rest.find('.'));
  if (absl::StrContains(module, "norm")) return Category::kNorms;
  return Category::kOther;
}

void AddTo(WeightTally& tally, Category category, int64_t n) {
  switch (category) {
    case Category::kEmbeddings:
      tally.embeddings += n;
      break;
    case Category::kAttention:
      tally.attention += n;
      break;
    case Category::kNorms:
      tally.norms += n;
      break;
    case Category::kDenseMlp:
      tally.dense_mlp += n;
      break;
    case Category::kSharedExperts:
      tally.shared_experts += n;
      break;
    case Category::kRouters:
      tally.routers += n;
      break;
    case Category::kOther:
      tally.other += n;
      break;
  }
  tally.non_expert += n;
  tally.total += n;
}

// ---- Routed experts of one MoE layer ---------------------------------------

// Slot of a per-expert tensor within its expert: projection x kind.
constexpr int kNumSlots = 8;
using Slots = std::array<const TensorView*, kNumSlots>;
int SlotOf(ExpertProjection projection, ExpertTensorKind kind) {
  return static_cast<int>(projection) * 2 + (kind == ExpertTensorKind::kWeight ? 0 : 1);
}

struct LayerExperts {
  std::optional<ExpertLayout> layout;
  std::string first_name;  // the tensor that fixed the layout
  // kPerExpert: expert -> slots; kFused: 0 -> slots. A map, not a vector of
  // num_routed_experts, because a config may claim up to 2^31 experts and the
  // memory must follow what the checkpoint holds.
  absl::flat_hash_map<int64_t, Slots> tensors;
};

absl::Status Mismatch(absl::string_view message) { return absl::FailedPreconditionError(message); }

std::string Quoted(absl::string_view name) { return absl::StrCat("\"", name, "\""); }

// Checks one MoE layer's experts against the config and measures one expert.
absl::StatusOr<MoeLayerSummary> SummarizeLayer(const ModelConfig& config, int64_t layer,
                                               const LayerExperts& experts) {
  const int64_t n = config.num_routed_experts;
  const int64_t h = config.hidden_size;
  const int64_t i = config.moe_intermediate_size;
  MoeLayerSummary out;
  out.layer = layer;
  out.num_experts = n;
  if (!experts.layout.has_value()) {
    return Mismatch(absl::StrCat(
        "config.json makes layer ", layer, " a MoE layer with ", n,
        " routed experts, but the checkpoint has no routed-expert tensor for it (expected e.g. ",
        Quoted(ExpertTensorName(config.architecture, layer, 0, ExpertProjection::kGate)), ")"));
  }
  out.layout = *experts.layout;
  static constexpr Slots kNone = {};
  auto slots_of = [&](int64_t e) -> const Slots& {
    const auto it = experts.tensors.find(e);
    return it == experts.tensors.end() ? kNone : it->second;
  };
  const std::string dims = absl::StrCat("(hidden_size ", h, ", moe_intermediate_size ", i, ")");

  if (out.layout == ExpertLayout::kFused) {
    const Slots& slots = slots_of(0);
    int64_t params = 0, bytes = 0;
    for (ExpertProjection p : {ExpertProjection::kGateUp, ExpertProjection::kDown}) {
      const TensorView* weight = slots[SlotOf(p, ExpertTensorKind::kWeight)];
      const absl::string_view proj = p == ExpertProjection::kGateUp ? "gate_up_proj" : "down_proj";
      if (weight == nullptr) {
        return Mismatch(
            absl::StrCat("layer ", layer, " stores its experts fused (", Quoted(experts.first_name),
                         ") but has no tensor ",
                         Quoted(absl::StrCat("model.layers.", layer, ".mlp.experts.", proj))));
      }
      const std::vector<int64_t> expected = p == ExpertProjection::kGateUp
                                                ? std::vector<int64_t>{n, 2 * i, h}
                                                : std::vector<int64_t>{n, h, i};
      if (weight->shape != expected) {
        return Mismatch(absl::StrCat("tensor ", Quoted(weight->name), " has shape ",
                                     ShapeString(weight->shape), " but config.json gives ",
                                     ShapeString(expected), " for ", n, " experts ", dims));
      }
      const TensorView* scale = slots[SlotOf(p, ExpertTensorKind::kWeightScaleInv)];
      if (scale != nullptr && (scale->shape.empty() || scale->shape[0] != n)) {
        return Mismatch(absl::StrCat("tensor ", Quoted(scale->name), " has shape ",
                                     ShapeString(scale->shape), " but should hold ", n,
                                     " experts along its first dimension"));
      }
      for (const TensorView* t : {weight, scale}) {
        if (t == nullptr) continue;
        params += ParamsOf(*t);
        bytes += BytesOf(*t);
      }
    }
    // Dimension 0 is n for every tensor, so both divide exactly.
    out.params_per_expert = params / n;
    out.bytes_per_expert = bytes / n;
    return out;
  }

  // Per-expert: every expert has gate, up and down weights of the config's
  // shapes, and all experts have the same tensors (dtypes, shapes, scales).
  const Slots& first = slots_of(0);
  for (int64_t e = 0; e < n; ++e) {
    const Slots& slots = slots_of(e);
    for (ExpertProjection p :
         {ExpertProjection::kGate, ExpertProjection::kUp, ExpertProjection::kDown}) {
      const TensorView* weight = slots[SlotOf(p, ExpertTensorKind::kWeight)];
      if (weight == nullptr) {
        return Mismatch(absl::StrCat("layer ", layer, " is missing routed expert ", e, " of ", n,
                                     ": no tensor ",
                                     Quoted(ExpertTensorName(config.architecture, layer, e, p))));
      }
      const std::vector<int64_t> expected =
          p == ExpertProjection::kDown ? std::vector<int64_t>{h, i} : std::vector<int64_t>{i, h};
      if (weight->shape != expected) {
        return Mismatch(absl::StrCat("tensor ", Quoted(weight->name), " has shape ",
                                     ShapeString(weight->shape), " but config.json gives ",
                                     ShapeString(expected), " ", dims));
      }
    }
    if (e == 0) continue;
    for (int slot = 0; slot < kNumSlots; ++slot) {
      const TensorView* mine = slots[slot];
      const TensorView* ref = first[slot];
      if (mine == nullptr && ref == nullptr) continue;
      if (mine == nullptr) {
        return Mismatch(absl::StrCat("layer ", layer, ": expert ", e, " lacks the counterpart of ",
                                     Quoted(ref->name), " that expert 0 has"));
      }
      if (ref == nullptr) {
        return Mismatch(absl::StrCat("tensor ", Quoted(mine->name),
                                     " has no counterpart in expert 0 of layer ", layer,
                                     ": experts of a layer must have the same tensors"));
      }
      if (mine->dtype != ref->dtype || mine->shape != ref->shape) {
        return Mismatch(absl::StrCat("tensor ", Quoted(mine->name), " is ", DTypeName(mine->dtype),
                                     " ", ShapeString(mine->shape), " but ", Quoted(ref->name),
                                     " is ", DTypeName(ref->dtype), " ", ShapeString(ref->shape),
                                     ": experts of a layer must be alike"));
      }
    }
  }
  for (const TensorView* t : first) {
    if (t == nullptr) continue;
    out.params_per_expert += ParamsOf(*t);
    out.bytes_per_expert += BytesOf(*t);
  }
  return out;
}

// Everything after the files are open: their errors already name the file,
// while what this finds is prefixed with the model directory by the caller.
absl::StatusOr<ModelSummary> Analyze(const std::string& model_dir, ModelConfig config,
                                     const Checkpoint* checkpoint,
                                     const std::vector<Budget>& budgets) {
  ModelSummary s;
  s.model_dir = model_dir;
  s.config = std::move(config);
  const ModelConfig& c = s.config;

  s.architecture = std::string(ModelTypeName(c.architecture));
  s.num_layers = c.num_hidden_layers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    (c.IsMoeLayer(static_cast<int>(l)) ? s.moe_layers : s.dense_layers).push_back(l);
  }
  // The expert fields mean nothing without a MoE layer (qwen with
  // num_experts 0); zero them rather than report the config's leftovers.
  if (!s.moe_layers.empty()) {
    s.num_routed_experts = c.num_routed_experts;
    s.top_k = c.num_experts_per_tok;
    s.moe_intermediate_size = c.moe_intermediate_size;
    s.shared_expert_intermediate_size = c.SharedExpertIntermediateSize();
    if (c.architecture == Architecture::kDeepseekV2 ||
        c.architecture == Architecture::kDeepseekV3) {
      s.num_shared_experts = c.n_shared_experts;
    } else {
      s.num_shared_experts = s.shared_expert_intermediate_size > 0 ? 1 : 0;
    }
  }
  s.hidden_size = c.hidden_size;
  s.vocab_size = c.vocab_size;
  s.sharded = checkpoint->sharded();
  s.files = checkpoint->shard_files();
  s.num_tensors = static_cast<int64_t>(checkpoint->names().size());

  const int64_t num_layers = c.num_hidden_layers;
  const int64_t last_mtp_layer = num_layers + c.num_nextn_predict_layers;  // exclusive
  std::map<int64_t, LayerExperts> experts;  // MoE layer -> its expert tensors
  for (int64_t l : s.moe_layers) experts[l];
  std::vector<bool> layer_seen(static_cast<size_t>(num_layers), false);
  std::set<int64_t> mtp_layers;

  for (absl::string_view name : checkpoint->names()) {
    const TensorView& t = *checkpoint->Find(name);
    s.bytes_by_dtype[std::string(DTypeName(t.dtype))] += BytesOf(t);
    const NamePlace place = PlaceOf(name);
    if (place.layer.has_value() && *place.layer >= num_layers) {
      if (*place.layer >= last_mtp_layer) {
        return Mismatch(
            absl::StrCat("tensor ", Quoted(name), " belongs to layer ", *place.layer,
                         " but config.json has num_hidden_layers ", num_layers,
                         c.num_nextn_predict_layers > 0
                             ? absl::StrCat(" and ", c.num_nextn_predict_layers, " MTP layer(s)")
                             : ""));
      }
      mtp_layers.insert(*place.layer);
      s.params.mtp += ParamsOf(t);
      s.params.total += ParamsOf(t);
      s.bytes.mtp += BytesOf(t);
      s.bytes.total += BytesOf(t);
      continue;
    }
    if (place.layer.has_value()) layer_seen[*place.layer] = true;
    const bool moe_layer = place.layer.has_value() && c.IsMoeLayer(static_cast<int>(*place.layer));

    if (const std::optional<ExpertTensorRef> ref = ParseExpertTensorName(name); ref.has_value()) {
      if (!moe_layer) {
        return Mismatch(absl::StrCat("tensor ", Quoted(name),
                                     " is a routed-expert tensor but config.json makes layer ",
                                     ref->layer, " dense"));
      }
      LayerExperts& layer = experts[ref->layer];
      const ExpertLayout layout =
          ref->expert.has_value() ? ExpertLayout::kPerExpert : ExpertLayout::kFused;
      if (layer.layout.has_value() && *layer.layout != layout) {
        return Mismatch(absl::StrCat("tensor ", Quoted(name), " is stored ",
                                     ExpertLayoutName(layout), " but ", Quoted(layer.first_name),
                                     " of the same layer is ", ExpertLayoutName(*layer.layout)));
      }
      if (!layer.layout.has_value()) {
        layer.layout = layout;
        layer.first_name = std::string(name);
      }
      int64_t index = 0;
      if (ref->expert.has_value()) {
        if (*ref->expert >= c.num_routed_experts) {
          return Mismatch(absl::StrCat("tensor ", Quoted(name), " is routed expert ", *ref->expert,
                                       " but config.json has ", c.num_routed_experts,
                                       " routed experts per MoE layer"));
        }
        index = *ref->expert;
      }
      // A name maps to one (layer, expert, slot), and names are unique, so a
      // slot is never filled twice.
      layer.tensors[index][SlotOf(ref->projection, ref->kind)] = &t;
      s.params.routed_experts += ParamsOf(t);
      s.params.total += ParamsOf(t);
      s.bytes.routed_experts += BytesOf(t);
      s.bytes.total += BytesOf(t);
      continue;
    }

    const Category category = Categorize(place, moe_layer);
    if (category == Category::kRouters && absl::EndsWith(name, "gate.weight") &&
        (t.shape.size() != 2 || t.shape[0] != c.num_routed_experts)) {
      return Mismatch(absl::StrCat("router ", Quoted(name), " has shape ", ShapeString(t.shape),
                                   " but config.json has ", c.num_routed_experts,
                                   " routed experts and hidden_size ", c.hidden_size));
    }
    if (category == Category::kEmbeddings && absl::EndsWith(name, "embed_tokens.weight") &&
        t.shape != std::vector<int64_t>{c.vocab_size, c.hidden_size}) {
      return Mismatch(absl::StrCat("tensor ", Quoted(name), " has shape ", ShapeString(t.shape),
                                   " but config.json gives [vocab_size, hidden_size] = [",
                                   c.vocab_size, ", ", c.hidden_size, "]"));
    }
    AddTo(s.params, category, ParamsOf(t));
    AddTo(s.bytes, category, BytesOf(t));
  }

  for (int64_t l = 0; l < num_layers; ++l) {
    if (!layer_seen[static_cast<size_t>(l)]) {
      return Mismatch(absl::StrCat("config.json has num_hidden_layers ", num_layers,
                                   " but the checkpoint has no tensor of layer ", l,
                                   " (e.g. model.layers.", l, ".self_attn.*)"));
    }
  }
  for (const auto& [layer, layer_experts] : experts) {
    ASSIGN_OR_RETURN(MoeLayerSummary summary, SummarizeLayer(c, layer, layer_experts));
    s.expert_layers.push_back(summary);
  }
  s.mtp_layers.assign(mtp_layers.begin(), mtp_layers.end());
  s.full_weight_bytes = s.bytes.non_expert + s.bytes.routed_experts;

  if (budgets.empty()) {
    for (const ExpertBudget& b : DefaultBudgets(s)) {
      ASSIGN_OR_RETURN(BudgetMemory memory, EvaluateBudget(s, b));
      s.budgets.push_back(memory);
    }
  } else {
    for (const Budget& b : budgets) {
      ASSIGN_OR_RETURN(const ExpertBudget uniform, UniformBudget(s, b));
      ASSIGN_OR_RETURN(BudgetMemory memory, EvaluateBudget(s, uniform));
      memory.asked = b.ToString();
      s.budgets.push_back(memory);
    }
  }
  PREMOE_LOG_DEBUG("inspect %s: %d tensors in %d file(s), %d MoE layers", model_dir, s.num_tensors,
                   s.files.size(), s.moe_layers.size());
  return s;
}

// ---- Formatting ------------------------------------------------------------

// 1234567 -> "1,234,567".
std::string Grouped(int64_t n) {
  std::string digits = absl::StrCat(n < 0 ? -n : n);
  std::string out;
  for (size_t k = 0; k < digits.size(); ++k) {
    if (k > 0 && (digits.size() - k) % 3 == 0) out.push_back(',');
    out.push_back(digits[k]);
  }
  return n < 0 ? "-" + out : out;
}

// Billions when there are at least a billion, else millions: the units model
// sizes are quoted in.
std::string RoundedParams(int64_t n) {
  const double d = static_cast<double>(n);
  return n >= 1'000'000'000 ? absl::StrFormat("%.2fB", d / 1e9) : absl::StrFormat("%.2fM", d / 1e6);
}

std::string RoundedBytes(int64_t n) {
  const double d = static_cast<double>(n);
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  return d >= kGiB ? absl::StrFormat("%.2f GiB", d / kGiB)
                   : absl::StrFormat("%.2f MiB", d / (1024.0 * 1024.0));
}

std::string Rounded(int64_t n, bool bytes) { return bytes ? RoundedBytes(n) : RoundedParams(n); }

std::string Percent(int64_t part, int64_t whole) {
  if (whole <= 0) return "-";
  return absl::StrFormat("%.1f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

// [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8".
std::string LayerRanges(const std::vector<int64_t>& layers) {
  std::vector<std::string> parts;
  size_t k = 0;
  while (k < layers.size()) {
    size_t end = k;
    while (end + 1 < layers.size() && layers[end + 1] == layers[end] + 1) ++end;
    parts.push_back(end == k ? absl::StrCat(layers[k]) : absl::StrCat(layers[k], "-", layers[end]));
    k = end + 1;
  }
  return absl::StrJoin(parts, ", ");
}

// "3 MoE (3-60)" or "0 dense".
std::string CountedLayers(const std::vector<int64_t>& layers, absl::string_view kind) {
  std::string s = absl::StrCat(layers.size(), " ", kind);
  if (!layers.empty()) absl::StrAppend(&s, " (", LayerRanges(layers), ")");
  return s;
}

// Rows of the parameter and byte tables: label, rounded, exact, share.
constexpr absl::string_view kRowFormat = "  %-30s %10s %19s %7s\n";

void AppendTally(std::string& out, absl::string_view title, const WeightTally& t,
                 const std::vector<MoeLayerSummary>& expert_layers, bool bytes) {
  absl::StrAppendFormat(&out, "%-32s %10s %19s %7s\n", title, "", bytes ? "bytes" : "count",
                        "share");
  auto row = [&](absl::string_view label, int64_t n, bool always) {
    if (n == 0 && !always) return;
    absl::StrAppendFormat(&out, kRowFormat, label, Rounded(n, bytes), Grouped(n),
                          Percent(n, t.total));
  };
  row("total", t.total, true);
  row("routed experts", t.routed_experts, true);
  row("everything else", t.non_expert, true);
  row("  embeddings", t.embeddings, true);
  row("  attention", t.attention, true);
  row("  norms", t.norms, true);
  row("  dense MLPs", t.dense_mlp, false);
  row("  shared experts", t.shared_experts, false);
  row("  routers", t.routers, true);
  row("  other", t.other, false);
  row("MTP layers (not loaded)", t.mtp, false);
  // One expert's size: one row when every MoE layer agrees (all the
  // architectures premoe serves), else one per distinct size.
  std::map<int64_t, std::vector<int64_t>> by_size;
  for (const MoeLayerSummary& l : expert_layers) {
    by_size[bytes ? l.bytes_per_expert : l.params_per_expert].push_back(l.layer);
  }
  for (const auto& [size, layers] : by_size) {
    const std::string label = by_size.size() == 1
                                  ? std::string("one routed expert")
                                  : absl::StrCat("one expert, layers ", LayerRanges(layers));
    absl::StrAppendFormat(&out, "  %-30s %10s %19s\n", label, Rounded(size, bytes), Grouped(size));
  }
}

}  // namespace

absl::string_view ExpertLayoutName(ExpertLayout layout) {
  return layout == ExpertLayout::kFused ? "fused" : "per_expert";
}

std::string ExpertBudget::ToString() const { return absl::StrCat(top_k, "/", kept_experts); }

absl::StatusOr<ExpertBudget> UniformBudget(const ModelSummary& summary, const Budget& budget) {
  if (!budget.IsUniform()) {
    return NotUniform(budget.ToString());
  }
  ASSIGN_OR_RETURN(const int64_t kept,
                   budget.UniformCount(summary.num_routed_experts, summary.top_k));
  return ExpertBudget{.top_k = budget.kind == Budget::Kind::kUniform ? budget.top_k : summary.top_k,
                      .kept_experts = kept};
}

std::vector<ExpertBudget> DefaultBudgets(const ModelSummary& summary) {
  std::vector<ExpertBudget> budgets;
  if (summary.moe_layers.empty() || summary.top_k < 1) return budgets;
  for (int64_t m = summary.num_routed_experts; m >= summary.top_k; m /= 2) {
    budgets.push_back({summary.top_k, m});
  }
  return budgets;
}

absl::Status ValidateBudget(const ModelSummary& summary, const ExpertBudget& budget) {
  const std::string what = absl::StrCat("budget \"", budget.ToString(), "\": ");
  auto refuse = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(what, why));
  };
  if (summary.moe_layers.empty() || summary.num_routed_experts < 1) {
    return refuse("the model has no MoE layer, so there are no experts to keep");
  }
  if (budget.top_k < 1) return refuse("top-k K must be at least 1");
  if (budget.top_k > summary.top_k) {
    return refuse(absl::StrCat("top-k K = ", budget.top_k, " exceeds the model's top-k ",
                               summary.top_k, " (K may only be lowered)"));
  }
  if (budget.kept_experts > summary.num_routed_experts) {
    return refuse(absl::StrCat("M = ", budget.kept_experts, " kept experts exceeds the ",
                               summary.num_routed_experts, " routed experts per MoE layer"));
  }
  if (budget.kept_experts < budget.top_k) {
    return refuse(absl::StrCat("M = ", budget.kept_experts,
                               " kept experts is fewer than the top-k K = ", budget.top_k,
                               " each token is routed to"));
  }
  return absl::OkStatus();
}

namespace {

// The held figures (see inspect.h) of every budget of `s`.
absl::Status AddHeldMemory(const std::string& dtype, const std::vector<QuantFormat>& quants,
                           ModelSummary& s) {
  const int64_t element = dtype == "fp32" ? 4 : 2;
  s.held_dtype = dtype;
  // Routers stay fp32 whatever the compute dtype; the rest takes its size.
  s.held_non_expert_bytes = s.params.non_expert * element + s.params.routers * (4 - element);
  s.held_expert_bytes.clear();
  for (BudgetMemory& b : s.budgets) b.held_bytes.clear();
  for (const QuantFormat& q : quants) {
    int64_t expert = 0;
    if (!s.expert_layers.empty()) {
      ASSIGN_OR_RETURN(const ExpertSlotLayout layout,
                       ExpertSlotLayout::For(q, s.hidden_size, s.moe_intermediate_size, element));
      expert = layout.bytes;
    }
    s.held_expert_bytes.emplace_back(q.ToString(), expert);
    for (BudgetMemory& b : s.budgets) {
      b.held_bytes.emplace_back(
          q.ToString(), s.held_non_expert_bytes + static_cast<int64_t>(s.expert_layers.size()) *
                                                      b.budget.kept_experts * expert);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<BudgetMemory> EvaluateBudget(const ModelSummary& summary,
                                            const ExpertBudget& budget) {
  RETURN_IF_ERROR(ValidateBudget(summary, budget));
  BudgetMemory memory;
  memory.budget = budget;
  memory.asked = budget.ToString();
  memory.kept_fraction =
      static_cast<double>(budget.kept_experts) / static_cast<double>(summary.num_routed_experts);
  memory.weight_bytes = summary.bytes.non_expert;
  for (const MoeLayerSummary& layer : summary.expert_layers) {
    memory.weight_bytes += budget.kept_experts * layer.bytes_per_expert;
  }
  memory.fraction_of_full = summary.full_weight_bytes > 0
                                ? static_cast<double>(memory.weight_bytes) /
                                      static_cast<double>(summary.full_weight_bytes)
                                : 0.0;
  return memory;
}

absl::StatusOr<ModelSummary> SummarizeModel(const std::string& model_dir,
                                            const InspectOptions& options) {
  // Budget syntax needs no model: refuse a typo before mapping any file.
  std::vector<Budget> budgets;
  for (const std::string& text : options.budgets) {
    ASSIGN_OR_RETURN(Budget budget, Budget::Parse(text));
    if (!budget.IsUniform()) {
      // Refused before any file is opened, like a typo.
      return NotUniform(text);
    }
    budgets.push_back(budget);
  }
  if (options.dtype != "bf16" && options.dtype != "fp32") {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype must be \"bf16\" or \"fp32\", got \"", options.dtype, "\""));
  }
  std::vector<QuantFormat> quants;
  for (const std::string& text : options.quants) {
    ASSIGN_OR_RETURN(QuantFormat q, QuantFormat::Parse(text));
    quants.push_back(q);
  }
  if (quants.empty()) quants.push_back(QuantFormat{});
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<const Checkpoint> checkpoint, Checkpoint::Open(model_dir));
  ASSIGN_OR_RETURN(ModelSummary s, common::WithContext(Analyze(model_dir, std::move(config),
                                                               checkpoint.get(), budgets),
                                                       model_dir));
  RETURN_IF_ERROR(common::WithContext(AddHeldMemory(options.dtype, quants, s), model_dir));
  return s;
}

std::string FormatModelSummary(const ModelSummary& s) {
  std::string out;
  absl::StrAppendFormat(&out, "model         %s\n", s.model_dir);
  absl::StrAppendFormat(&out, "architecture  %s\n", s.config.Summary());
  std::vector<std::string> dtypes;
  for (const auto& [dtype, n] : s.bytes_by_dtype) dtypes.push_back(dtype);
  absl::StrAppendFormat(&out, "checkpoint    %d file%s%s, %d tensors, %s\n", s.files.size(),
                        s.files.size() == 1 ? "" : "s", s.sharded ? " (sharded)" : "",
                        s.num_tensors, absl::StrJoin(dtypes, ", "));
  absl::StrAppendFormat(&out, "layers        %d: %s, %s", s.num_layers,
                        CountedLayers(s.moe_layers, "MoE"), CountedLayers(s.dense_layers, "dense"));
  if (!s.mtp_layers.empty()) {
    absl::StrAppendFormat(&out, "; MTP %s (not loaded)", LayerRanges(s.mtp_layers));
  }
  out.push_back('\n');
  if (s.moe_layers.empty()) {
    out += "experts       none: every layer is dense\n";
  } else {
    std::string shared = "no shared expert";
    if (s.num_shared_experts > 0) {
      shared = absl::StrFormat("%d shared (total width %d)", s.num_shared_experts,
                               s.shared_expert_intermediate_size);
    }
    absl::StrAppendFormat(&out, "experts       %d routed per MoE layer (width %d), top-%d, %s\n",
                          s.num_routed_experts, s.moe_intermediate_size, s.top_k, shared);
  }
  absl::StrAppendFormat(&out, "dimensions    hidden %d, vocab %d\n\n", s.hidden_size, s.vocab_size);
  AppendTally(out, "parameters", s.params, s.expert_layers, /*bytes=*/false);
  out.push_back('\n');
  AppendTally(out, "bytes on disk", s.bytes, s.expert_layers, /*bytes=*/true);

  out +=
      "\nweight memory at expert budgets (K/M: top-K routing over M kept experts per MoE "
      "layer)\n";
  if (s.budgets.empty()) {
    out += "  none: the model has no routed experts\n";
    return out;
  }
  constexpr absl::string_view kBudgetRow = "  %-12s %7s %12s %19s %8s\n";
  absl::StrAppendFormat(&out, kBudgetRow, "budget", "kept", "weights", "bytes", "of full");
  for (const BudgetMemory& b : s.budgets) {
    const std::string name = b.budget.ToString();
    absl::StrAppendFormat(
        &out, kBudgetRow,
        b.asked.empty() || b.asked == name ? name : absl::StrCat(b.asked, " (", name, ")"),
        absl::StrFormat("%.1f%%", 100.0 * b.kept_fraction), RoundedBytes(b.weight_bytes),
        Grouped(b.weight_bytes), absl::StrFormat("%.1f%%", 100.0 * b.fraction_of_full));
  }
  if (s.held_expert_bytes.empty()) return out;
  absl::StrAppendFormat(&out,
                        "\nweight memory as premoe holds it (%s compute, routers fp32; routed "
                        "experts as each format holds them)\n  %-12s",
                        s.held_dtype, "budget");
  for (const auto& [quant, bytes] : s.held_expert_bytes) {
    absl::StrAppendFormat(&out, " %12s", quant);
  }
  absl::StrAppendFormat(&out, "\n  %-12s", "one expert");
  for (const auto& [quant, bytes] : s.held_expert_bytes) {
    absl::StrAppendFormat(&out, " %12s", RoundedBytes(bytes));
  }
  out.push_back('\n');
  for (const BudgetMemory& b : s.budgets) {
    absl::StrAppendFormat(&out, "  %-12s", b.budget.ToString());
    for (const auto& [quant, bytes] : b.held_bytes) {
      absl::StrAppendFormat(&out, " %12s", RoundedBytes(bytes));
    }
    out.push_back('\n');
  }
  return out;
}

std::string ModelSummaryToJson(const ModelSummary& s) {
  using ojson = nlohmann::ordered_json;
  auto tally = [](const WeightTally& t) {
    ojson j = ojson::object();
    j["total"] = t.total;
    j["routed_experts"] = t.routed_experts;
    j["non_expert"] = t.non_expert;
    j["mtp"] = t.mtp;
    j["embeddings"] = t.embeddings;
    j["attention"] = t.attention;
    j["norms"] = t.norms;
    j["dense_mlp"] = t.dense_mlp;
    j["shared_experts"] = t.shared_experts;
    j["routers"] = t.routers;
    j["other"] = t.other;
    return j;
  };
  ojson j = ojson::object();
  j["format_version"] = 1;
  j["model_dir"] = s.model_dir;
  j["architecture"] = s.architecture;
  j["config_summary"] = s.config.Summary();
  j["num_layers"] = s.num_layers;
  j["moe_layers"] = s.moe_layers;
  j["dense_layers"] = s.dense_layers;
  j["mtp_layers"] = s.mtp_layers;
  j["num_routed_experts"] = s.num_routed_experts;
  j["top_k"] = s.top_k;
  j["num_shared_experts"] = s.num_shared_experts;
  j["shared_expert_intermediate_size"] = s.shared_expert_intermediate_size;
  j["moe_intermediate_size"] = s.moe_intermediate_size;
  j["hidden_size"] = s.hidden_size;
  j["vocab_size"] = s.vocab_size;
  ojson checkpoint = ojson::object();
  checkpoint["sharded"] = s.sharded;
  checkpoint["files"] = s.files;
  checkpoint["num_tensors"] = s.num_tensors;
  checkpoint["bytes_by_dtype"] = ojson::object();
  for (const auto& [dtype, n] : s.bytes_by_dtype) checkpoint["bytes_by_dtype"][dtype] = n;
  j["checkpoint"] = std::move(checkpoint);
  j["params"] = tally(s.params);
  j["bytes"] = tally(s.bytes);
  j["expert_layers"] = ojson::array();
  for (const MoeLayerSummary& l : s.expert_layers) {
    ojson layer = ojson::object();
    layer["layer"] = l.layer;
    layer["layout"] = std::string(ExpertLayoutName(l.layout));
    layer["num_experts"] = l.num_experts;
    layer["params_per_expert"] = l.params_per_expert;
    layer["bytes_per_expert"] = l.bytes_per_expert;
    j["expert_layers"].push_back(std::move(layer));
  }
  j["full_weight_bytes"] = s.full_weight_bytes;
  j["budgets"] = ojson::array();
  for (const BudgetMemory& b : s.budgets) {
    ojson budget = ojson::object();
    budget["budget"] = b.budget.ToString();
    budget["asked"] = b.asked.empty() ? b.budget.ToString() : b.asked;
    budget["top_k"] = b.budget.top_k;
    budget["kept_experts"] = b.budget.kept_experts;
    budget["kept_fraction"] = b.kept_fraction;
    budget["weight_bytes"] = b.weight_bytes;
    budget["fraction_of_full"] = b.fraction_of_full;
    budget["held_bytes"] = ojson::object();
    for (const auto& [quant, bytes] : b.held_bytes) budget["held_bytes"][quant] = bytes;
    j["budgets"].push_back(std::move(budget));
  }
  ojson held = ojson::object();
  held["dtype"] = s.held_dtype;
  held["non_expert_bytes"] = s.held_non_expert_bytes;
  held["expert_bytes"] = ojson::object();
  for (const auto& [quant, bytes] : s.held_expert_bytes) held["expert_bytes"][quant] = bytes;
  j["held"] = std::move(held);
  // Paths and tensor-derived strings may hold bytes that are not UTF-8
  // (a model directory's name); dump() would throw on them.
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n";
}

}  // namespace premoe::checkpoint
