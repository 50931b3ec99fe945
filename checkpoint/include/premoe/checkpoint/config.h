// A typed Hugging Face `config.json` for the Mixture-of-Experts architectures
// premoe serves: qwen3_moe, qwen2_moe, mixtral, olmoe, deepseek_v2, deepseek_v3.
//
// The reference is transformers 5.24 (the version in the project's .venv): a
// config means what `AutoConfig.from_pretrained()` plus the model's modeling
// code make of it. Concretely:
//   - Field names are the HF config-class names. A key absent from the JSON
//     takes that class's default for the model_type (listed per field below);
//     ModelConfig::Defaults() returns them.
//   - Where an HF field has an alias (`attribute_map`), both spellings are
//     read, and when both are present the alias wins, as in HF (the alias is
//     applied after the dataclass field). The expert count is normalised into
//     `num_routed_experts` (HF: num_experts / num_local_experts /
//     n_routed_experts).
//   - Fields hold the *effective* values the modeling code runs with, not just
//     what was written: e.g. mixtral's router always renormalises its top-k
//     (norm_topk_prob = true), deepseek_v2's ignores norm_topk_prob (false),
//     qwen3_moe's sliding_window only counts when use_sliding_window is true.
//     Each field says where that differs from the raw JSON value.
//   - RoPE settings are read from the transformers-5 form, as save_pretrained
//     writes it:  "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4,
//     "factor": 40, ...}, and from the legacy form found in most hub
//     checkpoints: top-level "rope_theta" plus "rope_scaling": {"type": ...}.
//     As in HF, a non-empty rope_scaling replaces rope_parameters, and a
//     rope_theta inside the dictionary wins over the top-level one.
//   - dtype is read from "dtype" (what transformers 5 writes) or the legacy
//     "torch_dtype"; "dtype" wins when both are present.
//   - Unknown keys are ignored, as HF keeps them as inert attributes. A few
//     keys HF ignores are checked anyway, because ignoring them would run a
//     checkpoint differently from how its authors built it: deepseek's
//     scoring_func/topk_method/moe_layer_freq (see the fields).
//
// Errors: every problem with the content is INVALID_ARGUMENT, and the message
// names the source (`what`), the field and the offending value, e.g.
//   config.json: "hidden_size" must be an integer, got string "32"
//   config.json: "num_experts_per_tok" (9) must be in [1, 8], the number of routed experts
// Types are checked as HF's strict dataclasses check them (an integer field
// refuses 32.0, "32" and true), except that a float field accepts a JSON
// integer (DeepSeek's config writes "rope_theta": 10000). Values HF would
// accept but that its modeling code cannot run (a null num_experts_per_tok for
// deepseek_v2, decoder_sparse_step 0) and values no model can have (sizes
// <= 0, heads not dividing) are refused too, as are features the premoe
// engine does not implement (hidden_act other than silu, rope types other
// than default/linear/dynamic/yarn, quantization other than block-wise FP8).
// Parsing never throws and never crashes on hostile input.
//
// Thread safety: ModelConfig is a plain value; const methods are safe to call
// from any thread.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::checkpoint {

// The supported model_types.
enum class Architecture { kQwen3Moe, kQwen2Moe, kMixtral, kOlmoe, kDeepseekV2, kDeepseekV3 };

// The HF model_type: "qwen3_moe", "qwen2_moe", "mixtral", "olmoe",
// "deepseek_v2", "deepseek_v3".
absl::string_view ModelTypeName(Architecture architecture);

// Inverse of ModelTypeName; nullopt for any other string.
std::optional<Architecture> ArchitectureFromModelType(absl::string_view model_type);

// "qwen3_moe, qwen2_moe, mixtral, olmoe, deepseek_v2, deepseek_v3", for messages.
std::string SupportedModelTypes();

// HF rope_parameters["rope_type"] (legacy: rope_scaling["type"]).
enum class RopeType {
  kDefault,  // "default": plain RoPE, no scaling
  kLinear,   // "linear": positions divided by `factor`
  kDynamic,  // "dynamic": dynamic NTK scaling beyond max_position_embeddings
  kYarn,     // "yarn": YaRN (DeepSeek-V3, Qwen3 long context)
};
absl::string_view RopeTypeName(RopeType type);

