#include "premoe/worker/worker.h"

#include <ATen/ATen.h>

#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "premoe/common/status.h"
#include "premoe/model/decoding.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/selection.h"

namespace premoe::worker {

using Clock = std::chrono::steady_clock;

absl::Status WorkerOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("WorkerOptions.model_dir is required");
  if (cache_bytes < 0 || max_batch < 1 || max_queue < 1 || max_context < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WorkerOptions: want cache_bytes >= 0, max_batch >= 1, max_queue >= 1, max_context >= 0; "
        "got ", cache_bytes, ", ", max_batch, ", ", max_queue, ", ", max_context));
  }
  return absl::OkStatus();
}

namespace {

// One request, from Submit's call to its end.
struct Item {
  WorkRequest request;
  Worker::DoneCallback on_done;
  std::shared_ptr<const model::KeptExperts> mask;
  std::unique_ptr<Lease> lease;
  std::optional<model::SequenceDecoder> decoder;
  bool prefilled = false;
  Clock::time_point start;
  std::optional<double> time_to_first_token;

  bool Expired(Clock::time_point now) const {
    return request.deadline.has_value() && now >= *request.deadline;
  }
  // Ends the request: unpins its experts, then tells its caller.
  void Finish(absl::Status status) {
    lease.reset();
    if (!status.ok()) {
      on_done(std::move(status));
      return;
    }
    WorkResult out;
    out.generation = decoder->result();
    out.task = request.task;
    out.time_to_first_token = time_to_first_token.value_or(
        std::chrono::duration<double>(Clock::now() - start).count());
    on_done(std::move(out));
  }
};

struct Prepared {
  std::shared_ptr<const model::KeptExperts> keep;
  PatternStatus status;
};

}  // namespace

struct Worker::Impl {
  WorkerOptions options;
  std::unique_ptr<model::Engine> engine;
  std::string fingerprint;
  std::unique_ptr<ExpertCache> cache;
  std::unique_ptr<model::KvCache> kv;
  std::shared_ptr<const model::KeptExperts> full;
  std::vector<int64_t> eos;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, Prepared> patterns;
  std::deque<std::shared_ptr<Item>> queue;
  int64_t running = 0;
  bool stopping = false;
  std::thread scheduler;

  void Run();
  void Step(std::vector<std::shared_ptr<Item>>& slots, model::ExpertSet& merged, bool& dirty);
};

Worker::Worker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<Worker>> Worker::Open(const WorkerOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  model::EngineOptions eo;
  eo.dtype = options.dtype;
  eo.device = options.device;
  eo.max_context = options.max_context;
  eo.experts_on_demand = true;
  ASSIGN_OR_RETURN(impl->engine, model::Engine::Open(options.model_dir, eo));
  const model::ModelConfig& c = impl->engine->config();
  ASSIGN_OR_RETURN(impl->fingerprint, profiler::ModelFingerprint(*impl->engine));
  auto full = std::make_shared<model::KeptExperts>();
  int64_t all_experts = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.IsMoeLayer(static_cast<int>(l))) continue;
    std::vector<int64_t> every(c.num_routed_experts);
    for (int64_t e = 0; e < c.num_routed_experts; ++e) every[e] = e;
    full->Set(l, std::move(every));
    all_experts += c.num_routed_experts;
  }
  impl->full = std::move(full);
  ExpertCacheOptions co;
  co.budget_bytes = options.cache_bytes > 0 ? options.cache_bytes
                                            : all_experts * impl->engine->expert_bytes();
  ASSIGN_OR_RETURN(impl->cache, ExpertCache::Create(impl->engine.get(), co));
  ASSIGN_OR_RETURN(impl->kv, impl->engine->NewCache(options.max_batch, impl->engine->max_context()));
  impl->eos.assign(c.eos_token_ids.begin(), c.eos_token_ids.end());
  Impl* raw = impl.get();
  impl->scheduler = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

Worker::~Worker() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->scheduler.join();
}

const model::Engine& Worker::engine() const { return *impl_->engine; }
const std::string& Worker::fingerprint() const { return impl_->fingerprint; }

