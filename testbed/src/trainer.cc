// The testbed trainer. The model is the engine itself, opened with
// EngineOptions::trainable over a freshly initialised checkpoint, so the
// trained weights are exactly what the engine serves: there is no second
// implementation of the architecture to drift from the first.
#include "premoe/testbed/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "premoe/checkpoint/config.h"
#include "premoe/checkpoint/expert_tensors.h"
#include "premoe/checkpoint/safetensors.h"
#include "premoe/common/file.h"
#include "premoe/common/hash.h"
#include "premoe/common/status.h"
#include "premoe/model/engine.h"
#include "premoe/testbed/tasks.h"

namespace premoe::testbed {
namespace {

namespace fs = std::filesystem;
using model::Engine;
using model::EngineOptions;

bool IsDeepseek(const ModelShape& s) { return s.architecture == "deepseek_v3"; }

std::string ConfigJson(const ModelShape& s) {
  nlohmann::ordered_json j;
  const bool ds = IsDeepseek(s);
  j["architectures"] = {ds ? "DeepseekV3ForCausalLM" : "Qwen3MoeForCausalLM"};
  j["model_type"] = s.architecture;
  j["vocab_size"] = kVocabSize;
  j["hidden_size"] = s.hidden;
  j["intermediate_size"] = 2 * s.hidden;  // the dense MLPs
  j["num_hidden_layers"] = s.layers;
  j["num_attention_heads"] = s.heads;
  j["num_key_value_heads"] = ds ? s.heads : s.kv_heads;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = s.max_positions;
  j["rms_norm_eps"] = 1e-6;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 10000.0}};
  j["attention_bias"] = false;
  j["tie_word_embeddings"] = false;
  j["num_experts_per_tok"] = s.top_k;
  j["moe_intermediate_size"] = s.expert_intermediate;
  j["norm_topk_prob"] = true;
  if (ds) {
    j["n_routed_experts"] = s.experts;
    j["n_shared_experts"] = s.shared_experts;
    j["first_k_dense_replace"] = s.dense_layers;
    j["n_group"] = s.groups;
    j["topk_group"] = s.topk_groups;
    j["topk_method"] = "noaux_tc";
    j["scoring_func"] = "sigmoid";
    j["routed_scaling_factor"] = s.routed_scaling_factor;
    j["q_lora_rank"] = s.q_lora_rank;
    j["kv_lora_rank"] = s.kv_lora_rank;
    j["qk_nope_head_dim"] = s.qk_nope_head_dim;
    j["qk_rope_head_dim"] = s.qk_rope_head_dim;
    j["v_head_dim"] = s.v_head_dim;
    j["head_dim"] = s.qk_rope_head_dim;
    j["rope_interleave"] = true;
    j["num_nextn_predict_layers"] = 0;
  } else {
    j["head_dim"] = s.hidden / s.heads;
    j["num_experts"] = s.experts;
    j["decoder_sparse_step"] = 1;
    j["mlp_only_layers"] = nlohmann::json::array();
    j["router_aux_loss_coef"] = 0.01;
    j["use_sliding_window"] = false;
    j["sliding_window"] = nullptr;
  }
  j["bos_token_id"] = kBosId;
  j["eos_token_id"] = kEosId;
  j["dtype"] = "float32";
  return j.dump(2) + "\n";
}

