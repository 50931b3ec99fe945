// The MoE inference engine: runs a Hugging Face-format checkpoint of one of
// the architectures in config.h with libtorch (plain ATen ops on the weight
// tensors), with a KV cache, batched prefill/decode, gate taps, per-request
// expert masks and reduced models.
//
// Numerics follow transformers 5.24's modeling code for each model_type:
//   - RMSNorm computes in fp32 and casts back before the weight multiply;
//   - attention scores are computed in the compute dtype and softmaxed in fp32;
//   - router (gate) logits are always computed in fp32 from fp32 gate weights
//     (HF does so for deepseek; for the others HF uses the compute dtype, so in
//     bf16 premoe's routing is slightly *more* precise than HF's);
//   - routing: softmax -> top-k -> optional renormalisation (qwen, olmoe,
//     mixtral, deepseek_v2), sigmoid + e_score_correction_bias for selection,
//     group-limited top-k, unbiased weights, norm, routed_scaling_factor
//     (deepseek_v3); see Routing below.
//
// Batching: the sequences of a batch are *packed*: every token-wise operation
// (projections, norms, router, experts, lm_head) runs on the concatenation of
// the sequences' new tokens, without padding, so taps and expert work see only
// real tokens. Only attention uses a padded [batch, heads, query, key] layout,
// with a per-sequence causal (and sliding-window) mask over that sequence's
// own cache. Each sequence of a KvCache has its own length; sequences of
// different lengths may be extended by different numbers of tokens in one
// Forward call.
//
// Expert masks: each sequence may carry a KeptExperts (per layer, the routed
// experts it may use). Pruned experts get a selection score of -inf *before*
// softmax / sigmoid-bias / group ranking / top-k, so masked routing equals the
// routing of a model whose gate holds only the kept rows. A reduced model
// (EngineOptions::keep) is built holding only its kept experts (the weights of
// the others are never read from the checkpoint) and routes exactly like the
// full model with the equivalent mask.
//
// Group-limited routing on a reduced set (deepseek_v2 group_limited_greedy,
// deepseek_v3 noaux_tc), the rule premoe implements:
//   1. groups are scored over their *kept* experts only: v2 by the best kept
//      score; v3 by the sum of its best two kept biased scores, or by its one
//      kept score when only one is kept; a group with no kept expert scores
//      -inf and is chosen only if fewer than topk_group groups have any;
//   2. the topk_group best groups are chosen (ties: lowest group index first);
//   3. top-k is taken over the kept experts of the chosen groups; if those
//      hold fewer than top-k kept experts, the remaining slots go to the best
//      kept experts of the other groups (so a token always gets top-k kept
//      experts, never a pruned one).
// Without a mask (every expert kept) this is exactly HF's routing.
//
// Errors: every method returns a Status; libtorch exceptions never escape
// (they become INTERNAL, or INVALID_ARGUMENT where the input was at fault).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "premoe/checkpoint/config.h"
#include "premoe/checkpoint/quant.h"

namespace premoe::model {

// Per MoE layer, the routed experts kept (allowed). A layer absent from
// `layers` keeps all its experts. A plain value; thread-compatible.
struct KeptExperts {
  // decoder layer index -> expert ids, sorted ascending, unique, each in
  // [0, num_routed_experts). Keys must be MoE layers (ModelConfig::IsMoeLayer).
  std::map<int64_t, std::vector<int64_t>> layers;

  // Keeps `experts` (any order; sorted and deduplicated here) in `layer`.
  void Set(int64_t layer, std::vector<int64_t> experts);
  // The kept experts of `layer`, or nullptr when every expert is kept.
  const std::vector<int64_t>* Find(int64_t layer) const;
  bool empty() const { return layers.empty(); }

