// Trains the testbed: a small qwen3_moe or deepseek_v3 model on the testbed tasks, with the
// engine's own forward pass under libtorch autograd, written in the Hugging
// Face layout the engine (and transformers) serve.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/testbed/tasks.h"

namespace premoe::testbed {

// The model's shape. Defaults: the committed testbed (qwen3_moe).
struct ModelShape {
  // "qwen3_moe": grouped-query attention, softmax top-k routing, every layer
  // MoE, balanced by an auxiliary loss (TrainOptions::aux_loss_coef).
  // "deepseek_v3": multi-head latent attention, the first `dense_layers`
  // layers dense, `shared_experts` shared experts, sigmoid routing over
  // `groups` expert groups of which `topk_groups` are searched, scaled by
  // `routed_scaling_factor`, balanced by router correction biases
  // (TrainOptions::bias_update_rate, seq_aux_loss_coef).
  std::string architecture = "qwen3_moe";
  int64_t hidden = 128;
  int64_t layers = 4;    // decoder layers, dense ones included
  int64_t experts = 16;  // routed experts per MoE layer
  int64_t top_k = 2;
  int64_t expert_intermediate = 128;  // routed and shared experts
  int64_t heads = 4;
  int64_t kv_heads = 2;  // qwen3_moe only (MLA has one latent for all heads)
  int64_t max_positions = 256;
  // deepseek_v3 only. The dense MLPs' intermediate size is 2 * hidden.
  int64_t dense_layers = 1;
  int64_t shared_experts = 1;
  int64_t groups = 8;
  int64_t topk_groups = 4;
  double routed_scaling_factor = 2.5;
  int64_t q_lora_rank = 96;
  int64_t kv_lora_rank = 64;
  int64_t qk_nope_head_dim = 16;
  int64_t qk_rope_head_dim = 16;
  int64_t v_head_dim = 32;
};

struct TrainProgress {
  int64_t step = 0;  // 1-based, just finished
  int64_t steps = 0;
  double loss = 0;      // task loss of this step (mean over sequences)
  double aux_loss = 0;  // load-balancing loss of this step (before its coefficient)
  // deepseek_v3: the mean over MoE layers of max_i load_i / mean load, this
  // step (1 is perfectly balanced); 0 for qwen3_moe.
  double max_load_ratio = 0;
  double lr = 0;
  double elapsed_s = 0;
};

struct TrainOptions {
  // Where the model goes: config.json, model.safetensors, tokenizer.json,
  // tokenizer_config.json, generation_config.json and train_manifest.json
  // are written there (created if missing; existing
  // files are replaced atomically). Required.
  std::string out_dir;
  // Everything random (initial weights, which samples, in which order) follows
  // from it. Default: 1.
  uint64_t seed = 1;
  // Optimizer steps. Default: 3000.
  int64_t steps = 3000;
  // Which tasks to train on: "all" or a comma-separated list of names
  // (premoe tasks list). Default: "all".
  std::string tasks = "all";
  // The task suite `tasks` names tasks of (tasks.h). Default: "v1".
  std::string suite{kDefaultSuite};
  // Sequences per step; each picks a task at random. Text tasks take the
  // share they would with weight text_weight against 1 for an exact-match
  // task (a 96-byte text window costs about three short prompts); with
  // adaptive_sampling the exact-match tasks split the rest in proportion to
  // a moving average of their answer loss (-log P(answer)), otherwise evenly.
  // Defaults: 64, 0.5, true.
  int64_t batch_size = 64;
  double text_weight = 0.5;
  bool adaptive_sampling = true;
  // AdamW, with linear warmup then cosine decay to min_lr_ratio * lr.
  // Defaults: 3e-3, 100 steps, 0.1, weight decay 0.01, betas 0.9/0.98.
  double lr = 3e-3;
  int64_t warmup_steps = 100;
  double min_lr_ratio = 0.1;
  double weight_decay = 0.01;
  // Global gradient-norm clip. Default: 1.0.
  double grad_clip = 1.0;
  // Softmax routers (qwen3_moe): coefficient of the Switch-style
  // load-balancing loss N * sum_i f_i * P_i (f_i: fraction of routed slots
  // going to expert i, P_i: mean router probability), averaged over layers.
  // Default: 0.01.
  double aux_loss_coef = 0.01;
  // Sigmoid routers (deepseek_v3), as DeepSeek-V3 balances without an
  // auxiliary loss: after every step each expert's correction bias moves by
  // bias_update_rate towards balance (+rate if its load over the step's
  // tokens was below the layer's mean, -rate if above). Plus DeepSeek-V3's
  // complementary sequence-wise balance loss with coefficient
  // seq_aux_loss_coef: per sequence, (N / (K T)) * sum_i c_i * P_i, c_i the
  // tokens routed to expert i, P_i the mean over the sequence of expert i's
  // share of the token's sigmoid scores; averaged over sequences and layers.
  // Defaults: 1e-3, 1e-4.
  double bias_update_rate = 1e-3;
  double seq_aux_loss_coef = 1e-4;
  ModelShape shape;
  // Intra-op threads; 0 leaves libtorch's default. Default: 0.
  int threads = 0;
  // The command line recorded in the manifest. Default: empty.
  std::string command;
  // Also write the model files every this many steps (0 = only at the end),
  // so a long run leaves a usable model as it goes. Default: 0.
  int64_t checkpoint_every = 0;
  // Called every progress_every steps and after the last. Default: none.
  std::function<void(const TrainProgress&)> on_progress;
  int64_t progress_every = 10;

  // INVALID_ARGUMENT naming the field that is out of range.
  absl::Status Validate() const;
};

struct TrainReport {
  double wall_s = 0;
  // (step, loss) every progress_every steps: the loss curve of the manifest.
  std::vector<std::pair<int64_t, double>> loss_curve;
  double final_loss = 0;
};

// Trains from scratch and writes the model. Deterministic for a given
// seed, thread count and machine: two runs write identical bytes. Errors:
// INVALID_ARGUMENT for bad options, the file system's error when writing.
absl::StatusOr<TrainReport> Train(const TrainOptions& options);

}  // namespace premoe::testbed
