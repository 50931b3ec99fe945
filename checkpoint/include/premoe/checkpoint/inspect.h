// What a Mixture-of-Experts checkpoint holds, and how much weight memory it
// needs when each MoE layer keeps only some of its routed experts: the numbers
// behind `premoe inspect` and behind choosing a budget for expert pruning.
//
// SummarizeModel() reads a model directory's config.json and the headers of its
// safetensors checkpoint (one file or a sharded set). It never reads tensor
// data: the files are mapped and only their headers are parsed, so it takes
// the same few milliseconds on a 700 GB DeepSeek-V3 as on a test model.
//
// Counting rules:
//   - A "parameter" is an element of a checkpoint tensor, as transformers'
//     state_dict() holds them: weights, biases, and persistent buffers stored
//     beside them (deepseek_v3's router e_score_correction_bias). FP8
//     companions (any tensor whose name ends in "_scale_inv") are not
//     parameters, but their bytes count wherever their weight's bytes count.
//     A tied lm_head that the file omits is counted once, as in the file.
//   - Bytes are on-disk bytes: numel * the element size of the tensor's
//     safetensors dtype (headers excluded).
//   - Routed experts are the tensors ParseExpertTensorName() recognises, in
//     the per-expert layout (experts.{e}.{gate,up,down}_proj / w1,w3,w2) or the
//     fused one (experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I];
//     one expert is 1/E of each). Everything else is non-expert, split into
//     categories by name (see WeightTally).
//   - Layers at index >= num_hidden_layers, up to num_nextn_predict_layers of
//     them (DeepSeek-V3's multi-token-prediction layer, model.layers.61.*), are
//     counted apart as "mtp": premoe does not run them, so they are on disk
//     but not in any weight-memory figure.
//
// Expert budgets (premoe/checkpoint/budget.h): "K/M" means top-K routing over
// M kept routed experts in every MoE layer (the PreMoe paper's notation: 8/128
// keeps half of DeepSeek-R1's 256 experts and routes each token to 8 of them),
// and "N%" keeps that share of every layer's experts (at least the model's
// top-k) with the model's top-k. Both keep the same count in every layer, so
// their weight memory follows from the headers alone:
//   bytes.non_expert + sum over MoE layers l of M * bytes_per_expert(l),
// and "N/N" with the model's own top-k is the full model (full_weight_bytes).
// Bytes and coverage budgets keep per-layer counts that depend on a
// pattern's scores; inspect refuses them.
//
// Bytes on disk are not what an engine holds: it converts every weight to
// its compute dtype (an FP8 checkpoint served in bf16 holds twice its file's
// bytes) and may hold routed experts quantized. So each budget also gets its
// memory as held (InspectOptions::dtype and ::quants):
//   held_non_expert_bytes + sum over MoE layers of M * held expert bytes,
// where non-expert weights take the compute dtype's element size except the
// routers (and DeepSeek's e_score_correction_bias), held in fp32, and one
// routed expert takes checkpoint::ExpertSlotLayout::For(format, H, I, dtype)
// .bytes (quantized: codes, scales and padding to 64 bytes).
//
// Thread safety: the functions are pure and may be called concurrently;
// ModelSummary is a plain value.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "premoe/checkpoint/budget.h"
#include "premoe/checkpoint/config.h"

namespace premoe::checkpoint {

// How a MoE layer's routed experts are stored.
enum class ExpertLayout {
  kPerExpert,  // one tensor per expert and projection (the hub layout)
  kFused,      // one tensor per projection holding all experts along dim 0
};

// "per_expert" or "fused".
absl::string_view ExpertLayoutName(ExpertLayout layout);

// A uniform expert budget resolved for one model: route each token to
// `top_k` of the `kept_experts` experts kept in every MoE layer.
struct ExpertBudget {
  int64_t top_k = 0;
  int64_t kept_experts = 0;

  // "K/M", a spelling Budget::Parse reads.
  std::string ToString() const;
  bool operator==(const ExpertBudget&) const = default;
};

// Parameter or byte counts of a checkpoint, by what the tensors are for.
// Invariants: total = routed_experts + non_expert + mtp, and
// non_expert = embeddings + attention + norms + dense_mlp + shared_experts +
//              routers + other.
// Categories go by tensor name within layers [0, num_hidden_layers) (the
// "model." prefix optional):
//   embeddings      embed_tokens.*, lm_head.*
//   norms           norm.*, layers.{l}.<anything with "norm" in its name>.*
//                   (input_layernorm, post_attention_layernorm); norms inside
//                   self_attn (q_norm, kv_a_layernorm) count as attention
//   attention       layers.{l}.self_attn.*
//   dense_mlp       layers.{l}.mlp.* of a layer config.json makes dense
//   routers         layers.{l}.{mlp,block_sparse_moe}.gate.* of a MoE layer
//   shared_experts  layers.{l}.mlp.shared_expert*.* (qwen2_moe's shared_expert
//                   and its shared_expert_gate; deepseek's shared_experts)
//   other           anything else (0 for models transformers writes)
struct WeightTally {
  int64_t total = 0;
  int64_t routed_experts = 0;
  int64_t non_expert = 0;
  int64_t mtp = 0;

