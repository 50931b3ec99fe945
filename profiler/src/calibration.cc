#include "premoe/profiler/calibration.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "premoe/common/file.h"
#include "premoe/common/hash.h"
#include "premoe/common/json.h"
#include "premoe/common/status.h"

namespace premoe::profiler {
namespace {

// Feeds every MoE layer's routing to the accumulator; the logits of the
// layers in `keep` are also kept per sequence, for the match embeddings.
class AccumulatingTap final : public model::GateTap {
 public:
  // `on_layer` (may be empty) runs after each MoE layer.
  AccumulatingTap(ScoreAccumulator* acc, std::vector<int64_t> keep,
                  std::function<void()> on_layer = nullptr)
      : acc_(acc), keep_(std::move(keep)), on_layer_(std::move(on_layer)) {}
  bool WantsExpertNorms() const override { return acc_ != nullptr && acc_->NeedsExpertNorms(); }
  void OnGate(const model::GateEvent& ev) override {
    if (!status_.ok()) return;
    if (acc_ != nullptr) {
      GateBatch b{ev.gate_logits, ev.selected_experts, ev.routing_weights, ev.expert_norms};
      status_ = acc_->Add(ev.layer, b);
    }
    if (on_layer_) on_layer_();
    if (std::find(keep_.begin(), keep_.end(), ev.layer) != keep_.end()) {
      kept_[ev.layer] = {ev.gate_logits.cpu(), ev.sequence.cpu()};
    }
  }
  const absl::Status& status() const { return status_; }
  // The kept layers' [T_b, N] logits of batch sequence b, in layer order.
  std::vector<at::Tensor> Logits(int64_t b) const {
    std::vector<at::Tensor> out;
    for (const auto& [layer, k] : kept_) out.push_back(k.first.index({k.second == b}));
    return out;
  }

 private:
  ScoreAccumulator* acc_;
  std::vector<int64_t> keep_;
  std::function<void()> on_layer_;
  absl::Status status_;
  std::map<int64_t, std::pair<at::Tensor, at::Tensor>> kept_;  // layer -> (logits, sequence)
};

absl::StatusOr<std::vector<int64_t>> Encode(const tokenizer::Tokenizer& tokenizer,
                                            const std::string& text, int64_t max_context) {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(text, /*add_special_tokens=*/true));
  if (ids.empty()) return absl::InvalidArgumentError("a calibration sample encodes to no tokens");
  if (static_cast<int64_t>(ids.size()) > max_context) {
    return absl::InvalidArgumentError(absl::StrCat("a calibration sample of ", ids.size(),
                                                   " tokens exceeds the context of ", max_context));
  }
  return std::vector<int64_t>(ids.begin(), ids.end());
}

}  // namespace

absl::StatusOr<std::vector<CalibrationSample>> ReadCalibrationJsonl(const std::string& path,
                                                                    int64_t max_samples) {
  ASSIGN_OR_RETURN(std::string text, common::ReadFile(path, int64_t{1} << 30));
  std::vector<CalibrationSample> out;
  int64_t line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    if (max_samples > 0 && static_cast<int64_t>(out.size()) >= max_samples) break;
    const std::string where = absl::StrCat(path, ":", line_no);
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": ", why,
          " (want {\"prompt\": \"...\", \"completion\": \"...\"} or {\"text\": \"...\"})"));
    };
    auto doc = common::ParseJsonStrict(line, where);
    if (!doc.ok()) return absl::InvalidArgumentError(doc.status().message());
    if (!doc->is_object()) return bad("not a JSON object");
    CalibrationSample s;
    bool has_text = false, has_prompt = false, has_completion = false;
    for (const auto& [key, value] : doc->items()) {
      if (!value.is_string()) return bad(absl::StrCat("\"", key, "\" is not a string"));
      if (key == "text") {
        has_text = true;
        s.prompt = value.get<std::string>();
      } else if (key == "prompt") {
        has_prompt = true;
        s.prompt = value.get<std::string>();
      } else if (key == "completion") {
        has_completion = true;
        s.completion = value.get<std::string>();
      } else {
        return bad(absl::StrCat("unknown key \"", key, "\""));
      }
    }
    if (has_text == (has_prompt || has_completion) || (has_prompt && !has_completion)) {
      return bad("wrong keys");
    }
    if (s.prompt.empty()) return bad(has_text ? "empty text" : "empty prompt");
    out.push_back(std::move(s));
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no samples"));
  return out;
}

absl::StatusOr<int64_t> EmbeddingLastLayer(const checkpoint::ModelConfig& config,
                                           int64_t embedding_layers) {
  int64_t seen = 0;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    if (config.IsMoeLayer(static_cast<int>(l)) && ++seen == embedding_layers) return l;
  }
  return absl::InvalidArgumentError(absl::StrCat("match embeddings over ", embedding_layers,
                                                 " MoE layers, but the model has ", seen));
}