// GPT-2 style initialisation: N(0, 0.02) matrices, residual-output
// projections scaled down by sqrt(2 * layers), unit norms; DeepSeek's router
// correction biases start at zero.
absl::Status WriteInitialCheckpoint(const std::string& dir, const ModelShape& s, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t h = s.hidden, v = kVocabSize;
  const bool ds = IsDeepseek(s);
  const checkpoint::Architecture arch =
      ds ? checkpoint::Architecture::kDeepseekV3 : checkpoint::Architecture::kQwen3Moe;
  const double out_std = 0.02 / std::sqrt(2.0 * static_cast<double>(s.layers));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  auto normal = [&](const std::string& name, std::vector<int64_t> shape, double std) {
    tensors.emplace_back(name, at::randn(shape, at::kFloat) * std);
  };
  auto ones = [&](const std::string& name, int64_t n) {
    tensors.emplace_back(name, at::ones({n}, at::kFloat));
  };
  auto mlp = [&](const std::string& p, int64_t inter) {
    normal(p + "gate_proj.weight", {inter, h}, 0.02);
    normal(p + "up_proj.weight", {inter, h}, 0.02);
    normal(p + "down_proj.weight", {h, inter}, out_std);
  };
  normal("model.embed_tokens.weight", {v, h}, 0.02);
  normal("lm_head.weight", {v, h}, 0.02);
  ones("model.norm.weight", h);
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    ones(p + "input_layernorm.weight", h);
    ones(p + "post_attention_layernorm.weight", h);
    const std::string a = p + "self_attn.";
    if (ds) {
      const int64_t qk = s.qk_nope_head_dim + s.qk_rope_head_dim;
      normal(a + "q_a_proj.weight", {s.q_lora_rank, h}, 0.02);
      ones(a + "q_a_layernorm.weight", s.q_lora_rank);
      normal(a + "q_b_proj.weight", {s.heads * qk, s.q_lora_rank}, 0.02);
      normal(a + "kv_a_proj_with_mqa.weight", {s.kv_lora_rank + s.qk_rope_head_dim, h}, 0.02);
      ones(a + "kv_a_layernorm.weight", s.kv_lora_rank);
      normal(a + "kv_b_proj.weight",
             {s.heads * (s.qk_nope_head_dim + s.v_head_dim), s.kv_lora_rank}, 0.02);
      normal(a + "o_proj.weight", {h, s.heads * s.v_head_dim}, out_std);
    } else {
      const int64_t d = s.hidden / s.heads;
      normal(a + "q_proj.weight", {s.heads * d, h}, 0.02);
      normal(a + "k_proj.weight", {s.kv_heads * d, h}, 0.02);
      normal(a + "v_proj.weight", {s.kv_heads * d, h}, 0.02);
      normal(a + "o_proj.weight", {h, s.heads * d}, out_std);
      ones(a + "q_norm.weight", d);
      ones(a + "k_norm.weight", d);
    }
    if (ds && l < s.dense_layers) {
      mlp(p + "mlp.", 2 * h);
      continue;
    }
    normal(p + "mlp.gate.weight", {s.experts, h}, 0.02);
    if (ds) {
      tensors.emplace_back(p + "mlp.gate.e_score_correction_bias",
                           at::zeros({s.experts}, at::kFloat));
      mlp(p + "mlp.shared_experts.", s.shared_experts * s.expert_intermediate);
    }
    for (int64_t e = 0; e < s.experts; ++e) {
      using checkpoint::ExpertProjection;
      auto name = [&](ExpertProjection proj) {
        return checkpoint::ExpertTensorName(arch, l, e, proj);
      };
      normal(name(ExpertProjection::kGate), {s.expert_intermediate, h}, 0.02);
      normal(name(ExpertProjection::kUp), {s.expert_intermediate, h}, 0.02);
      normal(name(ExpertProjection::kDown), {h, s.expert_intermediate}, out_std);
    }
  }
  checkpoint::SafetensorsWriter writer;
  for (const auto& [name, t] : tensors) {
    RETURN_IF_ERROR(writer.AddUnowned(
        name, checkpoint::DType::kF32, t.sizes().vec(),
        std::span<const uint8_t>(static_cast<const uint8_t*>(t.data_ptr()), t.nbytes())));
  }
  RETURN_IF_ERROR(writer.Write(dir + "/model.safetensors"));
  return common::WriteFileAtomically(dir + "/config.json", ConfigJson(s));
}

// One training sequence: tokens and which of them are predicted (a target
// at position p is predicted from the logits of position p - 1).
struct Sequence {
  std::vector<int64_t> tokens;
  int64_t first_target = 1;  // targets are tokens[first_target..]
};