  int64_t embeddings = 0;
  int64_t attention = 0;
  int64_t norms = 0;
  int64_t dense_mlp = 0;
  int64_t shared_experts = 0;
  int64_t routers = 0;
  int64_t other = 0;

  bool operator==(const WeightTally&) const = default;
};

// The routed experts of one MoE layer.
struct MoeLayerSummary {
  // Decoder layer index.
  int64_t layer = 0;
  ExpertLayout layout = ExpertLayout::kPerExpert;
  // Routed experts in the layer: the config's count, which the checkpoint was
  // checked to hold exactly.
  int64_t num_experts = 0;
  // Parameters of one expert (gate + up + down), scales excluded.
  int64_t params_per_expert = 0;
  // Bytes of one expert, FP8 weight_scale_inv companions included.
  int64_t bytes_per_expert = 0;

  bool operator==(const MoeLayerSummary&) const = default;
};

// The weight memory of one budget.
struct BudgetMemory {
  // The budget as it applies to the model (an "N%" resolved to its K/M).
  ExpertBudget budget;
  // The budget as asked for (Budget::ToString(), e.g. "50%"); for a K/M
  // budget or a default one, budget.ToString().
  std::string asked;
  // kept_experts / num_routed_experts.
  double kept_fraction = 0;
  // bytes.non_expert + sum over MoE layers of kept_experts * bytes_per_expert.
  int64_t weight_bytes = 0;
  // weight_bytes / full_weight_bytes.
  double fraction_of_full = 0;
  // The memory an engine holds for this budget, one entry per format of
  // InspectOptions::quants, in that order: {format, bytes}.
  std::vector<std::pair<std::string, int64_t>> held_bytes;
};

struct ModelSummary {
  // The directory given to SummarizeModel.
  std::string model_dir;
  // config.json as parsed by LoadModelConfig.
  ModelConfig config;

  // ---- Structure (from config.json, cross-checked against the tensors) ------

  // HF model_type, e.g. "qwen3_moe".
  std::string architecture;
  // num_hidden_layers.
  int64_t num_layers = 0;
  // Decoder layers with a sparse MoE block (ModelConfig::IsMoeLayer), and the
  // others, ascending; together they are [0, num_layers).
  std::vector<int64_t> moe_layers;
  std::vector<int64_t> dense_layers;
  // Multi-token-prediction layers present in the checkpoint (indices >=
  // num_layers), ascending; usually empty.
  std::vector<int64_t> mtp_layers;
  // Routed experts per MoE layer (0 when no layer is MoE) and the model's
  // routing top-k (num_experts_per_tok).
  int64_t num_routed_experts = 0;
  int64_t top_k = 0;
  // Shared experts per MoE layer: deepseek n_shared_experts, qwen2_moe 1 when
  // shared_expert_intermediate_size > 0, else 0; and their total MLP width
  // (ModelConfig::SharedExpertIntermediateSize()).
  int64_t num_shared_experts = 0;
  int64_t shared_expert_intermediate_size = 0;
  // Width of one routed expert's MLP.
  int64_t moe_intermediate_size = 0;
  int64_t hidden_size = 0;
  int64_t vocab_size = 0;

  // ---- Checkpoint --------------------------------------------------------

  // Whether it was opened through model.safetensors.index.json.
  bool sharded = false;
  // Paths of the .safetensors files, sorted (Checkpoint::shard_files()).
  std::vector<std::string> files;
  int64_t num_tensors = 0;
  // On-disk bytes per safetensors dtype name ("BF16", "F8_E4M3", ...).
  std::map<std::string, int64_t> bytes_by_dtype;

  // ---- Sizes ---------------------------------------------------------------

  WeightTally params;
  WeightTally bytes;
  // One entry per MoE layer, in layer order.
  std::vector<MoeLayerSummary> expert_layers;
  // The weight memory of the whole model as premoe loads it:
  // bytes.non_expert + bytes.routed_experts (MTP layers excluded).
  int64_t full_weight_bytes = 0;

  // ---- Budgets -------------------------------------------------------------

  // The budgets asked for (InspectOptions::budgets, in that order), or
  // DefaultBudgets().
  std::vector<BudgetMemory> budgets;

  // ---- As an engine holds it (see the file comment) -----------------------

