#include "premoe/router/router.h"

#include <deque>
#include <set>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "premoe/chat/chat_format.h"
#include "premoe/common/executor.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/metrics/metrics.h"
#include "premoe/profiler/selection.h"

namespace premoe::router {

absl::Status RouterOptions::Validate() const {
  RETURN_IF_ERROR(matcher.Validate());
  RETURN_IF_ERROR(profiler::Budget::Parse(default_budget).status());
  if (max_prompt_bytes <= 0 || max_new_tokens <= 0 || max_attempts <= 0 ||
      request_timeout.count() <= 0 || executor_threads <= 0 || max_pending <= 0) {
    return absl::InvalidArgumentError(
        "RouterOptions: max_prompt_bytes, max_new_tokens, max_attempts, request_timeout, "
        "executor_threads and max_pending must be > 0");
  }
  return absl::OkStatus();
}

struct Router::Impl {
  RouterOptions options;
  store::PatternStore* patterns = nullptr;
  std::unique_ptr<Matcher> matcher;
  std::unique_ptr<WorkerPool> pool;
  chat::ChatFormat chat;
  std::unique_ptr<common::Executor> executor;

  absl::Mutex mu;
  // GenerateAsync calls that have not ended yet.
  int64_t calls ABSL_GUARDED_BY(mu) = 0;

  absl::Status PatternsReady() const {
    if (options.patterns_ready) RETURN_IF_ERROR(options.patterns_ready());
    return patterns->Info().status();
  }
};

// One GenerateAsync request, from its call to its on_done. It moves between
// the executor (matching, assigning a worker) and gRPC's threads (the
// worker's stream), never on two at once, so its fields need no lock.
struct Router::Call {
  Router* router = nullptr;
  InferenceRequest request;
  TextCallback on_text;
  DoneCallback on_done;
  std::chrono::steady_clock::time_point start;
  InferenceResult out;
  std::optional<store::Pattern> pattern;
  worker::TextRequest wr;
  std::set<std::string> exclude;
  absl::Status last = absl::UnavailableError("no attempt made");
  bool streamed = false;  // by the current attempt
  bool running = false;   // counted in num_requests_running (else waiting)

  // Matching and the pattern: the work before the first worker is tried.
  absl::Status Route();
  // Assigns a worker and starts the stream from it (on the executor).
  void Attempt(std::shared_ptr<Call> self);
  // The stream of an attempt ended (on a gRPC thread).
  void AttemptDone(std::shared_ptr<Call> self, const Assignment& a,
                   absl::StatusOr<worker::TextResult> r);
  // Runs `step` on the executor, or ends the request if it is full.
  void Schedule(std::shared_ptr<Call> self, void (Call::*step)(std::shared_ptr<Call>));
  void Done(absl::StatusOr<InferenceResult> result);
};

Router::Router(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Router::~Router() {
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->mu.Await(absl::Condition(
        +[](int64_t* calls) { return *calls == 0; }, &impl_->calls));
  }
  impl_->executor.reset();
}

absl::StatusOr<std::unique_ptr<Router>> Router::Open(const RouterOptions& options,
                                                     store::PatternStore* patterns) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->patterns = patterns;
  ASSIGN_OR_RETURN(impl->matcher, Matcher::Open(options.matcher, patterns));
  WorkerPoolOptions wo = options.workers;
  if (wo.top_k == 0) wo.top_k = impl->matcher->top_k();
  ASSIGN_OR_RETURN(impl->pool, WorkerPool::Open(wo));
  ASSIGN_OR_RETURN(impl->executor, common::Executor::Create({.name = "the router's executor",
                                                             .threads = options.executor_threads,
                                                             .max_queued = options.max_pending}));
  ASSIGN_OR_RETURN(impl->chat,
                   chat::ChatFormat::Load(options.matcher.model_dir, options.chat_template_file));
  if (impl->chat.has_template()) {
    PREMOE_LOG_INFO("chat requests use the template in %s", impl->chat.source());
  } else {
    PREMOE_LOG_WARN(
        "the model has no chat template: chat requests are refused (--chat-template FILE)");
  }
  return std::unique_ptr<Router>(new Router(std::move(impl)));
}

