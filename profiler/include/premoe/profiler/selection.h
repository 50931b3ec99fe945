// Selection (PEP): a pattern's scores plus a budget give the routed experts
// each MoE layer keeps, as the engine's masks and reduced models take them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "premoe/checkpoint/budget.h"
#include "premoe/model/engine.h"

namespace premoe::profiler {

// How many experts to keep: "K/M", "N%", "bytes:SIZE" or "coverage:F". The
// grammar and its meaning are premoe/checkpoint/budget.h's, where inspect's
// memory estimate reads the same spellings without libtorch.
using Budget = checkpoint::Budget;

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
