// Loading checkpoint tensors into the engine's layout. Every tensor is copied
// once out of the mapping (so the checkpoint can close), converted to the
// compute dtype, and, for routed experts, stacked per layer as
// gate_up [E, 2I, H] / down [E, H, I] so the MoE block indexes experts
// without per-expert lookups; quantized experts are stacked as uint8
// [E, slot bytes] in checkpoint::ExpertSlotLayout, quantized one at a time
// from fp32, and other quantized linears are quantized as their layer loads.
// Pruned experts of a reduced model are never touched, so their pages are
// never read.
#include "engine_weights.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "premoe/checkpoint/expert_tensors.h"
#include "premoe/common/status.h"

namespace premoe::model::internal {
namespace {

std::string ShapeString(at::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

at::ScalarType ToScalarType(checkpoint::DType dtype) {
  switch (dtype) {
    case checkpoint::DType::kF32:
      return at::kFloat;
    case checkpoint::DType::kF16:
      return at::kHalf;
    case checkpoint::DType::kBF16:
      return at::kBFloat16;
    case checkpoint::DType::kF8E4M3:
      return at::kFloat8_e4m3fn;
    case checkpoint::DType::kI8:
      return at::kChar;
    case checkpoint::DType::kU8:
      return at::kByte;
    case checkpoint::DType::kI32:
      return at::kInt;
    case checkpoint::DType::kI64:
      return at::kLong;
  }
  return at::kFloat;
}

// Faults in the mapped range [data, data + size), about to be read, in one
// call instead of a fault per page (MADV_POPULATE_READ, Linux 5.14+). Older
// kernels refuse the advice and the pages fault in as they are touched.
void PopulateForRead(const void* data, size_t size) {
#if defined(MADV_POPULATE_READ)
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const uintptr_t end = reinterpret_cast<uintptr_t>(data) + size;
  if (size == 0) return;
  (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ);
#else
  (void)data;
  (void)size;
#endif
}

// Faults in fresh memory about to be written whole (MADV_POPULATE_WRITE,
// Linux 5.14+): one call instead of a fault per page as the copy reaches it.
void PopulateForWrite(const at::Tensor& t) {
#if defined(MADV_POPULATE_WRITE)
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t data = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (data + page - 1) & ~(page - 1);
  const uintptr_t end = (data + t.nbytes()) & ~(page - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
#else
  (void)t;
#endif
}

// Whether every element of `t` is finite. Contiguous bf16/fp16/fp32 CPU
// tensors are scanned by their exponent bits, four 16-bit (two 32-bit)
// elements a 64-bit word, in place: no temporary, no libtorch op, at memory
// speed (the load checks every weight). Others: a sum in double is finite
// exactly when every element is (float weights are at most 3.4e38).
bool AllFinite(const at::Tensor& t) {
  uint64_t exponent = 0, low = 0;  // per lane: the exponent bits; 1
  switch (t.scalar_type()) {
    case at::kBFloat16:
      exponent = 0x7F807F807F807F80ull, low = 0x0001000100010001ull;
      break;
    case at::kHalf:
      exponent = 0x7C007C007C007C00ull, low = 0x0001000100010001ull;
      break;
    case at::kFloat:
      exponent = 0x7F8000007F800000ull, low = 0x0000000100000001ull;
      break;
    default:
      break;
  }
  if (exponent == 0 || !t.is_cpu() || !t.is_contiguous()) {
    return std::isfinite(t.sum(at::kDouble).item<double>());
  }
  const auto* bytes = static_cast<const uint8_t*>(t.const_data_ptr());
  const size_t n = t.nbytes(), words = n / 8, size = t.element_size();
  const uint64_t high = low << (8 * size - 1);  // each lane's top bit
  uint64_t any = 0;
  for (size_t i = 0; i < words; ++i) {
    uint64_t w;
    std::memcpy(&w, bytes + 8 * i, 8);
    // A lane is zero exactly when its exponent bits are all ones.
    const uint64_t v = (w & exponent) ^ exponent;
    any |= (v - low) & ~v & high;
  }
  if (any != 0) return false;
  const uint64_t one = exponent & (size == 2 ? 0xFFFFull : 0xFFFFFFFFull);
  for (size_t i = 8 * words; i < n; i += size) {  // the last elements, one at a time
    uint64_t v = 0;
    std::memcpy(&v, bytes + i, size);
    if ((v & one) == one) return false;
  }
  return true;
}

// INVALID_ARGUMENT naming `name` when `t` holds a NaN or an infinity (such
// a model runs and prints nothing).
absl::Status CheckFinite(const checkpoint::Checkpoint& checkpoint, const std::string& name,
                         const at::Tensor& t) {
  if (AllFinite(t)) return absl::OkStatus();
  const int64_t bad = (~at::isfinite(t)).sum().item<int64_t>();
  return absl::InvalidArgumentError(absl::StrCat(checkpoint.path(), ": tensor \"", name,
                                                 "\" holds ", bad, " NaN or infinite value(s)"));
}

class Loader {
 public:
  // `names` (may be null) receives every loaded tensor under its HF name.
  // `release`: drop each tensor's mapped pages once copied (streamed loads).
  Loader(const checkpoint::Checkpoint& checkpoint, const checkpoint::ModelConfig& config,
         at::ScalarType dtype, at::Device device, std::map<std::string, at::Tensor>* names,
         bool release)
      : checkpoint_(checkpoint),
        config_(config),
        dtype_(dtype),
        device_(device),
        names_(names),
        release_(release) {}

  bool Has(const std::string& name) const { return checkpoint_.Contains(name); }

  // The tensor `name` as fp32 or its stored float dtype (FP8 dequantised to
  // fp32), on the CPU, checked against `shape`.
  // With check_only, validates shape and dtype and returns an undefined tensor.
  absl::StatusOr<at::Tensor> Read(const std::string& name, std::vector<int64_t> shape,
                                  bool check_only = false) {
    ASSIGN_OR_RETURN(checkpoint::TensorView view, checkpoint_.Get(name));
    if (view.shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(checkpoint_.path(), ": tensor \"", name, "\" has shape ",
                       ShapeString(view.shape), " but the config implies ", ShapeString(shape)));
    }
    if (view.dtype != checkpoint::DType::kF32 && view.dtype != checkpoint::DType::kF16 &&
        view.dtype != checkpoint::DType::kBF16 && view.dtype != checkpoint::DType::kF8E4M3) {
      return absl::InvalidArgumentError(absl::StrCat(
          checkpoint_.path(), ": tensor \"", name, "\" has dtype ",
          checkpoint::DTypeName(view.dtype), "; weights must be F32, F16, BF16 or F8_E4M3"));
    }
    if (check_only) return at::Tensor();
    at::Tensor t = ViewToTensor(view);
    if (release_) checkpoint_.Release(name);
    if (view.dtype == checkpoint::DType::kF8E4M3) {
      // "<x>.weight" -> "<x>.weight_scale_inv"; fused "<x>" -> "<x>_scale_inv".
      const std::string scale_name = name + "_scale_inv";
      const checkpoint::TensorView* scale_view = checkpoint_.Find(scale_name);
      if (scale_view == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(checkpoint_.path(), ": FP8 tensor \"", name,
                                                       "\" has no scale tensor \"", scale_name,
                                                       "\""));
      }
      at::Tensor scale = ViewToTensor(*scale_view).to(at::kFloat);
      if (release_) checkpoint_.Release(scale_name);
      int64_t br = 0, bc = 0;
      const auto& q = config_.quantization_config;
      if (q.has_value() && q->weight_block_size.has_value()) {
        br = (*q->weight_block_size)[0];
        bc = (*q->weight_block_size)[1];
      } else {
        br = shape.size() >= 2 ? shape[shape.size() - 2] : 1;
        bc = shape.empty() ? 1 : shape.back();
      }
      if (shape.size() < 2) {
        return absl::InvalidArgumentError(absl::StrCat(checkpoint_.path(), ": FP8 tensor \"", name,
                                                       "\" must have at least 2 dimensions"));
      }
      std::vector<int64_t> want(shape.begin(), shape.end() - 2);
      want.push_back((shape[shape.size() - 2] + br - 1) / br);
      want.push_back((shape.back() + bc - 1) / bc);
      if (scale.sizes().vec() != want &&
          !(scale.numel() == 1 && want == std::vector<int64_t>(want.size(), 1))) {
        return absl::InvalidArgumentError(
            absl::StrCat(checkpoint_.path(), ": \"", scale_name, "\" has shape ",
                         ShapeString(scale.sizes()), " but blocks of [", br, ", ", bc, "] over ",
                         ShapeString(shape), " need ", ShapeString(want)));
      }
      t = DequantizeBlockFp8(t, scale.reshape(want), br, bc);
    }
    RETURN_IF_ERROR(CheckFinite(checkpoint_, name, t));
    return t;
  }

  // Row `index` of the tensor `name` of shape `shape` ([N, ...]), as Read
  // gives the whole tensor: only that row's bytes are copied (and released).
  absl::StatusOr<at::Tensor> ReadRow(const std::string& name, std::vector<int64_t> shape,
                                     int64_t index) {
    ASSIGN_OR_RETURN(checkpoint::TensorView view, checkpoint_.Get(name));
    if (view.dtype == checkpoint::DType::kF8E4M3 || view.shape != shape) {
      // Block scales span rows: take the checked whole-tensor path.
      ASSIGN_OR_RETURN(at::Tensor all, Read(name, std::move(shape)));
      return all[index].clone();
    }
    RETURN_IF_ERROR(Read(name, shape, /*check_only=*/true).status());
    const size_t row_bytes = view.bytes.size() / static_cast<size_t>(shape[0]);
    checkpoint::TensorView row = view;
    row.shape.erase(row.shape.begin());
    row.bytes = view.bytes.subspan(static_cast<size_t>(index) * row_bytes, row_bytes);
    at::Tensor t = ViewToTensor(row);
    if (release_) {
      if (const checkpoint::SafetensorsFile* shard = checkpoint_.ShardOf(name)) shard->Release(row);
    }
    RETURN_IF_ERROR(CheckFinite(checkpoint_, name, t));
    return t;
  }

  // Copies tensor `name` (checked against `shape`), or its row `row` when
  // row >= 0, straight out of the mapping into `dst` (CPU, contiguous, of
  // the tensor's or the row's shape, any float dtype), converting on the
  // way: one pass over the bytes. false, copying nothing, for FP8 tensors
  // (their block scales take Read's path).
  absl::StatusOr<bool> CopyInto(const std::string& name, const std::vector<int64_t>& shape,
                                int64_t row, at::Tensor& dst) {
    ASSIGN_OR_RETURN(checkpoint::TensorView view, checkpoint_.Get(name));
    RETURN_IF_ERROR(Read(name, shape, /*check_only=*/true).status());
    if (view.dtype == checkpoint::DType::kF8E4M3) return false;
    checkpoint::TensorView part = view;
    if (row >= 0) {
      const size_t row_bytes = view.bytes.size() / static_cast<size_t>(shape[0]);
      part.shape.erase(part.shape.begin());
      part.bytes = view.bytes.subspan(static_cast<size_t>(row) * row_bytes, row_bytes);
    }
    const checkpoint::SafetensorsFile* shard = checkpoint_.ShardOf(name);
    if (shard != nullptr && ToScalarType(part.dtype) == dst.scalar_type() && dst.is_cpu() &&
        dst.is_contiguous() && static_cast<size_t>(dst.nbytes()) == part.bytes.size()) {
      // No conversion: the kernel copies from the page cache (pread), with
      // no mapping faults and no mapped pages left to release.
      RETURN_IF_ERROR(shard->ReadInto(
          part, std::span<uint8_t>(static_cast<uint8_t*>(dst.data_ptr()), part.bytes.size())));
      RETURN_IF_ERROR(CheckFinite(checkpoint_, name, dst));
      return true;
    }
    PopulateForRead(part.bytes.data(), part.bytes.size());
    at::Tensor src = at::from_blob(const_cast<uint8_t*>(part.bytes.data()), part.shape,
                                   at::TensorOptions().dtype(ToScalarType(part.dtype)));
    dst.copy_(src);
    if (release_ && shard != nullptr) shard->Release(part);
    RETURN_IF_ERROR(CheckFinite(checkpoint_, name, dst));
    return true;
  }

  // Read + convert to `dtype` on the device + register under `name`.
  absl::StatusOr<at::Tensor> Load(const std::string& name, std::vector<int64_t> shape,
                                  std::optional<at::ScalarType> dtype = std::nullopt) {
    ASSIGN_OR_RETURN(at::Tensor t, Read(name, std::move(shape)));
    t = t.to(device_, dtype.value_or(dtype_)).contiguous();
    Register(name, t);
    return t;
  }

  absl::StatusOr<Linear> LoadLinear(const std::string& prefix, int64_t out, int64_t in, bool bias) {
    Linear l;
    ASSIGN_OR_RETURN(l.w, Load(prefix + ".weight", {out, in}));
    if (bias) {
      ASSIGN_OR_RETURN(l.b, Load(prefix + ".bias", {out}));
    }
    return l;
  }

  absl::StatusOr<MlpWeights> LoadMlp(const std::string& prefix, int64_t inter, bool bias,
                                     const char* gate = "gate_proj", const char* up = "up_proj",
                                     const char* down = "down_proj") {
    const int64_t h = config_.hidden_size;
    MlpWeights m;
    m.intermediate = inter;
    ASSIGN_OR_RETURN(at::Tensor g, Read(absl::StrCat(prefix, ".", gate, ".weight"), {inter, h}));
    ASSIGN_OR_RETURN(at::Tensor u, Read(absl::StrCat(prefix, ".", up, ".weight"), {inter, h}));
    m.gate_up.w = at::cat({g, u}, 0).to(device_, dtype_).contiguous();
    Register(absl::StrCat(prefix, ".", gate, ".weight"), m.gate_up.w.narrow(0, 0, inter));
    Register(absl::StrCat(prefix, ".", up, ".weight"), m.gate_up.w.narrow(0, inter, inter));
    if (bias) {
      ASSIGN_OR_RETURN(at::Tensor gb, Read(absl::StrCat(prefix, ".", gate, ".bias"), {inter}));
      ASSIGN_OR_RETURN(at::Tensor ub, Read(absl::StrCat(prefix, ".", up, ".bias"), {inter}));
      m.gate_up.b = at::cat({gb, ub}, 0).to(device_, dtype_).contiguous();
    }
    ASSIGN_OR_RETURN(m.down, LoadLinear(absl::StrCat(prefix, ".", down), h, inter, bias));
    return m;
  }

  void Register(const std::string& name, const at::Tensor& t) {
    if (names_ != nullptr) (*names_)[name] = t;
  }

  const checkpoint::Checkpoint& checkpoint() const { return checkpoint_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

 private:
  const checkpoint::Checkpoint& checkpoint_;
  const checkpoint::ModelConfig& config_;
  at::ScalarType dtype_;
  at::Device device_;
  std::map<std::string, at::Tensor>* names_;
  bool release_;
};

bool IsDeepseek(const checkpoint::ModelConfig& c) {
  return c.architecture == checkpoint::Architecture::kDeepseekV2 ||
         c.architecture == checkpoint::Architecture::kDeepseekV3;
}

absl::Status LoadAttention(Loader& ld, const checkpoint::ModelConfig& c, const std::string& p,
                           AttentionWeights& a) {
  const int64_t h = c.hidden_size, nh = c.num_attention_heads;
  if (IsDeepseek(c)) {
    const int64_t qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
    const bool bias = c.attention_bias;
    if (c.q_lora_rank.has_value()) {
      const int64_t r = *c.q_lora_rank;
      ASSIGN_OR_RETURN(a.q_a, ld.LoadLinear(p + "q_a_proj", r, h, bias));
      ASSIGN_OR_RETURN(a.q_a_norm, ld.Load(p + "q_a_layernorm.weight", {r}));
      ASSIGN_OR_RETURN(a.q_b, ld.LoadLinear(p + "q_b_proj", nh * qk, r, false));
    } else {
      ASSIGN_OR_RETURN(a.q, ld.LoadLinear(p + "q_proj", nh * qk, h, false));
    }
    ASSIGN_OR_RETURN(a.kv_a, ld.LoadLinear(p + "kv_a_proj_with_mqa",
                                           c.kv_lora_rank + c.qk_rope_head_dim, h, bias));
    ASSIGN_OR_RETURN(a.kv_a_norm, ld.Load(p + "kv_a_layernorm.weight", {c.kv_lora_rank}));
    ASSIGN_OR_RETURN(a.kv_b,
                     ld.LoadLinear(p + "kv_b_proj", nh * (c.qk_nope_head_dim + c.v_head_dim),
                                   c.kv_lora_rank, false));
    ASSIGN_OR_RETURN(a.o, ld.LoadLinear(p + "o_proj", h, nh * c.v_head_dim, bias));
    return absl::OkStatus();
  }
  const int64_t d = c.head_dim, nkv = c.num_key_value_heads;
  const bool qkv_bias = c.attention_bias || c.qkv_bias;
  ASSIGN_OR_RETURN(a.q, ld.LoadLinear(p + "q_proj", nh * d, h, qkv_bias));
  ASSIGN_OR_RETURN(a.k, ld.LoadLinear(p + "k_proj", nkv * d, h, qkv_bias));
  ASSIGN_OR_RETURN(a.v, ld.LoadLinear(p + "v_proj", nkv * d, h, qkv_bias));
  ASSIGN_OR_RETURN(a.o, ld.LoadLinear(p + "o_proj", h, nh * d, c.attention_bias));
  if (c.qk_norm == checkpoint::QkNorm::kPerHead) {
    ASSIGN_OR_RETURN(a.q_norm, ld.Load(p + "q_norm.weight", {d}));
    ASSIGN_OR_RETURN(a.k_norm, ld.Load(p + "k_norm.weight", {d}));
  } else if (c.qk_norm == checkpoint::QkNorm::kFull) {
    ASSIGN_OR_RETURN(a.q_norm, ld.Load(p + "q_norm.weight", {nh * d}));
    ASSIGN_OR_RETURN(a.k_norm, ld.Load(p + "k_norm.weight", {nkv * d}));
  }
  return absl::OkStatus();
}

// Mixtral's per-expert hub layout lives under block_sparse_moe; the fused
// layout (and every other architecture) under mlp.
std::string MoeBlockPrefix(const Loader& ld, const checkpoint::ModelConfig& c,
                           const std::string& lp) {
  const bool mixtral = c.architecture == checkpoint::Architecture::kMixtral;
  return lp +
         ((mixtral && ld.Has(lp + "block_sparse_moe.gate.weight")) ? "block_sparse_moe." : "mlp.");
}

// The router half of a MoE layer: the loaded set, the gate and its bias.
absl::Status LoadMoeRouter(Loader& ld, const checkpoint::ModelConfig& c, const std::string& lp,
                           const std::vector<int64_t>* kept, MoeWeights& m) {
  const int64_t n = c.num_routed_experts, h = c.hidden_size;
  const std::string block = MoeBlockPrefix(ld, c, lp);
  if (kept != nullptr) {
    m.loaded = *kept;
  } else {
    m.loaded.resize(n);
    for (int64_t e = 0; e < n; ++e) m.loaded[e] = e;
  }
  m.all_loaded = static_cast<int64_t>(m.loaded.size()) == n;
  at::Tensor ids = at::tensor(m.loaded, at::TensorOptions().dtype(at::kLong));
  m.loaded_ids = ids.to(ld.device());
  m.loaded_mask = at::zeros({n}, at::TensorOptions().dtype(at::kBool));
  m.loaded_mask.index_fill_(0, ids, true);
  m.loaded_mask = m.loaded_mask.to(ld.device());

  // Gate (router): fp32 always; only the kept rows.
  const std::string gate_name = block + "gate.weight";
  ASSIGN_OR_RETURN(at::Tensor gate, ld.Read(gate_name, {n, h}));
  gate = gate.to(at::kFloat);
  if (!m.all_loaded) gate = gate.index_select(0, ids);
  m.gate = gate.to(ld.device()).contiguous();
  if (m.all_loaded) ld.Register(gate_name, m.gate);
  if (c.topk_method == checkpoint::TopkMethod::kNoauxTc) {
    ASSIGN_OR_RETURN(m.e_score_bias,
                     ld.Load(block + "gate.e_score_correction_bias", {n}, at::kFloat));
  }
  return absl::OkStatus();
}

// Routed expert `e` of `layer`: gate_up [2I, H] (gate rows first) and down
// [H, I], in the checkpoint's float dtype on the CPU. Reads the hub's
// per-expert tensors, or the expert's rows of transformers' fused layout.
absl::StatusOr<std::pair<at::Tensor, at::Tensor>> ReadExpert(Loader& ld,
                                                             const checkpoint::ModelConfig& c,
                                                             int64_t layer,
                                                             const std::string& block, int64_t e) {
  const int64_t n = c.num_routed_experts, h = c.hidden_size, inter = c.moe_intermediate_size;
  const std::string fused_gu = block + "experts.gate_up_proj";
  if (ld.Has(fused_gu)) {
    ASSIGN_OR_RETURN(at::Tensor gu, ld.ReadRow(fused_gu, {n, 2 * inter, h}, e));
    ASSIGN_OR_RETURN(at::Tensor dn, ld.ReadRow(block + "experts.down_proj", {n, h, inter}, e));
    return std::pair{gu, dn};
  }
  auto name = [&](checkpoint::ExpertProjection p) {
    // ExpertTensorName uses the "model." prefix; honour a bare checkpoint.
    std::string s = checkpoint::ExpertTensorName(c.architecture, layer, e, p);
    if (!ld.Has(s) && absl::StartsWith(s, "model.")) s = s.substr(6);
    return s;
  };
  ASSIGN_OR_RETURN(at::Tensor g, ld.Read(name(checkpoint::ExpertProjection::kGate), {inter, h}));
  ASSIGN_OR_RETURN(at::Tensor u, ld.Read(name(checkpoint::ExpertProjection::kUp), {inter, h}));
  ASSIGN_OR_RETURN(at::Tensor d, ld.Read(name(checkpoint::ExpertProjection::kDown), {h, inter}));
  return std::pair{at::cat({g, u}, 0), d};
}

// An attention's linears by short name, GQA's and MLA's (the unused ones
// undefined). A is AttentionWeights or const AttentionWeights.
template <typename A>
auto AttentionLinears(A& a) {
  return std::array{std::pair{"q", &a.q},       std::pair{"k", &a.k},      std::pair{"v", &a.v},
                    std::pair{"o", &a.o},       std::pair{"q_a", &a.q_a},  std::pair{"q_b", &a.q_b},
                    std::pair{"kv_a", &a.kv_a}, std::pair{"kv_b", &a.kv_b}};
}

// Tensor `name` (checked against `shape`) or its row `row` (row >= 0) as a
// read-only view of the checkpoint's mapping, which the tensor keeps alive
// and whose pages it releases when it dies (so a streamed layer's pages
// leave the RSS with it); nullopt when the stored dtype is not `dtype` or the
// bytes are misaligned for it. `ptr` receives the first byte viewed.
absl::StatusOr<std::optional<at::Tensor>> MappedTensor(Loader& ld, const std::string& name,
                                                       const std::vector<int64_t>& shape,
                                                       int64_t row, const uint8_t** ptr) {
  const checkpoint::Checkpoint& ckpt = ld.checkpoint();
  ASSIGN_OR_RETURN(checkpoint::TensorView view, ckpt.Get(name));
  RETURN_IF_ERROR(ld.Read(name, shape, /*check_only=*/true).status());
  if (ToScalarType(view.dtype) != ld.dtype()) return std::nullopt;
  std::span<const uint8_t> bytes = view.bytes;
  std::vector<int64_t> sizes = shape;
  if (row >= 0) {
    const size_t row_bytes = bytes.size() / static_cast<size_t>(shape[0]);
    bytes = bytes.subspan(static_cast<size_t>(row) * row_bytes, row_bytes);
    sizes.erase(sizes.begin());
  }
  if (reinterpret_cast<uintptr_t>(bytes.data()) % at::elementSize(ld.dtype()) != 0) {
    return std::nullopt;
  }
  std::shared_ptr<const checkpoint::SafetensorsFile> shard;
  for (const auto& s : ckpt.shards()) {
    if (s.get() == ckpt.ShardOf(name)) shard = s;
  }
  if (shard == nullptr) return std::nullopt;
  *ptr = bytes.data();
  PopulateForRead(bytes.data(), bytes.size());
  checkpoint::TensorView part = view;
  part.bytes = bytes;
  at::Tensor t = at::from_blob(
      const_cast<uint8_t*>(bytes.data()), sizes, [shard, part](void*) { shard->Release(part); },
      at::TensorOptions().dtype(ld.dtype()));
  RETURN_IF_ERROR(CheckFinite(ckpt, name, t));
  return t;
}

// The loaded routed experts of `layer` as views of the checkpoint's mapping
// (MoeWeights::mapped_gate_up / mapped_down), when the file stores them in
// the compute dtype and each expert's gate and up rows lie back to back
// (transformers' fused layout, or the hub's gate_proj followed by up_proj as
// safetensors orders them by name). false, holding nothing, otherwise.
absl::StatusOr<bool> MapExperts(Loader& ld, const checkpoint::ModelConfig& c, int64_t layer,
                                const std::string& block, MoeWeights& m) {
  const int64_t n = c.num_routed_experts, h = c.hidden_size, inter = c.moe_intermediate_size;
  const size_t half_bytes = static_cast<size_t>(inter * h) * at::elementSize(ld.dtype());
  std::vector<at::Tensor> gate_up, down;
  const std::string fused_gu = block + "experts.gate_up_proj";
  const bool fused = ld.Has(fused_gu);
  for (const int64_t e : m.loaded) {
    const uint8_t* p = nullptr;
    const uint8_t* q = nullptr;
    std::optional<at::Tensor> gu, dn;
    if (fused) {
      ASSIGN_OR_RETURN(gu, MappedTensor(ld, fused_gu, {n, 2 * inter, h}, e, &p));
      ASSIGN_OR_RETURN(dn, MappedTensor(ld, block + "experts.down_proj", {n, h, inter}, e, &q));
    } else {
      auto name = [&](checkpoint::ExpertProjection proj) {
        std::string s = checkpoint::ExpertTensorName(c.architecture, layer, e, proj);
        if (!ld.Has(s) && absl::StartsWith(s, "model.")) s = s.substr(6);
        return s;
      };
      const uint8_t* u = nullptr;
      std::optional<at::Tensor> g, up;
      ASSIGN_OR_RETURN(
          g, MappedTensor(ld, name(checkpoint::ExpertProjection::kGate), {inter, h}, -1, &p));
      ASSIGN_OR_RETURN(
          up, MappedTensor(ld, name(checkpoint::ExpertProjection::kUp), {inter, h}, -1, &u));
      if (!g.has_value() || !up.has_value() || u != p + half_bytes) return false;
      gu = at::from_blob(
          const_cast<uint8_t*>(p), {2 * inter, h}, [keep = *g, keep_up = *up](void*) {},
          at::TensorOptions().dtype(ld.dtype()));
      ASSIGN_OR_RETURN(
          dn, MappedTensor(ld, name(checkpoint::ExpertProjection::kDown), {h, inter}, -1, &q));
    }
    if (!gu.has_value() || !dn.has_value()) return false;
    gate_up.push_back(*std::move(gu));
    down.push_back(*std::move(dn));
  }
  m.mapped_gate_up = std::move(gate_up);
  m.mapped_down = std::move(down);
  return true;
}

// The experts half of a MoE layer, for the loaded set LoadMoeRouter chose:
// the routed experts (unless `routed` is false: on-demand engines) and the
// shared ones.
absl::Status LoadMoeExperts(Loader& ld, const checkpoint::ModelConfig& c, int64_t layer,
                            const std::string& lp, bool routed,
                            const checkpoint::QuantFormat& quant, bool map_experts, MoeWeights& m) {
  const int64_t h = c.hidden_size, inter = c.moe_intermediate_size;
  const std::string block = MoeBlockPrefix(ld, c, lp);
  const int64_t e_loaded = static_cast<int64_t>(m.loaded.size());
  m.quant = quant;
  bool mapped = false;
  if (routed && !quant.quantized() && map_experts && ld.device().is_cpu()) {
    ASSIGN_OR_RETURN(mapped, MapExperts(ld, c, layer, block, m));
  }
  if (routed && quant.quantized()) {
    ASSIGN_OR_RETURN(const checkpoint::ExpertSlotLayout layout,
                     checkpoint::ExpertSlotLayout::For(quant, h, inter, 4, block + "experts"));
    const at::Tensor stack = at::empty({e_loaded, layout.bytes}, at::kByte);
    PopulateForWrite(stack);
    m.gate_up = stack.narrow(1, 0, layout.gate_up_bytes);
    m.down = stack.narrow(1, layout.down_offset, layout.down_bytes);
    // One expert at a time through fp32 on each of libtorch's intra-op
    // threads (quantizing is the load's bottleneck): the peak beside the
    // stacks is one expert a thread, never a dense copy of the layer.
    const int64_t threads = std::clamp<int64_t>(at::get_num_threads(), 1, e_loaded);
    std::vector<absl::Status> status(threads);
    auto work = [&](int64_t t) {
      try {
        for (int64_t i = t; i < e_loaded && status[t].ok(); i += threads) {
          status[t] = LoadExpertBytes(ld.checkpoint(), c, layer, m.loaded[i], layout, ld.dtype(),
                                      static_cast<std::byte*>(m.gate_up[i].data_ptr()),
                                      static_cast<std::byte*>(m.down[i].data_ptr()));
        }
      } catch (const std::exception& e) {
        status[t] = absl::InternalError(absl::StrCat(block, "experts: ", e.what()));
      }
    };
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < threads; ++t) pool.emplace_back(work, t);
    work(0);
    for (std::thread& thread : pool) thread.join();
    for (const absl::Status& st : status) RETURN_IF_ERROR(st);
  } else if (routed && !mapped) {
    m.gate_up = at::empty({e_loaded, 2 * inter, h}, at::TensorOptions().dtype(ld.dtype()));
    m.down = at::empty({e_loaded, h, inter}, at::TensorOptions().dtype(ld.dtype()));
    PopulateForWrite(m.gate_up);
    PopulateForWrite(m.down);
    // Straight from the file into the stack (pread where the dtypes agree):
    // no mapped pages join the RSS beside the copy, and nothing is copied twice.
    for (int64_t i = 0; i < e_loaded; ++i) {
      at::Tensor gate_up = m.gate_up[i], down = m.down[i];
      RETURN_IF_ERROR(LoadExpertInto(ld.checkpoint(), c, layer, m.loaded[i], gate_up, down));
    }
    m.gate_up = m.gate_up.to(ld.device());
    m.down = m.down.to(ld.device());
  }
  if (routed && !quant.quantized()) {
    for (int64_t i = 0; i < e_loaded; ++i) {
      const int64_t e = m.loaded[i];
      const at::Tensor gate_up = mapped ? m.mapped_gate_up[i] : m.gate_up[i];
      auto name = [&](checkpoint::ExpertProjection p) {
        return checkpoint::ExpertTensorName(c.architecture, layer, e, p);
      };
      ld.Register(name(checkpoint::ExpertProjection::kGate), gate_up.narrow(0, 0, inter));
      ld.Register(name(checkpoint::ExpertProjection::kUp), gate_up.narrow(0, inter, inter));
      ld.Register(name(checkpoint::ExpertProjection::kDown), mapped ? m.mapped_down[i] : m.down[i]);
    }
  }

  if (c.architecture == checkpoint::Architecture::kQwen2Moe &&
      c.shared_expert_intermediate_size > 0) {
    m.has_shared = true;
    ASSIGN_OR_RETURN(m.shared,
                     ld.LoadMlp(block + "shared_expert", c.shared_expert_intermediate_size, false));
    ASSIGN_OR_RETURN(m.shared_gate, ld.Load(block + "shared_expert_gate.weight", {1, h}));
  } else if (IsDeepseek(c) && c.n_shared_experts > 0) {
    m.has_shared = true;
    ASSIGN_OR_RETURN(m.shared, ld.LoadMlp(block + "shared_experts",
                                          c.SharedExpertIntermediateSize(), c.mlp_bias));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> NamedParameters(const ModelWeights& w) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  absl::flat_hash_set<const void*> seen;
  auto add = [&](std::string name, const at::Tensor& t) {
    if (t.defined() && seen.insert(t.storage().data()).second) {
      out.emplace_back(std::move(name), t);
    }
  };
  auto add_linear = [&](const std::string& p, const Linear& l) {
    add(p + ".w", l.w);
    add(p + ".b", l.b);
  };
  auto add_mlp = [&](const std::string& p, const MlpWeights& m) {
    add_linear(p + ".gate_up", m.gate_up);
    add_linear(p + ".down", m.down);
  };
  add("embed", w.embed);
  add("final_norm", w.final_norm);
  add("lm_head", w.lm_head.w);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string p = absl::StrCat("layers.", l, ".");
    add(p + "input_norm", L.input_norm);
    add(p + "post_norm", L.post_norm);
    const AttentionWeights& a = L.attn;
    for (const auto& [name, lin] : AttentionLinears(a)) add_linear(p + "attn." + name, *lin);
    add(p + "attn.q_norm", a.q_norm);
    add(p + "attn.k_norm", a.k_norm);
    add(p + "attn.q_a_norm", a.q_a_norm);
    add(p + "attn.kv_a_norm", a.kv_a_norm);
    if (!L.is_moe) {
      add_mlp(p + "mlp", L.mlp);
      continue;
    }
    add(p + "moe.gate", L.moe.gate);
    add(p + "moe.gate_up", L.moe.gate_up);
    add(p + "moe.down", L.moe.down);
    for (size_t i = 0; i < L.moe.mapped_gate_up.size(); ++i) {
      const std::string e = absl::StrCat(p, "moe.experts.", L.moe.loaded[i], ".");
      add(e + "gate_up", L.moe.mapped_gate_up[i]);
      add(e + "down", L.moe.mapped_down[i]);
    }
    if (L.moe.has_shared) add_mlp(p + "moe.shared", L.moe.shared);
    add(p + "moe.shared_gate", L.moe.shared_gate);
  }
  return out;
}

at::Tensor ViewToTensor(const checkpoint::TensorView& view) {
  at::Tensor t = at::empty(view.shape, at::TensorOptions().dtype(ToScalarType(view.dtype)));
  if (!view.bytes.empty()) std::memcpy(t.data_ptr(), view.bytes.data(), view.bytes.size());
  return t;
}

at::Tensor DequantizeBlockFp8(const at::Tensor& weight, const at::Tensor& scale_inv, int64_t br,
                              int64_t bc) {
  const int64_t nd = weight.dim();
  const int64_t rows = weight.size(nd - 2), cols = weight.size(nd - 1);
  at::Tensor s = scale_inv.to(at::kFloat)
                     .repeat_interleave(br, nd - 2)
                     .narrow(nd - 2, 0, rows)
                     .repeat_interleave(bc, nd - 1)
                     .narrow(nd - 1, 0, cols);
  return weight.to(at::kFloat) * s;
}

namespace {

std::string ModelPrefix(const checkpoint::Checkpoint& checkpoint) {
  return checkpoint.Contains("model.embed_tokens.weight") ? "model." : "";
}

std::string LayerPrefix(const checkpoint::Checkpoint& checkpoint, int64_t layer) {
  return absl::StrCat(ModelPrefix(checkpoint), "layers.", layer, ".");
}

// Everything of layer `l` but a MoE layer's router (which `L.moe` must hold).
absl::Status LoadLayerBody(Loader& ld, const checkpoint::ModelConfig& c, int64_t l, bool routed,
                           LayerWeights& L, const checkpoint::QuantFormat& quant = {},
                           bool map_experts = false) {
  const int64_t h = c.hidden_size;
  const std::string lp = LayerPrefix(ld.checkpoint(), l);
  ASSIGN_OR_RETURN(L.input_norm, ld.Load(lp + "input_layernorm.weight", {h}));
  ASSIGN_OR_RETURN(L.post_norm, ld.Load(lp + "post_attention_layernorm.weight", {h}));
  RETURN_IF_ERROR(LoadAttention(ld, c, lp + "self_attn.", L.attn));
  if (L.is_moe) return LoadMoeExperts(ld, c, l, lp, routed, quant, map_experts, L.moe);
  const bool bias = IsDeepseek(c) && c.mlp_bias;
  ASSIGN_OR_RETURN(L.mlp, ld.LoadMlp(lp + "mlp", c.intermediate_size, bias));
  return absl::OkStatus();
}

// The routers of every MoE layer (and is_moe of every layer).
absl::Status LoadRouters(Loader& ld, const checkpoint::ModelConfig& c, const KeptExperts& keep,
                         ModelWeights& w) {
  w.layers.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& L = w.layers[l];
    L.is_moe = c.IsMoeLayer(static_cast<int>(l));
    if (L.is_moe) {
      RETURN_IF_ERROR(LoadMoeRouter(ld, c, LayerPrefix(ld.checkpoint(), l), keep.Find(l), L.moe));
    }
  }
  return absl::OkStatus();
}

// ForEachLinear's scopes besides a layer index.
constexpr int64_t kEveryLinear = -1, kLmHead = -2;

// Calls fn(name, linear, format) for every linear of `w` in `scope` (layer
// `scope`'s, the lm_head, or all), with the format `q` gives its class.
template <typename Fn>
void ForEachLinear(ModelWeights& w, const DenseQuant& q, Fn fn, int64_t scope = kEveryLinear) {
  for (size_t l = 0; l < w.layers.size(); ++l) {
    if (scope != kEveryLinear && scope != static_cast<int64_t>(l)) continue;
    LayerWeights& L = w.layers[l];
    const std::string p = absl::StrCat("layers.", l, ".");
    AttentionWeights& a = L.attn;
    for (auto [name, lin] : AttentionLinears(a)) {
      if (lin->w.defined()) fn(p + "attn." + name, *lin, q.attention);
    }
    MlpWeights* mlp = L.is_moe ? (L.moe.has_shared ? &L.moe.shared : nullptr) : &L.mlp;
    const checkpoint::QuantFormat& f = L.is_moe ? q.shared_experts : q.dense_mlp;
    if (mlp != nullptr && mlp->gate_up.w.defined()) {
      const std::string m = p + (L.is_moe ? "moe.shared" : "mlp");
      fn(m + ".gate_up", mlp->gate_up, f);
      fn(m + ".down", mlp->down, f);
    }
  }
  if ((scope == kEveryLinear || scope == kLmHead) && w.lm_head.w.defined()) {
    fn("lm_head", w.lm_head, q.lm_head);
  }
}

// Bytes of w's tensors, each storage once (views and the tied lm_head share
// storage); a reduced model's gates and quantized matrices are held but not
// registered by name.
int64_t CountBytes(ModelWeights& w) {
  int64_t bytes = 0;
  absl::flat_hash_set<const void*> seen;
  auto add = [&](const at::Tensor& t) {
    if (t.defined() && seen.insert(t.storage().data()).second) {
      bytes += static_cast<int64_t>(t.storage().nbytes());
    }
  };
  for (const auto& [name, t] : w.by_name) add(t);
  for (const auto& L : w.layers) {
    if (!L.is_moe) continue;
    if (!L.moe.all_loaded) bytes += static_cast<int64_t>(L.moe.gate.nbytes());
    if (L.moe.quant.quantized()) {
      add(L.moe.gate_up);
      add(L.moe.down);
    }
  }
  ForEachLinear(w, {}, [&](const std::string&, Linear& l, const checkpoint::QuantFormat&) {
    if (l.quant.quantized()) add(l.w);
  });
  return bytes;
}

// Quantizes the linears of `scope` (see ForEachLinear) of each class `q`
// names, in place, dropping their dense tensors and the by_name entries
// that held them (a tied lm_head's embedding stays). Done as each part is
// loaded, so the allocator reuses one part's freed dense memory for the
// next instead of the whole model's sitting freed beside the quantized one.
// INVALID_ARGUMENT naming the matrix for a shape the format refuses or a
// weight it cannot hold. w.bytes is not updated.
absl::Status QuantizeLinears(ModelWeights& w, const DenseQuant& q, int64_t scope) {
  if (!q.any()) return absl::OkStatus();
  // The dense storages replaced; the embedding's stays (a tied lm_head is
  // quantized into a copy of its own).
  absl::flat_hash_set<const void*> dropped;
  absl::Status status;
  ForEachLinear(
      w, q,
      [&](const std::string& name, Linear& l, const checkpoint::QuantFormat& f) {
        if (!status.ok() || !f.quantized() || l.quant.quantized()) return;
        if (!l.w.is_cpu() || l.w.dim() != 2) {
          status = absl::InvalidArgumentError(
              absl::StrCat(name, ": only CPU matrices are held quantized"));
          return;
        }
        const int64_t out = l.w.size(0), in = l.w.size(1);
        status = f.CheckShape(name, out, in);
        if (!status.ok()) return;
        const at::Tensor dense = l.w.to(at::kFloat).contiguous();
        at::Tensor buffer = at::empty({f.Bytes(out, in, 0)}, at::kByte);
        status = checkpoint::Quantize(
            f, name, dense.const_data_ptr<float>(), out, in,
            std::span<std::byte>(static_cast<std::byte*>(buffer.data_ptr()), buffer.nbytes()));
        if (!status.ok()) return;
        dropped.insert(l.w.storage().data());
        l.w = std::move(buffer);
        l.quant = f;
        l.out = out;
        l.in = in;
      },
      scope);
  RETURN_IF_ERROR(status);
  if (w.embed.defined()) dropped.erase(w.embed.storage().data());
  std::erase_if(w.by_name,
                [&](const auto& entry) { return dropped.contains(entry.second.storage().data()); });
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelWeights> LoadWeights(const checkpoint::Checkpoint& checkpoint,
                                         const checkpoint::ModelConfig& c, const KeptExperts& keep,
                                         at::ScalarType dtype, at::Device device,
                                         bool routed_experts,
                                         const checkpoint::QuantFormat& expert_quant,
                                         const DenseQuant& dense_quant, bool map_experts) {
  if ((expert_quant.quantized() || dense_quant.any()) && !device.is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "quantized matrices run on the CPU only; device ", device.str(), " holds them dense"));
  }
  ModelWeights w;
  // Each tensor's mapped pages are dropped once copied: the RSS then never
  // holds a weight twice, and an engine that keeps the checkpoint open (to
  // load experts later) keeps none of it resident.
  Loader ld(checkpoint, c, dtype, device, &w.by_name, /*release=*/true);
  RETURN_IF_ERROR(LoadHead(checkpoint, c, dtype, device, &w.embed, &w.final_norm, &w.lm_head.w,
                           &w.by_name, /*release=*/true));
  RETURN_IF_ERROR(QuantizeLinears(w, dense_quant, kLmHead));
  RETURN_IF_ERROR(LoadRouters(ld, c, keep, w));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    RETURN_IF_ERROR(
        LoadLayerBody(ld, c, l, routed_experts, w.layers[l], expert_quant, map_experts));
    RETURN_IF_ERROR(QuantizeLinears(w, dense_quant, l));
  }
  w.bytes = CountBytes(w);
#if defined(__GLIBC__)
  // Quantizing frees the dense copies and fp32 temporaries it worked from,
  // in pieces under malloc's mmap threshold: hand those pages back, or the
  // RSS keeps them beside the quantized weights.
  if (expert_quant.quantized() || dense_quant.any()) malloc_trim(0);
#endif
  return w;
}

