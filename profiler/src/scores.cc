#include "premoe/profiler/scores.h"

#include <ATen/ATen.h>

#include <cmath>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace premoe::profiler {
namespace {

constexpr std::pair<Metric, const char*> kMetrics[] = {{Metric::kPeu, "peu"},
                                                       {Metric::kTcess, "tcess"},
                                                       {Metric::kActLogits, "act_logits"},
                                                       {Metric::kAllLogits, "all_logits"},
                                                       {Metric::kFrequency, "frequency"},
                                                       {Metric::kReap, "reap"},
                                                       {Metric::kMan, "man"},
                                                       {Metric::kRandom, "random"}};
constexpr std::pair<Transform, const char*> kTransforms[] = {
    {Transform::kIdentity, "identity"},
    {Transform::kMaxSigmoid, "max_sigmoid"},
    {Transform::kOne, "one"}};

bool UsesLogits(Metric m) {
  return m != Metric::kReap && m != Metric::kMan && m != Metric::kRandom;
}

int64_t DefaultK(Metric m, int64_t n, int64_t top_k) {
  if (m == Metric::kTcess) return 1;
  if (m == Metric::kAllLogits) return n;
  return top_k;
}

Transform DefaultTransform(Metric m) {
  if (m == Metric::kPeu) return Transform::kMaxSigmoid;
  if (m == Metric::kFrequency) return Transform::kOne;
  return Transform::kIdentity;
}

}  // namespace

absl::string_view MetricName(Metric m) {
  for (const auto& [metric, name] : kMetrics) {
    if (metric == m) return name;
  }
  return "?";
}

absl::string_view TransformName(Transform t) {
  for (const auto& [transform, name] : kTransforms) {
    if (transform == t) return name;
  }
  return "?";
}

absl::StatusOr<MetricOptions> MetricOptions::Parse(absl::string_view spec) {
  const std::vector<absl::string_view> head = absl::StrSplit(spec, absl::MaxSplits(':', 1));
  MetricOptions o;
  bool found = false;
  std::vector<std::string> names;
  for (const auto& [metric, name] : kMetrics) {
    names.push_back(name);
    if (head[0] == name) {
      o.metric = metric;
      found = true;
    }
  }
  if (!found) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown metric \"", head[0], "\" (known: ", absl::StrJoin(names, ", "), ")"));
  }
  if (head.size() == 2) {
    for (absl::string_view kv : absl::StrSplit(head[1], ',')) {
      const std::vector<absl::string_view> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      auto bad = [&](absl::string_view why) {
        return absl::InvalidArgumentError(
            absl::StrCat("metric \"", spec, "\": parameter \"", kv, "\": ", why));
      };
      if (p.size() != 2) return bad("want name=value");
      if (p[0] == "k") {
        if (!absl::SimpleAtoi(p[1], &o.k)) return bad("k must be an integer");
      } else if (p[0] == "r") {
        double r = 0;
        if (!absl::SimpleAtod(p[1], &r)) return bad("r must be a number");
        o.r = r;
      } else if (p[0] == "transform") {
        bool ok = false;
        for (const auto& [t, name] : kTransforms) {
          if (p[1] == name) o.transform = t, ok = true;
        }
        if (!ok) return bad("transform must be identity, max_sigmoid or one");
      } else if (p[0] == "seed") {
        if (!absl::SimpleAtoi(p[1], &o.seed)) return bad("seed must be an unsigned integer");
      } else {
        return bad("unknown parameter (known: k, r, transform, seed)");
      }
    }
  }
  if (auto status = o.Validate(); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("metric \"", spec, "\": ", status.message()));
  }
  return o;
}

std::string MetricOptions::ToString() const {
  std::vector<std::string> params;
  if (k != 0) params.push_back(absl::StrCat("k=", k));
  if (r.has_value()) params.push_back(absl::StrCat("r=", absl::StrCat(*r)));
  if (transform.has_value()) {
    params.push_back(absl::StrCat("transform=", TransformName(*transform)));
  }
  if (metric == Metric::kRandom && seed != 0) params.push_back(absl::StrCat("seed=", seed));
  std::string out(MetricName(metric));
  if (!params.empty()) absl::StrAppend(&out, ":", absl::StrJoin(params, ","));
  return out;
}

