// The engine's forward pass, KV cache and generation loop. See engine.h for
// the contract; comments here say why the code is shaped as it is.
#include "premoe/model/engine.h"

#include <ATen/ATen.h>

#if PREMOE_CUDA_ENABLED
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <random>
#include <stdexcept>

#include "absl/container/inlined_vector.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cpu_matvec.h"
#include "engine_weights.h"
#include "premoe/checkpoint/expert_pack.h"
#include "premoe/common/status.h"
#include "premoe/model/decoding.h"

namespace premoe::model {

// ---- KeptExperts, options ----------------------------------------------------

void KeptExperts::Set(int64_t layer, std::vector<int64_t> experts) {
  std::sort(experts.begin(), experts.end());
  experts.erase(std::unique(experts.begin(), experts.end()), experts.end());
  layers[layer] = std::move(experts);
}

const std::vector<int64_t>* KeptExperts::Find(int64_t layer) const {
  auto it = layers.find(layer);
  return it == layers.end() ? nullptr : &it->second;
}

absl::Status KeptExperts::Validate(const checkpoint::ModelConfig& config, int64_t top_k) const {
  for (const auto& [layer, experts] : layers) {
    if (layer < 0 || layer >= config.num_hidden_layers ||
        !config.IsMoeLayer(static_cast<int>(layer))) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert mask names layer ", layer, ", which is not a MoE layer of this ",
                       checkpoint::ModelTypeName(config.architecture), " model"));
    }
    for (size_t i = 0; i < experts.size(); ++i) {
      if (experts[i] < 0 || experts[i] >= config.num_routed_experts) {
        return absl::InvalidArgumentError(
            absl::StrCat("expert mask: layer ", layer, " keeps expert ", experts[i],
                         ", outside [0, ", config.num_routed_experts, ")"));
      }
      if (i > 0 && experts[i] <= experts[i - 1]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "expert mask: layer ", layer, "'s expert ids must be sorted and unique, got ",
            experts[i - 1], " then ", experts[i]));
      }
    }
    if (static_cast<int64_t>(experts.size()) < top_k) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expert mask: layer ", layer, " keeps ", experts.size(), " experts, fewer than top-k ",
          top_k, "; keep more or lower top-k explicitly (EngineOptions::top_k)"));
    }
  }
  return absl::OkStatus();
}

absl::Status EngineOptions::Validate() const {
  if (dtype != "bf16" && dtype != "fp32") {
    return absl::InvalidArgumentError(
        absl::StrCat("EngineOptions.dtype must be \"bf16\" or \"fp32\", got \"", dtype, "\""));
  }
  if (device != "cpu" && device != "cuda" && device.rfind("cuda:", 0) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EngineOptions.device must be \"cpu\", \"cuda\" or \"cuda:N\", got \"", device, "\""));
  }
  if (device.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (!absl::SimpleAtoi(device.substr(5), &index) || index < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("EngineOptions.device: bad CUDA device index in \"", device, "\""));
    }
  }
  if (top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("EngineOptions.top_k must be >= 0, got ", top_k));
  }
  if (max_context < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("EngineOptions.max_context must be >= 0, got ", max_context));
  }
  if (trainable && dtype != "fp32") {
    return absl::InvalidArgumentError(
        absl::StrCat("EngineOptions.trainable needs dtype \"fp32\", got \"", dtype, "\""));
  }
  if (static_cast<int>(trainable) + static_cast<int>(streamed) +
          static_cast<int>(experts_on_demand) + static_cast<int>(probe_moe_layers > 0) >
      1) {
    return absl::InvalidArgumentError(
        "EngineOptions: trainable, streamed, experts_on_demand and probe exclude each other");
  }
  if (probe_moe_layers < 0) {
    return absl::InvalidArgumentError("EngineOptions.probe_moe_layers must be >= 0");
  }
  if (probe_moe_layers > 0 && !keep.empty()) {
    return absl::InvalidArgumentError("EngineOptions: a probe takes no keep");
  }
  if (!expert_pack.empty() && !experts_on_demand) {
    return absl::InvalidArgumentError(
        "EngineOptions.expert_pack is read by an experts_on_demand engine only");
  }
  if (experts_on_demand && !keep.empty()) {
    return absl::InvalidArgumentError(
        "EngineOptions.experts_on_demand takes its experts per forward, not from keep");
  }
  if (trainable && !keep.empty()) {
    return absl::InvalidArgumentError("EngineOptions.trainable needs the full model (empty keep)");
  }
  if (!cpu_isa.empty()) {
    const std::optional<internal::MatvecIsa> isa = internal::ParseMatvecIsa(cpu_isa);
    if (!isa.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "EngineOptions.cpu_isa must be \"avx512bf16\", \"avx512\", \"avx2\", \"portable\" or "
          "empty, got \"",
          cpu_isa, "\""));
    }
    if (*isa > internal::MatvecBestIsa()) {
      return absl::InvalidArgumentError(
          absl::StrCat("EngineOptions.cpu_isa: this CPU does not run ", cpu_isa, " (its best is ",
                       internal::MatvecIsaName(internal::MatvecBestIsa()), ")"));
    }
  }
  for (const auto& [field, text] :
       {std::pair<const char*, const std::string*>{"expert_quant", &expert_quant},
        {"attention_quant", &attention_quant},
        {"dense_mlp_quant", &dense_mlp_quant},
        {"shared_expert_quant", &shared_expert_quant},
        {"lm_head_quant", &lm_head_quant}}) {
    absl::StatusOr<checkpoint::QuantFormat> quant = checkpoint::QuantFormat::Parse(*text);
    if (!quant.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("EngineOptions.", field, ": ", quant.status().message()));
    }
    if (!quant->quantized()) continue;
    if (trainable || streamed || probe_moe_layers > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "EngineOptions.", field, " ", quant->ToString(),
          " is for serving engines (resident, reduced or on-demand), not trainable, streamed or "
          "probe ones"));
    }
    if (device != "cpu") {
      return absl::InvalidArgumentError(
          absl::StrCat("EngineOptions.", field, " ", quant->ToString(),
                       ": quantized matrices run on the CPU only in this build, not on ", device,
                       "; serve them dense there (none)"));
    }
  }
  return absl::OkStatus();
}

absl::Status EngineOptions::SetQuant(absl::string_view spec) {
  if (spec.empty()) return absl::InvalidArgumentError("quant: the spec is empty");
  for (absl::string_view item : absl::StrSplit(spec, ',')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(item, absl::MaxSplits('=', 1));
    absl::string_view cls = "experts", format = item;
    if (item.find('=') != absl::string_view::npos) {
      cls = kv.first;
      format = kv.second;
    }
    if (cls == "activations") {
      if (format != "int8" && format != "fp32") {
        return absl::InvalidArgumentError(absl::StrCat("quant \"", spec, "\": activations=", format,
                                                       " (want activations=int8 or fp32)"));
      }
      int8_activations = format == "int8";
      continue;
    }
    absl::StatusOr<checkpoint::QuantFormat> quant = checkpoint::QuantFormat::Parse(format);
    if (!quant.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("quant \"", spec, "\": ", quant.status().message()));
    }
    std::vector<std::string*> fields;
    if (cls == "experts" || cls == "all") fields.push_back(&expert_quant);
    if (cls == "attention" || cls == "all") fields.push_back(&attention_quant);
    if (cls == "mlp" || cls == "all") fields.push_back(&dense_mlp_quant);
    if (cls == "shared" || cls == "all") fields.push_back(&shared_expert_quant);
    if (cls == "lm_head" || cls == "all") fields.push_back(&lm_head_quant);
    if (fields.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "quant \"", spec, "\": unknown class \"", cls,
          "\" (want experts, attention, mlp, shared, lm_head or all, as CLASS=FORMAT, or "
          "activations=int8|fp32)"));
    }
    for (std::string* f : fields) *f = quant->ToString();
  }
  return absl::OkStatus();
}

absl::Status GenerationOptions::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", temperature));
  }
  if (!(top_p > 0 && top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be >= 1, got ", max_new_tokens));
  }
  for (const auto& s : stop_sequences) {
    if (s.empty()) return absl::InvalidArgumentError("a stop sequence is empty");
  }
  return absl::OkStatus();
}

namespace {

using internal::AttentionWeights;
using internal::LayerWeights;
using internal::Linear;
using internal::MlpWeights;
using internal::ModelWeights;
using internal::MoeWeights;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Products with at most this many activation rows take cpu_matvec's kernel
// (EngineOptions::cpu_kernels): there the weights' bytes, not arithmetic,
// bound the time, and each row of weights is streamed once for all of them.
// Larger products go to libtorch's GEMM, except bf16 ones on CPUs without
// native bf16 arithmetic, where libtorch's bf16 GEMM is a scalar-order dot
// loop several times slower than the kernel (internal::MatvecNativeBf16).
// Where the CPU has it, oneDNN's bf16 GEMM beat the kernel's vdpbf16ps
// tiles at a 128-token prefill (the kernel at 0.86x, docs/engine.md).
constexpr int64_t kMatvecMaxRows = 16;

using internal::MatvecJob;
using internal::WeightType;

bool MatvecWeight(const at::Tensor& w) {
  return w.dim() == 2 && w.is_cpu() && w.is_contiguous() && !w.requires_grad() &&
         (w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kFloat);
}

WeightType MatvecType(const at::Tensor& w) {
  return w.scalar_type() == at::kBFloat16 ? WeightType::kBF16 : WeightType::kF32;
}

bool IsDeepseek(const checkpoint::ModelConfig& c) {
  return c.architecture == checkpoint::Architecture::kDeepseekV2 ||
         c.architecture == checkpoint::Architecture::kDeepseekV3;
}

// HF RMSNorm: normalise in fp32, cast back, then multiply by the weight.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(var + eps);
  return w * xf.to(x.scalar_type());
}

// Inverse RoPE frequencies [dim/2] fp32 and the cos/sin scale, as
// transformers' ROPE_INIT_FUNCTIONS compute them (in fp32 tensors, so the
// rounding matches). `seq_len` only matters for dynamic NTK.
struct Rope {
  at::Tensor inv_freq;
  double scaling = 1.0;
};

