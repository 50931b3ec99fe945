#include "router/src/wire.h"

#include "absl/strings/str_cat.h"
#include "premoe/common/status.h"
#include "premoe/common/utf8.h"
#include "premoe/worker/sampling_proto.h"

namespace premoe::router {

void ToProto(const InferenceRequest& in, v1::InferenceRequest* out) {
  out->set_prompt(in.prompt);
  for (const ChatMessage& m : in.messages) {
    v1::ChatMessage* w = out->add_messages();
    w->set_role(m.role);
    w->set_content(m.content);
  }
  worker::ToProto(in.options, in.stop, out->mutable_sampling());
  out->set_task(in.task);
  out->set_budget(in.budget);
  out->set_full_model(in.full_model);
}

absl::StatusOr<std::vector<ChatMessage>> FromProto(
    const google::protobuf::RepeatedPtrField<v1::ChatMessage>& in) {
  std::vector<ChatMessage> out;
  for (int i = 0; i < in.size(); ++i) {
    RETURN_IF_ERROR(common::CheckUtf8(in[i].role(), absl::StrCat("messages[", i, "].role")));
    RETURN_IF_ERROR(common::CheckUtf8(in[i].content(), absl::StrCat("messages[", i, "].content")));
    out.push_back({in[i].role(), in[i].content()});
  }
  return out;
}

absl::StatusOr<InferenceRequest> FromProto(const v1::InferenceRequest& in) {
  InferenceRequest out;
  RETURN_IF_ERROR(common::CheckUtf8(in.prompt(), "prompt"));
  RETURN_IF_ERROR(common::CheckUtf8(in.task(), "task"));
  RETURN_IF_ERROR(common::CheckUtf8(in.budget(), "budget"));
  out.prompt = in.prompt();
  ASSIGN_OR_RETURN(out.messages, FromProto(in.messages()));
  RETURN_IF_ERROR(worker::FromProto(in.sampling(), &out.options, &out.stop));
  out.task = in.task();
  out.budget = in.budget();
  out.full_model = in.full_model();
  return out;
}

void ToProto(const InferenceResult& in, v1::InferenceResponse* out) {
  out->set_done(true);
  out->set_finish_reason(in.text.finish_reason);
  out->mutable_usage()->set_prompt_tokens(in.text.prompt_tokens);
  out->mutable_usage()->set_completion_tokens(in.text.completion_tokens);
  v1::Route* r = out->mutable_route();
  r->set_task(in.route.task);
  r->set_decision(in.route.decision);
  r->set_similarity(in.route.similarity);
  r->set_budget(in.route.budget);
  r->set_kept_experts(in.route.kept_experts);
  r->set_kept_fraction(in.route.kept_fraction);
  r->set_kept_bytes(in.route.kept_bytes);
  r->set_all_experts_bytes(in.route.all_experts_bytes);
  r->set_base_bytes(in.route.base_bytes);
  r->set_worker(in.route.worker);
  out->set_time_to_first_token_seconds(in.time_to_first_token);
  out->set_match_seconds(in.match_seconds);
}

InferenceResult FromProto(const v1::InferenceResponse& in) {
  InferenceResult out;
  out.text.finish_reason = in.finish_reason();
  out.text.prompt_tokens = in.usage().prompt_tokens();
  out.text.completion_tokens = in.usage().completion_tokens();
  const v1::Route& r = in.route();
  out.route.task = r.task();
  out.route.decision = r.decision();
  out.route.similarity = r.similarity();
  out.route.budget = r.budget();
  out.route.kept_experts = r.kept_experts();
  out.route.kept_fraction = r.kept_fraction();
  out.route.kept_bytes = r.kept_bytes();
  out.route.all_experts_bytes = r.all_experts_bytes();
  out.route.base_bytes = r.base_bytes();
  out.route.worker = r.worker();
  out.time_to_first_token = in.time_to_first_token_seconds();
  out.match_seconds = in.match_seconds();
  return out;
}

void ToProto(const MatchResult& in, v1::MatchResponse* out) {
  for (const store::SearchMatch& m : in.candidates) {
    v1::PatternCandidate* c = out->add_candidates();
    c->set_task(m.task_name);
    c->set_similarity(m.similarity);
    c->set_votes(m.votes);
  }
  out->set_task(in.task);
  out->set_decision(in.decision);
  out->set_similarity(in.similarity);
  out->set_match_seconds(in.seconds);
}

MatchResult FromProto(const v1::MatchResponse& in) {
  MatchResult out;
  for (const v1::PatternCandidate& c : in.candidates()) {
    store::SearchMatch m;
    m.task_name = c.task();
    m.similarity = static_cast<float>(c.similarity());
    m.votes = c.votes();
    out.candidates.push_back(m);
  }
  out.task = in.task();
  out.decision = in.decision();
  out.similarity = in.similarity();
  out.seconds = in.match_seconds();
  return out;
}

}  // namespace premoe::router
