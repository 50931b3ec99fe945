// premoe.v1.Inference messages <-> the router's structs: the one place they
// meet, shared by the server and the client.
#pragma once

#include "absl/status/statusor.h"
#include "premoe/router/matcher.h"
#include "premoe/router/router.h"
#include "premoe/v1/inference.pb.h"

namespace premoe::router {

void ToProto(const InferenceRequest& in, v1::InferenceRequest* out);
// Zeros mean defaults (top_p 1, max_new_tokens 64). INVALID_ARGUMENT for
// sampling options GenerationOptions::Validate refuses.
// Requests: INVALID_ARGUMENT naming the field for text that is not UTF-8.
absl::StatusOr<std::vector<ChatMessage>> FromProto(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& in);
absl::StatusOr<InferenceRequest> FromProto(const v1::InferenceRequest& in);

// The last message of a stream (done set).
void ToProto(const InferenceResult& in, v1::InferenceResponse* out);
InferenceResult FromProto(const v1::InferenceResponse& in);

void ToProto(const MatchResult& in, v1::MatchResponse* out);
MatchResult FromProto(const v1::MatchResponse& in);

}  // namespace premoe::router