  // InspectOptions::dtype.
  std::string held_dtype;
  // Every weight but the routed experts in the compute dtype, routers fp32.
  int64_t held_non_expert_bytes = 0;
  // Per format of InspectOptions::quants: {format, bytes of one routed
  // expert as held}.
  std::vector<std::pair<std::string, int64_t>> held_expert_bytes;
};

struct InspectOptions {
  // Budgets to evaluate, "K/M" or "N%" (Budget::Parse). Default: empty,
  // meaning DefaultBudgets().
  std::vector<std::string> budgets;
  // The engine's compute dtype for the held figures: "bf16" or "fp32".
  // Default: "bf16".
  std::string dtype = "bf16";
  // Routed expert formats for the held figures (QuantFormat::Parse
  // spellings: "none", "int8", "int4[:gN]"). Default: empty, meaning
  // {"none"}.
  std::vector<std::string> quants;
};

// Summarises the model in `model_dir` (config.json + the checkpoint that
// Checkpoint::Open(model_dir) finds). Reads headers only.
//
// Errors:
//   - those of LoadModelConfig and Checkpoint::Open (NOT_FOUND,
//     INVALID_ARGUMENT for a malformed file), naming the file;
//   - INVALID_ARGUMENT naming the budget for a budget Budget::Parse refuses,
//     or a bytes or coverage budget, and for a dtype or quant spelling
//     that does not parse (all checked before any file is opened), or a
//     budget ValidateBudget refuses or an int4 group that does not divide
//     the expert's dimensions (then prefixed "<model_dir>: ");
//   - FAILED_PRECONDITION "<model_dir>: ..." naming the tensor when the checkpoint does not
//     match config.json: a tensor in a layer >= num_hidden_layers (beyond the
//     MTP layers the config declares); a routed-expert tensor in a layer the
//     config makes dense, or with an expert index >= num_routed_experts; a
//     MoE layer without experts, or missing one of an expert's gate/up/down
//     weights (the message names the tensor expected); a layer mixing the
//     per-expert and fused layouts; an expert weight whose shape is not what
//     hidden_size and moe_intermediate_size give; experts of one layer that
//     differ in their tensors' dtypes or shapes (e.g. one with a scale the
//     others lack); a router whose rows are not num_routed_experts; an
//     embedding that is not [vocab_size, hidden_size]; a decoder layer with
//     no tensors at all.
absl::StatusOr<ModelSummary> SummarizeModel(const std::string& model_dir,
                                            const InspectOptions& options = {});

// K = the model's top-k and M = N, N/2, N/4, ... (integer halving) while
// M >= top-k, largest first: 8/256 ... 8/8 for DeepSeek-V3, 2/8, 2/4, 2/2 for
// Mixtral 8x7B. Empty when the model has no MoE layer.
std::vector<ExpertBudget> DefaultBudgets(const ModelSummary& summary);

// A uniform `budget` (Budget::IsUniform) as it applies to the model: K/M as
// given, N% as the model's top-k over Budget::UniformCount experts.
// INVALID_ARGUMENT naming the budget for a bytes or coverage budget. Range
// checks are ValidateBudget's.
absl::StatusOr<ExpertBudget> UniformBudget(const ModelSummary& summary, const Budget& budget);

// Whether `budget` is possible for the model: 1 <= K <= the model's top-k
// (lowering top-k, e.g. 4/64 on a top-8 model, is allowed), K <= M, and
// M <= num_routed_experts. INVALID_ARGUMENT `budget "K/M": <why>` otherwise,
// also when the model has no routed experts.
absl::Status ValidateBudget(const ModelSummary& summary, const ExpertBudget& budget);

// The weight memory of `budget` (see the file comment); ValidateBudget first.
absl::StatusOr<BudgetMemory> EvaluateBudget(const ModelSummary& summary,
                                            const ExpertBudget& budget);

// The human-readable report `premoe inspect` prints: the architecture line,
// layers, experts, parameters (B or M, with exact counts), bytes (GiB or MiB,
// with exact counts), and a table of budgets: budget, kept fraction, weight
// memory, fraction of full. Ends with a newline. Not a stable format: scripts
// should read ModelSummaryToJson().
std::string FormatModelSummary(const ModelSummary& summary);

// One JSON object on one line, ending with a newline. Its keys are stable:
//   "format_version": 1 (raised if a key changes meaning or disappears),
//   "model_dir": string,
//   "architecture": HF model_type,
//   "config_summary": ModelConfig::Summary(),
//   "num_layers", "num_routed_experts", "top_k", "num_shared_experts",
//   "shared_expert_intermediate_size", "moe_intermediate_size",
//   "hidden_size", "vocab_size": integers,
//   "moe_layers", "dense_layers", "mtp_layers": arrays of layer indices,
//   "checkpoint": {"sharded": bool, "files": [string], "num_tensors": int,
//                  "bytes_by_dtype": {dtype name: int}},
//   "params", "bytes": {"total", "routed_experts", "non_expert", "mtp",
//                       "embeddings", "attention", "norms", "dense_mlp",
//                       "shared_experts", "routers", "other": int},
//   "expert_layers": [{"layer", "layout" ("per_expert" | "fused"),
//                      "num_experts", "params_per_expert",
//                      "bytes_per_expert"}],
//   "full_weight_bytes": int,
//   "budgets": [{"budget": "K/M", "asked": the budget as asked ("50%"),
//                "top_k", "kept_experts": int,
//                "kept_fraction": number, "weight_bytes": int,
//                "fraction_of_full": number,
//                "held_bytes": {format: int}}],
//   "held": {"dtype": string, "non_expert_bytes": int,
//            "expert_bytes": {format: int}}.
// Integers are exact; fractions are doubles in [0, 1].
std::string ModelSummaryToJson(const ModelSummary& summary);

}  // namespace premoe::checkpoint
