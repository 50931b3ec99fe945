// The query side of retrieval (DESIGN.md §3, TAER): the match embedding of one
// prompt, computed exactly as ProfileTask computes a calibration prompt's, so
// that a query and the patterns it is searched against are comparable.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "premoe/model/engine.h"
#include "premoe/profiler/scores.h"
#include "premoe/tokenizer/tokenizer.h"

namespace premoe::profiler {

// Tokenizes `prompt` as ProfileTask does (with the tokenizer's special
// tokens; without them for a chat template's text, which holds its own), runs it
// through `engine` (a full model, as for profiling, or a probe holding the
// model up to its `embedding_layers`-th MoE gate) and returns MatchEmbedding
// of the first `embedding_layers` MoE layers' gate logits under `metric`:
// embedding_layers * num_routed_experts floats, of norm 1. Use the metric
// (and parameters) and layers the searched patterns were profiled with.
// INVALID_ARGUMENT for a prompt that encodes to no tokens or exceeds the
// engine's context, a model with fewer MoE layers, or a bad metric; INTERNAL
// for a libtorch failure. Thread-safe as Engine::Forward is.
absl::StatusOr<std::vector<float>> EmbedPrompt(
    const model::Engine& engine, const tokenizer::Tokenizer& tokenizer, absl::string_view prompt,
    const MetricOptions& metric, int64_t embedding_layers = 1, bool add_special_tokens = true);

}  // namespace premoe::profiler