std::map<std::string, std::string> MetricOptions::Params(int64_t num_experts,
                                                         int64_t model_top_k) const {
  std::map<std::string, std::string> p;
  if (metric == Metric::kRandom) {
    p["seed"] = absl::StrCat(seed);
  } else if (UsesLogits(metric)) {
    p["k"] = absl::StrCat(k > 0 ? k : DefaultK(metric, num_experts, model_top_k));
    p["r"] = r.has_value() ? absl::StrCat(*r) : metric == Metric::kPeu ? "per_task" : "off";
    p["transform"] = std::string(TransformName(transform.value_or(DefaultTransform(metric))));
  }
  return p;
}

absl::StatusOr<MetricOptions> MetricOptions::FromParams(
    absl::string_view name, const std::map<std::string, std::string>& params) {
  absl::StatusOr<MetricOptions> bare = Parse(name);
  if (!bare.ok()) return bare;
  // Params spells an unset r by what it means; Parse knows it as "no r".
  const absl::string_view unset_r = bare->metric == Metric::kPeu ? "per_task" : "off";
  std::vector<std::string> parts;
  for (const auto& [key, value] : params) {
    if (key == "r" && value == unset_r) continue;
    parts.push_back(absl::StrCat(key, "=", value));
  }
  if (parts.empty()) return bare;
  return Parse(absl::StrCat(name, ":", absl::StrJoin(parts, ",")));
}

absl::Status MetricOptions::Validate() const {
  if (k < 0) return absl::InvalidArgumentError(absl::StrCat("k must be >= 0, got ", k));
  if (r.has_value() && !(*r >= 0 && *r <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("r must be in [0, 1], got ", *r));
  }
  if (!UsesLogits(metric) && (k != 0 || r.has_value() || transform.has_value())) {
    return absl::InvalidArgumentError(
        absl::StrCat("k, r and transform apply to the logit metrics, not to ", MetricName(metric)));
  }
  if (metric != Metric::kRandom && seed != 0) {
    return absl::InvalidArgumentError("seed applies to the random metric only");
  }
  return absl::OkStatus();
}

ScoreAccumulator::ScoreAccumulator(MetricOptions options, int64_t num_experts, int64_t model_top_k)
    : options_(std::move(options)), num_experts_(num_experts) {
  k_ = options_.k > 0 ? options_.k : DefaultK(options_.metric, num_experts, model_top_k);
  transform_ = options_.transform.value_or(DefaultTransform(options_.metric));
  per_task_r_ = options_.metric == Metric::kPeu && !options_.r.has_value();
}

absl::StatusOr<ScoreAccumulator> ScoreAccumulator::Create(const MetricOptions& options,
                                                          std::vector<int64_t> layers,
                                                          int64_t num_experts,
                                                          int64_t model_top_k) {
  if (auto status = options.Validate(); !status.ok()) return status;
  if (num_experts < 1 || model_top_k < 1 || model_top_k > num_experts || layers.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScoreAccumulator: need >= 1 MoE layer and 1 <= top-k <= experts, got ",
                     layers.size(), " layers, ", num_experts, " experts, top-k ", model_top_k));
  }
  ScoreAccumulator acc(options, num_experts, model_top_k);
  if (acc.k_ > num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("metric ", options.ToString(), ": k = ", acc.k_,
                                                   " exceeds the ", num_experts, " experts"));
  }
  for (int64_t l : layers) {
    Layer& layer = acc.layers_[l];
    layer.sum = at::zeros({num_experts}, at::kDouble);
    layer.count = at::zeros({num_experts}, at::kDouble);
  }
  return acc;
}

bool ScoreAccumulator::NeedsExpertNorms() const {
  return options_.metric == Metric::kReap || options_.metric == Metric::kMan;
}

// m_i(x) for the tokens' top-K values `s` [T, K] (descending) and ids `idx`.
void ScoreAccumulator::Accumulate(Layer& layer, const at::Tensor& s, const at::Tensor& idx,
                                  double r) const {
  at::Tensor m;
  switch (transform_) {
    case Transform::kIdentity:
      m = s;
      break;
    case Transform::kMaxSigmoid:
      m = at::maximum(s, at::sigmoid(s));
      break;
    case Transform::kOne:
      m = at::ones_like(s);
      break;
  }
  if (r > 0) m = m * (at::softmax(s, -1) >= r).to(m.scalar_type());
  layer.sum.index_add_(0, idx.reshape({-1}), m.reshape({-1}).to(at::kDouble));
}