  // INVALID_ARGUMENT when a key is not a MoE layer of `config`, an id is out
  // of range, ids are unsorted or repeated, or a layer keeps fewer than
  // `top_k` experts (lower top-k explicitly with EngineOptions::top_k).
  absl::Status Validate(const checkpoint::ModelConfig& config, int64_t top_k) const;
};

// One routed expert's weights on the engine's device, as
// Engine::LoadExpertInto fills them for an on-demand engine
// (EngineOptions::experts_on_demand), in the engine's expert format
// (Engine::expert_layout()):
//   dense (expert_quant "none"): gate_up [2I, H] (the gate projection's rows,
//     then the up projection's) and down [H, I], contiguous, compute dtype;
//   quantized: gate_up and down uint8 [bytes], contiguous and 16-byte
//     aligned, each one matrix in premoe/checkpoint/quant.h's layout.
// Immutable once made; shared between whoever holds it (a cache, the
// ExpertSets of forwards in flight).
struct ExpertWeights {
  at::Tensor gate_up;
  at::Tensor down;
};

// The routed experts one Forward of an on-demand engine may use, by (decoder
// layer, expert id). A plain value: the caller assembles it (e.g. from
// premoe::worker's expert cache) and must not change it during the Forward.
// The shared_ptrs keep each expert alive for as long as the set holds it,
// so a cache may evict an expert while a forward still uses it.
struct ExpertSet {
  std::map<std::pair<int64_t, int64_t>, std::shared_ptr<const ExpertWeights>> experts;
  const ExpertWeights* Find(int64_t layer, int64_t expert) const {
    auto it = experts.find({layer, expert});
    return it == experts.end() ? nullptr : it->second.get();
  }
};

// Expert parallelism: the ranks of a group run the same forward on the same
// tokens (attention and dense layers replicated); each computes only the
// routed experts it owns, and every MoE layer sums the ranks' partial outputs
// (an all-reduce), so each rank holds the layer's whole output. Shared
// experts are added after the sum, once. Implemented over c10d by
// premoe::worker (Gloo on CPU, NCCL on GPUs); the engine sees only this.
// A gate tap's expert_norms read 0 for experts other ranks compute. Not
// thread-safe: one forward at a time per object, and every rank must make the
// same calls in the same order.
class ExpertParallel {
 public:
  virtual ~ExpertParallel() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  // Whether this rank computes `expert` (of any layer): expert % world_size.
  bool Owns(int64_t expert) const { return expert % world_size() == rank(); }
  // Sums `partial` ([T, H], the engine's dtype and device) over the ranks,
  // in place.
  virtual absl::Status AllReduceSum(at::Tensor& partial) = 0;
};

// What a gate tap sees for one MoE layer (the MoE gate, often called the
// "router" in model code; premoe::router is the service that matches queries) of one forward pass.
// The tensors are valid during the callback only (copy what you keep); they live on the engine's
// device. T is the number of tokens of the forward pass (packed: every sequence's new tokens, in
// sequence order), N = num_routed_experts, K = the engine's top-k.
struct GateEvent {
  // Decoder layer index.
  int64_t layer = 0;
  // [T] int64: for each token, its sequence's index in the batch.
  at::Tensor sequence;
  // [T] int64: for each token, its position in its sequence (0-based).
  at::Tensor position;
  // [T, N] fp32: raw gate logits (before any mask). In a reduced model the
  // columns of experts that are not loaded read -inf.
  at::Tensor gate_logits;
  // [T, K] int64: the selected experts (global ids), best score first.
  at::Tensor selected_experts;
  // [T, K] fp32: the routing weights the experts' outputs were scaled by
  // (after normalisation and routed_scaling_factor).
  at::Tensor routing_weights;
  // [T, K] fp32: L2 norm of each selected expert's output (before the routing
  // weight); undefined unless GateTap::WantsExpertNorms().
  at::Tensor expert_norms;
};

// Receives gate activity. Called on the thread running Forward/Generate,
// once per MoE layer per forward pass, in layer order. When no tap is set the
// engine computes nothing for taps.
class GateTap {
 public:
  virtual ~GateTap() = default;
  // Whether to compute GateEvent::expert_norms (costs one norm per
  // selected expert output). Default: false.
  virtual bool WantsExpertNorms() const { return false; }
  virtual void OnGate(const GateEvent& event) = 0;
};

struct EngineOptions {
  // Compute dtype of weights and activations: "bf16" or "fp32". Checkpoint
  // tensors (F32, F16, BF16, or F8_E4M3 with block scales) are converted at
  // load. Router weights and e_score_correction_bias stay fp32. Default: "bf16".
  std::string dtype = "bf16";
  // "cpu" or "cuda[:N]" (CUDA needs a CUDA build and a GPU). Default: "cpu".
  std::string device = "cpu";
  // Reduced model: only these experts are loaded (per layer; layers absent
  // keep all). Default: empty (the full model).
  KeptExperts keep;
  // Experts per token; 0 means the config's num_experts_per_tok. A value
  // below the config's is how a caller lowers top-k explicitly (e.g. 4 of 64
  // kept). Must be in [0, num_routed_experts]. Default: 0.
  int64_t top_k = 0;
  // Largest total sequence length (prompt + generated) the engine accepts;
  // 0 means the config's max_position_embeddings. Default: 0.
  int64_t max_context = 0;
  // Training: the weights become autograd leaves (requires_grad), so a loss
  // computed from Forward's logits (and from a tap's gate_logits, which then
  // carry gradients too) back-propagates into Parameters(). Needs dtype
  // "fp32" and a full model (empty keep). Default: false.
  bool trainable = false;
  // Layer-streamed: for running a model larger than memory (profiling). Open
  // keeps the checkpoint mapped and holds only the routers (gates, as
  // Parameters(), so a fingerprint equals the resident engine's); each
  // Forward loads every decoder layer in turn, runs all of the batch's tokens
  // through it, and frees it before the next, releasing the pages it read.
  // Peak memory: one layer's weights, the routers, the batch's activations
  // and one layer's keys and values. Each Forward reads the checkpoint once,
  // so give it few, large batches. Only Forward without a cache (fresh
  // sequences) works; NewCache, Generate and SaveWeights answer
  // FAILED_PRECONDITION. Results equal the resident engine's bit for bit for
  // the same batch. Not with trainable. Default: false.
  bool streamed = false;
  // On-demand experts, for a worker that keeps only some experts resident
  // and changes which at run time: Open loads every weight but the routed
  // experts (routers whole; weight_bytes() counts what it holds), keeps the
  // checkpoint mapped, and LoadExpertInto reads one expert when asked. Every
  // Forward must carry ForwardOptions::experts and a mask for every sequence
  // with new tokens, each keeping only experts in that set (a layer a mask
  // leaves out keeps all its experts, so all must be in the set). Results
  // equal the resident engine's under the same masks. NewCache and Forward
  // with a cache work; Generate and SaveWeights answer FAILED_PRECONDITION.
  // Not with keep, trainable or streamed. Default: false.
  bool experts_on_demand = false;
  // With experts_on_demand: read experts from this expert pack (premoe
  // repack; model/expert_pack.h) instead of the checkpoint's safetensors:
  // one contiguous read per expert, already in the engine's expert format.
  // Open refuses a pack made for another model, dtype or expert_quant, or
  // from a checkpoint changed since (FAILED_PRECONDITION, naming both
  // sides). Default: "" (the checkpoint).
  std::string expert_pack;
  // The probe, for a router that needs only the first MoE gates' logits of
  // a query (the match embedding). P >= 1: Open loads the embedding, every
  // router, the layers before the P-th MoE layer whole and that layer's
  // attention and norms; no later layer, no lm_head (with P = 1, no expert
  // at all). Every Forward must pass last_layer = the P-th MoE layer and no
  // cache; there the MoE block only routes: the tap sees gate_logits,
  // selected_experts and routing_weights exactly as a full engine's (no
  // expert_norms there), and Forward returns an undefined tensor. Memory: a
  // few layers of a model of hundreds. Not with keep, trainable, streamed or
  // experts_on_demand. Default: 0 (not a probe).
  int64_t probe_moe_layers = 0;
  // How routed experts are held: "none" (the compute dtype), "int8" or
  // "int4[:gN]" (premoe/checkpoint/quant.h; checkpoint::QuantFormat::Parse
  // spells them). Quantized experts are made at load from the checkpoint's
  // own precision (bf16, fp16, fp32, or FP8 dequantised first), by the
  // engine for resident experts and by LoadExpertInto (or read as they are
  // from an expert pack of the same format) for on-demand ones; every expert
  // byte figure (weight_bytes, expert_bytes) counts them as held, scales
  // included. Routers, norms, embeddings, attention and shared experts keep
  // the compute dtype, so the first MoE layer routes exactly as dense; later
  // routers see inputs the quantized experts moved slightly (patterns are
  // still shared across formats: a fingerprint hashes the gates only). With
  // cpu_kernels they run in the kernel at every batch size (dequantized in
  // registers); without, libtorch multiplies a dequantized copy of each
  // expert, the reference the kernel is tested against. CPU only;
  // not with trainable, streamed or probe. int4 needs its group to divide
  // the hidden size and the expert width. Default: "none".
  std::string expert_quant = "none";
  // How the other large matrices are held, in the same spellings: the
  // attention projections (q, k, v, o; MLA's q_a, q_b, kv_a, kv_b), the MLPs
  // of dense layers, the shared experts (not their gate), and the lm_head (a
  // tied one gets a quantized copy; the embedding stays in the compute
  // dtype). Each is quantized at load from the compute dtype's copy, runs in
  // the CPU kernel at every batch size (libtorch multiplies a dequantized
  // copy when cpu_kernels is off) and is counted by weight_bytes as held.
  // The same restrictions as expert_quant; int4 needs its group to divide
  // each matrix's input dimension. Default: "none" each.
  std::string attention_quant = "none";
  std::string dense_mlp_quant = "none";
  std::string shared_expert_quant = "none";
  std::string lm_head_quant = "none";
  // On the CPU, products with at most 16 activation rows (decode steps,
  // short prompts) and their MoE experts run in premoe's own kernel
  // (model/src/cpu_matvec.h: one parallel region per group of products,
  // bf16 converted in registers, fp32 accumulation in an order independent
  // of the batch), not one libtorch op each; in bf16 on a CPU without native
  // bf16 arithmetic (no AVX512-BF16), products of every size do. false runs
  // every op through libtorch: the reference the kernel is tested against.
  // Ignored on CUDA and for trainable engines. Default: true.
  bool cpu_kernels = true;
  // The instruction set of that kernel: "" the best this CPU runs
  // (AVX512-BF16, else AVX-512, else AVX2, else portable C++); "avx512bf16",
  // "avx512", "avx2" or "portable" choose one (benchmarks compare them;
  // results differ between ISAs in the last bits, never between batches).
  // avx512bf16 multiplies bf16 weights by activations rounded to bf16, as
  // libtorch's bf16 products do. INVALID_ARGUMENT for another name or an
  // ISA this CPU lacks. Default: "".
  std::string cpu_isa;
  // int4 matrices whose group is a multiple of 128, on a CPU with
  // AVX512-VNNI: quantize each activation row to int8 per 128 inputs and
  // multiply in integers (model/src/cpu_matvec.h), as llama.cpp's Q4 x Q8
  // products do. Several times fewer instructions a weight; each product
  // then carries the activations' rounding (at most 1/254 of a block's
  // largest |x| per element). false: the exact product of the dequantized
  // weights in fp32 on every CPU. Default: true.
  bool int8_activations = true;
  // Routed experts that the checkpoint stores in the compute dtype (a bf16
  // checkpoint served in bf16) are used in place from its read-only mapping,
  // as llama.cpp uses its GGUF file: the load copies nothing and allocates no
  // memory for them, and their pages are the page cache's, shared with every
  // process mapping the file (the kernel may evict and re-read them under
  // memory pressure). The layout allowing it: transformers' fused experts,
  // or each expert's gate_proj followed by its up_proj in the file, as
  // safetensors orders tensors by name; other layouts are copied. Resident
  // and reduced CPU engines only (not trainable ones). false: every expert
  // is copied into memory of the engine's own. Default: true.
  bool map_experts = true;

