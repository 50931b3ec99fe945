// Router activity as JSON lines: the format of `premoe generate
// --dump-router-logits`, which tests and notebooks read to see what every
// MoE layer routed where.
//
// One JSON object per line per MoE layer per forward pass (the prefill is
// forward 0, each decode step one more):
//   {"forward": F, "layer": L, "sequence": [T], "position": [T],
//    "gate_logits": [[N] x T], "selected_experts": [[K] x T],
//    "routing_weights": [[K] x T]}
// Floats are written in their shortest form that reads back as the same
// fp32 value; JSON has no infinities, so -inf (the logit of an expert a
// reduced model did not load) and other non-finite values are null.
#pragma once

#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "premoe/model/engine.h"

namespace premoe::model {

// One line of the dump (with its trailing '\n') for `event` of forward pass
// `forward`. The tensors may be on any device; routing_weights of any
// floating dtype. Throws what libtorch throws for malformed tensors
// (GateEventJsonl below catches it).
std::string GateEventJson(const GateEvent& event, int64_t forward);

// A GateTap that writes every event to a file as GateEventJson lines,
// counting forward passes from the layer order (a layer no later than the
// previous one starts the next pass). Not thread-safe, as taps are called on
// the one thread running Forward/Generate.
class JsonlGateDump final : public GateTap {
 public:
  // `file` is not owned and must outlive the dump; the caller closes it
  // (and checks that close, which may be where a write fails).
  explicit JsonlGateDump(std::FILE* file) : file_(file) {}

  void OnGate(const GateEvent& event) override;

  // OK, or the first failure: DATA_LOSS for a short write, INTERNAL for a
  // tensor libtorch refused. Events after a failure are not written.
  const absl::Status& status() const { return status_; }

 private:
  std::FILE* file_;
  int64_t forward_ = -1;
  int64_t last_layer_ = std::numeric_limits<int64_t>::max();
  absl::Status status_;
};

}  // namespace premoe::model
