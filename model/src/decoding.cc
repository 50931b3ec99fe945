#include "premoe/model/decoding.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

namespace premoe::model {

int64_t SampleToken(const at::Tensor& logits, const GenerationOptions& o, std::mt19937_64& rng) {
  if (o.temperature == 0) return logits.argmax().item<int64_t>();
  // In double and from the max: logits / T overflows to inf for a tiny T
  // (and softmax of inf is NaN, which sampled garbage); (x - max) / T only
  // reaches -inf, probability 0, so every accepted T samples, and T -> 0
  // becomes greedy.
  const at::Tensor x = logits.to(at::kDouble);
  at::Tensor scaled = (x - x.max()) / o.temperature;
  if (o.top_k > 0 && o.top_k < scaled.size(0)) {
    const double kth = std::get<0>(at::topk(scaled, o.top_k)).select(0, o.top_k - 1).item<double>();
    scaled = scaled.masked_fill(scaled < kth, -std::numeric_limits<double>::infinity());
  }
  auto [sorted, order] = at::sort(scaled, /*dim=*/0, /*descending=*/true);
  at::Tensor probs = at::softmax(sorted, 0).contiguous();
  const double* p = probs.data_ptr<double>();
  const int64_t* ord = order.contiguous().data_ptr<int64_t>();
  const int64_t v = probs.size(0);
  // Nucleus: the smallest prefix whose mass reaches top_p (at least one token).
  int64_t keep = v;
  double total = 0;
  for (int64_t i = 0; i < v; ++i) {
    total += p[i];
    if (o.top_p < 1.0 && total >= o.top_p) {
      keep = i + 1;
      break;
    }
  }
  const double u = std::uniform_real_distribution<double>(0.0, total)(rng);
  double acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) return ord[i];
  }
  return ord[keep - 1];
}

SequenceSampler::SequenceSampler(const GenerationOptions& options, uint64_t seed,
                                 std::vector<int64_t> eos)
    : options_(options), eos_(std::move(eos)), rng_(seed) {
  for (const auto& s : options_.stop_sequences) max_stop_ = std::max(max_stop_, s.size());
}

std::vector<int64_t> SequenceSampler::Emit(bool final) {
  // Until the end, the last max_stop - 1 tokens could still begin a stop
  // sequence that a later token completes.
  const size_t hold = final || max_stop_ == 0 ? 0 : max_stop_ - 1;
  std::vector<int64_t> out;
  while (emitted_ + hold < result_.tokens.size()) out.push_back(result_.tokens[emitted_++]);
  return out;
}

std::vector<int64_t> SequenceSampler::Step(const at::Tensor& logits) {
  const int64_t token = SampleToken(logits.cpu(), options_, rng_);
  last_ = token;
  using Reason = GenerationResult::FinishReason;
  if (options_.stop_at_eos && std::find(eos_.begin(), eos_.end(), token) != eos_.end()) {
    return Stop(Reason::kEos);
  }
  auto& tokens = result_.tokens;
  tokens.push_back(token);
  for (const auto& s : options_.stop_sequences) {
    if (tokens.size() >= s.size() && std::equal(s.begin(), s.end(), tokens.end() - s.size())) {
      tokens.resize(tokens.size() - s.size());
      emitted_ = std::min(emitted_, tokens.size());
      return Stop(Reason::kStopSequence);
    }
  }
  if (static_cast<int64_t>(tokens.size()) >= options_.max_new_tokens) return Stop(Reason::kLength);
  return Emit(false);
}

std::vector<int64_t> SequenceSampler::Stop(GenerationResult::FinishReason reason) {
  finished_ = true;
  result_.finish_reason = reason;
  return Emit(true);
}

}  // namespace premoe::model
