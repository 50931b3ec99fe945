// Conversions between premoe::store's structs and the premoe.v1 wire types
// it owns (pattern.proto, store.proto): the one place where both meet. For
// gRPC edges only (the store's own, and a worker receiving a Pattern): a
// target that includes this links premoe::proto itself. Plain functions;
// thread-safe.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "premoe/store/pattern.h"
#include "premoe/v1/pattern.pb.h"
#include "premoe/v1/store.pb.h"

namespace premoe::store {

void ToProto(const Pattern& in, v1::Pattern* out);
// FAILED_PRECONDITION for a schema_version newer than this build's.
absl::StatusOr<Pattern> FromProto(const v1::Pattern& in);

void ToProto(const MatchEmbedding& in, v1::MatchEmbedding* out);
MatchEmbedding FromProto(const v1::MatchEmbedding& in);

void ToProto(const PatternSummary& in, v1::PatternSummary* out);
PatternSummary FromProto(const v1::PatternSummary& in);

void ToProto(const ChangeEvent& in, v1::ChangeEvent* out);
absl::StatusOr<ChangeEvent> FromProto(const v1::ChangeEvent& in);

void ToProto(const SearchMatch& in, v1::SearchMatch* out);
SearchMatch FromProto(const v1::SearchMatch& in);

void ToProto(const StoreInfo& in, v1::StoreInfo* out);
StoreInfo FromProto(const v1::StoreInfo& in);

v1::Voting ToProto(Voting in);
absl::StatusOr<Voting> FromProto(v1::Voting in);

}  // namespace premoe::store
