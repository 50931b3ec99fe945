// Pattern assembly (DESIGN.md §2): the one place a task's profile becomes the
// expert pattern record the store keeps (store::Pattern), and the one place a
// pattern's scores become what selection takes. Every producer of patterns
// (`premoe profile`, the benchmarks, the tests) builds them here, so patterns
// agree on prompt hashes, creation times and metric parameters wherever they
// were made.
//
// Thread safety: the functions are pure (MakePattern reads the clock) and
// may be called concurrently; the structs are plain values.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/checkpoint/config.h"
#include "premoe/model/engine.h"
#include "premoe/profiler/calibration.h"
#include "premoe/store/pattern.h"

namespace premoe::profiler {

// What a pattern records beside its profile.
struct PatternOptions {
  // The task the pattern is stored under. Required, non-empty (the store
  // also limits it to 256 bytes).
  std::string task_name;
  // model::ModelFingerprint of the engine profiled. Required. Passed in, not
  // computed here: it hashes every gate weight, and a caller profiling many
  // tasks computes it once.
  std::string model_fingerprint;
  // Microseconds since the Unix epoch. Default 0: the time MakePattern runs
  // (a pattern written to a file keeps it, and so does `patterns import`).
  int64_t created_unix_micros = 0;

  // INVALID_ARGUMENT naming the missing field.
  absl::Status Validate() const;
};

// The pattern of one task: `profile`, as ProfileTask returned it for
// `samples` with `profiled_with` on `engine` (the full model), with:
//   - the metric's name and its parameters as they applied
//     (MetricOptions::Params with the engine's experts and top-k);
//   - one layer of float scores per MoE layer, in layer order;
//   - one embedding per sample, in order, each with the hex XXH3-128 of the
//     sample's prompt (common::Hasher) as its prompt_hash;
//   - calibration_samples and calibration_tokens from the profile;
//   - options' task name, fingerprint and creation time.
// Errors: INVALID_ARGUMENT for bad options, for a profile with no scores,
// scores that are not one per routed expert, or a different number of
// embeddings than samples (a profile of other samples).
absl::StatusOr<store::Pattern> MakePattern(const model::Engine& engine,
                                           const std::vector<CalibrationSample>& samples,
                                           const ProfileOptions& profiled_with,
                                           const TaskProfile& profile,
                                           const PatternOptions& options);

// The pattern's scores as Select takes them: per layer, one double per
// routed expert (widened from the record's floats). INVALID_ARGUMENT naming
// the task when the pattern has no layers or lists a layer twice.
absl::StatusOr<std::map<int64_t, std::vector<double>>> PatternScores(const store::Pattern& pattern);

// The same, and every layer must fit `config`: a MoE layer with
// num_routed_experts scores. INVALID_ARGUMENT `pattern of task "T": layer L
// with N scores does not fit the model (E experts per MoE layer)` otherwise.
absl::StatusOr<std::map<int64_t, std::vector<double>>> PatternScores(
    const store::Pattern& pattern, const checkpoint::ModelConfig& config);

}  // namespace premoe::profiler
