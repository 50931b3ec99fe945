#include "premoe/profiler/probe.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "premoe/common/status.h"
#include "premoe/profiler/calibration.h"

namespace premoe::profiler {
namespace {

// Keeps the logits of the embedding's layers (the event's tensors die with
// the callback).
class FirstGateTap final : public model::GateTap {
 public:
  void OnGate(const model::GateEvent& ev) override { logits_.push_back(ev.gate_logits.cpu()); }
  const std::vector<at::Tensor>& logits() const { return logits_; }

 private:
  std::vector<at::Tensor> logits_;
};

}  // namespace

absl::StatusOr<std::vector<float>> EmbedPrompt(const model::Engine& engine,
                                               const tokenizer::Tokenizer& tokenizer,
                                               absl::string_view prompt,
                                               const MetricOptions& metric,
                                               int64_t embedding_layers, bool add_special_tokens) {
  ASSIGN_OR_RETURN(const int64_t last, EmbeddingLastLayer(engine.config(), embedding_layers));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(prompt, add_special_tokens));
  if (ids.empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");
  if (static_cast<int64_t>(ids.size()) > engine.max_context()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt's ", ids.size(), " tokens exceed the context of ", engine.max_context()));
  }
  // Only MoE layers reach the tap, so it sees exactly the embedding's layers.
  FirstGateTap tap;
  model::ForwardOptions fo;
  fo.tap = &tap;
  fo.last_layer = last;  // nothing after the last embedding gate matters
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