absl::StatusOr<PreparedPattern> Worker::Prepare(const store::Pattern& pattern,
                                                const std::string& budget_spec) {
  const model::Engine& engine = *impl_->engine;
  const model::ModelConfig& c = engine.config();
  if (pattern.task_name.empty()) return absl::InvalidArgumentError("the pattern has no task name");
  if (pattern.model_fingerprint != impl_->fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat(
        "pattern of task \"", pattern.task_name, "\" was made for model ",
        pattern.model_fingerprint, ", but this worker serves ", impl_->fingerprint));
  }
  std::map<int64_t, std::vector<double>> scores;
  for (const store::LayerScores& l : pattern.layers) {
    if (!c.IsMoeLayer(l.layer) || static_cast<int64_t>(l.scores.size()) != c.num_routed_experts ||
        scores.contains(l.layer)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "pattern of task \"", pattern.task_name, "\": layer ", l.layer, " with ",
          l.scores.size(), " scores does not fit the model (", c.num_routed_experts,
          " experts per MoE layer)"));
    }
    scores[l.layer] = std::vector<double>(l.scores.begin(), l.scores.end());
  }
  ASSIGN_OR_RETURN(profiler::Budget budget, profiler::Budget::Parse(budget_spec));
  ASSIGN_OR_RETURN(profiler::Selection sel,
                   profiler::Select(scores, budget, engine.expert_bytes(), engine.top_k()));
  if (sel.top_k != engine.top_k()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "budget ", budget_spec, " routes top-", sel.top_k, "; this worker routes top-",
        engine.top_k()));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (c.IsMoeLayer(static_cast<int>(l)) && sel.keep.Find(l) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("pattern of task \"", pattern.task_name,
                                                     "\" has no scores for MoE layer ", l));
    }
  }
  ASSIGN_OR_RETURN(LoadReport load, impl_->cache->Prepare(sel.keep));
  PreparedPattern out;
  out.task = pattern.task_name;
  out.kept_experts = sel.kept_experts;
  out.kept_bytes = sel.kept_experts * engine.expert_bytes();
  int64_t all = 0;
  for (const auto& [layer, kept] : impl_->full->layers) all += static_cast<int64_t>(kept.size());
  out.kept_fraction = static_cast<double>(sel.kept_experts) / static_cast<double>(all);
  out.load = load;
  std::lock_guard lock(impl_->mu);
  impl_->patterns[out.task] =
      Prepared{std::make_shared<const model::KeptExperts>(std::move(sel.keep)),
               PatternStatus{out.task, out.kept_experts, out.kept_bytes, true}};
  return out;
}

absl::StatusOr<WorkResult> Worker::Generate(WorkRequest request) {
  std::promise<absl::StatusOr<WorkResult>> done;
  std::future<absl::StatusOr<WorkResult>> result = done.get_future();
  RETURN_IF_ERROR(Submit(std::move(request), [&done](absl::StatusOr<WorkResult> r) {
    done.set_value(std::move(r));
  }));
  return result.get();
}

absl::Status Worker::Submit(WorkRequest request, DoneCallback on_done) {
  const model::Engine& engine = *impl_->engine;
  const auto start = Clock::now();
  RETURN_IF_ERROR(request.options.Validate());
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (int64_t t : request.prompt) {
    if (t < 0 || t >= engine.config().vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", t, " is outside [0, ",
                                                     engine.config().vocab_size, ")"));
    }
  }
  const int64_t need = static_cast<int64_t>(request.prompt.size()) + request.options.max_new_tokens;
  if (need > engine.max_context()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", request.prompt.size(), " tokens) + max_new_tokens (",
        request.options.max_new_tokens, ") exceeds the context of ", engine.max_context()));
  }
  auto item = std::make_shared<Item>();
  item->start = start;
  item->on_done = std::move(on_done);
  if (request.task.empty()) {
    item->mask = impl_->full;
  } else {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->patterns.find(request.task);
    if (it == impl_->patterns.end()) {
      return absl::NotFoundError(
          absl::StrCat("no pattern of task \"", request.task, "\" is prepared on this worker"));
    }
    item->mask = it->second.keep;
  }
  // Loads happen here, on the caller's thread, never in the scheduler.
  ASSIGN_OR_RETURN(item->lease, impl_->cache->Acquire(*item->mask, request.deadline));
  item->decoder.emplace(request.options, request.options.seed, impl_->eos);
  item->request = std::move(request);
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stopping) return absl::UnavailableError("the worker is shutting down");
    if (static_cast<int64_t>(impl_->queue.size()) >= impl_->options.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the worker's queue is full (", impl_->options.max_queue, " requests waiting)"));
    }
    impl_->queue.push_back(item);
  }
  impl_->cv.notify_all();
  return absl::OkStatus();
}

