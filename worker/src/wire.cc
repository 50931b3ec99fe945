#include "wire.h"

#include "absl/strings/str_cat.h"
#include "premoe/common/status.h"
#include "premoe/common/utf8.h"

namespace premoe::worker {

void ToProto(const PreparedPattern& in, v1::PrepareResponse* out) {
  out->set_task_name(in.task);
  out->set_kept_experts(in.kept_experts);
  out->set_kept_bytes(in.kept_bytes);
  out->set_kept_fraction(in.kept_fraction);
  out->set_loaded_experts(in.load.loaded_experts);
  out->set_loaded_bytes(in.load.loaded_bytes);
  out->set_evicted_experts(in.load.evicted_experts);
  out->set_load_seconds(in.load.load_seconds);
}

PreparedPattern FromProto(const v1::PrepareResponse& in) {
  PreparedPattern out;
  out.task = in.task_name();
  out.kept_experts = in.kept_experts();
  out.kept_bytes = in.kept_bytes();
  out.kept_fraction = in.kept_fraction();
  out.load.needed_experts = in.kept_experts();
  out.load.loaded_experts = in.loaded_experts();
  out.load.loaded_bytes = in.loaded_bytes();
  out.load.evicted_experts = in.evicted_experts();
  out.load.load_seconds = in.load_seconds();
  return out;
}

void ToProto(const std::string& fingerprint, const WorkerStatus& in,
             v1::WorkerStatusResponse* out) {
  out->set_model_fingerprint(fingerprint);
  for (const PatternStatus& p : in.patterns) {
    v1::PatternResidency* r = out->add_patterns();
    r->set_task_name(p.task);
    r->set_kept_experts(p.kept_experts);
    r->set_kept_bytes(p.kept_bytes);
    r->set_resident(p.resident);
  }
  out->set_budget_bytes(in.cache.budget_bytes);
  out->set_resident_experts(in.cache.resident_experts);
  out->set_resident_bytes(in.cache.resident_bytes);
  out->set_pinned_experts(in.cache.pinned_experts);
  out->set_base_bytes(in.base_bytes);
  out->set_all_experts_bytes(in.all_experts_bytes);
  out->set_queued(in.queued);
  out->set_running(in.running);
  out->set_cancelled(in.cancelled);
  out->set_loads(in.cache.loads);
  out->set_loaded_bytes(in.cache.loaded_bytes);
  out->set_evictions(in.cache.evictions);
  out->set_load_seconds(in.cache.load_seconds);
  out->set_expert_bytes(in.expert_bytes);
  for (const auto& [layer, experts] : in.resident.layers) {
    v1::LayerExperts* l = out->add_resident();
    l->set_layer(layer);
    for (int64_t e : experts) l->add_experts(e);
  }
}

RemoteStatus FromProto(const v1::WorkerStatusResponse& in) {
  RemoteStatus out;
  out.model_fingerprint = in.model_fingerprint();
  WorkerStatus& s = out.status;
  for (const v1::PatternResidency& r : in.patterns()) {
    s.patterns.push_back({r.task_name(), r.kept_experts(), r.kept_bytes(), r.resident()});
  }
  s.cache.budget_bytes = in.budget_bytes();
  s.cache.resident_experts = in.resident_experts();
  s.cache.resident_bytes = in.resident_bytes();
  s.cache.pinned_experts = in.pinned_experts();
  s.base_bytes = in.base_bytes();
  s.all_experts_bytes = in.all_experts_bytes();
  s.queued = in.queued();
  s.running = in.running();
  s.cancelled = in.cancelled();
  s.cache.loads = in.loads();
  s.cache.loaded_bytes = in.loaded_bytes();
  s.cache.evictions = in.evictions();
  s.cache.load_seconds = in.load_seconds();
  s.expert_bytes = in.expert_bytes();
  for (const v1::LayerExperts& l : in.resident()) {
    s.resident.layers[l.layer()].assign(l.experts().begin(), l.experts().end());
  }
  return out;
}

void ToProto(const TextRequest& in, v1::GenerateRequest* out) {
  out->set_prompt(in.prompt);
  out->set_task_name(in.task);
  out->set_templated(in.templated);
  out->set_fit_context(in.fit_context);
  ToProto(in.options, in.stop, out->mutable_sampling());
}

absl::StatusOr<TextRequest> FromProto(const v1::GenerateRequest& in) {
  TextRequest out;
  RETURN_IF_ERROR(common::CheckUtf8(in.prompt(), "prompt"));
  RETURN_IF_ERROR(common::CheckUtf8(in.task_name(), "task_name"));
  out.prompt = in.prompt();
  out.task = in.task_name();
  out.templated = in.templated();
  out.fit_context = in.fit_context();
  RETURN_IF_ERROR(FromProto(in.sampling(), &out.options, &out.stop));
  return out;
}

void ToProto(const model::GenerationOptions& options, const std::vector<std::string>& stop,
             v1::SamplingParams* out) {
  out->set_temperature(options.temperature);
  out->set_top_p(options.top_p);
  out->set_top_k(options.top_k);
  out->set_seed(options.seed);
  out->set_max_new_tokens(options.max_new_tokens);
  for (const std::string& s : stop) out->add_stop(s);
  out->set_ignore_eos(!options.stop_at_eos);
}

absl::Status FromProto(const v1::SamplingParams& in, model::GenerationOptions* options,
                       std::vector<std::string>* stop) {
  options->temperature = in.temperature();
  options->top_p = in.top_p() == 0 ? 1.0 : in.top_p();
  options->top_k = in.top_k();
  options->seed = in.seed();
  if (in.max_new_tokens() != 0) options->max_new_tokens = in.max_new_tokens();
  options->stop_at_eos = !in.ignore_eos();
  for (int i = 0; i < in.stop_size(); ++i) {
    RETURN_IF_ERROR(common::CheckUtf8(in.stop(i), absl::StrCat("sampling.stop[", i, "]")));
  }
  stop->assign(in.stop().begin(), in.stop().end());
  return options->Validate();
}

std::string FinishReasonName(model::GenerationResult::FinishReason reason) {
  switch (reason) {
    case model::GenerationResult::FinishReason::kLength:
      return "length";
    case model::GenerationResult::FinishReason::kEos:
      return "eos";
    case model::GenerationResult::FinishReason::kStopSequence:
      return "stop";
  }
  return "length";
}

}  // namespace premoe::worker