Rope ComputeRope(const checkpoint::ModelConfig& c, int64_t seq_len) {
  const int64_t dim = IsDeepseek(c) ? c.qk_rope_head_dim : c.head_dim;
  const checkpoint::RopeParameters& r = c.rope;
  double base = r.theta;
  at::Tensor exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  Rope rope;
  switch (r.type) {
    case checkpoint::RopeType::kDefault:
      rope.inv_freq = 1.0 / at::pow(at::Scalar(base), exponents);
      break;
    case checkpoint::RopeType::kLinear:
      rope.inv_freq = 1.0 / at::pow(at::Scalar(base), exponents) / r.factor;
      break;
    case checkpoint::RopeType::kDynamic: {
      const double sl = static_cast<double>(std::max(seq_len, c.max_position_embeddings));
      base = base * std::pow(r.factor * sl / static_cast<double>(c.max_position_embeddings) -
                                 (r.factor - 1),
                             static_cast<double>(dim) / static_cast<double>(dim - 2));
      rope.inv_freq = 1.0 / at::pow(at::Scalar(base), exponents);
      break;
    }
    case checkpoint::RopeType::kYarn: {
      const double factor = r.factor;
      at::Tensor pos_freqs = at::pow(at::Scalar(base), exponents);
      at::Tensor extrapolation = 1.0 / pos_freqs;
      at::Tensor interpolation = 1.0 / (factor * pos_freqs);
      auto correction_dim = [&](double rotations) {
        return (static_cast<double>(dim) *
                std::log(static_cast<double>(r.original_max_position_embeddings) /
                         (rotations * 2 * M_PI))) /
               (2 * std::log(base));
      };
      double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
      if (r.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      at::Tensor ramp = at::clamp((at::arange(dim / 2, at::kFloat) - low) / (high - low), 0, 1);
      at::Tensor extrapolation_factor = 1 - ramp;
      rope.inv_freq =
          interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
      rope.scaling = r.attention_factor;
      break;
    }
  }
  return rope;
}

// q [T, heads, D] with cos/sin [T, D] (cat(freqs, freqs) layout).
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                     bool interleave) {
  const int64_t d = x.size(-1);
  if (!interleave) {
    at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
    at::Tensor x1 = x.narrow(-1, 0, d / 2), x2 = x.narrow(-1, d / 2, d / 2);
    return x * c + at::cat({-x2, x1}, -1) * s;
  }
  // Interleaved pairs (x0, x1), (x2, x3), ... rotated by one frequency each.
  // The output is de-interleaved (evens, then odds), as HF's deepseek_v3;
  // deepseek_v2's complex form interleaves its output instead, which is the
  // same permutation applied to both queries and keys, so scores are equal.
  at::Tensor c = cos.narrow(-1, 0, d / 2).unsqueeze(1), s = sin.narrow(-1, 0, d / 2).unsqueeze(1);
  using at::indexing::Slice;
  at::Tensor x1 = x.index({"...", Slice(0, at::indexing::None, 2)});
  at::Tensor x2 = x.index({"...", Slice(1, at::indexing::None, 2)});
  return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
}

// ---- KV cache ------------------------------------------------------------------

class KvCacheImpl final : public KvCache {
 public:
  KvCacheImpl(const void* owner, int64_t batch, int64_t capacity)
      : owner_(owner), batch_(batch), capacity_(capacity), lengths_(batch, 0) {}
  int64_t batch_size() const override { return batch_; }
  int64_t capacity() const override { return capacity_; }
  int64_t length(int64_t seq) const override {
    return seq >= 0 && seq < batch_ ? lengths_[seq] : 0;
  }
  void Clear(int64_t seq) override {
    if (seq >= 0 && seq < batch_) lengths_[seq] = 0;
  }

  const void* owner_;
  int64_t batch_, capacity_;
  std::vector<int64_t> lengths_;
  // Per layer. GQA: a = keys, b = values, [B, Hkv, cap, D] (post-RoPE keys).
  // MLA: a = normalised latent [B, cap, kv_lora_rank], b = rotated shared key
  // [B, cap, qk_rope_head_dim] (the compressed cache, as HF keeps it).
  std::vector<at::Tensor> a, b;
};

// ---- The engine ----------------------------------------------------------------

// Per-forward bookkeeping shared by the layers.
struct Batch {
  int64_t tokens = 0;           // T
  at::Tensor seq, pos;          // [T] long
  std::vector<int64_t> active;  // sequences with new tokens
  at::Tensor slot_a, slot_i;    // [T]: (active index, offset) of each token
  int64_t s_max = 0, l_max = 0;
  at::Tensor active_t;   // [Ba] long
  at::Tensor qpos;       // [Ba, s_max] long: position of each query slot
  at::Tensor full_mask;  // [Ba, s_max, l_max] bool, true = may attend
  std::map<int64_t, at::Tensor> window_masks;
  at::Tensor cos, sin;  // [T, rope dim] compute dtype
  bool all_active = false;
};

class EngineImpl final : public Engine {
 public:
  // `checkpoint` is kept for streamed and on-demand engines (null otherwise).
  EngineImpl(checkpoint::ModelConfig config, EngineOptions options, ModelWeights weights,
             at::ScalarType dtype, at::Device device,
             std::shared_ptr<const checkpoint::Checkpoint> checkpoint,
             checkpoint::ExpertSlotLayout expert_layout)
      : config_(std::move(config)),
        options_(std::move(options)),
        w_(std::move(weights)),
        dtype_(dtype),
        device_(device),
        checkpoint_(std::move(checkpoint)),
        expert_layout_(std::move(expert_layout)) {
    top_k_ = options_.top_k > 0 ? options_.top_k : config_.num_experts_per_tok;
    if (!options_.cpu_isa.empty()) matvec_isa_ = *internal::ParseMatvecIsa(options_.cpu_isa);
    if (device_.is_cpu() && options_.cpu_kernels && !options_.trainable) {
      matvec_rows_ = dtype_ == at::kBFloat16 && !internal::MatvecNativeBf16()
                         ? std::numeric_limits<int64_t>::max()
                         : kMatvecMaxRows;
    }
    max_context_ =
        options_.max_context > 0 ? options_.max_context : config_.max_position_embeddings;
    static_rope_ = ComputeRope(config_, 0);
    parameters_ = internal::NamedParameters(w_);
    // e_score_correction_bias is a statistic DeepSeek updates outside the
    // gradient; it stays out of Parameters() and never requires grad.
    if (options_.trainable) {
      for (auto& [name, t] : parameters_) t.requires_grad_(true);
    }
    for (int64_t e : config_.eos_token_ids) eos_.push_back(e);
    for (int64_t l = 0, seen = 0; l < config_.num_hidden_layers; ++l) {
      if (!config_.IsMoeLayer(static_cast<int>(l))) continue;
      probe_layer_ = l;
      if (++seen >= std::max<int64_t>(1, options_.probe_moe_layers)) break;
    }
  }

  const checkpoint::ModelConfig& config() const override { return config_; }
  const EngineOptions& options() const override { return options_; }
  int64_t top_k() const override { return top_k_; }
  int64_t max_context() const override { return max_context_; }
  int64_t weight_bytes() const override { return w_.bytes; }
  int64_t expert_bytes() const override { return expert_layout_.bytes; }
  const checkpoint::ExpertSlotLayout& expert_layout() const override { return expert_layout_; }