// Rotary position embedding settings, resolved as transformers' RoPE
// initialisers (modeling_rope_utils.py) resolve them. The rotary dimension is
// ModelConfig::head_dim (for deepseek that is qk_rope_head_dim); a
// partial_rotary_factor other than 1 is refused.
struct RopeParameters {
  // HF rope_type. Default: kDefault.
  RopeType type = RopeType::kDefault;
  // HF rope_theta: the base of the inverse frequencies. Default: 1e6 for
  // mixtral (its class's default_theta), 1e4 for the others.
  double theta = 10000.0;
  // HF factor. Required (and > 0) for linear, dynamic and yarn; 1 for default.
  double factor = 1.0;
  // HF original_max_position_embeddings: the pre-training context length
  // (yarn's correction range). Default: max_position_embeddings (HF's
  // standardisation fills it so for yarn). Unused by the other types.
  int64_t original_max_position_embeddings = 0;
  // Yarn: the scale applied to cos/sin (HF attention_factor). When absent it
  // is derived as HF does: get_mscale(factor, mscale) /
  // get_mscale(factor, mscale_all_dim) if both are non-zero, else
  // get_mscale(factor), with get_mscale(s, m) = s <= 1 ? 1 : 0.1 m ln(s) + 1.
  // 1 for every other type.
  double attention_factor = 1.0;
  // Yarn ramp bounds. HF uses `value or 32` / `value or 1`, so absent, null
  // and 0 all give the defaults. Default: 32 and 1.
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  // Yarn (DeepSeek) magnitude-scale parameters, 0 when absent. DeepSeek's
  // attention additionally multiplies its softmax scale by
  // get_mscale(factor, mscale_all_dim)^2 whenever type != kDefault and
  // mscale_all_dim != 0 (see ModelConfig::AttentionScale()).
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
  // Yarn: whether the correction range is rounded outwards. Default: true.
  bool truncate = true;

  bool operator==(const RopeParameters&) const = default;
};

// How router logits become selection scores.
enum class RouterScoring {
  kSoftmax,  // softmax over all routed experts (every architecture but deepseek_v3)
  kSigmoid,  // per-expert sigmoid (deepseek_v3)
};

// How the top-k experts are chosen from the scores.
enum class TopkMethod {
  // Top-k over all experts.
  kGreedy,
  // deepseek_v2 "group_limited_greedy": keep the topk_group groups whose best
  // score is highest, then top-k inside them (others' scores set to 0).
  kGroupLimitedGreedy,
  // deepseek_v3 "noaux_tc": add e_score_correction_bias for selection only,
  // rank groups by the sum of their two best biased scores, keep topk_group
  // groups, top-k inside them; weights are the unbiased sigmoid scores.
  kNoauxTc,
};
absl::string_view TopkMethodName(TopkMethod method);  // "greedy", ...

// Normalisation of queries and keys before RoPE.
enum class QkNorm {
  kNone,
  // qwen3_moe: RMSNorm over each head's head_dim (weights q_norm/k_norm of
  // shape [head_dim]).
  kPerHead,
  // olmoe: RMSNorm over the whole projection (q_norm of shape
  // [num_attention_heads * head_dim], k_norm of [num_key_value_heads * head_dim]).
  kFull,
};

// Per-layer attention kind (HF layer_types).
enum class AttentionType { kFull, kSlidingWindow };

// HF dtype / torch_dtype: the dtype the checkpoint's floating-point weights
// are stored in. Other strings ("float64", "int8", ...) are refused.
enum class TorchDtype {
  kUnspecified,  // absent or null
  kFloat32,      // "float32" (or "float")
  kFloat16,      // "float16" (or "half")
  kBFloat16,     // "bfloat16"
};
absl::string_view TorchDtypeName(TorchDtype dtype);  // "", "float32", ...