absl::StatusOr<ModelWeights> LoadProbeWeights(const checkpoint::Checkpoint& checkpoint,
                                              const checkpoint::ModelConfig& c, int64_t last_layer,
                                              at::ScalarType dtype, at::Device device) {
  ModelWeights w;
  Loader ld(checkpoint, c, dtype, device, &w.by_name, /*release=*/true);
  RETURN_IF_ERROR(LoadHead(checkpoint, c, dtype, device, &w.embed, nullptr, nullptr, &w.by_name,
                           /*release=*/true));
  RETURN_IF_ERROR(LoadRouters(ld, c, KeptExperts(), w));
  for (int64_t l = 0; l < last_layer; ++l) {
    RETURN_IF_ERROR(LoadLayerBody(ld, c, l, /*routed=*/true, w.layers[l]));
  }
  // The last layer's attention and norms: its MoE block only routes.
  LayerWeights& L = w.layers[last_layer];
  const std::string lp = LayerPrefix(checkpoint, last_layer);
  ASSIGN_OR_RETURN(L.input_norm, ld.Load(lp + "input_layernorm.weight", {c.hidden_size}));
  ASSIGN_OR_RETURN(L.post_norm, ld.Load(lp + "post_attention_layernorm.weight", {c.hidden_size}));
  RETURN_IF_ERROR(LoadAttention(ld, c, lp + "self_attn.", L.attn));
  w.bytes = CountBytes(w);
  return w;
}

