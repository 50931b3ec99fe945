#include "premoe/testbed/specialisation.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "premoe/common/status.h"

namespace premoe::testbed {
namespace {

// Accumulates per-layer expert selection counts of one task.
class CountingTap final : public model::GateTap {
 public:
  CountingTap(const std::vector<int64_t>& layers, int64_t experts) {
    for (size_t i = 0; i < layers.size(); ++i) {
      slot_[layers[i]] = i;
      counts_.push_back(at::zeros({experts}, at::kLong));
    }
    experts_ = experts;
  }
  void OnGate(const model::GateEvent& ev) override {
    counts_[slot_.at(ev.layer)] +=
        at::bincount(ev.selected_experts.reshape({-1}).cpu(), {}, experts_);
  }
  std::vector<double> Frequency(size_t i) const {
    at::Tensor c = counts_[i].to(at::kDouble);
    c = c / std::max(1.0, c.sum().item<double>());
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  }

 private:
  std::map<int64_t, size_t> slot_;
  std::vector<at::Tensor> counts_;
  int64_t experts_ = 0;
};

std::vector<int64_t> TopSet(const std::vector<double>& freq, int64_t k) {
  std::vector<int64_t> ids(freq.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) { return freq[a] > freq[b]; });
  ids.resize(k);
  std::sort(ids.begin(), ids.end());
  return ids;
}

double Jaccard(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> both;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
  const double inter = static_cast<double>(both.size());
  return inter / (static_cast<double>(a.size() + b.size()) - inter);
}

double LogChoose(int64_t n, int64_t k) {
  return std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0);
}

}  // namespace

double RandomSubsetJaccard(int64_t n, int64_t k) {
  double expected = 0;
  for (int64_t i = std::max<int64_t>(0, 2 * k - n); i <= k; ++i) {
    const double p = std::exp(LogChoose(k, i) + LogChoose(n - k, k - i) - LogChoose(n, k));
    expected += p * static_cast<double>(i) / static_cast<double>(2 * k - i);
  }
  return expected;
}

absl::StatusOr<SpecialisationReport> MeasureSpecialisation(const model::Engine& engine,
                                                           const tokenizer::Tokenizer& tokenizer,
                                                           const std::vector<const Task*>& tasks,
                                                           const SpecialisationOptions& o) {
  if (tasks.size() < 2) return absl::InvalidArgumentError("specialisation needs >= 2 tasks");
  if (o.samples < 1 || o.batch_size < 1) {
    return absl::InvalidArgumentError("SpecialisationOptions: samples and batch_size must be >= 1");
  }
  const checkpoint::ModelConfig& c = engine.config();
  SpecialisationReport r;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (c.IsMoeLayer(static_cast<int>(l))) r.layers.push_back(l);
  }
  r.experts = c.num_routed_experts;
  r.top_half = r.experts / 2;
  r.frequency.assign(r.layers.size(), {});
  try {
    for (const Task* task : tasks) {
      r.tasks.push_back(task->name());
      CountingTap tap(r.layers, r.experts);
      const int64_t n = std::min(o.samples, task->size(o.split));
      for (int64_t begin = 0; begin < n; begin += o.batch_size) {
        std::vector<std::vector<int64_t>> batch;
        for (int64_t i = begin; i < std::min(n, begin + o.batch_size); ++i) {
          ASSIGN_OR_RETURN(Sample s, task->Get(o.split, i));
          ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                           tokenizer.Encode(s.prompt + s.completion, /*add_special_tokens=*/true));
          batch.emplace_back(ids.begin(), ids.end());
        }
        model::ForwardOptions fo;
        fo.tap = &tap;
        RETURN_IF_ERROR(engine.Forward(batch, nullptr, fo).status());
      }
      for (size_t li = 0; li < r.layers.size(); ++li) r.frequency[li].push_back(tap.Frequency(li));
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("specialisation: libtorch: ", e.what_without_backtrace()));
  }
  const size_t t = tasks.size();
  for (size_t li = 0; li < r.layers.size(); ++li) {
    std::vector<std::vector<int64_t>> sets;
    for (size_t a = 0; a < t; ++a) sets.push_back(TopSet(r.frequency[li][a], r.top_half));
    std::vector<std::vector<double>> j(t, std::vector<double>(t, 1.0));
    double sum = 0;
    for (size_t a = 0; a < t; ++a) {
      for (size_t b = a + 1; b < t; ++b) {
        j[a][b] = j[b][a] = Jaccard(sets[a], sets[b]);
        sum += j[a][b];
      }
    }
    r.jaccard.push_back(std::move(j));
    r.mean_jaccard.push_back(sum / static_cast<double>(t * (t - 1) / 2));
  }
  r.random_jaccard = RandomSubsetJaccard(r.experts, r.top_half);
  return r;
}

std::string SpecialisationToJson(const SpecialisationReport& r) {
  nlohmann::ordered_json j;
  j["tasks"] = r.tasks;
  j["layers"] = r.layers;
  j["experts"] = r.experts;
  j["top_half"] = r.top_half;
  j["random_jaccard"] = r.random_jaccard;
  j["mean_jaccard"] = r.mean_jaccard;
  j["jaccard"] = r.jaccard;
  j["frequency"] = r.frequency;
  return j.dump(1) + "\n";
}

std::string SpecialisationToMarkdown(const SpecialisationReport& r) {
  std::string out = absl::StrFormat(
      "| layer | mean Jaccard of top-%d sets | random sets | most alike | least alike |\n"
      "|---:|---:|---:|---|---|\n",
      r.top_half);
  for (size_t li = 0; li < r.layers.size(); ++li) {
    const auto& j = r.jaccard[li];
    size_t ha = 0, hb = 1, la = 0, lb = 1;
    for (size_t a = 0; a < r.tasks.size(); ++a) {
      for (size_t b = a + 1; b < r.tasks.size(); ++b) {
        if (j[a][b] > j[ha][hb]) ha = a, hb = b;
        if (j[a][b] < j[la][lb]) la = a, lb = b;
      }
    }
    absl::StrAppendFormat(&out, "| %d | %.3f | %.3f | %s / %s (%.2f) | %s / %s (%.2f) |\n",
                          r.layers[li], r.mean_jaccard[li], r.random_jaccard, r.tasks[ha],
                          r.tasks[hb], j[ha][hb], r.tasks[la], r.tasks[lb], j[la][lb]);
  }
  return out;
}

}  // namespace premoe::testbed
