#include "premoe/router/router.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/profiler/selection.h"

namespace premoe::router {

absl::Status RouterOptions::Validate() const {
  RETURN_IF_ERROR(matcher.Validate());
  RETURN_IF_ERROR(profiler::Budget::Parse(default_budget).status());
  if (max_prompt_bytes <= 0 || max_new_tokens <= 0 || max_attempts <= 0 ||
      request_timeout.count() <= 0) {
    return absl::InvalidArgumentError(
        "RouterOptions: max_prompt_bytes, max_new_tokens, max_attempts and request_timeout must "
        "be > 0");
  }
  return absl::OkStatus();
}

struct Router::Impl {
  RouterOptions options;
  store::PatternStore* patterns = nullptr;
  std::unique_ptr<Matcher> matcher;
  std::unique_ptr<WorkerPool> pool;
  bool chatml = false;
};

Router::Router(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Router::~Router() = default;

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
  const tokenizer::Tokenizer& t = impl->matcher->tokenizer();
  impl->chatml = t.TokenToId("<|im_start|>").has_value() && t.TokenToId("<|im_end|>").has_value();
  return std::unique_ptr<Router>(new Router(std::move(impl)));
}

absl::StatusOr<std::string> Router::RenderPrompt(const std::string& prompt,
                                                 const std::vector<ChatMessage>& messages) const {
  if (prompt.empty() == messages.empty()) {
    return absl::InvalidArgumentError("give either a prompt or chat messages, not both or neither");
  }
  std::string text = prompt;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, " has role \"", m.role,
                                                     "\"; want system, user or assistant"));
    }
    if (impl_->chatml) {
      absl::StrAppend(&text, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
    } else {
      absl::StrAppend(&text, i > 0 ? "\n" : "", m.content);
    }
  }
  if (impl_->chatml && !messages.empty()) absl::StrAppend(&text, "<|im_start|>assistant\n");
  if (static_cast<int64_t>(text.size()) > impl_->options.max_prompt_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the prompt is ", text.size(), " bytes; the limit is ", impl_->options.max_prompt_bytes));
  }
  return text;
}

absl::StatusOr<MatchResult> Router::Match(const std::string& prompt,
                                          const std::vector<ChatMessage>& messages, int32_t k) {
  ASSIGN_OR_RETURN(std::string text, RenderPrompt(prompt, messages));
  return impl_->matcher->Match(text, k);
}

absl::StatusOr<InferenceResult> Router::Generate(
    const InferenceRequest& request, const std::function<void(const std::string&)>& on_text) {
  const auto start = std::chrono::steady_clock::now();
  const RouterOptions& o = impl_->options;
  ASSIGN_OR_RETURN(std::string text, RenderPrompt(request.prompt, request.messages));
  if (request.options.max_new_tokens > o.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens ",
                                                   request.options.max_new_tokens,
                                                   " is over the limit of ", o.max_new_tokens));
  }
  InferenceResult out;
  RouteInfo& route = out.route;
  route.budget = request.budget.empty() ? o.default_budget : request.budget;
  RETURN_IF_ERROR(profiler::Budget::Parse(route.budget).status());
  if (request.full_model && !request.task.empty()) {
    return absl::InvalidArgumentError("a request cannot name a task and ask for the full model");
  }
  if (request.full_model) {
    route.decision = "full_model";
  } else if (!request.task.empty()) {
    route.decision = "task";
    route.task = request.task;
  } else {
    ASSIGN_OR_RETURN(MatchResult m, impl_->matcher->Match(text, 1));
    out.match_seconds = m.seconds;
    route.decision = m.decision;
    route.task = m.task;
    route.similarity = m.similarity;
  }
  std::optional<store::Pattern> pattern;
  if (!route.task.empty()) {
    absl::StatusOr<store::Pattern> p = impl_->patterns->GetByTask(route.task);
    if (absl::IsNotFound(p.status())) {
      return absl::NotFoundError(absl::StrCat("no pattern for task \"", route.task, "\""));
    }
    RETURN_IF_ERROR(p.status());
    pattern = std::move(*p);
  }

  worker::TextRequest wr;
  wr.prompt = text;
  wr.options = request.options;
  wr.stop = request.stop;
  wr.deadline = request.deadline.value_or(std::chrono::system_clock::now() + o.request_timeout);
  wr.canceller = request.canceller;
  std::set<std::string> exclude;
  absl::Status last = absl::UnavailableError("no attempt made");
  for (out.attempts = 1; out.attempts <= o.max_attempts; ++out.attempts) {
    absl::StatusOr<Assignment> a = impl_->pool->Assign(pattern.has_value() ? &*pattern : nullptr,
                                                       route.budget, exclude, wr.deadline);
    if (!a.ok()) {
      // Nothing left to try: the last worker's error says more than "none left".
      if (out.attempts > 1 && absl::IsUnavailable(a.status())) break;
      return a.status();
    }
    wr.task = a->prepared_name;
    route.worker = a->address;
    route.kept_experts = a->kept_experts;
    route.kept_bytes = a->kept_bytes;
    route.all_experts_bytes = a->all_experts_bytes;
    route.base_bytes = a->base_bytes;
    route.kept_fraction =
        a->all_experts_bytes > 0 ? static_cast<double>(a->kept_bytes) / a->all_experts_bytes : 0;
    bool streamed = false;
    absl::StatusOr<worker::TextResult> r =
        a->client->Generate(wr, [&](const std::string& delta, const std::vector<int64_t>&) {
          if (delta.empty()) return;
          if (!streamed) {
            out.time_to_first_token =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          }
          streamed = true;
          if (on_text) on_text(delta);
        });
    // Only an unreachable or stopping worker is the worker's fault; an error
    // the request itself causes (INVALID_ARGUMENT, INTERNAL) would follow it
    // to every worker.
    const bool worker_failed = absl::IsUnavailable(r.status());
    impl_->pool->Release(*a, worker_failed);
    if (r.ok()) {
      out.text = std::move(*r);
      if (!streamed) {
        out.time_to_first_token =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      }
      return out;
    }
    if (streamed) {
      if (!worker_failed) return r.status();
      return absl::UnavailableError(
          absl::StrCat("worker ", a->address, " failed mid-stream: ", r.status().message()));
    }
    // Nothing reached the caller yet: another worker may serve it.
    if (!worker_failed && !absl::IsResourceExhausted(r.status())) return r.status();
    PREMOE_LOG_WARN("request failed on %s before streaming (%s); trying another worker", a->address,
                    r.status().ToString());
    exclude.insert(a->address);
    last = r.status();
  }
  return last;
}

bool Router::Ready() const { return impl_->patterns->Info().ok() && impl_->pool->AnyReachable(); }

WorkerPool& Router::pool() { return *impl_->pool; }
const Matcher& Router::matcher() const { return *impl_->matcher; }

}  // namespace premoe::router
