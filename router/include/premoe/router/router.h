// Router: the front door's logic, without the wire. For each
// request it decides the pattern (named task, nearest match, fallback, or
// the full model), picks a worker through the WorkerPool, streams the
// completion from it, and retries on another worker when one fails before
// anything was streamed. A worker that fails mid-stream ends the request
// with UNAVAILABLE (the text already sent cannot be taken back).
//
// GenerateAsync holds no thread while a request streams: matching (a probe
// forward pass) and picking a worker (which may prepare the pattern there)
// run on the router's own executor, a fixed number of threads, and the
// stream from the worker is a gRPC callback call. The router's threads are
// therefore the same for 1 or 1000 streams in flight. Generate is the
// blocking form of the same path.
//
// Thread-safe: Generate, GenerateAsync and Match may run on any number of
// threads. The destructor waits for the GenerateAsync calls in flight to
// end (cancel them first to make that quick).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "premoe/model/engine.h"
#include "premoe/router/matcher.h"
#include "premoe/router/worker_pool.h"
#include "premoe/store/pattern_store.h"
#include "premoe/worker/client.h"

namespace premoe::router {

struct RouterOptions {
  MatcherOptions matcher;
  // top_k is filled in from the model when 0.
  WorkerPoolOptions workers;
  // Budget of requests that name none. Default "50%".
  std::string default_budget = "50%";
  // Longest prompt (rendered chat included), in bytes. Default 256 KiB.
  int64_t max_prompt_bytes = 256 << 10;
  // Largest max_new_tokens a request may ask for. Default 4096.
  int64_t max_new_tokens = 4096;
  // Workers tried per request (a retry only happens before anything was
  // streamed). Default 3.
  int32_t max_attempts = 3;
  // Deadline of a request that brings none, so that no call (a Prepare, a
  // stream from a worker whose node vanished) can wait forever. Default
  // 10 min.
  std::chrono::milliseconds request_timeout{600000};
  // Threads of the router's executor, which matches prompts and assigns
  // workers; a request needing a Prepare holds one until it is done.
  // Default 4.
  int32_t executor_threads = 4;
  // Requests waiting for the executor beyond which more are refused with
  // RESOURCE_EXHAUSTED. Default 4096.
  int64_t max_pending = 4096;
  // Whether the pattern source can be used yet: a router on a Replica
  // passes its Synced, so that it reports not ready and refuses requests
  // (UNAVAILABLE naming the cause) until the copy has synced once, instead
  // of matching against nothing. Default null: always (an embedded store).
  std::function<absl::Status()> patterns_ready;
  // A Jinja chat template file to render chat requests with, in place of
  // the model's own (tokenizer_config.json's chat_template or
  // chat_template.jinja). Default "": the model's; a model without one
  // refuses chat requests.
  std::string chat_template_file;

  absl::Status Validate() const;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ... as the template knows them
  std::string content;
};

struct RouteInfo {
  std::string task;      // empty = the full model
  std::string decision;  // "task", "match", "fallback" or "full_model"
  double similarity = 0;
  std::string budget;
  int64_t kept_experts = 0;
  double kept_fraction = 0;
  int64_t kept_bytes = 0;
  int64_t all_experts_bytes = 0;
  int64_t base_bytes = 0;
  std::string worker;
};

// {"task", "decision", "similarity", "budget", "kept_experts",
// "kept_fraction", "kept_bytes", "all_experts_bytes", "base_bytes",
// "worker"}: the route as premoe's JSON outputs show it (premoe query
// --json, the HTTP API's "premoe" object).
nlohmann::ordered_json RouteJson(const RouteInfo& route);

struct InferenceRequest {
  // Exactly one of prompt and messages.
  std::string prompt;
  std::vector<ChatMessage> messages;
  // Sampling and length (stop_requested is not used). max_new_tokens 0
  // means 64.
  model::GenerationOptions options;
  // max_new_tokens is a cap; the context's end stops generation before it
  // (instead of refusing a prompt that leaves less room). Default false.
  bool fit_context = false;
  std::vector<std::string> stop;
  // A task's pattern, skipping matching; empty = match.
  std::string task;
  // Empty = RouterOptions::default_budget.
  std::string budget;
  // Every expert, no pattern.
  bool full_model = false;
  // Names the request in every log line about it, here and on its worker
  // (gRPC metadata x-request-id). Default "": one is made.
  std::string request_id;
  std::optional<std::chrono::system_clock::time_point> deadline;
  // Cancels the request (its worker call, or the call it would make); not
  // owned, may be null; must outlive the request's end (GenerateAsync's
  // on_done).
  worker::CallCanceller* canceller = nullptr;
  // Called once with the route (task, decision, worker, kept experts) just
  // before the first text, so that an edge can announce it ahead of the
  // stream (HTTP headers). Same thread rules as GenerateAsync's on_text.
  // Default none.
  std::function<void(const RouteInfo&)> on_route;
};

struct InferenceResult {
  worker::TextResult text;
  RouteInfo route;
  double match_seconds = 0;
  // From Generate's call to the first text (matching and loading included).
  double time_to_first_token = 0;
  int32_t attempts = 0;
};

class Router {
 public:
  // `patterns` (not owned) is the store to match against: an embedded store
  // in one process, a Replica's copy in a cluster.
  static absl::StatusOr<std::unique_ptr<Router>> Open(const RouterOptions& options,
                                                      store::PatternStore* patterns);
  ~Router();

  // Streams the completion's text through `on_text` (on the calling
  // thread) and returns the whole result. Errors: see inference.proto.
  absl::StatusOr<InferenceResult> Generate(
      const InferenceRequest& request,
      const std::function<void(const std::string&)>& on_text = nullptr);
  // The same without blocking: returns at once; `on_text` (may be null) gets
  // each text delta in order, then `on_done` the result, exactly once. They
  // run on the router's executor or gRPC's threads, one at a time, and must
  // not block. A full executor queue ends the request RESOURCE_EXHAUSTED.
  using TextCallback = std::function<void(const std::string&)>;
  using DoneCallback = absl::AnyInvocable<void(absl::StatusOr<InferenceResult>)>;
  void GenerateAsync(InferenceRequest request, TextCallback on_text, DoneCallback on_done);
  // The pattern a prompt (or chat) would get.
  absl::StatusOr<MatchResult> Match(const std::string& prompt,
                                    const std::vector<ChatMessage>& messages, int32_t k = 3);
  // The text the model sees for a prompt or chat: the prompt itself; chat
  // messages rendered by the model's chat template (ChatFormat, ending
  // where the assistant's reply begins). INVALID_ARGUMENT for neither or
  // both, a model without a chat template, messages its template refuses,
  // or a text over max_prompt_bytes.
  absl::StatusOr<std::string> RenderPrompt(const std::string& prompt,
                                           const std::vector<ChatMessage>& messages) const;

  // OK when patterns can be read (and the source has synced, see
  // RouterOptions::patterns_ready) and a worker was reached; else
  // UNAVAILABLE naming what is missing.
  absl::Status Readiness() const;
  // RouterOptions::max_new_tokens: the most a request may ask for.
  int64_t max_new_tokens() const;
  WorkerPool& pool();
  const Matcher& matcher() const;

  struct Impl;
  struct Call;

 private:
  explicit Router(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace premoe::router