  absl::Status LoadExpertInto(int64_t layer, int64_t expert,
                              const ExpertWeights& into) const override {
    if (!options_.experts_on_demand) {
      return absl::FailedPreconditionError(
          "LoadExpertInto: only an engine opened with experts_on_demand loads experts one by one");
    }
    if (layer < 0 || layer >= config_.num_hidden_layers || !w_.layers[layer].is_moe) {
      return absl::InvalidArgumentError(
          absl::StrCat("LoadExpertInto: layer ", layer, " is not a MoE layer of the model"));
    }
    if (expert < 0 || expert >= config_.num_routed_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LoadExpertInto: expert ", expert, " is outside [0, ", config_.num_routed_experts, ")"));
    }
    const int64_t h = config_.hidden_size, inter = config_.moe_intermediate_size;
    const bool quantized = expert_layout_.format.quantized();
    const at::ScalarType held = quantized ? at::kByte : dtype_;
    auto fits = [&](const at::Tensor& t, std::vector<int64_t> shape) {
      return t.defined() && t.sizes().vec() == shape && t.scalar_type() == held &&
             t.device() == device_ && t.is_contiguous() &&
             (!quantized || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0);
    };
    const std::vector<int64_t> gu_shape = quantized
                                              ? std::vector<int64_t>{expert_layout_.gate_up_bytes}
                                              : std::vector<int64_t>{2 * inter, h};
    const std::vector<int64_t> d_shape = quantized ? std::vector<int64_t>{expert_layout_.down_bytes}
                                                   : std::vector<int64_t>{h, inter};
    if (!fits(into.gate_up, gu_shape) || !fits(into.down, d_shape)) {
      return absl::InvalidArgumentError(
          absl::StrCat("LoadExpertInto: the destination must be gate_up [",
                       absl::StrJoin(gu_shape, ", "), "] and down [", absl::StrJoin(d_shape, ", "),
                       "], contiguous, 16-byte aligned ", at::toString(held), " on ", device_.str(),
                       " (experts held as ", expert_layout_.format.ToString(), ")"));
    }
    try {
      if (device_.is_cpu()) return ReadExpertBytes(layer, expert, into.gate_up, into.down);
      return CopyExpertToDevice(layer, expert, into);
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("LoadExpertInto: libtorch: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::ResourceExhaustedError(absl::StrCat("LoadExpertInto: ", e.what()));
    }
  }

  // "experts int4:g128, lm_head int8": the classes held quantized, or "".
  std::string QuantizedClasses() const {
    std::vector<std::string> out;
    for (const auto& [cls, text] :
         {std::pair<const char*, const std::string*>{"experts", &options_.expert_quant},
          {"attention", &options_.attention_quant},
          {"mlp", &options_.dense_mlp_quant},
          {"shared", &options_.shared_expert_quant},
          {"lm_head", &options_.lm_head_quant}}) {
      if (*text != "none") out.push_back(absl::StrCat(cls, " ", *text));
    }
    return absl::StrJoin(out, ", ");
  }

  // Opens options_.expert_pack for this model (Engine::Open).
  absl::Status OpenExpertPack() {
    if (options_.expert_pack.empty()) return absl::OkStatus();
    ASSIGN_OR_RETURN(pack_, checkpoint::ExpertPack::Open(options_.expert_pack));
    return pack_->CheckFits(*checkpoint_, config_, options_.dtype, expert_layout_.format);
  }

  absl::StatusOr<at::Tensor> Weight(const std::string& name) const override {
    auto it = w_.by_name.find(name);
    if (it == w_.by_name.end()) {
      if (const std::string quantized = QuantizedClasses(); !quantized.empty()) {
        return absl::NotFoundError(absl::StrCat("the engine holds no dense weight named \"", name,
                                                "\" (matrices held quantized: ", quantized, ")"));
      }
      return absl::NotFoundError(absl::StrCat("the engine holds no weight named \"", name, "\""));
    }
    return it->second;
  }

  std::vector<std::pair<std::string, at::Tensor>> Parameters() const override {
    return parameters_;
  }

  std::vector<std::pair<int64_t, at::Tensor>> RouterBiases() const override {
    std::vector<std::pair<int64_t, at::Tensor>> out;
    for (size_t l = 0; l < w_.layers.size(); ++l) {
      const LayerWeights& L = w_.layers[l];
      if (L.is_moe && L.moe.e_score_bias.defined()) {
        out.emplace_back(static_cast<int64_t>(l), L.moe.e_score_bias);
      }
    }
    return out;
  }

  absl::Status SaveWeights(const std::string& path) const override {
    RETURN_IF_ERROR(CheckResident("SaveWeights"));
    RETURN_IF_ERROR(CheckOwnsExperts("SaveWeights"));
    if (const std::string quantized = QuantizedClasses(); !quantized.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("SaveWeights: matrices are held quantized (", quantized,
                       "); a checkpoint holds them dense"));
    }
    for (const auto& L : w_.layers) {
      if (L.is_moe && !L.moe.all_loaded) {
        return absl::InvalidArgumentError(
            "SaveWeights: this is a reduced model; its weights are not a checkpoint of the model");
      }
    }
    try {
      checkpoint::SafetensorsWriter writer;
      std::vector<at::Tensor> keep_alive;
      for (const auto& [name, t] : w_.by_name) {
        at::Tensor c = t.detach().to(at::kCPU).contiguous();
        const checkpoint::DType dtype =
            c.scalar_type() == at::kFloat ? checkpoint::DType::kF32 : checkpoint::DType::kBF16;
        if (c.scalar_type() != at::kFloat && c.scalar_type() != at::kBFloat16) {
          return absl::InternalError(
              absl::StrCat("SaveWeights: weight \"", name, "\" has an unexpected dtype"));
        }
        keep_alive.push_back(c);
        RETURN_IF_ERROR(writer.AddUnowned(
            name, dtype, c.sizes().vec(),
            std::span<const uint8_t>(static_cast<const uint8_t*>(c.data_ptr()), c.nbytes())));
      }
      return writer.Write(path);
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("SaveWeights: libtorch: ", e.what_without_backtrace()));
    }
  }

  absl::StatusOr<std::unique_ptr<KvCache>> NewCache(int64_t batch_size,
                                                    int64_t capacity) const override {
    RETURN_IF_ERROR(CheckResident("NewCache"));
    return MakeCache(batch_size, capacity);
  }

  absl::StatusOr<std::unique_ptr<KvCache>> MakeCache(int64_t batch_size, int64_t capacity) const {
    if (batch_size < 1 || capacity < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "NewCache: batch_size and capacity must be >= 1, got ", batch_size, " and ", capacity));
    }
    if (capacity > max_context_) {
      return absl::InvalidArgumentError(absl::StrCat("NewCache: capacity ", capacity,
                                                     " exceeds the context limit ", max_context_));
    }
    try {
      auto cache = std::make_unique<KvCacheImpl>(this, batch_size, capacity);
      cache->a.resize(config_.num_hidden_layers);
      cache->b.resize(config_.num_hidden_layers);
      // A streamed engine allocates each layer's part only while it runs.
      if (!options_.streamed) {
        for (int64_t l = 0; l < config_.num_hidden_layers; ++l) AllocateLayerCache(*cache, l);
      }
      return std::unique_ptr<KvCache>(std::move(cache));
    } catch (const std::exception& e) {
      return absl::ResourceExhaustedError(
          absl::StrCat("NewCache(", batch_size, ", ", capacity, "): ", e.what()));
    }
  }

  absl::StatusOr<at::Tensor> Forward(const std::vector<std::vector<int64_t>>& tokens,
                                     KvCache* cache, const ForwardOptions& options) const override {
    std::unique_ptr<KvCache> owned;
    if (cache != nullptr) RETURN_IF_ERROR(CheckResident("Forward with a KvCache"));
    if (options.last_layer < -1 || options.last_layer >= config_.num_hidden_layers) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: last_layer ", options.last_layer,
                                                     " is not -1 or a layer of the model's ",
                                                     config_.num_hidden_layers));
    }
    if (options_.probe_moe_layers > 0 && options.last_layer != probe_layer_) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: a probe engine runs to its last router only: last_layer must be ",
                       probe_layer_, ", not ", options.last_layer));
    }
    if (options.last_layer >= 0 && cache != nullptr) {
      // The cache would hold keys of the early layers only.
      return absl::InvalidArgumentError("Forward: last_layer needs cache == nullptr");
    }
    if (cache == nullptr) {
      int64_t longest = 1;
      for (const auto& t : tokens) longest = std::max<int64_t>(longest, t.size());
      if (tokens.empty()) return absl::InvalidArgumentError("Forward: no sequences");
      ASSIGN_OR_RETURN(owned, MakeCache(static_cast<int64_t>(tokens.size()), longest));
      cache = owned.get();
    }
    auto* kv = dynamic_cast<KvCacheImpl*>(cache);
    if (kv == nullptr || kv->owner_ != this) {
      return absl::InvalidArgumentError("Forward: the KvCache was made by another engine");
    }
    RETURN_IF_ERROR(CheckForward(tokens, *kv, options));
    try {
      return ForwardImpl(tokens, *kv, options);
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("Forward: libtorch: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("Forward: ", e.what()));
    }
  }

  absl::StatusOr<std::vector<GenerationResult>> Generate(
      const std::vector<GenerationRequest>& requests, const GenerationOptions& options,
      GateTap* tap, const std::function<void(int64_t, int64_t)>& on_token) const override;

 private:
  absl::Status CheckResident(absl::string_view what) const {
    if (options_.probe_moe_layers > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(what,
                       ": a probe engine holds the model only up to a router; it runs "
                       "Forward with last_layer = ",
                       probe_layer_, " and no cache only"));
    }
    if (!options_.streamed) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat(what,
                     ": a streamed engine holds no layers between forward passes; it runs "
                     "Forward without a cache only (open the model without streamed for this)"));
  }

  absl::Status CheckOwnsExperts(absl::string_view what) const {
    if (!options_.experts_on_demand) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat(what,
                     ": an engine with experts on demand holds no routed experts of its own; "
                     "run Forward with ForwardOptions::experts"));
  }

  void AllocateLayerCache(KvCacheImpl& kv, int64_t l) const {
    const checkpoint::ModelConfig& c = config_;
    auto opts = at::TensorOptions().dtype(dtype_).device(device_);
    if (IsDeepseek(c)) {
      kv.a[l] = at::zeros({kv.batch_, kv.capacity_, c.kv_lora_rank}, opts);
      kv.b[l] = at::zeros({kv.batch_, kv.capacity_, c.qk_rope_head_dim}, opts);
    } else {
      kv.a[l] = at::zeros({kv.batch_, c.num_key_value_heads, kv.capacity_, c.head_dim}, opts);
      kv.b[l] = at::zeros({kv.batch_, c.num_key_value_heads, kv.capacity_, c.head_dim}, opts);
    }
  }

  absl::Status CheckForward(const std::vector<std::vector<int64_t>>& tokens, const KvCacheImpl& kv,
                            const ForwardOptions& options) const {
    if (static_cast<int64_t>(tokens.size()) != kv.batch_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Forward: ", tokens.size(), " sequences for a cache of batch size ", kv.batch_));
    }
    int64_t total = 0;
    for (size_t b = 0; b < tokens.size(); ++b) {
      for (int64_t t : tokens[b]) {
        if (t < 0 || t >= config_.vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("Forward: sequence ", b, " has token id ",
                                                         t, ", outside [0, ", config_.vocab_size,
                                                         ")"));
        }
      }
      if (kv.lengths_[b] + static_cast<int64_t>(tokens[b].size()) > kv.capacity_) {
        return absl::InvalidArgumentError(
            absl::StrCat("Forward: sequence ", b, " would hold ", kv.lengths_[b] + tokens[b].size(),
                         " tokens, over the cache capacity ", kv.capacity_));
      }
      total += static_cast<int64_t>(tokens[b].size());
    }
    if (total == 0) return absl::InvalidArgumentError("Forward: no tokens to run");
    if (!options.masks.empty() && options.masks.size() != tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: ", options.masks.size(),
                                                     " masks for ", tokens.size(), " sequences"));
    }
    for (const KeptExperts* m : options.masks) {
      if (m == nullptr) continue;
      RETURN_IF_ERROR(m->Validate(config_, top_k_));
      for (const auto& [layer, experts] : m->layers) {
        const MoeWeights& moe = w_.layers[layer].moe;
        if (moe.all_loaded) continue;
        for (int64_t e : experts) {
          if (!std::binary_search(moe.loaded.begin(), moe.loaded.end(), e)) {
            return absl::InvalidArgumentError(
                absl::StrCat("expert mask keeps expert ", e, " of layer ", layer,
                             ", which this reduced model did not load"));
          }
        }
      }
    }
    if (options_.experts_on_demand) RETURN_IF_ERROR(CheckExpertSet(tokens, options));
    return absl::OkStatus();
  }

  // Every expert a sequence's mask keeps must be in the forward's ExpertSet.
  absl::Status CheckExpertSet(const std::vector<std::vector<int64_t>>& tokens,
                              const ForwardOptions& options) const {
    if (options.experts == nullptr) {
      return absl::InvalidArgumentError(
          "Forward: an engine with experts on demand needs ForwardOptions::experts");
    }
    if (options.masks.size() != tokens.size()) {
      return absl::InvalidArgumentError(
          "Forward: an engine with experts on demand needs a mask for every sequence");
    }
    std::vector<const KeptExperts*> checked;
    for (size_t b = 0; b < tokens.size(); ++b) {
      const KeptExperts* m = options.masks[b];
      if (tokens[b].empty()) continue;
      if (m == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Forward: sequence ", b, " has no expert mask (experts are loaded on demand)"));
      }
      // Requests of one pattern share a mask: check each once.
      if (std::find(checked.begin(), checked.end(), m) != checked.end()) continue;
      checked.push_back(m);
      for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
        if (!w_.layers[l].is_moe) continue;
        auto missing = [&](int64_t e) {
          return absl::FailedPreconditionError(
              absl::StrCat("Forward: sequence ", b, "'s mask keeps expert ", e, " of layer ", l,
                           ", which is not in ForwardOptions::experts"));
        };
        auto check = [&](int64_t e) -> absl::Status {
          if (options.expert_parallel != nullptr && !options.expert_parallel->Owns(e)) {
            return absl::OkStatus();
          }
          const ExpertWeights* x = options.experts->Find(l, e);
          if (x == nullptr) return missing(e);
          return CheckExpertWeights(l, e, *x);
        };
        if (const std::vector<int64_t>* kept = m->Find(l)) {
          for (int64_t e : *kept) RETURN_IF_ERROR(check(e));
        } else {
          for (int64_t e = 0; e < config_.num_routed_experts; ++e) RETURN_IF_ERROR(check(e));
        }
      }
    }
    return absl::OkStatus();
  }

  // An on-demand expert's tensors must be what this engine holds, since the
  // kernel reads them as raw bytes: dense [2I, H] and [H, I] in the engine's
  // dtype and device; quantized, contiguous CPU uint8 of the layout's sizes.
  absl::Status CheckExpertWeights(int64_t layer, int64_t e, const ExpertWeights& x) const {
    const int64_t h = config_.hidden_size, inter = config_.moe_intermediate_size;
    const checkpoint::ExpertSlotLayout& lay = expert_layout_;
    auto fits = [&](const at::Tensor& t, int64_t out, int64_t in, int64_t bytes) {
      if (!t.defined() || t.device() != device_) return false;
      if (lay.format.quantized()) {
        return t.scalar_type() == at::kByte && t.is_contiguous() && t.numel() == bytes;
      }
      return t.scalar_type() == dtype_ && t.dim() == 2 && t.size(0) == out && t.size(1) == in;
    };
    if (!fits(x.gate_up, 2 * inter, h, lay.gate_up_bytes) ||
        !fits(x.down, h, inter, lay.down_bytes)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Forward: expert ", e, " of layer ", layer,
          " in ForwardOptions::experts is not held as this engine holds experts (",
          lay.format.quantized() ? lay.format.ToString() : std::string(c10::toString(dtype_)),
          " on ", device_.str(), ")"));
    }
    return absl::OkStatus();
  }

  Batch MakeBatch(const std::vector<std::vector<int64_t>>& tokens, const KvCacheImpl& kv) const {
    Batch bt;
    std::vector<int64_t> seq, pos, slot_a, slot_i, ids;
    std::vector<int64_t> len_of_active;
    for (size_t b = 0; b < tokens.size(); ++b) {
      if (tokens[b].empty()) continue;
      const int64_t a = static_cast<int64_t>(bt.active.size());
      bt.active.push_back(static_cast<int64_t>(b));
      len_of_active.push_back(kv.lengths_[b]);
      bt.s_max = std::max<int64_t>(bt.s_max, tokens[b].size());
      bt.l_max = std::max<int64_t>(bt.l_max, kv.lengths_[b] + tokens[b].size());
      for (size_t i = 0; i < tokens[b].size(); ++i) {
        seq.push_back(static_cast<int64_t>(b));
        pos.push_back(kv.lengths_[b] + static_cast<int64_t>(i));
        slot_a.push_back(a);
        slot_i.push_back(static_cast<int64_t>(i));
      }
    }
    bt.tokens = static_cast<int64_t>(seq.size());
    bt.all_active = static_cast<int64_t>(bt.active.size()) == kv.batch_;
    auto lopt = at::TensorOptions().dtype(at::kLong);
    bt.seq = at::tensor(seq, lopt).to(device_);
    bt.pos = at::tensor(pos, lopt).to(device_);
    bt.slot_a = at::tensor(slot_a, lopt).to(device_);
    bt.slot_i = at::tensor(slot_i, lopt).to(device_);
    bt.active_t = at::tensor(bt.active, lopt).to(device_);
    // Query slot positions; padded slots get position 0 so they attend to
    // key 0 only (their output is discarded; this just avoids NaN rows).
    const int64_t ba = static_cast<int64_t>(bt.active.size());
    std::vector<int64_t> qpos(ba * bt.s_max, 0);
    for (int64_t a = 0; a < ba; ++a) {
      const int64_t n = static_cast<int64_t>(tokens[bt.active[a]].size());
      for (int64_t i = 0; i < n; ++i) qpos[a * bt.s_max + i] = len_of_active[a] + i;
    }
    bt.qpos = at::tensor(qpos, lopt).view({ba, bt.s_max}).to(device_);
    at::Tensor j = at::arange(bt.l_max, lopt.device(device_));
    bt.full_mask = j.view({1, 1, -1}) <= bt.qpos.unsqueeze(-1);

    // RoPE tables for these positions.
    Rope rope = static_rope_;
    if (config_.rope.type == checkpoint::RopeType::kDynamic) {
      rope = ComputeRope(config_, *std::max_element(pos.begin(), pos.end()) + 1);
    }
    at::Tensor freqs = bt.pos.to(at::kFloat).unsqueeze(-1) * rope.inv_freq.to(device_).unsqueeze(0);
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    bt.cos = (emb.cos() * rope.scaling).to(dtype_);
    bt.sin = (emb.sin() * rope.scaling).to(dtype_);
    return bt;
  }

  const at::Tensor& MaskFor(Batch& bt, int64_t layer) const {
    std::optional<int64_t> window = config_.SlidingWindow(static_cast<int>(layer));
    if (!window.has_value()) return bt.full_mask;
    auto it = bt.window_masks.find(*window);
    if (it != bt.window_masks.end()) return it->second;
    at::Tensor j = at::arange(bt.l_max, at::TensorOptions().dtype(at::kLong).device(device_));
    // HF sliding_window_overlay: kv_idx > q_idx - window. (Padded query
    // slots sit at position 0 and keep key 0.)
    at::Tensor m = bt.full_mask & (j.view({1, 1, -1}) > (bt.qpos.unsqueeze(-1) - *window));
    return bt.window_masks.emplace(*window, m).first->second;
  }

  // x [..., in] times each of `ls` ([out_i, in] weights): [..., out_i] each,
  // in `out` dtype (default: x's). One cpu_matvec call for all of them when
  // x has few rows or a weight is quantized, else one at::linear each (a
  // quantized weight then dequantized first: the reference path).
  absl::InlinedVector<at::Tensor, 3> Linears(
      const at::Tensor& x, std::initializer_list<const Linear*> ls,
      std::optional<at::ScalarType> out = std::nullopt) const {
    const at::ScalarType out_dtype = out.value_or(x.scalar_type());
    absl::InlinedVector<at::Tensor, 3> ys;
    bool quantized = false;
    for (const Linear* l : ls) quantized = quantized || l->quant.quantized();
    if (quantized && x.dim() > 2 && matvec_rows_ > 0 && !x.requires_grad()) {
      // The kernel takes rows: flatten, multiply, restore the leading dims.
      std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - 1);
      absl::InlinedVector<at::Tensor, 3> flat = Linears(x.reshape({-1, x.size(-1)}), ls, out);
      for (at::Tensor& y : flat) {
        std::vector<int64_t> shape = lead;
        shape.push_back(y.size(-1));
        y = y.view(shape);
      }
      return flat;
    }
    bool fast = x.dim() == 2 && !x.requires_grad() &&
                (x.size(0) <= matvec_rows_ || (quantized && matvec_rows_ > 0));
    for (const Linear* l : ls) fast = fast && (l->quant.quantized() || MatvecWeight(l->w));
    if (!fast) {
      for (const Linear* l : ls) {
        const at::Tensor w =
            l->quant.quantized()
                ? internal::DequantizeMatrix(l->quant, l->w, l->out, l->in, x.scalar_type())
                : l->w;
        at::Tensor y = l->b.defined() ? at::linear(x, w, l->b) : at::linear(x, w);
        ys.push_back(y.scalar_type() == out_dtype ? y : y.to(out_dtype));
      }
      return ys;
    }
    const at::Tensor xf = x.to(at::kFloat).contiguous();
    const int64_t m = xf.size(0), in = xf.size(1);
    absl::InlinedVector<const float*, kMatvecMaxRows> x_rows(m);
    for (int64_t i = 0; i < m; ++i) x_rows[i] = xf.const_data_ptr<float>() + i * in;
    absl::InlinedVector<float*, 3 * kMatvecMaxRows> y_rows(m * ls.size());
    absl::InlinedVector<MatvecJob, 3> jobs;
    for (const Linear* l : ls) {
      const int64_t n = l->quant.quantized() ? l->out : l->w.size(0);
      at::Tensor y = at::empty({m, n}, xf.options());
      float** rows = y_rows.data() + jobs.size() * m;
      for (int64_t i = 0; i < m; ++i) rows[i] = y.data_ptr<float>() + i * n;
      MatvecJob job;
      WeightJob(l->w, l->quant, n, in, job);
      job.x = x_rows.data();
      job.y = rows;
      job.rows = m;
      jobs.push_back(job);
      ys.push_back(std::move(y));
    }
    internal::RunMatvecs(jobs, matvec_isa_);
    size_t i = 0;
    for (const Linear* l : ls) {
      at::Tensor& y = ys[i++];
      if (l->b.defined()) y.add_(l->b);
      if (out_dtype != at::kFloat) y = y.to(out_dtype);
    }
    return ys;
  }

  at::Tensor Lin(const at::Tensor& x, const Linear& l) const { return Linears(x, {&l})[0]; }

  at::Tensor Mlp(const at::Tensor& x, const MlpWeights& m) const {
    at::Tensor gu = Lin(x, m.gate_up);
    at::Tensor act =
        at::silu(gu.narrow(-1, 0, m.intermediate)) * gu.narrow(-1, m.intermediate, m.intermediate);
    return Lin(act, m.down);
  }

  // q [Ba, s, H, Dq]; k [Ba, Hkv, L, Dq]; v [Ba, Hkv, L, Dv]; mask [Ba, s, L].
  // Returns [Ba, s, H * Dv]. Query heads are grouped by their KV head (HF's
  // repeat_kv order: q head h uses kv head h / G) so keys are never copied.
  at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& mask, double scale) const {
    const int64_t ba = q.size(0), s = q.size(1), h = q.size(2), dq = q.size(3);
    const int64_t hkv = k.size(1), g = h / hkv, l = k.size(2), dv = v.size(3);
    at::Tensor qg =
        q.view({ba, s, hkv, g, dq}).permute({0, 2, 3, 1, 4}).reshape({ba, hkv, g * s, dq});
    at::Tensor scores = at::matmul(qg, k.transpose(-1, -2)) * scale;  // [Ba, Hkv, G*s, L]
    scores = scores.view({ba, hkv, g, s, l})
                 .masked_fill(mask.logical_not().view({ba, 1, 1, s, l}), kNegInf);
    at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    at::Tensor out = at::matmul(probs.view({ba, hkv, g * s, l}), v);  // [Ba, Hkv, G*s, Dv]
    return out.view({ba, hkv, g, s, dv}).permute({0, 3, 1, 2, 4}).reshape({ba, s, h * dv});
  }

  // Scatters packed rows [T, ...] into padded [Ba, s_max, ...].
  at::Tensor Pad(const Batch& bt, const at::Tensor& x) const {
    std::vector<int64_t> shape = {static_cast<int64_t>(bt.active.size()), bt.s_max};
    for (int64_t d = 1; d < x.dim(); ++d) shape.push_back(x.size(d));
    at::Tensor out = at::zeros(shape, x.options());
    out.index_put_({bt.slot_a, bt.slot_i}, x);
    return out;
  }

  at::Tensor ActiveRows(const Batch& bt, const at::Tensor& cache_tensor) const {
    return bt.all_active ? cache_tensor : cache_tensor.index_select(0, bt.active_t);
  }

  at::Tensor AttentionGqa(const at::Tensor& x, int64_t layer, const AttentionWeights& a, Batch& bt,
                          KvCacheImpl& kv) const {
    const checkpoint::ModelConfig& c = config_;
    const int64_t t = bt.tokens, nh = c.num_attention_heads, nkv = c.num_key_value_heads,
                  d = c.head_dim;
    auto qkv = Linears(x, {&a.q, &a.k, &a.v});
    at::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
    if (c.qk_norm == checkpoint::QkNorm::kFull) {
      q = RmsNorm(q, a.q_norm, c.rms_norm_eps);
      k = RmsNorm(k, a.k_norm, c.rms_norm_eps);
    }
    if (c.clip_qkv.has_value()) {
      q = q.clamp(-*c.clip_qkv, *c.clip_qkv);
      k = k.clamp(-*c.clip_qkv, *c.clip_qkv);
      v = v.clamp(-*c.clip_qkv, *c.clip_qkv);
    }
    q = q.view({t, nh, d});
    k = k.view({t, nkv, d});
    v = v.view({t, nkv, d});
    if (c.qk_norm == checkpoint::QkNorm::kPerHead) {
      q = RmsNorm(q, a.q_norm, c.rms_norm_eps);
      k = RmsNorm(k, a.k_norm, c.rms_norm_eps);
    }
    q = ApplyRope(q, bt.cos, bt.sin, false);
    k = ApplyRope(k, bt.cos, bt.sin, false);
    // Cache layout [B, Hkv, cap, D]; write through a [B, cap, Hkv, D] view.
    kv.a[layer].permute({0, 2, 1, 3}).index_put_({bt.seq, bt.pos}, k);
    kv.b[layer].permute({0, 2, 1, 3}).index_put_({bt.seq, bt.pos}, v);
    at::Tensor keys = ActiveRows(bt, kv.a[layer]).narrow(2, 0, bt.l_max);
    at::Tensor values = ActiveRows(bt, kv.b[layer]).narrow(2, 0, bt.l_max);
    at::Tensor out = Attend(Pad(bt, q), keys, values, MaskFor(bt, layer), 1.0 / std::sqrt(d));
    out = out.index({bt.slot_a, bt.slot_i});  // [T, nh*d]
    return Lin(out, a.o);
  }

  at::Tensor AttentionMla(const at::Tensor& x, int64_t layer, const AttentionWeights& a, Batch& bt,
                          KvCacheImpl& kv) const {
    const checkpoint::ModelConfig& c = config_;
    const int64_t t = bt.tokens, nh = c.num_attention_heads, nope = c.qk_nope_head_dim,
                  rope = c.qk_rope_head_dim, vd = c.v_head_dim, r = c.kv_lora_rank;
    at::Tensor q = c.q_lora_rank.has_value()
                       ? Lin(RmsNorm(Lin(x, a.q_a), a.q_a_norm, c.rms_norm_eps), a.q_b)
                       : Lin(x, a.q);
    q = q.view({t, nh, nope + rope});
    at::Tensor q_nope = q.narrow(-1, 0, nope), q_rot = q.narrow(-1, nope, rope);
    at::Tensor ckv = Lin(x, a.kv_a);
    at::Tensor latent = RmsNorm(ckv.narrow(-1, 0, r), a.kv_a_norm, c.rms_norm_eps);
    at::Tensor k_rot = ckv.narrow(-1, r, rope).view({t, 1, rope});
    q_rot = ApplyRope(q_rot, bt.cos, bt.sin, c.rope_interleave);
    k_rot = ApplyRope(k_rot, bt.cos, bt.sin, c.rope_interleave).view({t, rope});
    kv.a[layer].index_put_({bt.seq, bt.pos}, latent);
    kv.b[layer].index_put_({bt.seq, bt.pos}, k_rot);
    at::Tensor lat = ActiveRows(bt, kv.a[layer]).narrow(1, 0, bt.l_max);  // [Ba, L, r]
    at::Tensor kr = ActiveRows(bt, kv.b[layer]).narrow(1, 0, bt.l_max);   // [Ba, L, rope]
    const int64_t ba = lat.size(0), l = bt.l_max;
    at::Tensor kvx = Lin(lat, a.kv_b).view({ba, l, nh, nope + vd});
    at::Tensor keys =
        at::cat({kvx.narrow(-1, 0, nope), kr.unsqueeze(2).expand({ba, l, nh, rope})}, -1)
            .permute({0, 2, 1, 3});                                      // [Ba, nh, L, qk]
    at::Tensor values = kvx.narrow(-1, nope, vd).permute({0, 2, 1, 3});  // [Ba, nh, L, vd]
    at::Tensor qf = at::cat({q_nope, q_rot}, -1);
    at::Tensor out = Attend(Pad(bt, qf), keys, values, MaskFor(bt, layer), c.AttentionScale());
    out = out.index({bt.slot_a, bt.slot_i});
    return Lin(out, a.o);
  }

  // Which experts each token may select: [T, N] bool, or undefined when all.
  at::Tensor AllowedExperts(const Batch& bt, int64_t layer, const ForwardOptions& options) const {
    const MoeWeights& moe = w_.layers[layer].moe;
    bool any = false;
    for (const KeptExperts* m : options.masks) any = any || (m != nullptr && m->Find(layer));
    if (!any) {
      if (moe.all_loaded) return at::Tensor();
      return moe.loaded_mask.unsqueeze(0).expand({bt.tokens, config_.num_routed_experts});
    }
    const int64_t batch = static_cast<int64_t>(options.masks.size());
    at::Tensor table = moe.loaded_mask.unsqueeze(0).repeat({batch, 1}).cpu();
    for (int64_t b = 0; b < batch; ++b) {
      const KeptExperts* m = options.masks[b];
      const std::vector<int64_t>* kept = m == nullptr ? nullptr : m->Find(layer);
      if (kept == nullptr) continue;
      at::Tensor row = at::zeros({config_.num_routed_experts}, at::kBool);
      row.index_fill_(0, at::tensor(*kept, at::TensorOptions().dtype(at::kLong)), true);
      table[b].copy_(row);
    }
    return table.to(device_).index_select(0, bt.seq);
  }

  // Routing for one MoE layer: returns (selected [T, K] global ids, weights
  // [T, K] fp32). `logits` [T, N] fp32 (-inf for experts not loaded).
  std::pair<at::Tensor, at::Tensor> Route(const at::Tensor& logits, const at::Tensor& allowed,
                                          const MoeWeights& moe) const {
    const checkpoint::ModelConfig& c = config_;
    const int64_t k = top_k_;
    at::Tensor weights_source, choice;
    if (c.scoring_func == checkpoint::RouterScoring::kSigmoid) {
      weights_source = logits.sigmoid();
      choice = weights_source + moe.e_score_bias;
      if (allowed.defined()) choice = choice.masked_fill(allowed.logical_not(), kNegInf);
    } else {
      at::Tensor s =
          allowed.defined() ? logits.masked_fill(allowed.logical_not(), kNegInf) : logits;
      weights_source = at::softmax(s, -1, at::kFloat);
      // Pruned experts have probability 0; give them -inf so they rank below
      // every kept expert even when a kept probability underflows to 0.
      choice = allowed.defined() ? weights_source.masked_fill(allowed.logical_not(), kNegInf)
                                 : weights_source;
    }
    at::Tensor idx;
    if (c.topk_method == checkpoint::TopkMethod::kGreedy) {
      idx = std::get<1>(at::topk(choice, k, -1));
    } else {
      const int64_t groups = *c.n_group, per = c.num_routed_experts / groups;
      at::Tensor g = choice.view({-1, groups, per});
      at::Tensor group_score;
      if (c.topk_method == checkpoint::TopkMethod::kNoauxTc) {
        at::Tensor top2 = std::get<0>(g.topk(std::min<int64_t>(2, per), -1));
        at::Tensor finite = at::isfinite(top2);
        group_score = at::where(finite, top2, at::zeros_like(top2)).sum(-1);
        group_score = group_score.masked_fill(finite.select(-1, 0).logical_not(), kNegInf);
      } else {
        group_score = std::get<0>(g.max(-1));
      }
      at::Tensor group_idx = std::get<1>(at::topk(group_score, *c.topk_group, -1));
      at::Tensor chosen = at::zeros_like(group_score, at::kBool).scatter_(1, group_idx, true);
      chosen = chosen.unsqueeze(-1).expand({-1, groups, per}).reshape({-1, c.num_routed_experts});
      // Experts of the chosen groups first; the others only fill slots the
      // chosen groups cannot (possible only under a mask). fp64 keeps the
      // order within each tier exact.
      at::Tensor key = choice.to(at::kDouble) - at::where(chosen, at::zeros({}, at::kDouble),
                                                          at::full({}, 1e6, at::kDouble));
      idx = std::get<1>(at::topk(key, k, -1));
    }
    at::Tensor w = weights_source.gather(1, idx);
    if (c.norm_topk_prob) {
      w = c.topk_method == checkpoint::TopkMethod::kNoauxTc ? w / (w.sum(-1, true) + 1e-20)
                                                            : w / w.sum(-1, true);
    }
    if (c.routed_scaling_factor != 1.0) w = w * c.routed_scaling_factor;
    return {idx, w};
  }

  at::Tensor MoeBlock(const at::Tensor& x, int64_t layer, const MoeWeights& moe, const Batch& bt,
                      const ForwardOptions& options) const {
    const int64_t t = bt.tokens, n = config_.num_routed_experts;
    at::Tensor logits = at::linear(x.to(at::kFloat), moe.gate);  // [T, N_loaded]
    if (!moe.all_loaded) {
      at::Tensor full = at::full({t, n}, kNegInf, logits.options());
      full.index_copy_(1, moe.loaded_ids, logits);
      logits = full;
    }
    at::Tensor allowed = AllowedExperts(bt, layer, options);
    auto [idx, w] = Route(logits, allowed, moe);
    auto tap_event = [&, &idx = idx, &w = w] {
      GateEvent ev;
      ev.layer = layer;
      ev.sequence = bt.seq;
      ev.position = bt.pos;
      ev.gate_logits = logits;
      ev.selected_experts = idx;
      ev.routing_weights = w;
      return ev;
    };
    if (options_.probe_moe_layers > 0 && layer == probe_layer_) {
      // Nothing after this layer runs, so its output is never read.
      if (options.tap != nullptr) options.tap->OnGate(tap_event());
      return at::zeros_like(x);
    }

    const bool want_norms = options.tap != nullptr && options.tap->WantsExpertNorms();
    at::Tensor norms;  // [T, K] fp32, when want_norms
    at::Tensor out;
    // Quantized experts take the kernel at every batch size: it dequantizes
    // in registers once per weight row for all the rows of the product,
    // where libtorch would need a dense copy of each expert.
    if ((t <= matvec_rows_ || (matvec_rows_ > 0 && expert_layout_.format.quantized())) &&
        !x.requires_grad()) {
      out = RoutedExpertsMatvec(x, layer, moe, idx, w, options, want_norms ? &norms : nullptr);
    }
    if (!out.defined()) {
      out = RoutedExpertsLibtorch(x, layer, moe, idx, w, options, want_norms ? &norms : nullptr);
    }
    if (ExpertParallel* ep = options.expert_parallel) {
      if (absl::Status s = ep->AllReduceSum(out); !s.ok()) {
        throw std::runtime_error(absl::StrCat("expert-parallel all-reduce: ", s.ToString()));
      }
    }

    if (options.tap != nullptr) {
      GateEvent ev = tap_event();
      if (want_norms) ev.expert_norms = norms;
      options.tap->OnGate(ev);
    }

    if (moe.has_shared) {
      at::Tensor shared = Mlp(x, moe.shared);
      if (moe.shared_gate.defined()) shared = at::sigmoid(at::linear(x, moe.shared_gate)) * shared;
      out = out + shared;
    }
    return out;
  }

  // The gate_up [2I, H] and down [H, I] weights of routed expert `e` (a
  // global id) of `layer`: the resident stack's rows, the mapped experts or
  // the forward's set.
  std::pair<at::Tensor, at::Tensor> ExpertTensors(int64_t layer, const MoeWeights& moe, int64_t e,
                                                  const ForwardOptions& options) const {
    if (options_.experts_on_demand) {
      const ExpertWeights* x = options.experts->Find(layer, e);  // checked in CheckExpertSet
      if (x == nullptr) throw std::logic_error("a routed expert is missing from the ExpertSet");
      return {x->gate_up, x->down};
    }
    const int64_t local =
        moe.all_loaded
            ? e
            : std::lower_bound(moe.loaded.begin(), moe.loaded.end(), e) - moe.loaded.begin();
    if (!moe.mapped_gate_up.empty()) return {moe.mapped_gate_up[local], moe.mapped_down[local]};
    return {moe.gate_up[local], moe.down[local]};
  }

  // The weight half of a cpu_matvec job for one matrix [out, in] held as
  // `q` (dense: t itself); false when the kernel cannot take it (a dense
  // tensor of another dtype or layout).
  bool WeightJob(const at::Tensor& t, const checkpoint::QuantFormat& q, int64_t out, int64_t in,
                 MatvecJob& job) const {
    job.int8_activations = options_.int8_activations;
    job.out = out;
    job.in = in;
    job.ldw = in;
    if (!q.quantized()) {
      if (!MatvecWeight(t)) return false;
      job.w = t.const_data_ptr();
      job.type = MatvecType(t);
      return true;
    }
    const checkpoint::QuantizedView v =
        checkpoint::ViewQuantized(q, out, in, static_cast<const std::byte*>(t.const_data_ptr()));
    job.w = v.q;
    job.type = q.type == checkpoint::QuantType::kInt8 ? WeightType::kInt8 : WeightType::kInt4;
    job.scales = v.scales;
    job.mins = v.mins;
    job.group = q.group;
    return true;
  }

  // Routed experts through cpu_matvec. Every (token, slot) pair's
  // gate_up product runs in one call, SiLU, every down product in another;
  // then each token sums its slots' outputs in slot order in fp32, so a
  // token's result does not depend on the rest of the batch. Returns [T, H]
  // in x's dtype, or an undefined tensor when an expert's tensors do not suit
  // the kernel (the caller then takes the libtorch path). A rank of an
  // expert-parallel group leaves other ranks' experts at zero.
  at::Tensor RoutedExpertsMatvec(const at::Tensor& x, int64_t layer, const MoeWeights& moe,
                                 const at::Tensor& idx, const at::Tensor& w,
                                 const ForwardOptions& options, at::Tensor* norms) const {
    const int64_t t = x.size(0), k = idx.size(1), h = x.size(1),
                  inter = config_.moe_intermediate_size, pairs = t * k;
    const at::Tensor ids = idx.contiguous();
    const at::Tensor weights = w.to(at::kFloat).contiguous();
    const int64_t* id = ids.const_data_ptr<int64_t>();
    ExpertParallel* ep = options.expert_parallel;

    // Pairs grouped by expert, experts in id order.
    absl::InlinedVector<int64_t, 4 * kMatvecMaxRows> order(pairs);
    for (int64_t p = 0; p < pairs; ++p) order[p] = p;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return id[a] < id[b]; });

    const at::Tensor xf = x.to(at::kFloat).contiguous();
    // Rows of pairs whose expert another rank owns stay zero.
    auto make = [&](int64_t cols) {
      return ep != nullptr ? at::zeros({pairs, cols}, xf.options())
                           : at::empty({pairs, cols}, xf.options());
    };
    at::Tensor gu = make(2 * inter), down = make(h);
    absl::InlinedVector<const float*, 4 * kMatvecMaxRows> gu_in(pairs), down_in(pairs);
    absl::InlinedVector<float*, 4 * kMatvecMaxRows> gu_out(pairs), down_out(pairs);
    absl::InlinedVector<MatvecJob, 4 * kMatvecMaxRows> gu_jobs, down_jobs;
    absl::InlinedVector<at::Tensor, 8 * kMatvecMaxRows> keep_alive;
    for (int64_t i = 0; i < pairs;) {
      const int64_t e = id[order[i]];
      int64_t end = i;
      while (end < pairs && id[order[end]] == e) ++end;
      if (ep != nullptr && !ep->Owns(e)) {
        i = end;
        continue;
      }
      auto [g, d] = ExpertTensors(layer, moe, e, options);
      MatvecJob gj, dj;
      const checkpoint::QuantFormat& q = expert_layout_.format;
      if (!WeightJob(g, q, 2 * inter, h, gj) || !WeightJob(d, q, h, inter, dj)) {
        return at::Tensor();
      }
      for (int64_t r = i; r < end; ++r) {
        const int64_t p = order[r];
        gu_in[r] = xf.const_data_ptr<float>() + (p / k) * h;
        gu_out[r] = gu.data_ptr<float>() + p * 2 * inter;
        down_out[r] = down.data_ptr<float>() + p * h;
      }
      gj.x = gu_in.data() + i;
      gj.y = gu_out.data() + i;
      gj.rows = end - i;
      dj.x = down_in.data() + i;
      dj.y = down_out.data() + i;
      dj.rows = end - i;
      gu_jobs.push_back(gj);
      down_jobs.push_back(dj);
      keep_alive.push_back(std::move(g));
      keep_alive.push_back(std::move(d));
      i = end;
    }
    internal::RunMatvecs(gu_jobs, matvec_isa_);
    const at::Tensor act = at::silu(gu.narrow(1, 0, inter)) * gu.narrow(1, inter, inter);
    for (int64_t r = 0; r < pairs; ++r) {
      down_in[r] = act.const_data_ptr<float>() + order[r] * inter;
    }
    internal::RunMatvecs(down_jobs, matvec_isa_);

    at::Tensor out = at::zeros({t, h}, xf.options());
    const float* ys = down.const_data_ptr<float>();
    const float* wt = weights.const_data_ptr<float>();
    for (int64_t tok = 0; tok < t; ++tok) {
      float* o = out.data_ptr<float>() + tok * h;
      for (int64_t slot = 0; slot < k; ++slot) {
        const int64_t p = tok * k + slot;
        const float c = wt[p];
        const float* y = ys + p * h;
        for (int64_t j = 0; j < h; ++j) o[j] += c * y[j];
      }
    }
    if (norms != nullptr) *norms = down.norm(2, {-1}).view({t, k});
    return out.to(x.scalar_type());
  }

  // Routed experts through libtorch, for any batch: the T*K (token, expert)
  // pairs grouped by expert, one matmul chain per active expert over its
  // tokens, then index_add back. Returns [T, H] in x's dtype.
  at::Tensor RoutedExpertsLibtorch(const at::Tensor& x, int64_t layer, const MoeWeights& moe,
                                   const at::Tensor& idx, const at::Tensor& w,
                                   const ForwardOptions& options, at::Tensor* norms) const {
    const int64_t t = x.size(0), n = config_.num_routed_experts, k = top_k_,
                  inter = config_.moe_intermediate_size;
    at::Tensor flat = idx.reshape({-1});
    at::Tensor local = flat;
    if (!moe.all_loaded) {
      at::Tensor g2l = at::full({n}, -1, at::TensorOptions().dtype(at::kLong).device(device_));
      g2l.index_copy_(0, moe.loaded_ids,
                      at::arange(static_cast<int64_t>(moe.loaded.size()), g2l.options()));
      local = g2l.index_select(0, flat);
    }
    at::Tensor order = at::argsort(local, /*stable=*/true);
    at::Tensor sorted = local.index_select(0, order);
    at::Tensor token_of = at::floor_divide(order, k);
    const int64_t e_loaded = static_cast<int64_t>(moe.loaded.size());
    at::Tensor counts = at::bincount(sorted, {}, e_loaded).cpu();
    const int64_t* cnt = counts.data_ptr<int64_t>();
    at::Tensor xs = x.index_select(0, token_of);
    // Split once, not narrowed per expert, and concatenated, not copied into
    // slices of one buffer: the same cost, but under autograd one node each
    // way, where per-expert views would each give back a zero-filled gradient
    // of the whole of xs to accumulate.
    const std::vector<at::Tensor> chunks =
        xs.split_with_sizes(c10::IntArrayRef(cnt, static_cast<size_t>(e_loaded)), 0);
    std::vector<at::Tensor> parts;
    ExpertParallel* ep = options.expert_parallel;
    // Training: one unbind per stack, whose backward stacks the experts'
    // gradients once, where indexing the stack per expert would give each
    // expert's gradient a zero-filled copy of the whole stack to accumulate.
    std::vector<at::Tensor> trained_gate_up, trained_down;
    if (moe.gate_up.defined() && moe.gate_up.requires_grad()) {
      trained_gate_up = moe.gate_up.unbind(0);
      trained_down = moe.down.unbind(0);
    }
    for (int64_t e = 0; e < e_loaded; ++e) {
      if (cnt[e] == 0) continue;
      // Another rank computes this expert: its rows stay zero here.
      if (ep != nullptr && !ep->Owns(moe.loaded[e])) {
        parts.push_back(at::zeros({cnt[e], x.size(1)}, x.options()));
        continue;
      }
      auto [gate_up, down] = trained_gate_up.empty()
                                 ? ExpertTensors(layer, moe, moe.loaded[e], options)
                                 : std::pair{trained_gate_up[e], trained_down[e]};
      if (const checkpoint::QuantFormat& q = expert_layout_.format; q.quantized()) {
        // The reference path: a dense copy of the expert, as the kernel's
        // registers see it.
        gate_up = internal::DequantizeMatrix(q, gate_up, 2 * inter, x.size(1), x.scalar_type());
        down = internal::DequantizeMatrix(q, down, x.size(1), inter, x.scalar_type());
      }
      const std::vector<at::Tensor> gu = at::linear(chunks[e], gate_up).split(inter, -1);
      at::Tensor act = at::silu(gu[0]) * gu[1];
      parts.push_back(at::linear(act, down));
    }
    at::Tensor ys = at::cat(parts, 0);
    at::Tensor w_sorted = w.reshape({-1}).index_select(0, order).unsqueeze(-1);
    at::Tensor out = at::zeros_like(x);
    out.index_add_(0, token_of, (ys.to(at::kFloat) * w_sorted).to(x.scalar_type()));
    if (norms != nullptr) {
      at::Tensor norms_sorted = ys.to(at::kFloat).norm(2, {-1});
      *norms = at::empty_like(norms_sorted);
      norms->index_copy_(0, order, norms_sorted);
      *norms = norms->view({t, k});
    }
    return out;
  }

  absl::StatusOr<at::Tensor> ForwardImpl(const std::vector<std::vector<int64_t>>& tokens,
                                         KvCacheImpl& kv, const ForwardOptions& options) const {
    Batch bt = MakeBatch(tokens, kv);
    std::vector<int64_t> flat_ids;
    flat_ids.reserve(bt.tokens);
    for (const auto& seq : tokens) flat_ids.insert(flat_ids.end(), seq.begin(), seq.end());
    at::Tensor ids = at::tensor(flat_ids, at::TensorOptions().dtype(at::kLong)).to(device_);
    const bool streamed = options_.streamed;
    at::Tensor h;
    if (streamed) {
      ASSIGN_OR_RETURN(h, internal::LoadEmbeddingRows(*checkpoint_, config_, ids, dtype_, device_));
    } else {
      h = w_.embed.index_select(0, ids);
    }
    const double eps = config_.rms_norm_eps;
    const int64_t layers =
        options.last_layer >= 0 ? options.last_layer + 1 : config_.num_hidden_layers;
    for (int64_t l = 0; l < layers; ++l) {
      // Streamed: this layer's weights and cache exist only for this iteration.
      LayerWeights streamed_layer;
      if (streamed) {
        ASSIGN_OR_RETURN(streamed_layer,
                         internal::LoadStreamedLayer(*checkpoint_, config_, w_.layers[l], l, dtype_,
                                                     device_, options_.map_experts));
        AllocateLayerCache(kv, l);
      }
      const LayerWeights& L = streamed ? streamed_layer : w_.layers[l];
      at::Tensor normed = RmsNorm(h, L.input_norm, eps);
      h = h + (IsDeepseek(config_) ? AttentionMla(normed, l, L.attn, bt, kv)
                                   : AttentionGqa(normed, l, L.attn, bt, kv));
      normed = RmsNorm(h, L.post_norm, eps);
      h = h + (L.is_moe ? MoeBlock(normed, l, L.moe, bt, options) : Mlp(normed, L.mlp));
      if (streamed) {
        kv.a[l].reset();
        kv.b[l].reset();
      }
    }
    for (size_t b = 0; b < tokens.size(); ++b) {
      kv.lengths_[b] += static_cast<int64_t>(tokens[b].size());
    }
    if (options.skip_logits || options.last_layer >= 0) return at::Tensor();
    at::Tensor final_norm = w_.final_norm;
    Linear head = w_.lm_head;
    if (streamed) {
      RETURN_IF_ERROR(internal::LoadHead(*checkpoint_, config_, dtype_, device_, nullptr,
                                         &final_norm, &head.w, nullptr, /*release=*/true));
    }
    if (options.all_logits) {
      h = RmsNorm(h, final_norm, eps);
      return Linears(h, {&head}, at::kFloat)[0];
    }
    // Only each sequence's last new token reaches the lm_head.
    std::vector<int64_t> last;
    int64_t offset = 0;
    for (const auto& seq : tokens) {
      offset += static_cast<int64_t>(seq.size());
      if (!seq.empty()) last.push_back(offset - 1);
    }
    at::Tensor rows =
        h.index_select(0, at::tensor(last, at::TensorOptions().dtype(at::kLong)).to(device_));
    at::Tensor logits = Linears(RmsNorm(rows, final_norm, eps), {&head}, at::kFloat)[0];
    if (bt.all_active) return logits;
    at::Tensor out =
        at::zeros({static_cast<int64_t>(tokens.size()), config_.vocab_size}, logits.options());
    out.index_copy_(0, bt.active_t, logits);
    return out;
  }

  // One expert's bytes into CPU tensors: from the pack, else the checkpoint.
  absl::Status ReadExpertBytes(int64_t layer, int64_t expert, at::Tensor gate_up,
                               at::Tensor down) const {
    if (pack_ != nullptr) {
      auto* g = static_cast<uint8_t*>(gate_up.data_ptr());
      auto* d = static_cast<uint8_t*>(down.data_ptr());
      // A cache slot (both views of one storage, down at its layout offset,
      // the storage covering the whole slot) is filled with one pread.
      const checkpoint::ExpertSlotLayout& lay = pack_->layout();
      const auto* base = static_cast<const uint8_t*>(gate_up.storage().data());
      if (gate_up.storage().is_alias_of(down.storage()) && d == g + lay.down_offset &&
          g + lay.bytes <= base + gate_up.storage().nbytes()) {
        return pack_->ReadSlot(layer, expert, std::span<uint8_t>(g, lay.bytes));
      }
      return pack_->Read(layer, expert, std::span<uint8_t>(g, gate_up.nbytes()),
                         std::span<uint8_t>(d, down.nbytes()));
    }
    return internal::LoadExpertBytes(*checkpoint_, config_, layer, expert, expert_layout_, dtype_,
                                     static_cast<std::byte*>(gate_up.data_ptr()),
                                     static_cast<std::byte*>(down.data_ptr()));
  }

  absl::Status CopyExpertToDevice(int64_t layer, int64_t expert, const ExpertWeights& into) const {
#if PREMOE_CUDA_ENABLED
    // Pinned staging (from the caching host allocator, so it is reused), then
    // an asynchronous copy on a pool stream: the compute stream keeps running
    // forwards of the experts already resident.
    const auto pinned = at::TensorOptions().dtype(into.gate_up.scalar_type()).pinned_memory(true);
    at::Tensor gate_up = at::empty(into.gate_up.sizes(), pinned);
    at::Tensor down = at::empty(into.down.sizes(), pinned);
    RETURN_IF_ERROR(ReadExpertBytes(layer, expert, gate_up, down));
    c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(false, device_.index());
    {
      c10::cuda::CUDAStreamGuard guard(stream);
      into.gate_up.copy_(gate_up, /*non_blocking=*/true);
      into.down.copy_(down, /*non_blocking=*/true);
      // (copy_ records the stream's use of the pinned buffers, so the host
      // allocator does not hand them out again before the copy ends.)
    }
    stream.synchronize();
    return absl::OkStatus();
#else
    (void)layer;
    (void)expert;
    (void)into;
    return absl::FailedPreconditionError("LoadExpertInto: this premoe was built without CUDA");
#endif
  }

  checkpoint::ModelConfig config_;
  EngineOptions options_;
  ModelWeights w_;
  at::ScalarType dtype_;
  at::Device device_;
  std::shared_ptr<const checkpoint::Checkpoint> checkpoint_;
  std::unique_ptr<const checkpoint::ExpertPack>
      pack_;  // options_.expert_pack, opened by OpenExpertPack
  checkpoint::ExpertSlotLayout expert_layout_;
  int64_t top_k_ = 0;
  // Products of at most this many rows take cpu_matvec (0: none; see
  // kMatvecMaxRows and EngineOptions::cpu_kernels).
  int64_t matvec_rows_ = 0;
  internal::MatvecIsa matvec_isa_ = internal::MatvecBestIsa();  // options_.cpu_isa
  // The probe_moe_layers-th MoE layer: where a probe engine stops.
  int64_t probe_layer_ = 0;
  int64_t max_context_ = 0;
  Rope static_rope_;
  std::vector<int64_t> eos_;
  std::vector<std::pair<std::string, at::Tensor>> parameters_;
};

