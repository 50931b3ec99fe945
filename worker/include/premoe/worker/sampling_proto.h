// premoe.v1.SamplingParams (worker.proto, which the worker owns) <-> the
// engine's GenerationOptions and stop strings: the one conversion, used by the
// worker's edge and by the router's, whose InferenceRequest carries the same
// message. For gRPC edges only: a target that includes this links
// premoe::proto itself. Plain functions; thread-safe.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "premoe/model/engine.h"
#include "premoe/v1/worker.pb.h"

namespace premoe::worker {

void ToProto(const model::GenerationOptions& options, const std::vector<std::string>& stop,
             v1::SamplingParams* out);
// Zeros mean defaults (top_p 1, max_new_tokens as GenerationOptions has it).
// INVALID_ARGUMENT for options GenerationOptions::Validate refuses; then
// `options` and `stop` are unspecified.
absl::Status FromProto(const v1::SamplingParams& in, model::GenerationOptions* options,
                       std::vector<std::string>* stop);

}  // namespace premoe::worker
