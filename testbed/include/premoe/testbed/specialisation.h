// How much the testbed's experts specialise by task: per MoE layer, each
// task's expert selection frequencies, and the overlap (Jaccard) between
// tasks' top-half expert sets beside the overlap two random sets would have.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "premoe/model/engine.h"
#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::testbed {

struct SpecialisationOptions {
  // Samples per task, from the start of `split`. Defaults: 200 of calibration.
  Split split = Split::kCalibration;
  int64_t samples = 200;
  int64_t batch_size = 64;
};

struct SpecialisationReport {
  std::vector<std::string> tasks;
  std::vector<int64_t> layers;  // MoE layer ids
  int64_t experts = 0;
  int64_t top_half = 0;  // experts in each task's top set: experts / 2
  // [layer][task][expert]: the fraction of the task's routed (token, slot)
  // pairs that went to the expert. Tokens: every token of each sample as the
  // model reads it (<|bos|>, prompt, completion).
  std::vector<std::vector<std::vector<double>>> frequency;
  // [layer][task a][task b]: |A ∩ B| / |A ∪ B| of the two tasks' top-half
  // sets (by frequency, ties to the lower id).
  std::vector<std::vector<std::vector<double>>> jaccard;
  // [layer]: the mean over task pairs a < b.
  std::vector<double> mean_jaccard;
  // The expected Jaccard of two independent uniformly random top-half sets
  // (exact, hypergeometric).
  double random_jaccard = 0;
};

// Runs the samples through `engine` (full model) and measures the above.
absl::StatusOr<SpecialisationReport> MeasureSpecialisation(const model::Engine& engine,
                                                           const tokenizer::Tokenizer& tokenizer,
                                                           const std::vector<const Task*>& tasks,
                                                           const SpecialisationOptions& options);

// The expected Jaccard similarity of two independent uniform k-subsets of n.
double RandomSubsetJaccard(int64_t n, int64_t k);

// JSON (every field above) and a markdown table (per layer: mean Jaccard,
// random, and the most and least overlapping task pairs).
std::string SpecialisationToJson(const SpecialisationReport& report);
std::string SpecialisationToMarkdown(const SpecialisationReport& report);

}  // namespace premoe::testbed