void Worker::Impl::Run() {
  std::vector<std::shared_ptr<Item>> slots(options.max_batch);
  model::ExpertSet merged;
  bool dirty = true;
  while (true) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return stopping || !queue.empty() || running > 0; });
      if (stopping) break;
      const auto now = Clock::now();
      for (size_t s = 0; s < slots.size(); ++s) {
        while (slots[s] == nullptr && !queue.empty()) {
          std::shared_ptr<Item> item = std::move(queue.front());
          queue.pop_front();
          if (item->Expired(now)) {
            item->Finish(absl::DeadlineExceededError("the deadline passed while queued"));
            continue;
          }
          kv->Clear(static_cast<int64_t>(s));
          slots[s] = std::move(item);
          ++running;
          dirty = true;
        }
      }
    }
    if (running > 0) Step(slots, merged, dirty);
  }
  std::lock_guard lock(mu);
  for (auto& item : slots) {
    if (item != nullptr) item->Finish(absl::UnavailableError("the worker is shutting down"));
  }
  for (auto& item : queue) item->Finish(absl::UnavailableError("the worker is shutting down"));
  queue.clear();
}

void Worker::Impl::Step(std::vector<std::shared_ptr<Item>>& slots, model::ExpertSet& merged,
                        bool& dirty) {
  const size_t batch = slots.size();
  if (dirty) {
    // The union of the running requests' experts, rebuilt only when they change.
    merged.experts.clear();
    for (const auto& item : slots) {
      if (item != nullptr) {
        const auto& set = item->lease->experts().experts;
        merged.experts.insert(set.begin(), set.end());
      }
    }
    dirty = false;
  }
  std::vector<std::vector<int64_t>> tokens(batch);
  model::ForwardOptions fo;
  fo.masks.assign(batch, nullptr);
  fo.experts = &merged;
  for (size_t s = 0; s < batch; ++s) {
    const auto& item = slots[s];
    if (item == nullptr) continue;
    tokens[s] = item->prefilled ? std::vector<int64_t>{item->decoder->next_input()}
                                : item->request.prompt;
    fo.masks[s] = item->mask.get();
  }
  auto end = [&](size_t s, absl::Status status) {
    std::shared_ptr<Item> item = std::move(slots[s]);
    dirty = true;
    {
      // Before Finish: a caller that sees its result also sees it counted out.
      std::lock_guard lock(mu);
      --running;
    }
    item->Finish(std::move(status));
  };
  absl::StatusOr<at::Tensor> logits = engine->Forward(tokens, kv.get(), fo);
  if (!logits.ok()) {
    for (size_t s = 0; s < batch; ++s) {
      if (slots[s] != nullptr) end(s, logits.status());
    }
    return;
  }
  const at::Tensor rows = logits->cpu();
  const auto now = Clock::now();
  for (size_t s = 0; s < batch; ++s) {
    Item* item = slots[s].get();
    if (item == nullptr) continue;
    item->prefilled = true;
    bool cancelled = false;
    for (int64_t t : item->decoder->Step(rows[static_cast<int64_t>(s)])) {
      if (!item->time_to_first_token.has_value()) {
        item->time_to_first_token = std::chrono::duration<double>(now - item->start).count();
      }
      if (item->request.on_token && !item->request.on_token(t)) {
        cancelled = true;
        break;
      }
    }
    const auto& stop = item->request.options.stop_requested;
    if (!cancelled && !item->decoder->finished() && stop && stop(0)) {
      for (int64_t t : item->decoder->Stop(model::GenerationResult::FinishReason::kStopSequence)) {
        if (item->request.on_token && !item->request.on_token(t)) cancelled = true;
      }
    }
    if (cancelled) {
      end(s, absl::CancelledError("the request was cancelled"));
    } else if (item->decoder->finished()) {
      end(s, absl::OkStatus());
    } else if (item->Expired(now)) {
      end(s, absl::DeadlineExceededError("the deadline passed while generating"));
    }
  }
}

WorkerStatus Worker::Status() const {
  WorkerStatus s;
  s.cache = impl_->cache->Stats();
  s.base_bytes = impl_->engine->weight_bytes();
  int64_t all = 0;
  for (const auto& [layer, kept] : impl_->full->layers) all += static_cast<int64_t>(kept.size());
  s.all_experts_bytes = all * impl_->engine->expert_bytes();
  s.expert_bytes = impl_->engine->expert_bytes();
  s.resident = impl_->cache->ResidentSet();
  std::vector<std::pair<PatternStatus, std::shared_ptr<const model::KeptExperts>>> patterns;
  {
    std::lock_guard lock(impl_->mu);
    s.queued = static_cast<int64_t>(impl_->queue.size());
    s.running = impl_->running;
    for (const auto& [task, p] : impl_->patterns) patterns.emplace_back(p.status, p.keep);
  }
  for (auto& [status, keep] : patterns) {
    status.resident = impl_->cache->Resident(*keep);
    s.patterns.push_back(status);
  }
  return s;
}

}  // namespace premoe::worker
