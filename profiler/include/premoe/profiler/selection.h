// Selection (PEP): a pattern's scores plus a budget give the routed experts
// each MoE layer keeps, as the engine's masks and reduced models take them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "premoe/model/engine.h"

namespace premoe::profiler {

// How many experts to keep. Parsed from:
//   "K/M"          top-K routing over the M best experts of every layer
//                  (e.g. "8/128"); K below the model's top-k lowers it
//   "50%"          that fraction of every layer's experts (rounded up)
//   "bytes:2GiB"   a budget for all routed experts' weights (B, KiB, MiB,
//                  GiB, or a plain byte count); layers may keep different
//                  counts: after every layer's top-k, experts are added in
//                  order of their share of their layer's score mass
//   "coverage:0.9" per layer, the fewest best experts holding that share
//                  of the layer's score mass
// A layer never keeps fewer experts than the routing top-k.
struct Budget {
  enum class Kind { kUniform, kFraction, kBytes, kCoverage };
  Kind kind = Kind::kUniform;
  int64_t top_k = 0;    // kUniform: K; 0 elsewhere (the model's)
  int64_t count = 0;    // kUniform: M
  double fraction = 0;  // kFraction, kCoverage: in (0, 1]
  int64_t bytes = 0;    // kBytes

  // INVALID_ARGUMENT naming what is wrong with `spec`.
  static absl::StatusOr<Budget> Parse(absl::string_view spec);
  std::string ToString() const;
};

struct Selection {
  model::KeptExperts keep;   // every MoE layer listed
  int64_t top_k = 0;         // routing top-k to use with it
  int64_t kept_experts = 0;  // summed over layers
  int64_t expert_bytes = 0;  // bytes of the kept routed experts' weights
};

// `scores`: per MoE layer, one score per routed expert (higher = keep
// first; ties go to the lower id). `bytes_per_expert`: one routed expert's
// weight bytes. `model_top_k`: the routing top-k. INVALID_ARGUMENT when the
// budget cannot hold top-k experts per layer, or asks for more experts than
// a layer has, or the scores are malformed (empty, ragged, non-finite).
absl::StatusOr<Selection> Select(const std::map<int64_t, std::vector<double>>& scores,
                                 const Budget& budget, int64_t bytes_per_expert,
                                 int64_t model_top_k);

}  // namespace premoe::profiler
