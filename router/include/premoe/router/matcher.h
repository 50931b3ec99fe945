// Matcher: task-adaptive expert retrieval (DESIGN.md §3, TAER). A query's
// match embedding comes from a probe engine (EngineOptions::probe_moe_layers:
// the model up to its first MoE gate, a few layers of hundreds) through the
// profiler's own EmbedPrompt, so a pattern's calibration prompts and a query
// are embedded by the same code; the nearest pattern comes from the store's
// index. Below a similarity threshold the configured fallback applies.
//
// The query is embedded as the store's patterns were: with their metric
// (their record says which) over as many MoE layers as their embeddings
// span (the store's dimension over the model's experts; the probe then
// holds the model up to that gate). Both are re-read when the store changes.
//
// Thread-safe: Match may be called from any number of threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "premoe/checkpoint/config.h"
#include "premoe/store/pattern.h"
#include "premoe/store/pattern_store.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::router {

struct MatcherOptions {
  // Model directory (config.json, model.safetensors, tokenizer.json).
  // Required.
  std::string model_dir;
  // Probe dtype. Default "fp32", as `premoe profile` embeds calibration
  // prompts: the same floats for the same prompt.
  std::string dtype = "fp32";
  // A best match below this cosine similarity falls back. Default 0.5.
  double min_similarity = 0.5;
  // A best match whose similarity exceeds the next pattern's by less than
  // this falls back too: the query is as much the one task's as the other's,
  // and a wrong pattern serves worse than the fallback (docs/retrieval.md
  // measures both rules). In [0, 2]. Default 0: off.
  double min_margin = 0;
  // What a query without a similar enough pattern gets: "full" (every
  // expert), "refuse" (NOT_FOUND naming the best candidate) or "task:NAME"
  // (a generalist pattern). Default "full".
  std::string fallback = "full";
  // How a pattern's embeddings vote (store::SearchOptions). Default kMax.
  store::Voting voting = store::Voting::kMax;
  // Nearest embeddings kMean / kCount vote over; 0 = the store's default.
  int32_t candidates = 0;

  absl::Status Validate() const;
};

struct MatchResult {
  // The nearest patterns, best first.
  std::vector<store::SearchMatch> candidates;
  // The pattern to serve with; empty = the full model.
  std::string task;
  // "match" or "fallback".
  std::string decision;
  // The best candidate's similarity (0 without candidates).
  double similarity = 0;
  // Embedding plus search.
  double seconds = 0;
};

class Matcher {
 public:
  // Opens the probe engine. `patterns` (not owned) must outlive the matcher;
  // FAILED_PRECONDITION when it already holds another model's patterns.
  static absl::StatusOr<std::unique_ptr<Matcher>> Open(const MatcherOptions& options,
                                                       store::PatternStore* patterns);
  ~Matcher();

  // The `k` nearest patterns (k >= 1) and the decision. INVALID_ARGUMENT
  // for a prompt the probe refuses (empty, over the context); NOT_FOUND
  // with the "refuse" fallback when nothing is similar enough (or the store
  // is empty). `add_special_tokens` false: the prompt is a chat template's
  // text, which holds its own (the worker encodes it so too).
  absl::StatusOr<MatchResult> Match(absl::string_view prompt, int32_t k = 3,
                                    bool add_special_tokens = true) const;

  const checkpoint::ModelConfig& config() const;
  const tokenizer::Tokenizer& tokenizer() const;
  // The routing top-k of the model.
  int64_t top_k() const;
  // The fingerprint patterns of this model carry.
  const std::string& fingerprint() const;
  // Bytes the probe holds.
  int64_t probe_bytes() const;

  struct Impl;

 private:
  explicit Matcher(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::router