// HF quantization_config for block-wise FP8 checkpoints (DeepSeek-V3/R1:
// {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
//  "weight_block_size": [128, 128]}). Quantized Linear weights are stored as
// F8_E4M3 `<name>.weight` with an F32 `<name>.weight_scale_inv` holding one
// scale per weight_block_size block (dequantised = weight * scale_inv).
// Any other quant_method, or settings this scheme does not cover, is refused.
struct Fp8QuantizationConfig {
  // HF quant_method. Only "fp8" (FineGrainedFP8Config) is accepted.
  std::string quant_method = "fp8";
  // DeepSeek's "fmt" key (HF ignores it). Only "e4m3" is accepted. Default: "e4m3".
  std::string fmt = "e4m3";
  // HF activation_scheme. Only "dynamic" (activations quantised on the fly,
  // no stored activation scales) is accepted. Default: "dynamic".
  std::string activation_scheme = "dynamic";
  // HF weight_block_size [rows, cols], both > 0. nullopt (JSON null) means
  // one scale per tensor. Default: [128, 128].
  std::optional<std::array<int64_t, 2>> weight_block_size = std::array<int64_t, 2>{128, 128};
  // HF modules_to_not_convert (also read from "ignored_layers"): module name
  // patterns left unquantised. Default: empty.
  std::vector<std::string> modules_to_not_convert;

  bool operator==(const Fp8QuantizationConfig&) const = default;
};

// Upper bound on num_hidden_layers (per-layer vectors are allocated from it).
inline constexpr int64_t kMaxConfigLayers = 1 << 16;
// Upper bound on every size and count (keeps products of two of them in int64).
inline constexpr int64_t kMaxConfigDimension = (int64_t{1} << 31) - 1;

struct ModelConfig {
  // ---- Identity ----------------------------------------------------------

  Architecture architecture = Architecture::kQwen3Moe;

  // ---- Shapes ------------------------------------------------------------
  // Per-field defaults are listed as qwen3_moe / qwen2_moe / mixtral / olmoe /
  // deepseek_v2 / deepseek_v3.

  // HF vocab_size. Default: 151936 / 151936 / 32000 / 50304 / 102400 / 129280.
  int64_t vocab_size = 0;
  // HF hidden_size. Default: 2048 / 2048 / 4096 / 2048 / 4096 / 7168.
  int64_t hidden_size = 0;
  // HF intermediate_size: the dense MLP's width (qwen: mlp_only or non-sparse
  // layers; deepseek: the first_k_dense_replace layers). mixtral and olmoe
  // have no dense MLP; their experts use this width (see
  // moe_intermediate_size). Default: 6144 / 5632 / 14336 / 2048 / 11008 / 18432.
  int64_t intermediate_size = 0;
  // HF num_hidden_layers, in [1, kMaxConfigLayers]. Default: 24 / 24 / 32 / 16 / 32 / 61.
  int64_t num_hidden_layers = 0;
  // HF num_attention_heads. Default: 32 / 16 / 32 / 16 / 32 / 128.
  int64_t num_attention_heads = 0;
  // HF num_key_value_heads; divides num_attention_heads. null means
  // num_attention_heads for mixtral, olmoe and deepseek (qwen: refused).
  // deepseek's MLA expands keys/values to every head, so there it must equal
  // num_attention_heads. Default: 4 / 16 / 8 / =heads / =heads / 128.
  int64_t num_key_value_heads = 0;
  // Per-head query/key/value width. qwen3_moe, qwen2_moe, olmoe: HF head_dim
  // when the JSON has one (HF reads it with getattr even where the class
  // declares no such field), else hidden_size / num_attention_heads (which
  // must then divide). mixtral: the same, with null also meaning "derive".
  // olmoe's q_norm spans hidden_size, so it must equal the derived value.
  // deepseek: HF sets head_dim = qk_rope_head_dim (the rotary width); the
  // attention widths are qk_nope/qk_rope/v_head_dim (deepseek_v3: a JSON
  // head_dim, which HF would let override the rotary width, must equal
  // qk_rope_head_dim). Default: 64 / 128 / 128 / 128 / 64 / 64.
  int64_t head_dim = 0;
  // HF max_position_embeddings. Default: 32768 / 32768 / 131072 / 4096 / 2048 / 4096.
  int64_t max_position_embeddings = 0;
  // HF rms_norm_eps (every norm in the model), > 0.
  // Default: 1e-6 / 1e-6 / 1e-5 / 1e-5 / 1e-6 / 1e-6.
  double rms_norm_eps = 1e-6;
  // HF hidden_act. Only "silu" (or its HF alias "swish", stored as "silu") is
  // supported. Default: "silu".
  std::string hidden_act = "silu";
  // HF tie_word_embeddings: lm_head shares model.embed_tokens.weight (and the
  // checkpoint may omit lm_head.weight). Default: false.
  bool tie_word_embeddings = false;