absl::StatusOr<ModelWeights> LoadRouterWeights(const checkpoint::Checkpoint& checkpoint,
                                               const checkpoint::ModelConfig& c,
                                               const KeptExperts& keep, at::ScalarType dtype,
                                               at::Device device) {
  ModelWeights w;
  Loader ld(checkpoint, c, dtype, device, &w.by_name, /*release=*/true);
  RETURN_IF_ERROR(LoadRouters(ld, c, keep, w));
  w.bytes = CountBytes(w);
  return w;
}

absl::StatusOr<LayerWeights> LoadStreamedLayer(const checkpoint::Checkpoint& checkpoint,
                                               const checkpoint::ModelConfig& c,
                                               const LayerWeights& router, int64_t layer,
                                               at::ScalarType dtype, at::Device device,
                                               bool map_experts) {
  Loader ld(checkpoint, c, dtype, device, nullptr, /*release=*/true);
  LayerWeights L;
  L.is_moe = router.is_moe;
  L.moe = router.moe;
  RETURN_IF_ERROR(LoadLayerBody(ld, c, layer, /*routed=*/true, L, {}, map_experts));
  return L;
}

absl::Status LoadExpertInto(const checkpoint::Checkpoint& checkpoint,
                            const checkpoint::ModelConfig& c, int64_t layer, int64_t expert,
                            at::Tensor& gate_up, at::Tensor& down) {
  Loader ld(checkpoint, c, gate_up.scalar_type(), at::kCPU, nullptr, /*release=*/true);
  const std::string block = MoeBlockPrefix(ld, c, LayerPrefix(checkpoint, layer));
  // The reassembly hot path: each byte is copied once, from the file into the
  // expert's own tensors (pread where the dtypes agree).
  const int64_t n = c.num_routed_experts, h = c.hidden_size, inter = c.moe_intermediate_size;
  bool copied = false;
  const std::string fused_gu = block + "experts.gate_up_proj";
  if (ld.Has(fused_gu)) {
    ASSIGN_OR_RETURN(copied, ld.CopyInto(fused_gu, {n, 2 * inter, h}, expert, gate_up));
    if (copied) {
      ASSIGN_OR_RETURN(copied,
                       ld.CopyInto(block + "experts.down_proj", {n, h, inter}, expert, down));
    }
  } else {
    auto name = [&](checkpoint::ExpertProjection p) {
      std::string s = checkpoint::ExpertTensorName(c.architecture, layer, expert, p);
      if (!ld.Has(s) && absl::StartsWith(s, "model.")) s = s.substr(6);
      return s;
    };
    at::Tensor gate = gate_up.narrow(0, 0, inter), up = gate_up.narrow(0, inter, inter);
    ASSIGN_OR_RETURN(copied,
                     ld.CopyInto(name(checkpoint::ExpertProjection::kGate), {inter, h}, -1, gate));
    if (copied) {
      ASSIGN_OR_RETURN(copied,
                       ld.CopyInto(name(checkpoint::ExpertProjection::kUp), {inter, h}, -1, up));
    }
    if (copied) {
      ASSIGN_OR_RETURN(
          copied, ld.CopyInto(name(checkpoint::ExpertProjection::kDown), {h, inter}, -1, down));
    }
  }
  if (copied) return absl::OkStatus();
  // FP8 (block scales): dequantise, then convert.
  ASSIGN_OR_RETURN(auto weights, ReadExpert(ld, c, layer, block, expert));
  gate_up.copy_(weights.first);
  down.copy_(weights.second);
  return absl::OkStatus();
}

