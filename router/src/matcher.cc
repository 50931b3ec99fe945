#include "premoe/router/matcher.h"

#include <chrono>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/model/engine.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/probe.h"
#include "premoe/profiler/scores.h"

namespace premoe::router {

absl::Status MatcherOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("MatcherOptions.model_dir is required");
  if (!(min_similarity >= -1 && min_similarity <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MatcherOptions.min_similarity ", min_similarity, " is not in [-1, 1]"));
  }
  if (fallback != "full" && fallback != "refuse" &&
      !(absl::StartsWith(fallback, "task:") && fallback.size() > 5)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MatcherOptions.fallback \"", fallback, "\" is not full, refuse or task:NAME"));
  }
  if (candidates < 0) return absl::InvalidArgumentError("MatcherOptions.candidates must be >= 0");
  return absl::OkStatus();
}

struct Matcher::Impl {
  MatcherOptions options;
  store::PatternStore* patterns = nullptr;
  std::unique_ptr<model::Engine> probe;
  std::unique_ptr<model::Tokenizer> tokenizer;
  std::string fingerprint;

  // The metric of the store's patterns, as of store version `metric_version`.
  mutable std::mutex mu;
  mutable uint64_t metric_version = 0;
  mutable std::optional<profiler::MetricOptions> metric;

  // The metric to embed queries with; nullopt when the store is empty.
  absl::StatusOr<std::optional<profiler::MetricOptions>> Metric() const {
    ASSIGN_OR_RETURN(store::StoreInfo info, patterns->Info());
    std::lock_guard lock(mu);
    if (metric.has_value() && info.version == metric_version) return metric;
    if (!info.model_fingerprint.empty() && info.model_fingerprint != fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the pattern store holds patterns of another model (fingerprint ",
          info.model_fingerprint, "; this model's is ", fingerprint, ")"));
    }
    ASSIGN_OR_RETURN(store::ListPage page, patterns->List({.page_size = 1}));
    if (page.patterns.empty()) {
      metric.reset();
      return metric;
    }
    ASSIGN_OR_RETURN(store::Pattern p, patterns->Get(page.patterns[0].id));
    ASSIGN_OR_RETURN(profiler::MetricOptions m,
                     profiler::MetricOptions::FromParams(p.metric, p.metric_params));
    metric = m;
    metric_version = info.version;
    return metric;
  }
};

Matcher::Matcher(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Matcher::~Matcher() = default;

absl::StatusOr<std::unique_ptr<Matcher>> Matcher::Open(const MatcherOptions& options,
                                                       store::PatternStore* patterns) {
  RETURN_IF_ERROR(options.Validate());
  if (patterns == nullptr) return absl::InvalidArgumentError("Matcher::Open: no pattern store");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->patterns = patterns;
  model::EngineOptions eo;
  eo.dtype = options.dtype;
  eo.probe = true;
  ASSIGN_OR_RETURN(impl->probe, model::Engine::Open(options.model_dir, eo));
  ASSIGN_OR_RETURN(impl->tokenizer,
                   model::Tokenizer::FromFile(options.model_dir + "/tokenizer.json"));
  ASSIGN_OR_RETURN(impl->fingerprint, profiler::ModelFingerprint(*impl->probe));
  RETURN_IF_ERROR(impl->Metric().status());
  return std::unique_ptr<Matcher>(new Matcher(std::move(impl)));
}

absl::StatusOr<MatchResult> Matcher::Match(absl::string_view prompt, int32_t k) const {
  if (k < 1) return absl::InvalidArgumentError(absl::StrCat("Match: k is ", k, ", want >= 1"));
  const auto start = std::chrono::steady_clock::now();
  const MatcherOptions& o = impl_->options;
  MatchResult out;
  ASSIGN_OR_RETURN(std::optional<profiler::MetricOptions> metric, impl_->Metric());
  if (metric.has_value()) {
    ASSIGN_OR_RETURN(std::vector<float> embedding,
                     profiler::EmbedPrompt(*impl_->probe, *impl_->tokenizer, prompt, *metric));
    store::SearchOptions so;
    so.k = k;
    so.voting = o.voting;
    so.candidates = o.candidates;
    ASSIGN_OR_RETURN(out.candidates, impl_->patterns->Search(embedding, so));
  } else if (prompt.empty()) {
    return absl::InvalidArgumentError("the prompt is empty");
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!out.candidates.empty()) out.similarity = out.candidates[0].similarity;
  if (!out.candidates.empty() && out.similarity >= o.min_similarity) {
    out.task = out.candidates[0].task_name;
    out.decision = "match";
    return out;
  }
  out.decision = "fallback";
  const std::string best =
      out.candidates.empty()
          ? std::string("the store holds no pattern")
          : absl::StrCat("the best, \"", out.candidates[0].task_name, "\", is at ",
                         out.similarity);
  if (o.fallback == "refuse") {
    return absl::NotFoundError(absl::StrCat("no pattern is within similarity ", o.min_similarity,
                                            " of the query (", best, ")"));
  }
  if (absl::StartsWith(o.fallback, "task:")) out.task = o.fallback.substr(5);
  return out;
}

const model::ModelConfig& Matcher::config() const { return impl_->probe->config(); }
const model::Tokenizer& Matcher::tokenizer() const { return *impl_->tokenizer; }
int64_t Matcher::top_k() const { return impl_->probe->top_k(); }
const std::string& Matcher::fingerprint() const { return impl_->fingerprint; }
int64_t Matcher::probe_bytes() const { return impl_->probe->weight_bytes(); }

}  // namespace premoe::router