absl::StatusOr<std::string> Router::RenderPrompt(const std::string& prompt,
                                                 const std::vector<ChatMessage>& messages) const {
  if (prompt.empty() == messages.empty()) {
    return absl::InvalidArgumentError("give either a prompt or chat messages, not both or neither");
  }
  std::string text = prompt;
  if (!messages.empty()) {
    nlohmann::ordered_json wire = nlohmann::ordered_json::array();
    for (const ChatMessage& m : messages)
      wire.push_back({{"role", m.role}, {"content", m.content}});
    ASSIGN_OR_RETURN(text, impl_->chat.Render(wire, /*add_generation_prompt=*/true));
    if (text.empty()) return absl::InvalidArgumentError("the chat template rendered nothing");
  }
  if (static_cast<int64_t>(text.size()) > impl_->options.max_prompt_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt is ", text.size(), " bytes; the limit is ", impl_->options.max_prompt_bytes));
  }
  return text;
}

absl::StatusOr<MatchResult> Router::Match(const std::string& prompt,
                                          const std::vector<ChatMessage>& messages, int32_t k) {
  RETURN_IF_ERROR(impl_->PatternsReady());
  ASSIGN_OR_RETURN(std::string text, RenderPrompt(prompt, messages));
  return impl_->matcher->Match(text, k, /*add_special_tokens=*/messages.empty());
}

absl::StatusOr<InferenceResult> Router::Generate(
    const InferenceRequest& request, const std::function<void(const std::string&)>& on_text) {
  // The texts come on other threads; they are handed to this one, so that
  // on_text runs here as before and may take its time.
  struct Handoff {
    absl::Mutex mu;
    std::deque<std::string> texts ABSL_GUARDED_BY(mu);
    std::optional<absl::StatusOr<InferenceResult>> result ABSL_GUARDED_BY(mu);
  };
  auto handoff = std::make_shared<Handoff>();
  GenerateAsync(
      request,
      [handoff](const std::string& text) {
        absl::MutexLock lock(&handoff->mu);
        handoff->texts.push_back(text);
      },
      [handoff](absl::StatusOr<InferenceResult> result) {
        absl::MutexLock lock(&handoff->mu);
        handoff->result = std::move(result);
      });
  while (true) {
    std::deque<std::string> texts;
    std::optional<absl::StatusOr<InferenceResult>> result;
    {
      absl::MutexLock lock(&handoff->mu);
      handoff->mu.Await(absl::Condition(
          +[](Handoff* h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(h->mu) {
            return !h->texts.empty() || h->result.has_value();
          },
          handoff.get()));
      texts.swap(handoff->texts);
      result = std::move(handoff->result);
    }
    if (on_text) {
      for (const std::string& t : texts) on_text(t);
    }
    if (result.has_value()) return *std::move(result);
  }
}

void Router::GenerateAsync(InferenceRequest request, TextCallback on_text, DoneCallback on_done) {
  auto call = std::make_shared<Call>();
  call->router = this;
  call->request = std::move(request);
  if (call->request.request_id.empty()) call->request.request_id = common::NewRequestId();
  call->on_text = std::move(on_text);
  call->on_done = std::move(on_done);
  call->start = std::chrono::steady_clock::now();
  {
    absl::MutexLock lock(&impl_->mu);
    ++impl_->calls;
  }
  metrics::Serving().requests_waiting.Increment();
  absl::Status queued = impl_->executor->Submit([call] {
    if (absl::Status s = call->Route(); !s.ok()) {
      call->Done(s);
      return;
    }
    call->Attempt(call);
  });
  if (!queued.ok()) call->Done(queued);
}

absl::Status Router::Call::Route() {
  const RouterOptions& o = router->impl_->options;
  RETURN_IF_ERROR(router->impl_->PatternsReady());
  ASSIGN_OR_RETURN(std::string text, router->RenderPrompt(request.prompt, request.messages));
  if (request.options.max_new_tokens > o.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens ",
                                                   request.options.max_new_tokens,
                                                   " is over the limit of ", o.max_new_tokens));
  }
  RouteInfo& route = out.route;
  route.budget = request.budget.empty() ? o.default_budget : request.budget;
  RETURN_IF_ERROR(profiler::Budget::Parse(route.budget).status());
  if (request.full_model && !request.task.empty()) {
    return absl::InvalidArgumentError("a request cannot name a task and ask for the full model");
  }
  if (request.canceller != nullptr && request.canceller->cancelled()) {
    return absl::CancelledError("the request was cancelled");
  }
  if (request.full_model) {
    route.decision = "full_model";
  } else if (!request.task.empty()) {
    route.decision = "task";
    route.task = request.task;
  } else {
    ASSIGN_OR_RETURN(MatchResult m, router->impl_->matcher->Match(
                                        text, 1, /*add_special_tokens=*/request.messages.empty()));
    out.match_seconds = m.seconds;
    metrics::Serving().match_seconds.Observe(m.seconds);
    if (!m.candidates.empty()) metrics::Serving().match_similarity.Observe(m.similarity);
    route.decision = m.decision;
    route.task = m.task;
    route.similarity = m.similarity;
  }
  if (!route.task.empty()) {
    absl::StatusOr<store::Pattern> p = router->impl_->patterns->GetByTask(route.task);
    if (absl::IsNotFound(p.status())) {
      return absl::NotFoundError(absl::StrCat("no pattern for task \"", route.task, "\""));
    }
    RETURN_IF_ERROR(p.status());
    pattern = std::move(*p);
  }
  wr.prompt = std::move(text);
  wr.request_id = request.request_id;
  wr.templated = !request.messages.empty();
  wr.fit_context = request.fit_context;
  wr.options = request.options;
  wr.stop = request.stop;
  wr.deadline = request.deadline.value_or(std::chrono::system_clock::now() + o.request_timeout);
  wr.canceller = request.canceller;
  out.attempts = 0;
  return absl::OkStatus();
}

