// The calibration runner: runs a task's calibration samples through the
// engine, feeds the gate taps to a ScoreAccumulator, and computes the match
// embeddings of the samples' prompts (DESIGN.md §3).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "premoe/model/engine.h"
#include "premoe/profiler/scores.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::profiler {

// One calibration sample. Prompt/completion samples score over the whole
// text and embed the prompt; a text sample ({"text": ...}) is all prompt.
struct CalibrationSample {
  std::string prompt;
  std::string completion;
};

// Reads JSON lines, each {"prompt": str, "completion": str} or {"text": str}
// (no other keys; blank lines skipped), at most `max_samples` (0 = all).
// INVALID_ARGUMENT naming path:line for bad JSON, a wrong shape or an empty
// prompt/text; INVALID_ARGUMENT for a file with no samples; NOT_FOUND for a
// missing file.
absl::StatusOr<std::vector<CalibrationSample>> ReadCalibrationJsonl(const std::string& path,
                                                                    int64_t max_samples = 0);

struct ProfileProgress {
  int64_t samples_done = 0;
  int64_t samples_total = 0;
  // Of the whole run, in [0, 1]: batches done plus the current batch's MoE
  // layers done (so a single streamed batch still moves layer by layer).
  double fraction = 0;
};

struct ProfileOptions {
  MetricOptions metric;
  // Sequences per forward pass; 0 = all in one. A streamed engine reads the
  // whole checkpoint once per pass, so it wants few large batches; a resident
  // one is fastest with moderate ones. Default: 16.
  int64_t batch_size = 16;
  // Called on the profiling thread after each MoE layer of each batch.
  // Default: none.
  std::function<void(const ProfileProgress&)> on_progress;
  // MoE layers the match embeddings span: the first L (MatchEmbedding). 1,
  // the paper's, needs only the first gate; more tell similar tasks apart
  // better (docs/retrieval.md) and make the router's probe hold the model up
  // to the L-th gate. In [1, MoE layers]. Default: 1.
  int64_t embedding_layers = 1;
};

struct TaskProfile {
  // Per MoE layer, one score per routed expert.
  std::map<int64_t, std::vector<double>> scores;
  int64_t samples = 0;
  // Calibration tokens scored (per MoE layer; the same for every layer).
  int64_t tokens = 0;
  // One per sample: the match embedding of its prompt, L2-normalised, of
  // dimension embedding_layers * num_routed_experts.
  std::vector<std::vector<float>> embeddings;
};

// Profiles one task: `samples` must be non-empty; the engine must be the full
// model (a reduced one has -inf logits for pruned experts), resident or
// streamed (EngineOptions::streamed: the same results for the same
// batch_size, in the memory of one layer). The tokenizer's special tokens are
// added as for serving (add_special_tokens = true). Each batch runs twice:
// the whole texts through every layer for the scores, then the prompts up to
// the first MoE layer only for the match embeddings.
absl::StatusOr<TaskProfile> ProfileTask(const model::Engine& engine,
                                        const tokenizer::Tokenizer& tokenizer,
                                        const std::vector<CalibrationSample>& samples,
                                        const ProfileOptions& options);

// The match embedding of a text from the gate logits [T, N] fp32 of its first
// MoE layers (one tensor per layer, in order): per layer, the mean over its
// tokens of m(x) under `metric` (peu's r taken over these tokens),
// L2-normalised; the layers' vectors concatenated and scaled by 1/sqrt(L),
// so the whole has norm 1 and each layer weighs alike. All zeros stays zeros.
absl::StatusOr<std::vector<float>> MatchEmbedding(const std::vector<at::Tensor>& gate_logits,
                                                  const MetricOptions& metric, int64_t model_top_k);

// The decoder layer of the model's `embedding_layers`-th MoE layer, where an
// embedding's forward pass stops. INVALID_ARGUMENT when the model has fewer
// MoE layers (or embedding_layers < 1).
absl::StatusOr<int64_t> EmbeddingLastLayer(const checkpoint::ModelConfig& config,
                                           int64_t embedding_layers);

}  // namespace premoe::profiler
