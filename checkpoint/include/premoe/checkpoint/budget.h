// The expert budget grammar: how many routed experts each MoE layer keeps.
// One grammar for every command and library that takes a budget: selection
// (profiler::Select, through its alias profiler::Budget), the worker, the
// router, and the memory estimate of `premoe inspect`. It lives here, below
// the engine, because inspect reads checkpoints without libtorch.
//
// Spellings (no spaces, no signs):
//   "K/M"          top-K routing over the M best experts of every layer
//                  (e.g. "8/128"); K below the model's top-k lowers it. K and
//                  M are decimal integers of at most 9 digits, 1 <= K <= M
//   "50%"          that fraction of every layer's experts, rounded up, and at
//                  least the model's top-k; in (0, 100]
//   "bytes:2GiB"   a budget for all routed experts' weights (B, KiB, MiB,
//                  GiB, or a plain byte count); layers may keep different
//                  counts: after every layer's top-k, experts are added in
//                  order of their share of their layer's score mass
//   "coverage:0.9" per layer, the fewest best experts holding that share
//                  of the layer's score mass; in (0, 1]
// Which experts are "best" is a pattern's business (profiler::Select): a
// budget alone says how many, and for bytes and coverage not even that
// without the scores. A layer never keeps fewer experts than the routing
// top-k.
//
// Thread safety: Budget is a plain value.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace premoe::checkpoint {

struct Budget {
  enum class Kind { kUniform, kFraction, kBytes, kCoverage };
  Kind kind = Kind::kUniform;
  int64_t top_k = 0;    // kUniform: K; 0 elsewhere (the model's)
  int64_t count = 0;    // kUniform: M
  double fraction = 0;  // kFraction, kCoverage: in (0, 1]
  int64_t bytes = 0;    // kBytes: > 0

  // Parses one of the spellings above. Errors: INVALID_ARGUMENT
  // `budget "<text>": <what is wrong> (want K/M, ...)`, the text escaped
  // where it is not printable.
  static absl::StatusOr<Budget> Parse(absl::string_view text);
  // The canonical spelling; Parse(ToString()) gives the same budget.
  std::string ToString() const;

  // Whether every layer keeps the same number of experts whatever the
  // scores say (kUniform, kFraction): then the weight memory follows from
  // the checkpoint alone.
  bool IsUniform() const { return kind == Kind::kUniform || kind == Kind::kFraction; }
  // The experts each layer keeps under a uniform budget on a model with
  // `num_experts` routed experts per MoE layer and routing top-k
  // `model_top_k`: M for K/M, max(top-k, ceil(fraction * N)) for N%.
  // Range checks against the model are the caller's (Select,
  // ValidateBudget). FAILED_PRECONDITION for bytes and coverage budgets,
  // which depend on a pattern's scores.
  absl::StatusOr<int64_t> UniformCount(int64_t num_experts, int64_t model_top_k) const;

  bool operator==(const Budget&) const = default;
};

}  // namespace premoe::checkpoint