absl::StatusOr<std::vector<float>> MatchEmbedding(const std::vector<at::Tensor>& gate_logits,
                                                  const MetricOptions& metric,
                                                  int64_t model_top_k) {
  if (gate_logits.empty()) return absl::InvalidArgumentError("MatchEmbedding: no layers");
  MetricOptions logit_metric = metric;
  if (metric.metric == Metric::kReap || metric.metric == Metric::kMan ||
      metric.metric == Metric::kRandom) {
    // These score experts by their outputs (or not at all); a query is
    // matched by its router logits, so they embed as peu does.
    logit_metric = MetricOptions();
  }
  const double layer_scale = 1.0 / std::sqrt(static_cast<double>(gate_logits.size()));
  std::vector<float> out;
  for (const at::Tensor& logits : gate_logits) {
    if (!logits.defined() || logits.dim() != 2 || logits.size(0) == 0) {
      return absl::InvalidArgumentError("MatchEmbedding: want gate logits [T > 0, N]");
    }
    ASSIGN_OR_RETURN(ScoreAccumulator acc,
                     ScoreAccumulator::Create(logit_metric, {0}, logits.size(1), model_top_k));
    RETURN_IF_ERROR(acc.Add(0, GateBatch{logits}));
    ASSIGN_OR_RETURN(auto scores, acc.Scores());
    const std::vector<double>& m = scores.at(0);
    double norm = 0;
    for (double v : m) norm += v * v;
    norm = std::sqrt(norm);
    for (double v : m) {
      out.push_back(norm > 0 ? static_cast<float>(v / norm * layer_scale) : 0.0f);
    }
  }
  return out;
}

absl::StatusOr<TaskProfile> ProfileTask(const model::Engine& engine,
                                        const tokenizer::Tokenizer& tokenizer,
                                        const std::vector<CalibrationSample>& samples,
                                        const ProfileOptions& options) {
  if (samples.empty()) return absl::InvalidArgumentError("no calibration samples");
  if (options.batch_size < 0) {
    return absl::InvalidArgumentError("ProfileOptions.batch_size must be >= 0");
  }
  const checkpoint::ModelConfig& c = engine.config();
  std::vector<int64_t> layers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (c.IsMoeLayer(static_cast<int>(l))) layers.push_back(l);
  }
  if (layers.empty()) return absl::InvalidArgumentError("the model has no MoE layer");
  RETURN_IF_ERROR(EmbeddingLastLayer(c, options.embedding_layers).status());
  const int64_t embed_layers = options.embedding_layers;
  ASSIGN_OR_RETURN(
      ScoreAccumulator acc,
      ScoreAccumulator::Create(options.metric, layers, c.num_routed_experts, engine.top_k()));
  TaskProfile profile;
  profile.samples = static_cast<int64_t>(samples.size());
  const int64_t n = profile.samples;
  const int64_t batch = options.batch_size > 0 ? options.batch_size : n;
  const int64_t batches = (n + batch - 1) / batch;
  try {
    for (int64_t begin = 0; begin < n; begin += batch) {
      const int64_t end = std::min(n, begin + batch);
      // Scores: the whole text of each sample.
      std::vector<std::vector<int64_t>> full, prompts;
      for (int64_t i = begin; i < end; ++i) {
        ASSIGN_OR_RETURN(
            std::vector<int64_t> ids,
            Encode(tokenizer, samples[i].prompt + samples[i].completion, engine.max_context()));
        profile.tokens += static_cast<int64_t>(ids.size());
        full.push_back(std::move(ids));
        ASSIGN_OR_RETURN(ids, Encode(tokenizer, samples[i].prompt, engine.max_context()));
        prompts.push_back(std::move(ids));
      }
      int64_t layers_done = 0;
      auto progress = [&] {
        ++layers_done;
        if (!options.on_progress) return;
        const double batch_fraction =
            static_cast<double>(layers_done) / static_cast<double>(layers.size());
        options.on_progress(
            {begin + (end - begin) * layers_done / static_cast<int64_t>(layers.size()), n,
             (static_cast<double>(begin / batch) + batch_fraction) / static_cast<double>(batches)});
      };
      AccumulatingTap score_tap(&acc, {}, progress);
      model::ForwardOptions fo;
      fo.tap = &score_tap;
      fo.skip_logits = true;
      RETURN_IF_ERROR(engine.Forward(full, nullptr, fo).status());
      RETURN_IF_ERROR(score_tap.status());
      // Embeddings: the prompts alone, as a query will be seen, and only as
      // far as the last embedding gate (what a router's probe runs).
      AccumulatingTap embed_tap(
          nullptr, std::vector<int64_t>(layers.begin(), layers.begin() + embed_layers));
      fo.tap = &embed_tap;
      fo.last_layer = layers[embed_layers - 1];
      RETURN_IF_ERROR(engine.Forward(prompts, nullptr, fo).status());
      for (int64_t b = 0; b < end - begin; ++b) {
        ASSIGN_OR_RETURN(std::vector<float> e,
                         MatchEmbedding(embed_tap.Logits(b), options.metric, engine.top_k()));
        profile.embeddings.push_back(std::move(e));
      }
    }
    ASSIGN_OR_RETURN(profile.scores, acc.Scores());
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("profiling: libtorch: ", e.what_without_backtrace()));
  }
  return profile;
}

}  // namespace premoe::profiler