  // Sets the *_quant fields from a spec: comma-separated items, each a
  // format (routed experts: "int4") or CLASS=FORMAT with CLASS one of
  // experts, attention, mlp (dense MLPs), shared, lm_head, or all (every
  // class). Later items override earlier ones: "all=int8,experts=int4".
  // "activations=fp32" (or int8) sets int8_activations. Classes not named
  // keep their value. INVALID_ARGUMENT naming the item.
  absl::Status SetQuant(absl::string_view spec);

  // INVALID_ARGUMENT for an unknown dtype, device or *_quant string,
  // top_k < 0, max_context < 0, probe_moe_layers < 0, trainable without
  // fp32, two of trainable, streamed, experts_on_demand, probe (or keep with
  // experts_on_demand or probe), or a quantized expert_quant with trainable,
  // streamed, probe or a device other than the CPU, or a cpu_isa this CPU
  // does not run. (keep, top_k, probe_moe_layers and
  // int4's group are checked against the model in Open.)
  absl::Status Validate() const;
};

class Engine;

// Keys and values of a batch of sequences. Made by Engine::NewCache, used by
// that engine only. Memory: allocated up front for `capacity` tokens per
// sequence (for deepseek, the compressed latent: kv_lora_rank +
// qk_rope_head_dim per token per layer). Not thread-safe; one forward at a
// time.
class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual int64_t batch_size() const = 0;
  virtual int64_t capacity() const = 0;
  // Tokens held for sequence `seq`.
  virtual int64_t length(int64_t seq) const = 0;
  // Forgets sequence `seq`'s tokens (its slot can take a new sequence).
  virtual void Clear(int64_t seq) = 0;
};