// ---- Generation ----------------------------------------------------------------

absl::StatusOr<std::vector<GenerationResult>> EngineImpl::Generate(
    const std::vector<GenerationRequest>& requests, const GenerationOptions& options, GateTap* tap,
    const std::function<void(int64_t, int64_t)>& on_token) const {
  RETURN_IF_ERROR(CheckResident("Generate"));
  RETURN_IF_ERROR(CheckOwnsExperts("Generate"));
  RETURN_IF_ERROR(options.Validate());
  if (requests.empty()) return absl::InvalidArgumentError("Generate: no requests");
  int64_t capacity = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& prompt = requests[i].prompt;
    if (prompt.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Generate: request ", i, " has an empty prompt"));
    }
    if (static_cast<int64_t>(prompt.size()) >= max_context_) {
      return absl::InvalidArgumentError(absl::StrCat("Generate: request ", i, "'s prompt has ",
                                                     prompt.size(), " tokens; the context holds ",
                                                     max_context_));
    }
    // Compared without adding: max_new_tokens near 2^63 would overflow the sum.
    if (options.max_new_tokens > max_context_ - static_cast<int64_t>(prompt.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Generate: request ", i, ": prompt (", prompt.size(), " tokens) + max_new_tokens (",
          options.max_new_tokens, ") exceeds the context limit ", max_context_));
    }
    capacity = std::max(capacity, static_cast<int64_t>(prompt.size()) + options.max_new_tokens);
  }
  const int64_t batch = static_cast<int64_t>(requests.size());
  ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, NewCache(batch, capacity));
  ForwardOptions fo;
  fo.tap = tap;
  fo.expert_parallel = options.expert_parallel;
  bool any_mask = false;
  for (const auto& r : requests) any_mask = any_mask || r.mask != nullptr;
  if (any_mask) {
    for (const auto& r : requests) fo.masks.push_back(r.mask);
  }
  std::vector<SequenceSampler> samplers;
  std::vector<std::vector<int64_t>> step(batch);
  for (int64_t i = 0; i < batch; ++i) {
    samplers.emplace_back(options, options.seed + static_cast<uint64_t>(i), eos_);
    step[i] = requests[i].prompt;
  }
  auto stream = [&](int64_t i, const std::vector<int64_t>& tokens) {
    if (on_token) {
      for (int64_t t : tokens) on_token(i, t);
    }
  };

  try {
    int64_t remaining = batch;
    while (remaining > 0) {
      ASSIGN_OR_RETURN(at::Tensor logits, Forward(step, cache.get(), fo));
      logits = logits.cpu();
      for (int64_t i = 0; i < batch; ++i) {
        SequenceSampler& d = samplers[i];
        step[i].clear();
        if (d.finished()) continue;
        stream(i, d.Step(logits[i]));
        if (!d.finished() && options.stop_requested && options.stop_requested(i)) {
          stream(i, d.Stop(GenerationResult::FinishReason::kStopSequence));
        }
        if (d.finished()) {
          --remaining;
        } else {
          step[i] = {d.next_input()};
        }
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("Generate: libtorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("Generate: ", e.what()));
  }
  std::vector<GenerationResult> results;
  for (const SequenceSampler& d : samplers) results.push_back(d.result());
  return results;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Open(const std::string& model_dir,
                                                     const EngineOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  ASSIGN_OR_RETURN(checkpoint::ModelConfig config, checkpoint::LoadModelConfig(model_dir));
  const int64_t top_k = options.top_k > 0 ? options.top_k : config.num_experts_per_tok;
  if (top_k > config.num_routed_experts) {
    return absl::InvalidArgumentError(absl::StrCat("EngineOptions.top_k ", options.top_k,
                                                   " exceeds the model's ",
                                                   config.num_routed_experts, " routed experts"));
  }
  RETURN_IF_ERROR(options.keep.Validate(config, top_k));
  ASSIGN_OR_RETURN(std::unique_ptr<const checkpoint::Checkpoint> checkpoint,
                   checkpoint::Checkpoint::Open(model_dir));
  ASSIGN_OR_RETURN(const checkpoint::QuantFormat quant,
                   checkpoint::QuantFormat::Parse(options.expert_quant));
  internal::DenseQuant dense_quant;
  ASSIGN_OR_RETURN(dense_quant.attention, checkpoint::QuantFormat::Parse(options.attention_quant));
  ASSIGN_OR_RETURN(dense_quant.dense_mlp, checkpoint::QuantFormat::Parse(options.dense_mlp_quant));
  ASSIGN_OR_RETURN(dense_quant.shared_experts,
                   checkpoint::QuantFormat::Parse(options.shared_expert_quant));
  ASSIGN_OR_RETURN(dense_quant.lm_head, checkpoint::QuantFormat::Parse(options.lm_head_quant));
  checkpoint::ExpertSlotLayout layout;
  if (config.num_routed_experts > 0) {
    ASSIGN_OR_RETURN(layout, checkpoint::ExpertSlotLayout::For(
                                 quant, config.hidden_size, config.moe_intermediate_size,
                                 options.dtype == "fp32" ? 4 : 2, model_dir + ": routed expert"));
  }
  try {
    const at::ScalarType dtype = options.dtype == "fp32" ? at::kFloat : at::kBFloat16;
    const at::Device device(options.device);
    if (device.is_cuda() && !at::hasCUDA()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "EngineOptions.device is \"", options.device, "\" but no CUDA device is available"));
    }
    if (options.probe_moe_layers > 0) {
      int64_t last = -1, seen = 0;
      for (int64_t l = 0; l < config.num_hidden_layers && seen < options.probe_moe_layers; ++l) {
        if (config.IsMoeLayer(static_cast<int>(l))) {
          last = l;
          ++seen;
        }
      }
      if (seen < options.probe_moe_layers) {
        return absl::InvalidArgumentError(
            absl::StrCat(model_dir, ": EngineOptions.probe_moe_layers is ",
                         options.probe_moe_layers, " but the model has ", seen, " MoE layers"));
      }
      ASSIGN_OR_RETURN(internal::ModelWeights weights,
                       internal::LoadProbeWeights(*checkpoint, config, last, dtype, device));
      return std::unique_ptr<Engine>(new EngineImpl(std::move(config), options, std::move(weights),
                                                    dtype, device, nullptr, std::move(layout)));
    }
    if (options.streamed) {
      ASSIGN_OR_RETURN(
          internal::ModelWeights routers,
          internal::LoadRouterWeights(*checkpoint, config, options.keep, dtype, device));
      return std::unique_ptr<Engine>(new EngineImpl(std::move(config), options, std::move(routers),
                                                    dtype, device, std::move(checkpoint),
                                                    std::move(layout)));
    }
    const bool on_demand = options.experts_on_demand;
    ASSIGN_OR_RETURN(internal::ModelWeights weights,
                     internal::LoadWeights(*checkpoint, config, options.keep, dtype, device,
                                           /*routed_experts=*/!on_demand, quant, dense_quant,
                                           options.map_experts && !options.trainable));
    std::shared_ptr<const checkpoint::Checkpoint> kept_checkpoint;
    if (on_demand) kept_checkpoint = std::move(checkpoint);
    auto engine =
        std::make_unique<EngineImpl>(std::move(config), options, std::move(weights), dtype, device,
                                     std::move(kept_checkpoint), std::move(layout));
    RETURN_IF_ERROR(engine->OpenExpertPack());
    return std::unique_ptr<Engine>(std::move(engine));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(model_dir, ": loading failed in libtorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(model_dir, ": loading failed: ", e.what()));
  }
}

}  // namespace premoe::model
