// Expert scores: how much a task uses each routed expert of each MoE layer,
// from the router's own logits on the task's calibration tokens (PreMoe's
// probabilistic expert pruning, DESIGN.md §3).
//
// Per token x of MoE layer l with raw gate logits s(x) ∈ R^N (fp32, before
// any activation): E(x) = TopK(s(x), K); p_i(x) = softmax of s over E(x);
// m_i(x) = f(s_i(x)) if i ∈ E(x) and p_i(x) >= r, else 0. The score of expert
// i is the mean of m_i(x) over ALL tokens (zeros included).
//
//   metric       K            r                                   f
//   peu          model top-k  per layer, per task: mean_x max p   max(s, sigmoid(s))   (default)
//   tcess        1            off                                 identity
//   act_logits   model top-k  off                                 identity
//   all_logits   N            off                                 identity
//   frequency    model top-k  off                                 1
//   reap         the model's own routing: mean over the tokens routed to i of
//                g_i(x) * ||expert_i(x)||_2 (g: the routing weight)
//   man          the same without g: mean ||expert_i(x)||_2 over routed tokens
//   random       seeded uniform scores
// K, r and f can be set for the logit metrics (peu, tcess, act_logits,
// all_logits, frequency).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::profiler {

enum class Metric { kPeu, kTcess, kActLogits, kAllLogits, kFrequency, kReap, kMan, kRandom };
enum class Transform { kIdentity, kMaxSigmoid, kOne };

absl::string_view MetricName(Metric m);        // "peu", "tcess", ...
absl::string_view TransformName(Transform t);  // "identity", "max_sigmoid", "one"

struct MetricOptions {
  Metric metric = Metric::kPeu;
  // Experts considered per token; 0 = the metric's default (see above).
  int64_t k = 0;
  // Threshold on p_i(x). nullopt = the metric's default: computed per layer
  // and per task for peu, off for the others. A value in [0, 1] fixes it.
  std::optional<double> r;
  // f; nullopt = the metric's default.
  std::optional<Transform> transform;
  // Seed of `random`. Default: 0.
  uint64_t seed = 0;

  // Parses "peu", "tcess:k=2", "act_logits:k=4,r=0.2,transform=max_sigmoid",
  // "random:seed=3". INVALID_ARGUMENT naming the unknown metric or parameter.
  static absl::StatusOr<MetricOptions> Parse(absl::string_view spec);
  // The canonical spec string (defaults omitted); Parse(ToString()) == *this.
  std::string ToString() const;
  // The parameters as they apply (defaults resolved), for a pattern record:
  // {"k": "2", "r": "per_task", "transform": "max_sigmoid"}.
  std::map<std::string, std::string> Params(int64_t num_experts, int64_t model_top_k) const;
  // The inverse of Params: the options a pattern record's metric name and
  // parameters stand for (defaults Params resolved, such as k, stay explicit;
  // the results are the same). INVALID_ARGUMENT for an unknown metric or
  // parameter, or a value Params would not write.
  static absl::StatusOr<MetricOptions> FromParams(absl::string_view name,
                                                  const std::map<std::string, std::string>& params);
  // INVALID_ARGUMENT when k < 0, r outside [0, 1], or parameters that do not
  // apply to the metric (k, r, transform for reap, man, random).
  absl::Status Validate() const;
};

// What one MoE layer's router did for T tokens (a GateEvent's fields).
struct GateBatch {
  // [T, N] fp32 raw gate logits. Required.
  at::Tensor gate_logits;
  // [T, Kr] int64 experts the model selected and [T, Kr] fp32 their routing
  // weights, and [T, Kr] fp32 the L2 norms of their outputs: reap and man only.
  at::Tensor selected_experts;
  at::Tensor routing_weights;
  at::Tensor expert_norms;
};

// Accumulates scores for every MoE layer over the calibration tokens of one
// task, or of several tasks pooled (a generalist pattern: the token-level
// m_i(x) of all its tasks are averaged together; peu's r is still computed per
// task). Memory: with a per-task r, the current task's top-K logits per token
// are held until the next BeginTask() or Scores(); otherwise O(layers * N).
// Not thread-safe.
class ScoreAccumulator {
 public:
  // `layers`: the MoE layer ids; `num_experts` N; `model_top_k` the routing
  // top-k. Errors: INVALID_ARGUMENT for bad options or sizes.
  static absl::StatusOr<ScoreAccumulator> Create(const MetricOptions& options,
                                                 std::vector<int64_t> layers, int64_t num_experts,
                                                 int64_t model_top_k);

  // Starts the tokens of another task (for a generalist pattern). Tokens
  // added before the first call belong to a first task.
  void BeginTask();

  // Adds T tokens of `layer`. INVALID_ARGUMENT for an unknown layer, wrong
  // shapes or dtypes, missing norms for reap/man, or non-finite logits.
  absl::Status Add(int64_t layer, const GateBatch& batch);

  // Whether reap/man need GateBatch::expert_norms (GateTap::WantsExpertNorms).
  bool NeedsExpertNorms() const;

  // Per MoE layer, the N scores. FAILED_PRECONDITION when a layer saw no
  // tokens (random needs none).
  absl::StatusOr<std::map<int64_t, std::vector<double>>> Scores();

  // Tokens added to `layer` so far (all tasks).
  int64_t tokens(int64_t layer) const;

 private:
  struct Layer {
    at::Tensor sum;    // [N] fp64: sum of m_i(x) (reap/man: of the routed values)
    at::Tensor count;  // [N] fp64: reap/man: tokens routed to i
    int64_t tokens = 0;
    std::vector<at::Tensor> pending_s, pending_i;  // per-task r: [T, K] values, ids
  };
  ScoreAccumulator(MetricOptions options, int64_t num_experts, int64_t model_top_k);
  void Flush();
  void Accumulate(Layer& layer, const at::Tensor& s, const at::Tensor& idx, double r) const;

  MetricOptions options_;
  int64_t num_experts_ = 0;
  int64_t k_ = 0;
  Transform transform_ = Transform::kIdentity;
  bool per_task_r_ = false;
  std::map<int64_t, Layer> layers_;
};

}  // namespace premoe::profiler