struct ForwardOptions {
  // Called per MoE layer; not owned; may be null. Default: null.
  GateTap* tap = nullptr;
  // Per sequence of the batch, its expert mask (not owned; null = no mask).
  // Empty, or one entry per sequence. Each must pass KeptExperts::Validate.
  std::vector<const KeptExperts*> masks;
  // true: logits for every new token, packed [T, V]; false: only the last
  // new token of each sequence, [B, V]. Default: false.
  bool all_logits = false;
  // true: run the layers for the taps only and return an undefined tensor,
  // skipping the final norm and lm_head (a streamed engine then never loads
  // them). The cache still advances. Default: false.
  bool skip_logits = false;
  // >= 0: run decoder layers 0..last_layer only, then stop, returning an
  // undefined tensor (a probe that needs one early router, e.g. the match
  // embedding's first MoE gate; a streamed engine loads no later layer).
  // Only without a KvCache. -1: every layer. Default: -1.
  int64_t last_layer = -1;
  // The routed experts of an on-demand engine (required there, ignored
  // otherwise); not owned. With expert_parallel, only the experts this rank
  // owns need be in it. Default: null.
  const ExpertSet* experts = nullptr;
  // Run as one rank of an expert-parallel group; not owned. Default: null.
  ExpertParallel* expert_parallel = nullptr;
};