absl::Status LoadExpertBytes(const checkpoint::Checkpoint& checkpoint,
                             const checkpoint::ModelConfig& c, int64_t layer, int64_t expert,
                             const checkpoint::ExpertSlotLayout& layout, at::ScalarType dtype,
                             std::byte* gate_up, std::byte* down) {
  const int64_t h = c.hidden_size, inter = c.moe_intermediate_size;
  const checkpoint::QuantFormat& q = layout.format;
  const at::ScalarType read_as = q.quantized() ? at::kFloat : dtype;
  at::Tensor gu, dn;
  if (q.quantized()) {
    gu = at::empty({2 * inter, h}, at::TensorOptions().dtype(at::kFloat));
    dn = at::empty({h, inter}, at::TensorOptions().dtype(at::kFloat));
  } else {
    gu = at::from_blob(gate_up, {2 * inter, h}, at::TensorOptions().dtype(read_as));
    dn = at::from_blob(down, {h, inter}, at::TensorOptions().dtype(read_as));
  }
  RETURN_IF_ERROR(LoadExpertInto(checkpoint, c, layer, expert, gu, dn));
  if (!q.quantized()) return absl::OkStatus();
  Loader ld(checkpoint, c, at::kFloat, at::kCPU, nullptr, /*release=*/false);
  const std::string name =
      absl::StrCat(MoeBlockPrefix(ld, c, LayerPrefix(checkpoint, layer)), "experts.", expert);
  RETURN_IF_ERROR(checkpoint::Quantize(
      q, name + " gate_up", gu.const_data_ptr<float>(), 2 * inter, h,
      std::span<std::byte>(gate_up, static_cast<size_t>(layout.gate_up_bytes))));
  return checkpoint::Quantize(q, name + " down", dn.const_data_ptr<float>(), h, inter,
                              std::span<std::byte>(down, static_cast<size_t>(layout.down_bytes)));
}

