#include "premoe/router/matcher.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/model/engine.h"
#include "premoe/model/fingerprint.h"
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
    return absl::InvalidArgumentError(absl::StrCat("MatcherOptions.fallback \"", fallback,
                                                   "\" is not full, refuse or task:NAME"));
  }
  if (!(min_margin >= 0 && min_margin <= 2)) {
    return absl::InvalidArgumentError(
        absl::StrCat("MatcherOptions.min_margin ", min_margin, " is not in [0, 2]"));
  }
  if (candidates < 0) return absl::InvalidArgumentError("MatcherOptions.candidates must be >= 0");
  return absl::OkStatus();
}

struct Matcher::Impl {
  MatcherOptions options;
  store::PatternStore* patterns = nullptr;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::string fingerprint;
  // The one-layer probe, opened first and never replaced.
  const model::Engine* first_probe = nullptr;

  // How the store's patterns were embedded, as of store version `version`:
  // their metric, and their layers (the store's dimension over N).
  struct Embedding {
    std::optional<profiler::MetricOptions> metric;  // nullopt: the store is empty
    int64_t layers = 1;
    const model::Engine* probe = nullptr;
  };
  mutable absl::Mutex mu;
  mutable uint64_t version ABSL_GUARDED_BY(mu) = 0;
  mutable bool known ABSL_GUARDED_BY(mu) = false;
  // A thread is reading the store's new version; the others match with the
  // last known embedding meanwhile instead of waiting.
  mutable bool refreshing ABSL_GUARDED_BY(mu) = false;
  mutable Embedding current ABSL_GUARDED_BY(mu);
  // One probe per embedding depth seen (normally one); never removed, so the
  // pointers handed out stay valid.
  mutable std::map<int64_t, std::unique_ptr<model::Engine>> probes ABSL_GUARDED_BY(mu);

  absl::StatusOr<const model::Engine*> Probe(int64_t layers) const {
    {
      absl::MutexLock lock(&mu);
      auto it = probes.find(layers);
      if (it != probes.end()) return it->second.get();
    }
    // Opened with no lock held: matches at the current depth go on.
    model::EngineOptions eo;
    eo.dtype = options.dtype;
    eo.probe_moe_layers = layers;
    ASSIGN_OR_RETURN(std::unique_ptr<model::Engine> e, model::Engine::Open(options.model_dir, eo));
    absl::MutexLock lock(&mu);
    return probes.emplace(layers, std::move(e)).first->second.get();  // keeps a racing twin's
  }

  // How the store's patterns are embedded at `info`'s version. Reads the
  // store and may open a probe: called with no lock held.
  absl::StatusOr<Embedding> Read(const store::StoreInfo& info) const {
    if (!info.model_fingerprint.empty() && info.model_fingerprint != fingerprint) {
      return absl::FailedPreconditionError(
          absl::StrCat("the pattern store holds patterns of another model (fingerprint ",
                       info.model_fingerprint, "; this model's is ", fingerprint, ")"));
    }
    Embedding e;
    ASSIGN_OR_RETURN(e.probe, Probe(1));
    ASSIGN_OR_RETURN(store::ListPage page, patterns->List({.page_size = 1}));
    if (!page.patterns.empty()) {
      ASSIGN_OR_RETURN(store::Pattern p, patterns->Get(page.patterns[0].id));
      ASSIGN_OR_RETURN(e.metric, profiler::MetricOptions::FromParams(p.metric, p.metric_params));
      const int64_t n = e.probe->config().num_routed_experts;
      if (info.embedding_dim > 0) {
        if (info.embedding_dim % n != 0) {
          return absl::FailedPreconditionError(
              absl::StrCat("the store's embeddings have ", info.embedding_dim,
                           " dimensions, not a multiple of the model's ", n, " experts"));
        }
        e.layers = info.embedding_dim / n;
        ASSIGN_OR_RETURN(e.probe, Probe(e.layers));
      }
    }
    return e;
  }

