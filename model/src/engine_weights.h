// Internal: the engine's weights, loaded from a Checkpoint into at::Tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "premoe/checkpoint/config.h"
#include "premoe/checkpoint/quant.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/model/engine.h"

namespace premoe::model::internal {

// y = x @ w^T + b. w [out, in] in the compute dtype, or, quantized, uint8
// [quant.Bytes(out, in, 0)] in checkpoint/quant.h's layout; b [out] or
// undefined (never quantized).
struct Linear {
  at::Tensor w;
  at::Tensor b;
  checkpoint::QuantFormat quant;  // kNone: w is dense
  int64_t out = 0, in = 0;        // w's shape, when quantized
};

struct AttentionWeights {
  // GQA (qwen, mixtral, olmoe).
  Linear q, k, v, o;
  at::Tensor q_norm, k_norm;  // per-head [D] or full [heads*D]; undefined when none
  // MLA (deepseek). q (above) is used when q_lora_rank is null.
  Linear q_a, q_b, kv_a, kv_b;
  at::Tensor q_a_norm, kv_a_norm;
};

// A SwiGLU MLP with gate and up fused: gate_up [2I, H] (gate rows first).
struct MlpWeights {
  Linear gate_up;
  Linear down;
  int64_t intermediate = 0;
};

struct MoeWeights {
  at::Tensor gate;          // [N_loaded, H] fp32, rows of the loaded experts
  at::Tensor e_score_bias;  // [N] fp32 (deepseek_v3), else undefined
  // Dense: gate_up [E_loaded, 2I, H] and down [E_loaded, H, I] in the compute
  // dtype. Quantized (quant): views of one uint8 [E_loaded, slot bytes]
  // stack whose rows are experts laid out as checkpoint::ExpertSlotLayout
  // says: gate_up [E_loaded, gate_up bytes] and down [E_loaded, down bytes],
  // each row one matrix in quant's layout (checkpoint/quant.h).
  checkpoint::QuantFormat quant;
  at::Tensor gate_up;
  at::Tensor down;
  // Instead of the dense stacks, when LoadWeights maps experts: per loaded
  // expert, gate_up [2I, H] and down [H, I] viewing the checkpoint's
  // read-only mapping (each tensor keeps its shard mapped; a write faults).
  std::vector<at::Tensor> mapped_gate_up, mapped_down;
  std::vector<int64_t> loaded;  // local index -> global expert id (sorted)
  at::Tensor loaded_ids;        // the same, int64 on the device
  at::Tensor loaded_mask;       // [N] bool: is the expert loaded
  bool all_loaded = true;
  bool has_shared = false;
  MlpWeights shared;       // qwen2_moe shared_expert / deepseek shared_experts
  at::Tensor shared_gate;  // [1, H] (qwen2_moe), else undefined
};

struct LayerWeights {
  at::Tensor input_norm, post_norm;
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;
};

struct ModelWeights {
  at::Tensor embed;       // [V, H]
  at::Tensor final_norm;  // [H]
  Linear lm_head;         // [V, H] (dense, it may share embed's storage)
  std::vector<LayerWeights> layers;
  // HF name -> tensor (views into the fused/stacked tensors where fused).
  std::map<std::string, at::Tensor> by_name;
  int64_t bytes = 0;
};

// How the matrices besides the routed experts are held (EngineOptions'
// attention_quant, dense_mlp_quant, shared_expert_quant, lm_head_quant).
struct DenseQuant {
  checkpoint::QuantFormat attention;       // q, k, v, o; MLA's q_a, q_b, kv_a, kv_b
  checkpoint::QuantFormat dense_mlp;       // the MLPs of dense layers
  checkpoint::QuantFormat shared_experts;  // shared experts (not their gate)
  checkpoint::QuantFormat lm_head;
  bool any() const {
    return attention.quantized() || dense_mlp.quantized() || shared_experts.quantized() ||
           lm_head.quantized();
  }
};

// Loads every weight the engine needs. `keep` selects the routed experts
// loaded (absent layers: all); with routed_experts false none are (the
// on-demand engine), though the routers stay whole. dtype is the compute
// dtype; routed experts are held in `expert_quant` and the other linears as
// `dense_quant` says (quantized on the CPU: the device must be the CPU when
// any is quantized). Quantized matrices are not registered in by_name (no
// HF tensor holds their bytes). With map_experts, dense routed experts on
// the CPU that the file stores in `dtype` are used in place from its mapping
// (MoeWeights::mapped_gate_up): no copy, no fresh pages; the weights must
// then never be written. INVALID_ARGUMENT naming the matrix for a shape a
// format refuses or a weight it cannot hold.
absl::StatusOr<ModelWeights> LoadWeights(const checkpoint::Checkpoint& checkpoint,
                                         const checkpoint::ModelConfig& config,
                                         const KeptExperts& keep, at::ScalarType dtype,
                                         at::Device device, bool routed_experts = true,
                                         const checkpoint::QuantFormat& expert_quant = {},
                                         const DenseQuant& dense_quant = {},
                                         bool map_experts = false);

// Routed expert `expert` of MoE layer `layer` into `gate_up` [2I, H] and
// `down` [H, I]: contiguous CPU tensors of the compute dtype, e.g. a cache's
// reused slots. Bytes are pread where the checkpoint stores that dtype,
// converted from the mapping (its pages then released) where not.
absl::Status LoadExpertInto(const checkpoint::Checkpoint& checkpoint,
                            const checkpoint::ModelConfig& config, int64_t layer, int64_t expert,
                            at::Tensor& gate_up, at::Tensor& down);

// Routed expert `expert` of MoE layer `layer` as `layout` holds it, into
// gate_up (layout.gate_up_bytes) and down (layout.down_bytes), each 16-byte
// aligned: dense in `dtype` (LoadExpertInto's path), or read in fp32 and
// quantized (FP8 checkpoints dequantised first, never via bf16). Errors name
// the tensor (a weight that is not finite, a shape the format refuses).
absl::Status LoadExpertBytes(const checkpoint::Checkpoint& checkpoint,
                             const checkpoint::ModelConfig& config, int64_t layer, int64_t expert,
                             const checkpoint::ExpertSlotLayout& layout, at::ScalarType dtype,
                             std::byte* gate_up, std::byte* down);

// One quantized matrix [out, in] of `format` (a buffer of at least
// format.Bytes(out, in, 0) bytes on the CPU) dequantised to a dense [out, in]
// tensor of `dtype`: the libtorch path's weights and the tests' reference.
at::Tensor DequantizeMatrix(const checkpoint::QuantFormat& format, const at::Tensor& buffer,
                            int64_t out, int64_t in, at::ScalarType dtype);

// The probe (EngineOptions::probe_moe_layers): the embedding, every router,
// layers before `last_layer` whole and `last_layer`'s attention and norms (no
// experts of its own, shared or routed; no final norm or lm_head).
absl::StatusOr<ModelWeights> LoadProbeWeights(const checkpoint::Checkpoint& checkpoint,
                                              const checkpoint::ModelConfig& config,
                                              int64_t last_layer, at::ScalarType dtype,
                                              at::Device device);

// Layer streaming (EngineOptions::streamed). These drop the mapped pages of
// what they copy, so a streamed pass over the model does not grow the RSS.

// Only the routers: `layers[l].is_moe` for every layer and, for MoE layers,
// the loaded set, gate and score bias (registered in by_name when full).
absl::StatusOr<ModelWeights> LoadRouterWeights(const checkpoint::Checkpoint& checkpoint,
                                               const checkpoint::ModelConfig& config,
                                               const KeptExperts& keep, at::ScalarType dtype,
                                               at::Device device);
// Layer `layer` whole: `router` (from LoadRouterWeights) plus the rest,
// its routed experts mapped as LoadWeights' map_experts says (a mapped
// expert's pages are released when the layer is dropped). Mapping them as a
// resident engine does keeps the two bit for bit equal: libtorch's GEMMs
// may sum in another order for weights at another alignment.
absl::StatusOr<LayerWeights> LoadStreamedLayer(const checkpoint::Checkpoint& checkpoint,
                                               const checkpoint::ModelConfig& config,
                                               const LayerWeights& router, int64_t layer,
                                               at::ScalarType dtype, at::Device device,
                                               bool map_experts);
// The embedding, final norm and lm_head (each output may be null: not
// loaded), registered in `names` when set; `release` drops the mapped pages
// they were copied from.
absl::Status LoadHead(const checkpoint::Checkpoint& checkpoint,
                      const checkpoint::ModelConfig& config, at::ScalarType dtype,
                      at::Device device, at::Tensor* embed, at::Tensor* final_norm,
                      at::Tensor* lm_head, std::map<std::string, at::Tensor>* names, bool release);
// Rows `ids` [T] int64 of the embedding, [T, H] in dtype on device, reading
// only those rows out of the mapping.
absl::StatusOr<at::Tensor> LoadEmbeddingRows(const checkpoint::Checkpoint& checkpoint,
                                             const checkpoint::ModelConfig& config,
                                             const at::Tensor& ids, at::ScalarType dtype,
                                             at::Device device);

// The weight tensors of `w`, each storage once (the tied lm_head is not
// repeated), named by their place: "embed", "layers.3.attn.q.w",
// "layers.3.moe.gate_up", ... Fixed order.
std::vector<std::pair<std::string, at::Tensor>> NamedParameters(const ModelWeights& w);

// The tensor `view` as an fp32/bf16/... CPU tensor of its own dtype (F8_E4M3
// is returned as float8_e4m3fn). Copies the bytes.
at::Tensor ViewToTensor(const checkpoint::TensorView& view);

// Dequantises a float8_e4m3fn tensor [..., R, C] with block scales
// [..., ceil(R/br), ceil(C/bc)] (weight * scale_inv), in fp32.
at::Tensor DequantizeBlockFp8(const at::Tensor& weight, const at::Tensor& scale_inv, int64_t br,
                              int64_t bc);

}  // namespace premoe::model::internal