// Sampling and stopping. Greedy when temperature == 0.
struct GenerationOptions {
  // Most tokens generated per request, >= 1; prompt + max_new_tokens must fit
  // in the engine's context. Default: 64.
  int64_t max_new_tokens = 64;
  // 0: greedy (argmax); > 0: sample from softmax(logits / temperature).
  // Default: 0.
  double temperature = 0.0;
  // Nucleus sampling: keep the smallest set of most likely tokens whose
  // probability reaches top_p, in (0, 1]. Default: 1 (off).
  double top_p = 1.0;
  // Keep only the top_k most likely tokens; 0 = off. Default: 0.
  int64_t top_k = 0;
  // Seed of the sampler; request i of a batch uses seed + i, so a request
  // samples the same tokens alone or in a batch. Default: 0.
  uint64_t seed = 0;
  // Stop after generating any of these token-id sequences (each non-empty);
  // the stop sequence is not included in the result. Default: none.
  std::vector<std::vector<int64_t>> stop_sequences;
  // Stop at the config's eos_token_ids (the eos token is not included).
  // Default: true.
  bool stop_at_eos = true;
  // Asked after each step for each unfinished request, once on_token has seen
  // that step's final tokens: true ends the request there (FinishReason
  // kStopSequence; tokens held back for stop_sequences go to on_token first).
  // For stop conditions the engine cannot see, e.g. stop strings matched in
  // decoded text, which token-id sequences cannot express across token
  // boundaries. Called on the Generate thread. Default: none.
  std::function<bool(int64_t request)> stop_requested;
  // Generate as one rank of an expert-parallel group (ForwardOptions::
  // expert_parallel); every rank calls Generate with the same requests and
  // options, and gets the same tokens. Not owned. Default: null.
  ExpertParallel* expert_parallel = nullptr;

