// Conversions between premoe::worker's structs and the premoe.v1 worker
// messages: the one place they meet. Internal to premoe::worker.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "premoe/store/pattern.h"
#include "premoe/store/proto_convert.h"
#include "premoe/v1/pattern.pb.h"
#include "premoe/v1/worker.pb.h"
#include "premoe/worker/client.h"
#include "premoe/worker/sampling_proto.h"
#include "premoe/worker/worker.h"

namespace premoe::worker {

void ToProto(const PreparedPattern& in, v1::PrepareResponse* out);
PreparedPattern FromProto(const v1::PrepareResponse& in);

void ToProto(const std::string& fingerprint, const WorkerStatus& in, v1::WorkerStatusResponse* out);
RemoteStatus FromProto(const v1::WorkerStatusResponse& in);

void ToProto(const TextRequest& in, v1::GenerateRequest* out);
// Zeros mean defaults (top_p 1, max_new_tokens 64). INVALID_ARGUMENT for
// sampling the engine refuses.
absl::StatusOr<TextRequest> FromProto(const v1::GenerateRequest& in);

// "length", "eos" or "stop".
std::string FinishReasonName(model::GenerationResult::FinishReason reason);

}  // namespace premoe::worker
