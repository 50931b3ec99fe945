#include "premoe/profiler/probe.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "premoe/common/status.h"
#include "premoe/profiler/calibration.h"

namespace premoe::profiler {
namespace {

// Keeps one layer's gate logits (the event's tensors die with the callback).
class FirstGateTap final : public model::RouterTap {
 public:
  explicit FirstGateTap(int64_t layer) : layer_(layer) {}
  void OnRouter(const model::RouterTapEvent& ev) override {
    if (ev.layer == layer_) logits_ = ev.gate_logits.cpu();
  }
  const at::Tensor& logits() const { return logits_; }

 private:
  int64_t layer_;
  at::Tensor logits_;
};

}  // namespace

absl::StatusOr<std::vector<float>> EmbedPrompt(const model::Engine& engine,
                                               const model::Tokenizer& tokenizer,
                                               absl::string_view prompt,
                                               const MetricOptions& metric) {
  const model::ModelConfig& c = engine.config();
  int64_t first = 0;
  while (first < c.num_hidden_layers && !c.IsMoeLayer(static_cast<int>(first))) ++first;
  if (first == c.num_hidden_layers) return absl::InvalidArgumentError("the model has no MoE layer");
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(prompt, /*add_special_tokens=*/true));
  if (ids.empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");
  if (static_cast<int64_t>(ids.size()) > engine.max_context()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt's ", ids.size(), " tokens exceed the context of ", engine.max_context()));
  }
  FirstGateTap tap(first);
  model::ForwardOptions fo;
  fo.tap = &tap;
  fo.last_layer = first;  // nothing after the first gate matters
  try {
    RETURN_IF_ERROR(
        engine.Forward({std::vector<int64_t>(ids.begin(), ids.end())}, nullptr, fo).status());
    return MatchEmbedding(tap.logits(), metric, engine.top_k());
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("embedding a prompt: libtorch: ", e.what_without_backtrace()));
  }
}

}  // namespace premoe::profiler
