#include "premoe/profiler/pattern.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "premoe/common/hash.h"
#include "premoe/common/status.h"

namespace premoe::profiler {

absl::Status PatternOptions::Validate() const {
  if (task_name.empty()) return absl::InvalidArgumentError("PatternOptions: task_name is empty");
  if (model_fingerprint.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("PatternOptions for task \"", task_name, "\": model_fingerprint is empty"));
  }
  return absl::OkStatus();
}

absl::StatusOr<store::Pattern> MakePattern(const model::Engine& engine,
                                           const std::vector<CalibrationSample>& samples,
                                           const ProfileOptions& profiled_with,
                                           const TaskProfile& profile,
                                           const PatternOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  RETURN_IF_ERROR(profiled_with.metric.Validate());
  const std::string where = absl::StrCat("pattern of task \"", options.task_name, "\"");
  const int64_t experts = engine.config().num_routed_experts;
  if (profile.scores.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the profile has no scores"));
  }
  if (profile.embeddings.size() != samples.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": the profile has ", profile.embeddings.size(), " embeddings for ",
                     samples.size(), " samples; it was made from other samples"));
  }
  store::Pattern p;
  p.task_name = options.task_name;
  p.model_fingerprint = options.model_fingerprint;
  p.metric = std::string(MetricName(profiled_with.metric.metric));
  p.metric_params = profiled_with.metric.Params(experts, engine.top_k());
  for (const auto& [layer, scores] : profile.scores) {
    if (static_cast<int64_t>(scores.size()) != experts) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": layer ", layer, " has ",
                                                     scores.size(), " scores for ", experts,
                                                     " routed experts"));
    }
    p.layers.push_back(
        {static_cast<int32_t>(layer), std::vector<float>(scores.begin(), scores.end())});
  }
  p.calibration_samples = profile.samples;
  p.calibration_tokens = profile.tokens;
  p.embeddings.reserve(samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    p.embeddings.push_back(
        {profile.embeddings[i], common::Hasher().Update(samples[i].prompt).HexDigest()});
  }
  p.created_unix_micros = options.created_unix_micros != 0 ? options.created_unix_micros
                                                           : absl::ToUnixMicros(absl::Now());
  return p;
}

absl::StatusOr<std::map<int64_t, std::vector<double>>> PatternScores(
    const store::Pattern& pattern) {
  const std::string where = absl::StrCat("pattern of task \"", pattern.task_name, "\"");
  if (pattern.layers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, " has no layer scores"));
  }
  std::map<int64_t, std::vector<double>> scores;
  for (const store::LayerScores& l : pattern.layers) {
    auto [it, added] = scores.try_emplace(l.layer, l.scores.begin(), l.scores.end());
    if (!added) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": layer ", l.layer, " is listed twice"));
    }
  }
  return scores;
}

absl::StatusOr<std::map<int64_t, std::vector<double>>> PatternScores(
    const store::Pattern& pattern, const checkpoint::ModelConfig& config) {
  for (const store::LayerScores& l : pattern.layers) {
    if (!config.IsMoeLayer(l.layer) ||
        static_cast<int64_t>(l.scores.size()) != config.num_routed_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("pattern of task \"", pattern.task_name, "\": layer ", l.layer, " with ",
                       l.scores.size(), " scores does not fit the model (",
                       config.num_routed_experts, " experts per MoE layer)"));
    }
  }
  return PatternScores(pattern);
}

}  // namespace premoe::profiler