at::Tensor DequantizeMatrix(const checkpoint::QuantFormat& format, const at::Tensor& buffer,
                            int64_t out, int64_t in, at::ScalarType dtype) {
  at::Tensor w = at::empty({out, in}, at::TensorOptions().dtype(at::kFloat));
  checkpoint::Dequantize(format, out, in, static_cast<const std::byte*>(buffer.const_data_ptr()),
                         w.data_ptr<float>());
  return w.to(dtype);
}

absl::Status LoadHead(const checkpoint::Checkpoint& checkpoint, const checkpoint::ModelConfig& c,
                      at::ScalarType dtype, at::Device device, at::Tensor* embed,
                      at::Tensor* final_norm, at::Tensor* lm_head,
                      std::map<std::string, at::Tensor>* names, bool release) {
  Loader ld(checkpoint, c, dtype, device, names, release);
  const std::string mp = ModelPrefix(checkpoint);
  const int64_t h = c.hidden_size, v = c.vocab_size;
  const bool tied = c.tie_word_embeddings || !checkpoint.Contains("lm_head.weight");
  if (tied && !c.tie_word_embeddings) {
    return absl::NotFoundError(
        absl::StrCat(checkpoint.path(),
                     ": no tensor named \"lm_head.weight\" and tie_word_embeddings is false"));
  }
  if (embed != nullptr || (lm_head != nullptr && tied)) {
    ASSIGN_OR_RETURN(at::Tensor e, ld.Load(mp + "embed_tokens.weight", {v, h}));
    if (embed != nullptr) *embed = e;
    if (lm_head != nullptr && tied) *lm_head = e;
  }
  if (final_norm != nullptr) {
    ASSIGN_OR_RETURN(*final_norm, ld.Load(mp + "norm.weight", {h}));
  }
  if (lm_head != nullptr && !tied) {
    ASSIGN_OR_RETURN(*lm_head, ld.Load("lm_head.weight", {v, h}));
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> LoadEmbeddingRows(const checkpoint::Checkpoint& checkpoint,
                                             const checkpoint::ModelConfig& c,
                                             const at::Tensor& ids, at::ScalarType dtype,
                                             at::Device device) {
  const std::string name = ModelPrefix(checkpoint) + "embed_tokens.weight";
  ASSIGN_OR_RETURN(checkpoint::TensorView view, checkpoint.Get(name));
  const std::vector<int64_t> shape = {c.vocab_size, c.hidden_size};
  if (view.shape != shape ||
      (view.dtype != checkpoint::DType::kF32 && view.dtype != checkpoint::DType::kF16 &&
       view.dtype != checkpoint::DType::kBF16)) {
    // Unusual layouts (FP8, wrong shape) take the checked whole-tensor path.
    at::Tensor embed;
    RETURN_IF_ERROR(LoadHead(checkpoint, c, dtype, device, &embed, nullptr, nullptr, nullptr,
                             /*release=*/true));
    return embed.index_select(0, ids.to(device));
  }
  // Only the rows asked for are read out of the mapping.
  at::Tensor all = at::from_blob(const_cast<uint8_t*>(view.bytes.data()), shape,
                                 at::TensorOptions().dtype(ToScalarType(view.dtype)));
  at::Tensor rows = all.index_select(0, ids.cpu()).to(device, dtype);
  checkpoint.Release(name);
  return rows;
}

}  // namespace premoe::model::internal