  // INVALID_ARGUMENT for temperature < 0 (or not finite), top_p outside
  // (0, 1], top_k < 0, max_new_tokens < 1, an empty stop sequence.
  absl::Status Validate() const;
};

struct GenerationRequest {
  // Token ids, non-empty, each in [0, vocab_size).
  std::vector<int64_t> prompt;
  // Expert mask for this request (not owned); null = none.
  const KeptExperts* mask = nullptr;
};

struct GenerationResult {
  enum class FinishReason { kLength, kEos, kStopSequence };
  // Generated tokens (without the prompt, eos or stop sequence).
  std::vector<int64_t> tokens;
  FinishReason finish_reason = FinishReason::kLength;
};

// A loaded model. Ownership: owns its weights (copied/converted out of the
// checkpoint, which is closed after Open). Thread safety: const methods may
// run concurrently from several threads, each with its own KvCache.
class Engine {
 public:
  // Reads model_dir/config.json and the checkpoint in model_dir, converting
  // weights to options.dtype on options.device. Routed experts outside
  // options.keep are never read. Errors: NOT_FOUND for missing files or
  // tensors, INVALID_ARGUMENT for bad options, a mask that does not fit the
  // model, or tensors whose shapes disagree with the config.
  static absl::StatusOr<std::unique_ptr<Engine>> Open(const std::string& model_dir,
                                                      const EngineOptions& options);
  virtual ~Engine() = default;

  virtual const checkpoint::ModelConfig& config() const = 0;
  virtual const EngineOptions& options() const = 0;
  // The effective top-k (options().top_k, or the config's).
  virtual int64_t top_k() const = 0;
  // The effective context limit.
  virtual int64_t max_context() const = 0;
  // Bytes of all weight tensors held.
  virtual int64_t weight_bytes() const = 0;
  // Bytes one routed expert holds (gate, up and down) in the engine's expert
  // format, scales included: expert_layout().bytes.
  virtual int64_t expert_bytes() const = 0;
  // How one routed expert is held: where gate_up and down sit in a slot of
  // expert_bytes() bytes, and in which format (EngineOptions::expert_quant).
  virtual const checkpoint::ExpertSlotLayout& expert_layout() const = 0;

  // Reads routed expert `expert` of MoE layer `layer` from the checkpoint
  // (or the expert pack) into memory the caller owns and reuses (a cache's
  // slots), releasing the mapped pages it read: `into.gate_up` and
  // `into.down` as ExpertWeights describes for this engine's format, on the
  // engine's device (quantizing on the way when the source is not). On CPU the bytes go straight
  // from the file (pread) into them where no conversion is needed. On CUDA they are staged in
  // pinned host memory and copied on a side stream, so the compute stream is not held up; the call
  // returns once they have landed. On-demand engines only (FAILED_PRECONDITION otherwise);
  // INVALID_ARGUMENT for a layer that is not MoE, an expert out of range, or tensors of the wrong
  // shape, dtype or device. Thread-safe, also against Forward.
  virtual absl::Status LoadExpertInto(int64_t layer, int64_t expert,
                                      const ExpertWeights& into) const = 0;