  // ---- Attention -----------------------------------------------------------

  // RoPE; see RopeParameters.
  RopeParameters rope;
  // HF attention_bias (qwen3_moe, olmoe: q/k/v/o projections; deepseek:
  // q_a_proj, kv_a_proj_with_mqa and o_proj). false for qwen2_moe and mixtral,
  // which have no such field. Default: false.
  bool attention_bias = false;
  // HF qkv_bias (qwen2_moe only): biases on q/k/v, not o. false elsewhere.
  // Default: true for qwen2_moe.
  bool qkv_bias = false;
  // qwen3_moe: kPerHead; olmoe: kFull; others kNone. Not configurable.
  QkNorm qk_norm = QkNorm::kNone;
  // HF clip_qkv (olmoe): clamp q, k, v to [-clip_qkv, clip_qkv] after the
  // projections (and q/k norms). nullopt: no clamp. Default: nullopt.
  std::optional<double> clip_qkv;
  // HF use_sliding_window (qwen3_moe, qwen2_moe). Default: false.
  bool use_sliding_window = false;
  // Effective sliding window in tokens, nullopt when no layer slides.
  // mixtral: HF sliding_window (null = none). qwen3_moe / qwen2_moe: HF
  // sliding_window when use_sliding_window, else none (HF stores None / 0).
  // olmoe, deepseek: none. Default: none (HF's raw qwen default is 4096).
  std::optional<int64_t> sliding_window;
  // HF max_window_layers (qwen2_moe): only layers below it may slide.
  // Default: 28 (0 elsewhere).
  int64_t max_window_layers = 0;
  // Per layer, size num_hidden_layers. qwen2_moe: HF layer_types (from the
  // JSON, else HF's rule: sliding for even layers below max_window_layers when
  // use_sliding_window). mixtral / qwen3_moe: every layer slides iff
  // sliding_window is set. Others: all kFull.
  std::vector<AttentionType> layer_types;

  // ---- Multi-head latent attention (deepseek; 0 / nullopt elsewhere) -------

  // HF q_lora_rank; nullopt (JSON null): queries use one q_proj instead of
  // q_a_proj -> q_a_layernorm -> q_b_proj. Default: 1536 / 1536.
  std::optional<int64_t> q_lora_rank;
  // HF kv_lora_rank. Default: 512 / 512.
  int64_t kv_lora_rank = 0;
  // HF qk_nope_head_dim. Default: 128 / 128.
  int64_t qk_nope_head_dim = 0;
  // HF qk_rope_head_dim. Default: 64 / 64.
  int64_t qk_rope_head_dim = 0;
  // HF v_head_dim. Default: 128 / 128.
  int64_t v_head_dim = 0;
  // Whether RoPE rotates interleaved pairs (x0, x1), (x2, x3), ... rather
  // than the two halves (rotate_half). deepseek_v3: HF rope_interleave
  // (default true; null = false); deepseek_v2: always true (its complex
  // rotation); others false.
  bool rope_interleave = false;
  // HF mlp_bias (deepseek_v2): biases on the dense MLP and shared experts'
  // projections. Default: false.
  bool mlp_bias = false;

  // ---- Mixture of experts --------------------------------------------------