absl::StatusOr<Sequence> MakeSequence(const Task& task, const Sample& sample, int64_t max_len) {
  Sequence s;
  s.tokens.push_back(kBosId);
  for (unsigned char c : sample.prompt) s.tokens.push_back(c);
  if (task.kind() == TaskKind::kExactMatch) {
    s.first_target = static_cast<int64_t>(s.tokens.size());
    for (unsigned char c : sample.completion) s.tokens.push_back(c);
    s.tokens.push_back(kEosId);
  }
  if (static_cast<int64_t>(s.tokens.size()) > max_len) {
    return absl::InvalidArgumentError(absl::StrCat("task ", task.name(), ": a training sample of ",
                                                   s.tokens.size(), " tokens exceeds the model's ",
                                                   max_len, " positions"));
  }
  return s;
}

// Collects what each MoE layer's routing says about balance during a
// forward pass: the balancing loss (TrainOptions documents both forms) and,
// for sigmoid routers, each expert's load for the bias update.
class BalanceTap final : public model::GateTap {
 public:
  BalanceTap(int64_t experts, int64_t top_k, int64_t sequences, bool sigmoid)
      : experts_(experts), top_k_(top_k), sequences_(sequences), sigmoid_(sigmoid) {}

  void OnGate(const model::GateEvent& ev) override {
    const at::Tensor idx = ev.selected_experts.reshape({-1});
    at::Tensor load = at::bincount(idx, {}, experts_).to(at::kFloat);  // [N]
    if (!sigmoid_) {
      const at::Tensor probs = at::softmax(ev.gate_logits, -1).mean(0);  // [N], differentiable
      terms_.push_back((load / load.sum() * probs).sum() * static_cast<double>(experts_));
      return;
    }
    // Per sequence b: f_bi = N / (K T_b) * c_bi, P_bi = mean over its tokens
    // of s_ti / sum_j s_tj.
    const at::Tensor scores = at::sigmoid(ev.gate_logits);               // [T, N]
    const at::Tensor share = scores / scores.sum(-1, /*keepdim=*/true);  // [T, N]
    const at::Tensor chosen =
        at::zeros_like(scores, at::kFloat).scatter_(1, ev.selected_experts, 1.0);  // [T, N]
    const at::Tensor tokens =
        at::zeros({sequences_}, at::kFloat)
            .index_add_(0, ev.sequence, at::ones_like(ev.sequence, at::kFloat));
    const at::Tensor per_tokens = tokens.clamp_min(1).unsqueeze(1);  // [B, 1]
    const at::Tensor p =
        at::zeros({sequences_, experts_}, at::kFloat).index_add(0, ev.sequence, share) / per_tokens;
    const at::Tensor c =
        at::zeros({sequences_, experts_}, at::kFloat).index_add_(0, ev.sequence, chosen);
    const at::Tensor f =
        c * (static_cast<double>(experts_) / static_cast<double>(top_k_)) / per_tokens;
    terms_.push_back((f * p).sum(-1).mean());
    loads_.emplace_back(ev.layer, std::move(load));
  }

  at::Tensor Loss() const { return at::stack(terms_).mean(); }
  // (layer, [N] tokens routed to each expert) of the sigmoid routers.
  const std::vector<std::pair<int64_t, at::Tensor>>& loads() const { return loads_; }

 private:
  int64_t experts_, top_k_, sequences_;
  bool sigmoid_;
  std::vector<at::Tensor> terms_;
  std::vector<std::pair<int64_t, at::Tensor>> loads_;
};

std::string DataFingerprint(const Task& task) {
  common::Hasher h;
  const int64_t n = std::min<int64_t>(task.size(Split::kTrain), 1000);
  for (int64_t i = 0; i < n; ++i) {
    auto s = task.Get(Split::kTrain, i);
    if (!s.ok()) return "error";
    h.UpdateField(s->prompt).UpdateField(s->completion);
  }
  return h.HexDigest();
}