  // The loaded weight called `name` (HF tensor name, e.g.
  // "model.layers.1.mlp.experts.3.gate_proj.weight"), in the compute dtype
  // (router weights fp32), as loaded and dequantised; NOT_FOUND when the
  // engine does not hold it densely (a pruned expert; a quantized matrix,
  // the message then naming the quantized classes). For tests and tools.
  virtual absl::StatusOr<at::Tensor> Weight(const std::string& name) const = 0;

  // The engine's own weight tensors, each once, named by where they sit
  // ("layers.3.moe.gate_up" is the [E, 2I, H] stack of a layer's routed
  // experts' fused gate and up projections, or, for experts used in place
  // from the checkpoint's mapping (map_experts), "layers.3.moe.experts.7.
  // gate_up" [2I, H] and ".down" [H, I] per expert, read-only; a quantized
  // class is held as
  // uint8 buffers in checkpoint/quant.h's layout, e.g. [E, slot bytes] for
  // routed experts). They are autograd leaves when
  // options().trainable; an optimizer updates them in place. Not thread-safe
  // against a concurrent Forward.
  virtual std::vector<std::pair<std::string, at::Tensor>> Parameters() const = 0;

  // The correction biases of the sigmoid routers (DeepSeek-V3's
  // e_score_correction_bias), [N] fp32, one per MoE layer as (layer, bias):
  // added to the router's scores to choose experts but not to weigh them, and
  // trained outside the gradient (auxiliary-loss-free balancing), so they are
  // not Parameters() and never require grad. A trainer may update them in
  // place (under at::NoGradGuard); the next Forward routes with the new
  // values and SaveWeights writes them. Empty for softmax routers. Not
  // thread-safe against a concurrent Forward.
  virtual std::vector<std::pair<int64_t, at::Tensor>> RouterBiases() const = 0;

  // Writes every weight the engine holds to `path` as one safetensors file
  // under its Hugging Face name, in the compute dtype (router weights fp32),
  // atomically. A reduced model writes only its loaded experts (and no gate,
  // whose pruned rows it does not hold): INVALID_ARGUMENT, since the file
  // would not be a checkpoint of the model.
  virtual absl::Status SaveWeights(const std::string& path) const = 0;

  // A cache for `batch_size` sequences of up to `capacity` tokens each
  // (capacity <= max_context). INVALID_ARGUMENT for sizes < 1 or too large.
  virtual absl::StatusOr<std::unique_ptr<KvCache>> NewCache(int64_t batch_size,
                                                            int64_t capacity) const = 0;

  // Runs tokens[b] (appended after what `cache` holds for sequence b; may be
  // empty for a sequence that sits this step out) through the model.
  // tokens.size() must equal cache->batch_size(). With cache == nullptr, a
  // fresh cache is used (every sequence starts at position 0).
  // Returns fp32 logits on the engine's device: [B, V] (the last new token of
  // each sequence; a sequence with no new tokens gets a zero row) or, with
  // options.all_logits, [T, V] for every new token in packed order (or,
  // with options.skip_logits or last_layer, an undefined tensor). A streamed engine takes
  // cache == nullptr only (FAILED_PRECONDITION otherwise).
  // INVALID_ARGUMENT for out-of-range tokens, sequences overflowing the cache,
  // masks of the wrong count or that do not fit the model.
  virtual absl::StatusOr<at::Tensor> Forward(const std::vector<std::vector<int64_t>>& tokens,
                                             KvCache* cache,
                                             const ForwardOptions& options = {}) const = 0;

  // Generates for a batch of requests (prefill together, then decode the
  // unfinished ones together). `on_token(request, token)`, when set, is
  // called for each generated token as soon as it is known to be final
  // (tokens that could start a stop sequence are held back). The tap, when
  // set, sees every forward pass. INVALID_ARGUMENT for an empty prompt, a
  // prompt + max_new_tokens over max_context(), bad options.
  virtual absl::StatusOr<std::vector<GenerationResult>> Generate(
      const std::vector<GenerationRequest>& requests, const GenerationOptions& options,
      GateTap* tap = nullptr,
      const std::function<void(int64_t, int64_t)>& on_token = nullptr) const = 0;
};

}  // namespace premoe::model