void ScoreAccumulator::BeginTask() { Flush(); }

// Peu's r needs all of a task's tokens: applies it to the held ones.
void ScoreAccumulator::Flush() {
  if (!per_task_r_) return;
  for (auto& [id, layer] : layers_) {
    if (layer.pending_s.empty()) continue;
    at::Tensor s = at::cat(layer.pending_s), idx = at::cat(layer.pending_i);
    const double r = std::get<0>(at::softmax(s, -1).max(-1)).mean().item<double>();
    Accumulate(layer, s, idx, r);
    layer.pending_s.clear();
    layer.pending_i.clear();
  }
}

absl::Status ScoreAccumulator::Add(int64_t layer_id, const GateBatch& b) {
  auto it = layers_.find(layer_id);
  if (it == layers_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer_id, " is not a MoE layer"));
  }
  Layer& layer = it->second;
  if (options_.metric == Metric::kRandom) return absl::OkStatus();
  const at::Tensor& s = b.gate_logits;
  if (!s.defined() || s.dim() != 2 || s.size(1) != num_experts_ || s.scalar_type() != at::kFloat) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer_id, ": gate logits must be fp32 [T, ", num_experts_, "]"));
  }
  const int64_t t = s.size(0);
  try {
    at::Tensor logits = s.cpu();
    if (!at::isfinite(logits).all().item<bool>()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", layer_id, ": gate logits hold -inf/NaN (a reduced model cannot be profiled)"));
    }
    if (NeedsExpertNorms()) {
      if (!b.selected_experts.defined() || !b.routing_weights.defined() ||
          !b.expert_norms.defined() || b.selected_experts.dim() != 2 ||
          b.selected_experts.size(0) != t ||
          b.routing_weights.sizes() != b.selected_experts.sizes() ||
          b.expert_norms.sizes() != b.selected_experts.sizes()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", layer_id, ": ", MetricName(options_.metric),
            " needs the selected experts, routing weights and expert norms, each [T, K]"));
      }
      at::Tensor idx = b.selected_experts.cpu().reshape({-1});
      at::Tensor v = b.expert_norms.cpu().to(at::kDouble);
      if (options_.metric == Metric::kReap) v = v * b.routing_weights.cpu().to(at::kDouble);
      layer.sum.index_add_(0, idx, v.reshape({-1}));
      layer.count.index_add_(0, idx, at::ones({idx.numel()}, at::kDouble));
    } else {
      auto [top, idx] = at::topk(logits, k_, -1);
      if (per_task_r_) {
        layer.pending_s.push_back(top);
        layer.pending_i.push_back(idx);
      } else {
        Accumulate(layer, top, idx, options_.r.value_or(0.0));
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("scores: libtorch: ", e.what_without_backtrace()));
  }
  layer.tokens += t;
  return absl::OkStatus();
}

absl::StatusOr<std::map<int64_t, std::vector<double>>> ScoreAccumulator::Scores() {
  std::map<int64_t, std::vector<double>> out;
  if (options_.metric == Metric::kRandom) {
    std::mt19937_64 rng(options_.seed);
    for (const auto& [id, layer] : layers_) {
      std::vector<double>& v = out[id];
      for (int64_t i = 0; i < num_experts_; ++i) {
        v.push_back(static_cast<double>(rng() >> 11) * 0x1.0p-53);
      }
    }
    return out;
  }
  try {
    Flush();
    for (const auto& [id, layer] : layers_) {
      if (layer.tokens == 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("no calibration tokens reached MoE layer ", id));
      }
      at::Tensor scores = NeedsExpertNorms() ? layer.sum / layer.count.clamp_min(1.0)
                                             : layer.sum / static_cast<double>(layer.tokens);
      out[id] = std::vector<double>(scores.data_ptr<double>(),
                                    scores.data_ptr<double>() + scores.numel());
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("scores: libtorch: ", e.what_without_backtrace()));
  }
  return out;
}

int64_t ScoreAccumulator::tokens(int64_t layer) const {
  auto it = layers_.find(layer);
  return it == layers_.end() ? 0 : it->second.tokens;
}

}  // namespace premoe::profiler