absl::StatusOr<TrainReport> TrainImpl(const TrainOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  if (o.threads > 0) at::set_num_threads(o.threads);
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", o.out_dir, ": ", ec.message()));
  const std::string init_dir = o.out_dir + "/.init";
  fs::create_directories(init_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", init_dir, ": ", ec.message()));
  RETURN_IF_ERROR(WriteInitialCheckpoint(init_dir, o.shape, o.seed));
  EngineOptions eo;
  eo.dtype = "fp32";
  eo.trainable = true;
  auto engine_or = Engine::Open(init_dir, eo);
  fs::remove_all(init_dir, ec);
  if (!engine_or.ok()) return engine_or.status();
  std::unique_ptr<Engine> engine = std::move(*engine_or);

  const std::vector<std::pair<int64_t, at::Tensor>> biases = engine->RouterBiases();
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& [name, t] : engine->Parameters()) (t.dim() >= 2 ? decay : no_decay).push_back(t);
  torch::optim::AdamWOptions adam(o.lr);
  adam.betas({0.9, 0.98}).weight_decay(o.weight_decay).eps(1e-8);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(adam));
  auto nd = std::make_unique<torch::optim::AdamWOptions>(adam);
  nd->weight_decay(0);
  groups.emplace_back(no_decay, std::move(nd));
  torch::optim::AdamW optimizer(std::move(groups), adam);
  std::vector<at::Tensor> all_params = decay;
  all_params.insert(all_params.end(), no_decay.begin(), no_decay.end());

  ASSIGN_OR_RETURN(const std::vector<const Task*> tasks, ParseTaskList(o.tasks, o.suite));
  // Task sampling. Text tasks take a fixed share of the batch; exact-match
  // tasks share the rest in proportion to their recent answer loss
  // (-log P(answer), an exponential moving average), so steps go where the
  // model is still wrong rather than to tasks it has already learnt.
  int64_t em_count = 0;
  for (const Task* t : tasks) em_count += t->kind() == TaskKind::kExactMatch ? 1 : 0;
  const double text_share = o.text_weight * static_cast<double>(tasks.size() - em_count) /
                            (static_cast<double>(em_count) +
                             o.text_weight * static_cast<double>(tasks.size() - em_count));
  std::vector<double> ema_loss(tasks.size(), 1.0);
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + 1);
  // The cumulative sampling weights for the next step.
  auto task_weights = [&] {
    double em_total = 0;
    for (size_t i = 0; i < tasks.size(); ++i) {
      if (tasks[i]->kind() == TaskKind::kExactMatch) {
        em_total += o.adaptive_sampling ? std::max(ema_loss[i], 0.05) : 1.0;
      }
    }
    std::vector<double> cumulative;
    double total = 0;
    for (size_t i = 0; i < tasks.size(); ++i) {
      if (tasks[i]->kind() == TaskKind::kExactMatch) {
        total +=
            (1 - text_share) * (o.adaptive_sampling ? std::max(ema_loss[i], 0.05) : 1.0) / em_total;
      } else {
        total += text_share / static_cast<double>(tasks.size() - em_count);
      }
      cumulative.push_back(total);
    }
    return cumulative;
  };
  // Draws with 53 random bits (not std::discrete_distribution, whose draws
  // differ between standard libraries).
  auto pick_task = [&](const std::vector<double>& cumulative) -> size_t {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * cumulative.back();
    const size_t i = std::upper_bound(cumulative.begin(), cumulative.end(), u) - cumulative.begin();
    return std::min(i, tasks.size() - 1);
  };
  auto save_model = [&]() -> absl::Status {
    RETURN_IF_ERROR(engine->SaveWeights(o.out_dir + "/model.safetensors"));
    RETURN_IF_ERROR(common::WriteFileAtomically(o.out_dir + "/config.json", ConfigJson(o.shape)));
    RETURN_IF_ERROR(
        common::WriteFileAtomically(o.out_dir + "/tokenizer.json", ByteTokenizerJson()));
    RETURN_IF_ERROR(common::WriteFileAtomically(o.out_dir + "/tokenizer_config.json",
                                                ByteTokenizerConfigJson()));
    return common::WriteFileAtomically(o.out_dir + "/generation_config.json",
                                       GenerationConfigJson());
  };
  TrainReport report;
  for (int64_t step = 1; step <= o.steps; ++step) {
    // Learning rate: linear warmup, then cosine to min_lr_ratio * lr.
    double lr = o.lr;
    if (step <= o.warmup_steps) {
      lr = o.lr * static_cast<double>(step) / static_cast<double>(o.warmup_steps);
    } else {
      const double t = static_cast<double>(step - o.warmup_steps) /
                       static_cast<double>(std::max<int64_t>(1, o.steps - o.warmup_steps));
      lr = o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + std::cos(M_PI * t)));
    }
    for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);

    std::vector<std::vector<int64_t>> batch;
    std::vector<int64_t> rows, targets;
    std::vector<float> weights;
    std::vector<int64_t> seq_of_row;
    std::vector<size_t> task_of_seq;
    int64_t offset = 0;
    const std::vector<double> cumulative = task_weights();
    for (int64_t b = 0; b < o.batch_size; ++b) {
      task_of_seq.push_back(pick_task(cumulative));
      const Task& task = *tasks[task_of_seq.back()];
      const uint64_t size = static_cast<uint64_t>(task.size(Split::kTrain));
      ASSIGN_OR_RETURN(Sample sample, task.Get(Split::kTrain, static_cast<int64_t>(rng() % size)));
      ASSIGN_OR_RETURN(Sequence seq, MakeSequence(task, sample, o.shape.max_positions));
      const int64_t n = static_cast<int64_t>(seq.tokens.size());
      // Each sequence weighs the same whatever its length, so long text
      // windows do not drown the short answers.
      const float w = 1.0f / static_cast<float>((n - seq.first_target) * o.batch_size);
      for (int64_t p = seq.first_target; p < n; ++p) {
        rows.push_back(offset + p - 1);
        targets.push_back(seq.tokens[p]);
        weights.push_back(w);
        seq_of_row.push_back(b);
      }
      offset += n;
      batch.push_back(std::move(seq.tokens));
    }

    const bool sigmoid = IsDeepseek(o.shape);
    BalanceTap tap(o.shape.experts, o.shape.top_k, o.batch_size, sigmoid);
    model::ForwardOptions fo;
    fo.all_logits = true;
    fo.tap = &tap;
    ASSIGN_OR_RETURN(at::Tensor logits, engine->Forward(batch, nullptr, fo));
    const auto lopt = at::TensorOptions().dtype(at::kLong);
    at::Tensor picked = logits.index_select(0, at::tensor(rows, lopt));
    at::Tensor nll = -at::log_softmax(picked, -1).gather(1, at::tensor(targets, lopt).unsqueeze(1));
    at::Tensor task_loss = (nll.squeeze(1) * at::tensor(weights)).sum();
    at::Tensor aux = tap.Loss();
    at::Tensor loss = task_loss + (sigmoid ? o.seq_aux_loss_coef : o.aux_loss_coef) * aux;
    optimizer.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(all_params, o.grad_clip);
    optimizer.step();
    // Auxiliary-loss-free balancing: each expert's correction bias moves a
    // fixed step towards the layer's mean load.
    double max_load_ratio = 0;
    if (sigmoid) {
      at::NoGradGuard no_grad;
      for (const auto& [layer, load] : tap.loads()) {
        auto bias = std::find_if(biases.begin(), biases.end(),
                                 [&, layer = layer](const auto& b) { return b.first == layer; });
        if (bias == biases.end()) {
          return absl::InternalError(absl::StrCat("no router bias for MoE layer ", layer));
        }
        const at::Tensor mean = load.mean();
        bias->second.add_(at::sign(mean - load) * o.bias_update_rate);
        max_load_ratio += (load.max() / mean).item<double>();
      }
      max_load_ratio /= static_cast<double>(std::max<size_t>(1, tap.loads().size()));
    }

    // Each sequence's answer loss, -log P(whole answer): what exact match
    // depends on (a long answer with one likely error has a low mean loss).
    {
      at::Tensor per_seq =
          at::zeros({o.batch_size}, at::kFloat)
              .index_add_(0, at::tensor(seq_of_row, lopt), nll.detach().squeeze(1));
      const float* v = per_seq.data_ptr<float>();
      std::vector<double> sum(tasks.size(), 0);
      std::vector<int> count(tasks.size(), 0);
      for (int64_t b = 0; b < o.batch_size; ++b) {
        sum[task_of_seq[b]] += v[b];
        ++count[task_of_seq[b]];
      }
      for (size_t i = 0; i < tasks.size(); ++i) {
        if (count[i] > 0) ema_loss[i] = 0.9 * ema_loss[i] + 0.1 * sum[i] / count[i];
      }
    }
    const double l = task_loss.item<double>();
    if (!std::isfinite(l)) {
      return absl::InternalError(absl::StrCat("training diverged at step ", step, " (loss ", l,
                                              "); lower the learning rate"));
    }
    if (step % o.progress_every == 0 || step == o.steps) {
      report.loss_curve.emplace_back(step, l);
      if (o.on_progress) {
        o.on_progress(
            TrainProgress{step, o.steps, l, aux.item<double>(), max_load_ratio, lr, elapsed()});
      }
    }
    report.final_loss = l;
    if (o.checkpoint_every > 0 && step % o.checkpoint_every == 0 && step < o.steps) {
      RETURN_IF_ERROR(save_model());
    }
  }

  // Model files: weights, config, tokenizer, then the manifest, each atomic.
  RETURN_IF_ERROR(save_model());
  report.wall_s = elapsed();

  nlohmann::ordered_json m;
  m["command"] = o.command;
  m["seed"] = o.seed;
  m["suite"] = o.suite;
  m["steps"] = o.steps;
  m["batch_size"] = o.batch_size;
  m["text_weight"] = o.text_weight;
  m["adaptive_sampling"] = o.adaptive_sampling;
  m["optimizer"] = {{"name", "AdamW"},
                    {"lr", o.lr},
                    {"warmup_steps", o.warmup_steps},
                    {"min_lr_ratio", o.min_lr_ratio},
                    {"weight_decay", o.weight_decay},
                    {"betas", {0.9, 0.98}},
                    {"grad_clip", o.grad_clip}};
  if (IsDeepseek(o.shape)) {
    m["balance"] = {{"bias_update_rate", o.bias_update_rate},
                    {"seq_aux_loss_coef", o.seq_aux_loss_coef}};
  } else {
    m["balance"] = {{"aux_loss_coef", o.aux_loss_coef}};
  }
  const ModelShape& sh = o.shape;
  m["shape"] = {{"architecture", sh.architecture},
                {"hidden", sh.hidden},
                {"layers", sh.layers},
                {"experts", sh.experts},
                {"top_k", sh.top_k},
                {"expert_intermediate", sh.expert_intermediate},
                {"heads", sh.heads},
                {"max_positions", sh.max_positions}};
  if (IsDeepseek(sh)) {
    m["shape"].update({{"dense_layers", sh.dense_layers},
                       {"shared_experts", sh.shared_experts},
                       {"groups", sh.groups},
                       {"topk_groups", sh.topk_groups},
                       {"routed_scaling_factor", sh.routed_scaling_factor},
                       {"q_lora_rank", sh.q_lora_rank},
                       {"kv_lora_rank", sh.kv_lora_rank},
                       {"qk_nope_head_dim", sh.qk_nope_head_dim},
                       {"qk_rope_head_dim", sh.qk_rope_head_dim},
                       {"v_head_dim", sh.v_head_dim}});
  } else {
    m["shape"]["kv_heads"] = sh.kv_heads;
  }
  m["threads"] = at::get_num_threads();
  nlohmann::ordered_json data = nlohmann::json::array();
  for (const Task* t : tasks) {
    data.push_back({{"task", t->name()},
                    {"train_samples", t->size(Split::kTrain)},
                    {"first_1000_train_xxh3", DataFingerprint(*t)}});
  }
  m["data"] = data;
  ASSIGN_OR_RETURN(std::string weights, common::ReadFile(o.out_dir + "/model.safetensors"));
  m["model_safetensors_xxh3"] = common::Hasher().Update(weights).HexDigest();
  m["final_loss"] = report.final_loss;
  m["wall_s"] = report.wall_s;
  nlohmann::ordered_json curve = nlohmann::json::array();
  for (const auto& [s, l] : report.loss_curve) curve.push_back({s, l});
  m["loss_curve"] = curve;
  RETURN_IF_ERROR(
      common::WriteFileAtomically(o.out_dir + "/train_manifest.json", m.dump(1) + "\n"));
  return report;
}

}  // namespace