  absl::StatusOr<Embedding> Current() const {
    ASSIGN_OR_RETURN(store::StoreInfo info, patterns->Info());
    {
      absl::MutexLock lock(&mu);
      if (known && (info.version == version || refreshing)) return current;
      refreshing = true;
    }
    absl::StatusOr<Embedding> e = Read(info);
    absl::MutexLock lock(&mu);
    refreshing = false;
    if (!e.ok()) return e.status();
    if (!known || info.version >= version) {
      current = *e;
      version = info.version;
      known = true;
    }
    return *e;
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
  ASSIGN_OR_RETURN(impl->tokenizer,
                   tokenizer::Tokenizer::FromFile(options.model_dir + "/tokenizer.json"));
  ASSIGN_OR_RETURN(impl->first_probe, impl->Probe(1));
  ASSIGN_OR_RETURN(impl->fingerprint, model::ModelFingerprint(*impl->first_probe));
  RETURN_IF_ERROR(impl->Current().status());
  return std::unique_ptr<Matcher>(new Matcher(std::move(impl)));
}

absl::StatusOr<MatchResult> Matcher::Match(absl::string_view prompt, int32_t k,
                                           bool add_special_tokens) const {
  if (k < 1) return absl::InvalidArgumentError(absl::StrCat("Match: k is ", k, ", want >= 1"));
  const auto start = std::chrono::steady_clock::now();
  const MatcherOptions& o = impl_->options;
  MatchResult out;
  ASSIGN_OR_RETURN(Impl::Embedding how, impl_->Current());
  if (how.metric.has_value()) {
    ASSIGN_OR_RETURN(std::vector<float> embedding,
                     profiler::EmbedPrompt(*how.probe, *impl_->tokenizer, prompt, *how.metric,
                                           how.layers, add_special_tokens));
    store::SearchOptions so;
    so.k = o.min_margin > 0 ? std::max<int32_t>(k, 2) : k;  // the margin needs a runner-up
    so.voting = o.voting;
    so.candidates = o.candidates;
    ASSIGN_OR_RETURN(out.candidates, impl_->patterns->Search(embedding, so));
  } else if (prompt.empty()) {
    return absl::InvalidArgumentError("the prompt is empty");
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!out.candidates.empty()) out.similarity = out.candidates[0].similarity;
  const double margin =
      out.candidates.size() < 2 ? 2.0 : out.similarity - out.candidates[1].similarity;
  const bool similar = !out.candidates.empty() && out.similarity >= o.min_similarity;
  if (similar && margin >= o.min_margin) {
    out.task = out.candidates[0].task_name;
    out.decision = "match";
    if (static_cast<int32_t>(out.candidates.size()) > k) out.candidates.resize(k);
    return out;
  }
  out.decision = "fallback";
  if (o.fallback == "refuse") {
    if (similar) {
      return absl::NotFoundError(
          absl::StrCat("the query is ambiguous: \"", out.candidates[0].task_name, "\" at ",
                       out.similarity, " and \"", out.candidates[1].task_name, "\" at ",
                       out.candidates[1].similarity, " are closer than the margin ", o.min_margin));
    }
    const std::string best = out.candidates.empty()
                                 ? std::string("the store holds no pattern")
                                 : absl::StrCat("the best, \"", out.candidates[0].task_name,
                                                "\", is at ", out.similarity);
    return absl::NotFoundError(absl::StrCat("no pattern is within similarity ", o.min_similarity,
                                            " of the query (", best, ")"));
  }
  if (static_cast<int32_t>(out.candidates.size()) > k) out.candidates.resize(k);
  if (absl::StartsWith(o.fallback, "task:")) out.task = o.fallback.substr(5);
  return out;
}

const checkpoint::ModelConfig& Matcher::config() const { return impl_->first_probe->config(); }
const tokenizer::Tokenizer& Matcher::tokenizer() const { return *impl_->tokenizer; }
int64_t Matcher::top_k() const { return impl_->first_probe->top_k(); }
const std::string& Matcher::fingerprint() const { return impl_->fingerprint; }

int64_t Matcher::probe_bytes() const {
  absl::StatusOr<Impl::Embedding> how = impl_->Current();
  return how.ok() ? how->probe->weight_bytes() : 0;
}

}  // namespace premoe::router