  // Routed experts per MoE layer. HF num_experts (qwen3_moe, qwen2_moe, olmoe),
  // num_local_experts (mixtral), n_routed_experts (deepseek); aliases
  // num_local_experts (qwen3_moe, olmoe, deepseek_v3) and num_experts
  // (mixtral, deepseek_v2) are read too and win. 0 is allowed for qwen (every
  // layer dense), > 0 required elsewhere. Default: 128 / 60 / 8 / 64 / 64 / 256.
  int64_t num_routed_experts = 0;
  // HF num_experts_per_tok (top-k), in [1, num_routed_experts]. deepseek_v2's
  // HF default is null, so it is required there. Default: 8 / 4 / 2 / 8 / - / 8.
  int64_t num_experts_per_tok = 0;
  // Effective expert MLP width: HF moe_intermediate_size (qwen, deepseek);
  // intermediate_size for mixtral and olmoe (no such HF field).
  // Default: 768 / 1408 / 14336 / 2048 / 1407 / 2048.
  int64_t moe_intermediate_size = 0;
  // HF shared_expert_intermediate_size (qwen2_moe): width of its one shared
  // expert, whose output is scaled by sigmoid(shared_expert_gate(x)). 0
  // elsewhere (deepseek's shared experts: n_shared_experts). Default: 5632.
  int64_t shared_expert_intermediate_size = 0;
  // HF n_shared_experts (deepseek): one ungated shared MLP of width
  // n_shared_experts * moe_intermediate_size, >= 0. 0 elsewhere. Default: 2 / 1.
  int64_t n_shared_experts = 0;
  // Effective renormalisation of the top-k routing weights to sum to 1.
  // qwen3_moe, qwen2_moe, olmoe, deepseek_v3: HF norm_topk_prob (deepseek_v3:
  // null = false). mixtral: always true (its router always renormalises).
  // deepseek_v2: always false (HF's DeepseekV2TopkRouter ignores the field).
  // Default: false / false / true / false / false / true.
  bool norm_topk_prob = false;
  // kSigmoid for deepseek_v3, kSoftmax otherwise. HF 5.24 decides by
  // architecture and ignores the DeepSeek keys "scoring_func"; when present it
  // must agree ("sigmoid" for v3, "softmax" for v2), else INVALID_ARGUMENT.
  RouterScoring scoring_func = RouterScoring::kSoftmax;
  // deepseek_v2: HF topk_method, "greedy" (default) or
  // "group_limited_greedy". deepseek_v3: always kNoauxTc (a "topk_method" key,
  // ignored by HF, must say "noaux_tc" if present). Others: kGreedy.
  TopkMethod topk_method = TopkMethod::kGreedy;
  // HF n_group / topk_group: experts are split into n_group equal groups and
  // only topk_group groups are eligible. Required for kGroupLimitedGreedy and
  // kNoauxTc (then n_group divides num_routed_experts, 1 <= topk_group <=
  // n_group, and top-k fits in the kept groups; noaux_tc needs >= 2 experts per
  // group); nullopt when unused. Default: deepseek_v2 null/null, deepseek_v3 8/4.
  std::optional<int64_t> n_group;
  std::optional<int64_t> topk_group;
  // HF routed_scaling_factor: deepseek multiplies the routing weights by it
  // (after normalisation). 1 elsewhere. Default: 1.0 (v2) / 2.5 (v3).
  double routed_scaling_factor = 1.0;
  // HF first_k_dense_replace (deepseek): layers below it are dense, >= 0.
  // Default: 0 / 3 (0 elsewhere).
  int64_t first_k_dense_replace = 0;
  // DeepSeek's moe_layer_freq. HF 5.24 ignores it (every layer from
  // first_k_dense_replace on is MoE), so only 1 is accepted. Default: 1.
  int64_t moe_layer_freq = 1;
  // HF decoder_sparse_step (qwen): layer l is sparse iff (l + 1) % step == 0
  // (and l not in mlp_only_layers), >= 1. Default: 1 (1 elsewhere).
  int64_t decoder_sparse_step = 1;
  // HF mlp_only_layers (qwen): layers forced dense; each in
  // [0, num_hidden_layers). null = empty. Default: empty.
  std::vector<int64_t> mlp_only_layers;
  // HF router_aux_loss_coef (training only). Default: 0.001 / 0.001 / 0.001 /
  // 0.01 (0 for deepseek, which has no such field).
  double router_aux_loss_coef = 0.0;
  // HF num_nextn_predict_layers (deepseek_v3; alias of num_mtp_layers):
  // multi-token-prediction layers stored after the num_hidden_layers decoder
  // layers (DeepSeek-V3's model.layers.61.*). Not run. Default: 1 (0 elsewhere).
  int64_t num_nextn_predict_layers = 0;

  // ---- Tokens, storage -------------------------------------------------------