void Router::Call::Attempt(std::shared_ptr<Call> self) {
  Impl& impl = *router->impl_;
  ++out.attempts;
  if (request.canceller != nullptr && request.canceller->cancelled()) {
    Done(absl::CancelledError("the request was cancelled"));
    return;
  }
  RouteInfo& route = out.route;
  absl::StatusOr<Assignment> a = impl.pool->Assign(pattern.has_value() ? &*pattern : nullptr,
                                                   route.budget, exclude, wr.deadline);
  if (!a.ok()) {
    // Nothing left to try: the last worker's error says more than "none left".
    Done(out.attempts > 1 && absl::IsUnavailable(a.status()) ? last : a.status());
    return;
  }
  wr.task = a->prepared_name;
  route.worker = a->address;
  route.kept_experts = a->kept_experts;
  route.kept_bytes = a->kept_bytes;
  route.all_experts_bytes = a->all_experts_bytes;
  route.base_bytes = a->base_bytes;
  route.kept_fraction =
      a->all_experts_bytes > 0 ? static_cast<double>(a->kept_bytes) / a->all_experts_bytes : 0;
  streamed = false;
  if (!running) {
    running = true;
    metrics::ServingMetrics& m = metrics::Serving();
    m.requests_waiting.Decrement();
    m.requests_running.Increment();
    m.queue_time.Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  worker::WorkerClient* client = a->client;
  client->StartGenerate(
      wr,
      [this](const std::string& delta, const std::vector<int64_t>&) {
        if (delta.empty()) return;
        if (!streamed) {
          out.time_to_first_token =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          if (request.on_route) request.on_route(out.route);
        }
        streamed = true;
        if (on_text) on_text(delta);
      },
      [self, a = *std::move(a)](absl::StatusOr<worker::TextResult> r) mutable {
        self->AttemptDone(self, a, std::move(r));
      });
}

void Router::Call::AttemptDone(std::shared_ptr<Call> self, const Assignment& a,
                               absl::StatusOr<worker::TextResult> r) {
  Impl& impl = *router->impl_;
  // Only an unreachable or stopping worker is the worker's fault; an error
  // the request itself causes (INVALID_ARGUMENT, INTERNAL) would follow it
  // to every worker.
  const bool worker_failed = absl::IsUnavailable(r.status());
  impl.pool->Release(a, worker_failed);
  if (r.ok()) {
    out.text = std::move(*r);
    if (!streamed) {
      out.time_to_first_token =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    Done(std::move(out));
    return;
  }
  if (streamed) {
    Done(worker_failed ? absl::UnavailableError(absl::StrCat(
                             "worker ", a.address, " failed mid-stream: ", r.status().message()))
                       : r.status());
    return;
  }
  // Nothing reached the caller yet: another worker may serve it.
  if (!worker_failed && !absl::IsResourceExhausted(r.status())) {
    Done(r.status());
    return;
  }
  last = r.status();
  if (out.attempts >= impl.options.max_attempts) {
    Done(last);
    return;
  }
  common::ScopedRequestId id(request.request_id);
  PREMOE_LOG_WARN("request failed on %s before streaming (%s); trying another worker", a.address,
                  r.status().ToString());
  exclude.insert(a.address);
  // Assign may prepare the pattern (a blocking call): not on this gRPC thread.
  Schedule(std::move(self), &Call::Attempt);
}

void Router::Call::Schedule(std::shared_ptr<Call> self, void (Call::*step)(std::shared_ptr<Call>)) {
  // `self` stays held here too: a refused task is destroyed with its copy.
  absl::Status queued = router->impl_->executor->Submit([self, step]() mutable {
    Call* c = self.get();
    (c->*step)(std::move(self));
  });
  if (!queued.ok()) Done(queued);
}

void Router::Call::Done(absl::StatusOr<InferenceResult> result) {
  Impl& impl = *router->impl_;
  metrics::ServingMetrics& m = metrics::Serving();
  (running ? m.requests_running : m.requests_waiting).Decrement();
  if (result.ok()) {
    const worker::TextResult& t = result->text;
    const double e2e =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    m.e2e_latency.Observe(e2e);
    m.time_to_first_token.Observe(result->time_to_first_token);
    if (t.completion_tokens > 1) {
      m.time_per_output_token.Observe((e2e - result->time_to_first_token) /
                                      static_cast<double>(t.completion_tokens - 1));
    }
    m.prompt_tokens.Increment(static_cast<double>(t.prompt_tokens));
    m.generation_tokens.Increment(static_cast<double>(t.completion_tokens));
    m.request_success.Add({{"finished_reason", t.finish_reason == "length" ? "length" : "stop"}})
        .Increment();
    m.pattern_requests.Add({{"task", result->route.task}, {"decision", result->route.decision}})
        .Increment();
  } else {
    m.request_failure.Add({{"code", absl::StatusCodeToString(result.status().code())}}).Increment();
  }
  DoneCallback done = std::move(on_done);
  on_text = nullptr;
  request.on_route = nullptr;
  done(std::move(result));
  absl::MutexLock lock(&impl.mu);
  --impl.calls;
}

absl::Status Router::Readiness() const {
  RETURN_IF_ERROR(impl_->PatternsReady());
  if (!impl_->pool->AnyReachable()) return absl::UnavailableError("no worker is reachable");
  return absl::OkStatus();
}

nlohmann::ordered_json RouteJson(const RouteInfo& x) {
  return {{"task", x.task},
          {"decision", x.decision},
          {"similarity", x.similarity},
          {"budget", x.budget},
          {"kept_experts", x.kept_experts},
          {"kept_fraction", x.kept_fraction},
          {"kept_bytes", x.kept_bytes},
          {"all_experts_bytes", x.all_experts_bytes},
          {"base_bytes", x.base_bytes},
          {"worker", x.worker}};
}

int64_t Router::max_new_tokens() const { return impl_->options.max_new_tokens; }
WorkerPool& Router::pool() { return *impl_->pool; }
const Matcher& Router::matcher() const { return *impl_->matcher; }

}  // namespace premoe::router
