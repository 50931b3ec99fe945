// Deterministic patterns for the store tests and the crash helper: the same
// (task, seed) always gives the same pattern, so a test can check a record
// written by another process.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "premoe/store/pattern.h"

namespace premoe::store::testing {

inline constexpr char kFingerprint[] = "model-fp-0123456789abcdef";

// A pattern with `layers` layers of `experts` scores and `embeddings`
// embeddings of dimension `dim`, all from `seed`.
inline Pattern MakePattern(const std::string& task, std::uint64_t seed, int dim = 8,
                           int embeddings = 2, int layers = 3, int experts = 16) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  Pattern p;
  p.task_name = task;
  p.model_fingerprint = kFingerprint;
  p.metric = "peu";
  p.metric_params = {{"k", "8"}, {"r", "auto"}};
  for (int l = 0; l < layers; ++l) {
    LayerScores scores{l + 1, {}};
    for (int e = 0; e < experts; ++e) scores.scores.push_back(uniform(rng) + 1.0f);
    p.layers.push_back(std::move(scores));
  }
  p.calibration_samples = 10;
  p.calibration_tokens = 1234;
  for (int i = 0; i < embeddings; ++i) {
    MatchEmbedding e;
    for (int d = 0; d < dim; ++d) e.values.push_back(uniform(rng));
    e.prompt_hash = "h" + std::to_string(seed) + "_" + std::to_string(i);
    p.embeddings.push_back(std::move(e));
  }
  p.created_unix_micros = 1'700'000'000'000'000 + static_cast<std::int64_t>(seed);
  return p;
}

// A pattern whose embeddings are exactly `vectors` (hand-computed searches).
inline Pattern PatternWithEmbeddings(const std::string& task,
                                     const std::vector<std::vector<float>>& vectors) {
  Pattern p = MakePattern(task, 1, /*dim=*/1, /*embeddings=*/0);
  for (const auto& v : vectors) p.embeddings.push_back({v, ""});
  return p;
}

}  // namespace premoe::store::testing
