#include "premoe/profiler/selection.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <queue>

#include "absl/strings/str_cat.h"
#include "premoe/common/status.h"

namespace premoe::profiler {
namespace {

// Experts of one layer, best first (ties to the lower id).
std::vector<int64_t> Ranked(const std::vector<double>& s) {
  std::vector<int64_t> ids(s.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  return ids;
}

// Each expert's share of its layer's score mass, with scores shifted so the
// smallest is 0 (logit metrics can be negative). A flat layer shares evenly.
std::vector<double> Shares(const std::vector<double>& s) {
  const double lo = *std::min_element(s.begin(), s.end());
  double total = 0;
  for (double v : s) total += v - lo;
  std::vector<double> out(s.size(), 1.0 / static_cast<double>(s.size()));
  if (total > 0) {
    for (size_t i = 0; i < s.size(); ++i) out[i] = (s[i] - lo) / total;
  }
  return out;
}

}  // namespace

absl::StatusOr<Selection> Select(const std::map<int64_t, std::vector<double>>& scores,
                                 const Budget& budget, int64_t bytes_per_expert,
                                 int64_t model_top_k) {
  if (scores.empty()) return absl::InvalidArgumentError("Select: no layers scored");
  const size_t n = scores.begin()->second.size();
  for (const auto& [layer, s] : scores) {
    if (s.size() != n || n == 0) {
      return absl::InvalidArgumentError(absl::StrCat("Select: layer ", layer, " has ", s.size(),
                                                     " scores, want ", n, " (one per expert)"));
    }
    for (double v : s) {
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("Select: layer ", layer, " has a non-finite score"));
      }
    }
  }
  const int64_t experts = static_cast<int64_t>(n);
  if (bytes_per_expert < 0 || model_top_k < 1 || model_top_k > experts) {
    return absl::InvalidArgumentError("Select: bad bytes_per_expert or top-k");
  }
  Selection sel;
  sel.top_k = budget.kind == Budget::Kind::kUniform ? budget.top_k : model_top_k;
  if (sel.top_k > experts) {
    return absl::InvalidArgumentError(absl::StrCat("budget ", budget.ToString(), ": top-k ",
                                                   sel.top_k, " exceeds the ", experts,
                                                   " experts per layer"));
  }
  std::map<int64_t, int64_t> counts;  // layer -> experts kept
  switch (budget.kind) {
    case Budget::Kind::kUniform:
      if (budget.count > experts) {
        return absl::InvalidArgumentError(absl::StrCat("budget ", budget.ToString(), " keeps ",
                                                       budget.count, " experts of a layer with ",
                                                       experts));
      }
      for (const auto& [layer, s] : scores) counts[layer] = budget.count;
      break;
    case Budget::Kind::kFraction: {
      ASSIGN_OR_RETURN(const int64_t m, budget.UniformCount(experts, sel.top_k));
      for (const auto& [layer, s] : scores) counts[layer] = m;
      break;
    }
    case Budget::Kind::kCoverage:
      for (const auto& [layer, s] : scores) {
        const std::vector<double> share = Shares(s);
        double mass = 0;
        int64_t m = 0;
        for (int64_t e : Ranked(s)) {
          if (mass >= budget.fraction - 1e-12) break;
          mass += share[e];
          ++m;
        }
        counts[layer] = std::max(m, sel.top_k);
      }
      break;
    case Budget::Kind::kBytes: {
      const int64_t layers = static_cast<int64_t>(scores.size());
      const int64_t total =
          bytes_per_expert > 0 ? budget.bytes / bytes_per_expert : experts * layers;
      if (total < sel.top_k * layers) {
        return absl::InvalidArgumentError(
            absl::StrCat("budget ", budget.ToString(), " holds ", total, " experts; ", layers,
                         " MoE layers need at least top-k = ", sel.top_k, " each (",
                         sel.top_k * layers * bytes_per_expert, " bytes)"));
      }
      // Greedy by share of score mass: a max-heap of each layer's next best
      // expert.
      using Entry = std::tuple<double, int64_t, int64_t>;  // share, -layer, rank
      std::priority_queue<Entry> heap;
      std::map<int64_t, std::vector<double>> shares;
      std::map<int64_t, std::vector<int64_t>> ranked;
      int64_t left = total;
      for (const auto& [layer, s] : scores) {
        shares[layer] = Shares(s);
        ranked[layer] = Ranked(s);
        counts[layer] = sel.top_k;
        left -= sel.top_k;
        if (sel.top_k < experts) {
          heap.emplace(shares[layer][ranked[layer][sel.top_k]], -layer, sel.top_k);
        }
      }
      while (left > 0 && !heap.empty()) {
        const auto [share, neg_layer, rank] = heap.top();
        heap.pop();
        const int64_t layer = -neg_layer;
        counts[layer] = rank + 1;
        --left;
        if (rank + 1 < experts)
          heap.emplace(shares[layer][ranked[layer][rank + 1]], neg_layer, rank + 1);
      }
      break;
    }
  }
  for (const auto& [layer, s] : scores) {
    std::vector<int64_t> keep = Ranked(s);
    keep.resize(counts[layer]);
    sel.kept_experts += counts[layer];
    sel.keep.Set(layer, std::move(keep));
  }
  sel.expert_bytes = sel.kept_experts * bytes_per_expert;
  return sel;
}

}  // namespace premoe::profiler