  // HF bos_token_id / pad_token_id (null = none). Not range-checked (hub
  // configs carry e.g. -1). Default bos: none / none / 1 / none / 1 / 0;
  // pad: none except olmoe 1.
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> pad_token_id;
  // HF eos_token_id: an integer or a list of them (null = none).
  // Default: none / none / [2] / [50279] / [2] / [1].
  std::vector<int64_t> eos_token_ids;
  // HF dtype (legacy torch_dtype). Default: kUnspecified.
  TorchDtype dtype = TorchDtype::kUnspecified;
  // HF quantization_config; nullopt when absent or null.
  std::optional<Fp8QuantizationConfig> quantization_config;

  // ---- Methods ---------------------------------------------------------------

  // The HF class defaults for `architecture`, resolved as for a JSON holding
  // only {"model_type": ...}, except deepseek_v2's num_experts_per_tok, which
  // HF leaves null (then 0 here, and Validate() fails until it is set).
  static ModelConfig Defaults(Architecture architecture);

  // Checks every invariant listed on the fields. INVALID_ARGUMENT naming the
  // field and value on the first violation.
  absl::Status Validate() const;

  // Whether decoder layer `layer` (0-based) has a sparse MoE block, by the
  // rule of the HF modeling code: qwen: layer not in mlp_only_layers,
  // num_routed_experts > 0 and (layer + 1) % decoder_sparse_step == 0;
  // deepseek: layer >= first_k_dense_replace; mixtral, olmoe: every layer.
  // False for layers outside [0, num_hidden_layers).
  bool IsMoeLayer(int layer) const;
  // The number of MoE layers among the num_hidden_layers.
  int64_t NumMoeLayers() const;

  // Sliding window of layer `layer` in tokens, nullopt for full attention.
  std::optional<int64_t> SlidingWindow(int layer) const;

  // Width of the shared-expert MLP: qwen2_moe shared_expert_intermediate_size,
  // deepseek n_shared_experts * moe_intermediate_size, else 0.
  int64_t SharedExpertIntermediateSize() const;
  // Query/key width per head: qk_nope_head_dim + qk_rope_head_dim for
  // deepseek, head_dim otherwise.
  int64_t QkHeadDim() const;
  // Value width per head: v_head_dim for deepseek, head_dim otherwise.
  int64_t VHeadDim() const;
  // The softmax scale of attention, as HF's `self.scaling`: QkHeadDim()^-0.5,
  // times get_mscale(rope.factor, rope.mscale_all_dim)^2 for deepseek when
  // rope.type != kDefault and rope.mscale_all_dim != 0.
  double AttentionScale() const;

  // One line for the CLI, e.g. for DeepSeek-V3:
  // "deepseek_v3: 61 layers (58 MoE), hidden 7168, 128 heads (MLA q_lora 1536,
  //  kv_lora 512), 256 experts top-8 + 1 shared, sigmoid noaux_tc 8/4 groups,
  //  expert ffn 2048, vocab 129280, rope yarn x40 theta 10000, bfloat16,
  //  fp8 e4m3 [128,128]" (one line; wrapped here).
  std::string Summary() const;

  // Field-wise equality.
  bool operator==(const ModelConfig&) const = default;
};

// Parses the text of a config.json. `what` names the source in errors
// ("/models/q3/config.json"). Errors: INVALID_ARGUMENT (see the file comment):
// invalid JSON, not an object, missing/unknown model_type (the message lists
// SupportedModelTypes()), a field of the wrong type, an impossible or
// unsupported value.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view what);

// Reads and parses `model_dir`/config.json (at most 16 MiB). NOT_FOUND when the
// file does not exist; otherwise as ParseModelConfig, naming the path.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// The sampling a checkpoint asks for in its generation_config.json, which
// OpenAI-style servers (vLLM) use for what a request leaves out.
struct GenerationDefaults {
  // Absent fields stay empty. do_sample false (greedy) sets temperature 0.
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;
};
// `model_dir`/generation_config.json's defaults; none when the file does not
// exist. INVALID_ARGUMENT naming the file for malformed JSON or a field of
// the wrong type or range.
absl::StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& model_dir);

}  // namespace premoe::checkpoint