absl::Status TrainOptions::Validate() const {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  if (out_dir.empty()) return bad("TrainOptions.out_dir is required");
  if (steps < 1) return bad(absl::StrCat("TrainOptions.steps must be >= 1, got ", steps));
  if (batch_size < 1) {
    return bad(absl::StrCat("TrainOptions.batch_size must be >= 1, got ", batch_size));
  }
  if (!(lr > 0) || !std::isfinite(lr)) return bad(absl::StrCat("TrainOptions.lr must be > 0"));
  if (warmup_steps < 0) return bad("TrainOptions.warmup_steps must be >= 0");
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) {
    return bad("TrainOptions.min_lr_ratio must be in [0, 1]");
  }
  if (!(weight_decay >= 0) || !(grad_clip > 0) || !(aux_loss_coef >= 0) ||
      !(bias_update_rate >= 0) || !(seq_aux_loss_coef >= 0)) {
    return bad(
        "TrainOptions: weight_decay, aux_loss_coef, bias_update_rate and seq_aux_loss_coef must "
        "be >= 0, grad_clip > 0");
  }
  if (progress_every < 1) return bad("TrainOptions.progress_every must be >= 1");
  if (checkpoint_every < 0) return bad("TrainOptions.checkpoint_every must be >= 0");
  if (!(text_weight >= 0) || !std::isfinite(text_weight)) {
    return bad("TrainOptions.text_weight must be >= 0");
  }
  const ModelShape& s = shape;
  if (s.architecture != "qwen3_moe" && s.architecture != "deepseek_v3") {
    return bad(absl::StrCat("TrainOptions.shape.architecture \"", s.architecture,
                            "\" is not one the trainer builds: qwen3_moe, deepseek_v3"));
  }
  if (s.hidden < 8 || s.layers < 1 || s.experts < 2 || s.top_k < 1 || s.top_k > s.experts ||
      s.expert_intermediate < 1 || s.heads < 1 || s.max_positions < 16) {
    return bad(
        "TrainOptions.shape: need hidden >= 8, layers >= 1, 1 <= top_k <= experts, heads >= 1 "
        "and max_positions >= 16");
  }
  if (!IsDeepseek(s)) {
    if (s.kv_heads < 1 || s.heads % s.kv_heads != 0 || s.hidden % s.heads != 0 ||
        (s.hidden / s.heads) % 2 != 0) {
      return bad(
          "TrainOptions.shape: qwen3_moe needs hidden divisible by heads into an even head size "
          "and heads divisible by kv_heads");
    }
    return absl::OkStatus();
  }
  if (s.dense_layers < 0 || s.dense_layers >= s.layers || s.shared_experts < 0) {
    return bad(
        "TrainOptions.shape: deepseek_v3 needs 0 <= dense_layers < layers (one MoE layer at "
        "least) and shared_experts >= 0");
  }
  if (s.groups < 1 || s.experts % s.groups != 0 || s.topk_groups < 1 || s.topk_groups > s.groups ||
      s.top_k > s.topk_groups * (s.experts / s.groups)) {
    return bad(
        "TrainOptions.shape: deepseek_v3 needs groups dividing experts, 1 <= topk_groups <= "
        "groups, and top_k <= the experts of topk_groups groups");
  }
  if (s.q_lora_rank < 1 || s.kv_lora_rank < 1 || s.qk_nope_head_dim < 1 || s.qk_rope_head_dim < 2 ||
      s.qk_rope_head_dim % 2 != 0 || s.v_head_dim < 1 || !(s.routed_scaling_factor > 0)) {
    return bad(
        "TrainOptions.shape: deepseek_v3 needs positive lora ranks and head sizes, an even "
        "qk_rope_head_dim and routed_scaling_factor > 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainReport> Train(const TrainOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  try {
    return TrainImpl(options);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("training: libtorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training: ", e.what()));
  }
}

}  // namespace premoe::testbed
