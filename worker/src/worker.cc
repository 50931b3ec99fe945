#include "premoe/worker/worker.h"

#include <ATen/ATen.h>
#include <stdlib.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <system_error>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "premoe/common/logging.h"
#include "premoe/common/status.h"
#include "premoe/metrics/metrics.h"
#include "premoe/model/decoding.h"
#include "premoe/model/fingerprint.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/pattern.h"
#include "premoe/profiler/selection.h"
#include "premoe/worker/expert_parallel.h"

namespace premoe::worker {

using Clock = std::chrono::steady_clock;

absl::Status WorkerOptions::Validate() const {
  if (model_dir.empty()) return absl::InvalidArgumentError("WorkerOptions.model_dir is required");
  if (cache_bytes < 0 || max_batch < 1 || max_queue < 1 || max_context < 0 ||
      max_prepared_patterns < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WorkerOptions: want cache_bytes >= 0, max_batch >= 1, max_queue >= 1, max_context >= 0, "
        "max_prepared_patterns >= 1; got ",
        cache_bytes, ", ", max_batch, ", ", max_queue, ", ", max_context, ", ",
        max_prepared_patterns));
  }
  if (world_size < 1 || world_size > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("WorkerOptions.world_size is ", world_size, "; want 1 to 64"));
  }
  if (world_size > 1 && device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("WorkerOptions: with world_size ", world_size,
                                                   " the device is \"cpu\" or \"cuda\" "
                                                   "(rank r runs on cuda:r), not \"",
                                                   device, "\""));
  }
  return absl::OkStatus();
}

namespace {

// Rank r of a multi-rank GPU worker runs on cuda:r.
std::string RankDevice(const WorkerOptions& options, int64_t r) {
  if (options.world_size > 1 && options.device == "cuda") return absl::StrCat("cuda:", r);
  return options.device;
}

// One request, from Submit's call to its end.
struct Item {
  WorkRequest request;
  Worker::DoneCallback on_done;
  std::shared_ptr<const model::KeptExperts> mask;
  // One per rank: the rank's share of the mask's experts, pinned.
  std::vector<std::unique_ptr<Lease>> leases;
  std::optional<model::SequenceSampler> sampler;
  bool prefilled = false;
  Clock::time_point start;
  std::optional<double> time_to_first_token;

  bool Expired(Clock::time_point now) const {
    return request.deadline.has_value() && now >= *request.deadline;
  }
  // Ends the request: unpins its experts, then tells its caller.
  void Finish(absl::Status status) {
    leases.clear();
    if (!status.ok()) {
      on_done(std::move(status));
      return;
    }
    WorkResult out;
    out.generation = sampler->result();
    out.task = request.task;
    out.time_to_first_token =
        time_to_first_token.value_or(std::chrono::duration<double>(Clock::now() - start).count());
    on_done(std::move(out));
  }
};

// A libtorch exception (out of memory, a CUDA error) as the Status that ends
// the requests it hit, instead of the process.
absl::Status LibtorchError(absl::string_view what, const std::exception& e) {
  const bool memory = dynamic_cast<const std::bad_alloc*>(&e) != nullptr ||
                      absl::StrContains(e.what(), "out of memory");
  const std::string message = absl::StrCat("libtorch failed ", what, ": ", e.what());
  return memory ? absl::ResourceExhaustedError(message) : absl::InternalError(message);
}

struct Prepared {
  std::shared_ptr<const model::KeptExperts> keep;
  PatternStatus status;
  // Worker::Impl::uses when last prepared or served (least recent goes first).
  int64_t last_use = 0;
};

}  // namespace

// One expert-parallel rank: an engine with every weight but the routed
// experts (replicated on each rank), its KV cache, a cache of the experts it
// owns (e % world_size == rank), and, with world_size > 1, its c10d group
// and a thread that runs its share of each step.
struct Rank {
  int64_t index = 0;
  std::unique_ptr<model::Engine> engine;
  std::unique_ptr<ExpertSource> source;
  std::unique_ptr<ExpertCache> cache;
  std::unique_ptr<model::KvCache> kv;
  std::unique_ptr<C10dExpertParallel> group;

  // Ranks > 0: Run(job) hands a job to the rank's thread; Wait() returns
  // once it has run.
  std::thread thread;
  mutable absl::Mutex mu;
  std::function<void()> job ABSL_GUARDED_BY(mu);
  bool busy ABSL_GUARDED_BY(mu) = false;
  bool stopping ABSL_GUARDED_BY(mu) = false;

  bool HasWork() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return stopping || busy; }
  bool Idle() const ABSL_SHARED_LOCKS_REQUIRED(mu) { return !busy; }
  void Loop() {
    absl::MutexLock lock(&mu);
    while (true) {
      mu.Await(absl::Condition(this, &Rank::HasWork));
      if (stopping) return;
      std::function<void()> j = std::move(job);
      mu.Unlock();
      j();
      mu.Lock();
      busy = false;
    }
  }
  void Run(std::function<void()> j) {
    absl::MutexLock lock(&mu);
    job = std::move(j);
    busy = true;
  }
  void Wait() {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(this, &Rank::Idle));
  }
  void Stop() {
    if (!thread.joinable()) return;
    {
      absl::MutexLock lock(&mu);
      stopping = true;
    }
    thread.join();
  }
};

// What a scrape reads: the worker until it starts going away.
struct WorkerMetricsSource {
  absl::Mutex mu;
  const Worker* worker ABSL_GUARDED_BY(mu) = nullptr;
};

std::vector<prometheus::MetricFamily> WorkerFamilies(const WorkerStatus& s) {
  using metrics::AddSample;
  auto cache = metrics::GaugeFamily("premoe:expert_cache_bytes",
                                    "Expert cache bytes: resident (held), pinned (in use by a "
                                    "request or a preparation) and free (budget left).");
  AddSample(cache, static_cast<double>(s.cache.resident_bytes), {{"state", "resident"}});
  AddSample(cache, static_cast<double>(s.cache.pinned_experts * s.expert_bytes),
            {{"state", "pinned"}});
  AddSample(
      cache,
      static_cast<double>(std::max<int64_t>(0, s.cache.budget_bytes - s.cache.resident_bytes)),
      {{"state", "free"}});
  auto budget =
      metrics::GaugeFamily("premoe:expert_cache_budget_bytes", "The expert cache's budget.");
  AddSample(budget, static_cast<double>(s.cache.budget_bytes));
  auto loads =
      metrics::CounterFamily("premoe:expert_loads_total", "Experts loaded into the cache.");
  AddSample(loads, static_cast<double>(s.cache.loads));
  auto evictions =
      metrics::CounterFamily("premoe:expert_evictions_total", "Experts evicted from the cache.");
  AddSample(evictions, static_cast<double>(s.cache.evictions));
  auto load_bytes =
      metrics::CounterFamily("premoe:expert_load_bytes_total", "Bytes of experts loaded.");
  AddSample(load_bytes, static_cast<double>(s.cache.loaded_bytes));
  auto resident = metrics::GaugeFamily("premoe:resident_patterns",
                                       "Prepared patterns whose experts are all resident.");
  AddSample(resident,
            static_cast<double>(std::count_if(s.patterns.begin(), s.patterns.end(),
                                              [](const PatternStatus& p) { return p.resident; })));
  auto running =
      metrics::GaugeFamily("premoe:worker_num_requests_running", "Requests in the worker's batch.");
  AddSample(running, static_cast<double>(s.running));
  auto waiting =
      metrics::GaugeFamily("premoe:worker_num_requests_waiting", "Requests queued at the worker.");
  AddSample(waiting, static_cast<double>(s.queued));
  auto cancelled =
      metrics::CounterFamily("premoe:worker_requests_cancelled_total",
                             "Requests the worker ended because their caller went away.");
  AddSample(cancelled, static_cast<double>(s.cancelled));
  return {cache, budget, loads, evictions, load_bytes, resident, running, waiting, cancelled};
}

struct Worker::Impl {
  WorkerOptions options;
  std::shared_ptr<WorkerMetricsSource> metrics_source = std::make_shared<WorkerMetricsSource>();
  std::shared_ptr<metrics::Collector> collector;
  std::vector<std::unique_ptr<Rank>> ranks;
  const model::Engine* engine = nullptr;  // rank 0's
  std::string fingerprint;
  std::shared_ptr<const model::KeptExperts> full;
  std::vector<int64_t> eos;
  std::filesystem::path rendezvous;  // world_size > 1: the FileStore's file

  mutable absl::Mutex mu;
  std::map<std::string, Prepared> patterns ABSL_GUARDED_BY(mu);
  int64_t uses ABSL_GUARDED_BY(mu) = 0;
  std::deque<std::shared_ptr<Item>> queue ABSL_GUARDED_BY(mu);
  // Requests admitted but still loading their experts: they count against
  // max_queue, so a refused request never loads (or evicts) anything.
  int64_t admitting ABSL_GUARDED_BY(mu) = 0;
  int64_t running ABSL_GUARDED_BY(mu) = 0;
  int64_t cancelled ABSL_GUARDED_BY(mu) = 0;  // requests ended CANCELLED, ever
  bool stopping ABSL_GUARDED_BY(mu) = false;
  // world_size > 1: a forward failed on some rank, so the ranks' collectives
  // may be out of step; every later request is refused with this.
  absl::Status broken ABSL_GUARDED_BY(mu);
  // Threads that make a request's experts resident (one per request that
  // needs loads, so at most max_queue), so that Submit never waits; by
  // number. A loader that is done adds its number to loaders_done, and the
  // next Submit (or the destructor) joins it.
  std::map<uint64_t, std::thread> loaders ABSL_GUARDED_BY(mu);
  std::vector<uint64_t> loaders_done ABSL_GUARDED_BY(mu);
  uint64_t next_loader ABSL_GUARDED_BY(mu) = 0;
  std::thread scheduler;

  bool SchedulerHasWork() const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return stopping || !queue.empty() || running > 0;
  }
  // An admitted request whose experts are pinned joins the queue (or ends,
  // when the worker stopped meanwhile).
  void Enqueue(std::shared_ptr<Item> item);
  // Pins the experts of an admitted request, loading what is missing, then
  // enqueues it; ends it when they cannot be made resident.
  void Load(std::shared_ptr<Item> item);
  // Starts a loader for `item`; UNAVAILABLE when the worker stops.
  absl::Status StartLoader(std::shared_ptr<Item> item);

  int64_t world() const { return static_cast<int64_t>(ranks.size()); }
  // The experts of `keep` rank r owns, every MoE layer listed.
  model::KeptExperts Share(const model::KeptExperts& keep, int64_t r) const {
    if (world() == 1) return keep;
    model::KeptExperts out;
    for (const auto& [layer, all] : full->layers) {
      const std::vector<int64_t>* kept = keep.Find(layer);
      std::vector<int64_t> mine;
      for (int64_t e : kept != nullptr ? *kept : all) {
        if (e % world() == r) mine.push_back(e);
      }
      out.layers[layer] = std::move(mine);
    }
    return out;
  }
  void ClearSlot(int64_t s) {
    for (auto& rank : ranks) rank->kv->Clear(s);
  }

  void Run();
  void Step(std::vector<std::shared_ptr<Item>>& slots, std::vector<model::ExpertSet>& merged,
            bool& dirty);
};

Worker::Worker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<Worker>> Worker::Open(const WorkerOptions& options) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  const int64_t world = options.world_size;
  for (int64_t r = 0; r < world; ++r) {
    auto rank = std::make_unique<Rank>();
    rank->index = r;
    model::EngineOptions eo;
    eo.dtype = options.dtype;
    eo.device = RankDevice(options, r);
    eo.max_context = options.max_context;
    eo.experts_on_demand = true;
    eo.expert_pack = options.expert_pack;
    RETURN_IF_ERROR(eo.SetQuant(options.quant));
    ASSIGN_OR_RETURN(rank->engine, model::Engine::Open(options.model_dir, eo));
    impl->ranks.push_back(std::move(rank));
  }
  impl->engine = impl->ranks[0]->engine.get();
  const checkpoint::ModelConfig& c = impl->engine->config();
  ASSIGN_OR_RETURN(impl->fingerprint, model::ModelFingerprint(*impl->engine));
  auto full = std::make_shared<model::KeptExperts>();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.IsMoeLayer(static_cast<int>(l))) continue;
    std::vector<int64_t> every(c.num_routed_experts);
    for (int64_t e = 0; e < c.num_routed_experts; ++e) every[e] = e;
    full->Set(l, std::move(every));
  }
  impl->full = std::move(full);
  const int64_t expert_bytes = impl->engine->expert_bytes();
  for (auto& rank : impl->ranks) {
    // Each rank's budget: its share of cache_bytes, or every expert it owns.
    int64_t owned = 0;
    for (const auto& [layer, experts] : impl->Share(*impl->full, rank->index).layers) {
      owned += static_cast<int64_t>(experts.size());
    }
    ExpertCacheOptions co;
    co.budget_bytes = options.cache_bytes > 0 ? options.cache_bytes / world : owned * expert_bytes;
    co.reserve = options.reserve_cache;
    ASSIGN_OR_RETURN(rank->source, EngineExpertSource(rank->engine.get()));
    ASSIGN_OR_RETURN(rank->cache, ExpertCache::Create(rank->source.get(), co));
    ASSIGN_OR_RETURN(rank->kv,
                     rank->engine->NewCache(options.max_batch, rank->engine->max_context()));
  }
  if (world > 1) {
    // The ranks meet at a FileStore of their own, each joining on its own
    // thread (a join returns once all have joined).
    // A directory of its own (mkdtemp), so no stale or shared file can be
    // joined by mistake.
    std::string dir = (std::filesystem::temp_directory_path() / "premoe-worker-XXXXXX").string();
    if (mkdtemp(dir.data()) == nullptr) {
      return absl::InternalError(absl::StrCat("worker: cannot create a rendezvous directory in ",
                                              std::filesystem::temp_directory_path().string()));
    }
    impl->rendezvous = dir;
    std::vector<absl::Status> joined(world);
    std::vector<std::thread> joiners;
    for (int64_t r = 0; r < world; ++r) {
      joiners.emplace_back([&, r] {
        ExpertParallelOptions eo;
        eo.rendezvous = "file://" + (impl->rendezvous / "store").string();
        eo.rank = r;
        eo.world_size = world;
        eo.device = RankDevice(options, r);
        absl::StatusOr<std::unique_ptr<C10dExpertParallel>> g = C10dExpertParallel::Join(eo);
        joined[r] = g.status();
        if (g.ok()) impl->ranks[r]->group = *std::move(g);
      });
    }
    for (auto& t : joiners) t.join();
    for (const absl::Status& s : joined) {
      if (!s.ok()) {
        std::error_code ec;
        std::filesystem::remove_all(impl->rendezvous, ec);
        return s;
      }
    }
    for (int64_t r = 1; r < world; ++r) {
      Rank* rank = impl->ranks[r].get();
      rank->thread = std::thread([rank] { rank->Loop(); });
    }
  }
  impl->eos.assign(c.eos_token_ids.begin(), c.eos_token_ids.end());
  Impl* raw = impl.get();
  impl->scheduler = std::thread([raw] { raw->Run(); });
  std::unique_ptr<Worker> worker(new Worker(std::move(impl)));
  {
    const std::shared_ptr<WorkerMetricsSource>& source = worker->impl_->metrics_source;
    absl::MutexLock lock(&source->mu);
    source->worker = worker.get();
  }
  worker->impl_->collector = std::make_shared<metrics::Collector>(
      [source = worker->impl_->metrics_source]() -> std::vector<prometheus::MetricFamily> {
        absl::MutexLock lock(&source->mu);
        if (source->worker == nullptr) return {};
        return WorkerFamilies(source->worker->Status());
      });
  metrics::AddCollector(worker->impl_->collector);
  return worker;
}

Worker::~Worker() {
  {
    // A scrape in progress finishes first; later ones see no worker.
    absl::MutexLock lock(&impl_->metrics_source->mu);
    impl_->metrics_source->worker = nullptr;
  }
  std::map<uint64_t, std::thread> loaders;
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
  }
  // Loaders waiting for room give up (their requests end UNAVAILABLE); once
  // stopping is set no new one starts.
  for (auto& rank : impl_->ranks) rank->cache->Shutdown();
  {
    absl::MutexLock lock(&impl_->mu);
    loaders.swap(impl_->loaders);
  }
  for (auto& [id, t] : loaders) t.join();
  impl_->scheduler.join();
  for (auto& rank : impl_->ranks) rank->Stop();
  if (!impl_->rendezvous.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(impl_->rendezvous, ec);
  }
}

const model::Engine& Worker::engine() const { return *impl_->engine; }
const std::string& Worker::fingerprint() const { return impl_->fingerprint; }

absl::StatusOr<PreparedPattern> Worker::Prepare(const store::Pattern& pattern,
                                                const std::string& budget_spec) {
  const model::Engine& engine = *impl_->engine;
  const checkpoint::ModelConfig& c = engine.config();
  if (pattern.task_name.empty()) return absl::InvalidArgumentError("the pattern has no task name");
  if (pattern.model_fingerprint != impl_->fingerprint) {
    return absl::FailedPreconditionError(
        absl::StrCat("pattern of task \"", pattern.task_name, "\" was made for model ",
                     pattern.model_fingerprint, ", but this worker serves ", impl_->fingerprint));
  }
  ASSIGN_OR_RETURN(const auto scores, profiler::PatternScores(pattern, c));
  ASSIGN_OR_RETURN(profiler::Budget budget, profiler::Budget::Parse(budget_spec));
  ASSIGN_OR_RETURN(profiler::Selection sel,
                   profiler::Select(scores, budget, engine.expert_bytes(), engine.top_k()));
  if (sel.top_k != engine.top_k()) {
    return absl::FailedPreconditionError(absl::StrCat("budget ", budget_spec, " routes top-",
                                                      sel.top_k, "; this worker routes top-",
                                                      engine.top_k()));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (c.IsMoeLayer(static_cast<int>(l)) && sel.keep.Find(l) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("pattern of task \"", pattern.task_name,
                                                     "\" has no scores for MoE layer ", l));
    }
  }
  LoadReport load;
  for (auto& rank : impl_->ranks) {
    ASSIGN_OR_RETURN(LoadReport r, rank->cache->Prepare(impl_->Share(sel.keep, rank->index)));
    load.needed_experts += r.needed_experts;
    load.loaded_experts += r.loaded_experts;
    load.loaded_bytes += r.loaded_bytes;
    load.evicted_experts += r.evicted_experts;
    load.load_seconds += r.load_seconds;
  }
  PreparedPattern out;
  out.task = pattern.task_name;
  out.kept_experts = sel.kept_experts;
  out.kept_bytes = sel.kept_experts * engine.expert_bytes();
  int64_t all = 0;
  for (const auto& [layer, kept] : impl_->full->layers) all += static_cast<int64_t>(kept.size());
  out.kept_fraction = static_cast<double>(sel.kept_experts) / static_cast<double>(all);
  out.load = load;
  absl::MutexLock lock(&impl_->mu);
  auto& patterns = impl_->patterns;
  if (!patterns.contains(out.task) &&
      static_cast<int64_t>(patterns.size()) >= impl_->options.max_prepared_patterns) {
    auto oldest = std::min_element(
        patterns.begin(), patterns.end(),
        [](const auto& a, const auto& b) { return a.second.last_use < b.second.last_use; });
    PREMOE_LOG_INFO("worker: %d patterns prepared; forgetting \"%s\", the least recently used",
                    patterns.size(), oldest->first);
    patterns.erase(oldest);
  }
  patterns[out.task] =
      Prepared{std::make_shared<const model::KeptExperts>(std::move(sel.keep)),
               PatternStatus{out.task, out.kept_experts, out.kept_bytes, true}, ++impl_->uses};
  return out;
}

absl::StatusOr<WorkResult> Worker::Generate(WorkRequest request) {
  std::promise<absl::StatusOr<WorkResult>> done;
  std::future<absl::StatusOr<WorkResult>> result = done.get_future();
  RETURN_IF_ERROR(Submit(std::move(request),
                         [&done](absl::StatusOr<WorkResult> r) { done.set_value(std::move(r)); }));
  return result.get();
}

absl::Status Worker::Submit(WorkRequest request, DoneCallback on_done) {
  const model::Engine& engine = *impl_->engine;
  const auto start = Clock::now();
  RETURN_IF_ERROR(request.options.Validate());
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (int64_t t : request.prompt) {
    if (t < 0 || t >= engine.config().vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt token ", t, " is outside [0, ", engine.config().vocab_size, ")"));
    }
  }
  // Compared without adding: max_new_tokens near 2^63 would overflow the sum.
  const int64_t room = engine.max_context() - static_cast<int64_t>(request.prompt.size());
  if (request.fit_context && room >= 1) {
    request.options.max_new_tokens = std::min(request.options.max_new_tokens, room);
  }
  if (request.options.max_new_tokens > room) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", request.prompt.size(), " tokens) + max_new_tokens (",
        request.options.max_new_tokens, ") exceeds the context of ", engine.max_context()));
  }
  auto item = std::make_shared<Item>();
  item->start = start;
  item->on_done = std::move(on_done);
  {
    // Admit first: a request refused here has loaded and evicted nothing.
    absl::MutexLock lock(&impl_->mu);
    if (request.task.empty()) {
      item->mask = impl_->full;
    } else {
      auto it = impl_->patterns.find(request.task);
      if (it == impl_->patterns.end()) {
        return absl::NotFoundError(
            absl::StrCat("no pattern of task \"", request.task, "\" is prepared on this worker"));
      }
      item->mask = it->second.keep;
      it->second.last_use = ++impl_->uses;
    }
    if (impl_->stopping) return absl::UnavailableError("the worker is shutting down");
    RETURN_IF_ERROR(impl_->broken);
    if (static_cast<int64_t>(impl_->queue.size()) + impl_->admitting >= impl_->options.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the worker's queue is full (", impl_->options.max_queue, " requests waiting)"));
    }
    ++impl_->admitting;
  }
  item->sampler.emplace(request.options, request.options.seed, impl_->eos);
  item->request = std::move(request);
  // Experts all resident: pinned here, without waiting. Otherwise a loader
  // thread makes them resident, so the caller (a gRPC reactor) never waits.
  for (auto& rank : impl_->ranks) {
    absl::StatusOr<std::unique_ptr<Lease>> lease =
        rank->cache->TryAcquireResident(impl_->Share(*item->mask, rank->index));
    if (!lease.ok() || *lease == nullptr) break;
    item->leases.push_back(*std::move(lease));
  }
  if (item->leases.size() == impl_->ranks.size()) {
    impl_->Enqueue(std::move(item));
    return absl::OkStatus();
  }
  item->leases.clear();
  return impl_->StartLoader(std::move(item));
}

absl::Status Worker::Impl::StartLoader(std::shared_ptr<Item> item) {
  std::vector<std::thread> done;
  absl::Status status;
  {
    absl::MutexLock lock(&mu);
    for (uint64_t id : loaders_done) {
      done.push_back(std::move(loaders.at(id)));
      loaders.erase(id);
    }
    loaders_done.clear();
    if (stopping) {
      --admitting;
      status = absl::UnavailableError("the worker is shutting down");
    } else {
      const uint64_t id = next_loader++;
      try {
        loaders[id] = std::thread([this, item, id] {
          Load(item);
          absl::MutexLock lock(&mu);
          loaders_done.push_back(id);
        });
      } catch (const std::system_error& e) {
        loaders.erase(id);
        --admitting;
        status = absl::ResourceExhaustedError(absl::StrCat(
            "the worker cannot start a thread to load the request's experts: ", e.what()));
      }
    }
  }
  for (std::thread& t : done) t.join();  // finished already, or about to
  return status;
}

void Worker::Impl::Load(std::shared_ptr<Item> item) {
  for (auto& rank : ranks) {
    absl::StatusOr<std::unique_ptr<Lease>> lease =
        rank->cache->Acquire(Share(*item->mask, rank->index), item->request.deadline);
    if (!lease.ok()) {
      {
        absl::MutexLock lock(&mu);
        --admitting;
      }
      item->Finish(lease.status());
      return;
    }
    item->leases.push_back(*std::move(lease));
  }
  Enqueue(std::move(item));
}

void Worker::Impl::Enqueue(std::shared_ptr<Item> item) {
  absl::Status refused;
  {
    absl::MutexLock lock(&mu);
    --admitting;
    if (stopping) {
      refused = absl::UnavailableError("the worker is shutting down");
    } else if (!broken.ok()) {
      refused = broken;
    } else {
      queue.push_back(std::move(item));
      return;
    }
  }
  item->Finish(std::move(refused));
}

void Worker::Impl::Run() {
  std::vector<std::shared_ptr<Item>> slots(options.max_batch);
  std::vector<model::ExpertSet> merged(ranks.size());
  bool dirty = true;
  while (true) {
    bool any = false;
    {
      absl::MutexLock lock(&mu);
      mu.Await(absl::Condition(this, &Impl::SchedulerHasWork));
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
          ClearSlot(static_cast<int64_t>(s));
          slots[s] = std::move(item);
          ++running;
          dirty = true;
        }
      }
      any = running > 0;
    }
    if (any) Step(slots, merged, dirty);
  }
  absl::MutexLock lock(&mu);
  for (auto& item : slots) {
    if (item != nullptr) item->Finish(absl::UnavailableError("the worker is shutting down"));
  }
  for (auto& item : queue) item->Finish(absl::UnavailableError("the worker is shutting down"));
  queue.clear();
}

void Worker::Impl::Step(std::vector<std::shared_ptr<Item>>& slots,
                        std::vector<model::ExpertSet>& merged, bool& dirty) {
  const size_t batch = slots.size();
  if (dirty) {
    // Per rank, the union of the running requests' experts, rebuilt only
    // when they change.
    for (size_t r = 0; r < ranks.size(); ++r) {
      merged[r].experts.clear();
      for (const auto& item : slots) {
        if (item != nullptr) {
          const auto& set = item->leases[r]->experts().experts;
          merged[r].experts.insert(set.begin(), set.end());
        }
      }
    }
    dirty = false;
  }
  std::vector<std::vector<int64_t>> tokens(batch);
  model::ForwardOptions fo;
  fo.masks.assign(batch, nullptr);
  for (size_t s = 0; s < batch; ++s) {
    const auto& item = slots[s];
    if (item == nullptr) continue;
    tokens[s] =
        item->prefilled ? std::vector<int64_t>{item->sampler->next_input()} : item->request.prompt;
    fo.masks[s] = item->mask.get();
  }
  auto end = [&](size_t s, absl::Status status) {
    std::shared_ptr<Item> item = std::move(slots[s]);
    dirty = true;
    {
      // Before Finish: a caller that sees its result also sees it counted out.
      absl::MutexLock lock(&mu);
      --running;
      if (absl::IsCancelled(status)) ++cancelled;
    }
    item->Finish(std::move(status));
  };
  // Every rank runs the same forward in lockstep, each computing the experts
  // it owns and all-reducing the MoE outputs; rank 0's logits are sampled.
  std::vector<absl::StatusOr<at::Tensor>> out(ranks.size(), absl::UnknownError("not run"));
  auto forward = [&](size_t r) {
    model::ForwardOptions ro = fo;
    ro.experts = &merged[r];
    ro.expert_parallel = ranks[r]->group.get();
    try {
      out[r] = ranks[r]->engine->Forward(tokens, ranks[r]->kv.get(), ro);
    } catch (const std::exception& e) {
      out[r] = LibtorchError("running the step's forward pass", e);
    }
  };
  for (size_t r = 1; r < ranks.size(); ++r) ranks[r]->Run([&forward, r] { forward(r); });
  forward(0);
  for (size_t r = 1; r < ranks.size(); ++r) ranks[r]->Wait();
  absl::StatusOr<at::Tensor> logits = std::move(out[0]);
  for (size_t r = 1; r < ranks.size() && logits.ok(); ++r) {
    if (!out[r].ok()) logits = out[r].status();
  }
  at::Tensor rows;
  if (logits.ok()) {
    try {
      rows = logits->cpu();
    } catch (const std::exception& e) {
      logits = LibtorchError("reading the step's logits", e);
    }
  }
  if (!logits.ok() && ranks.size() > 1) {
    absl::MutexLock lock(&mu);
    broken = absl::UnavailableError(
        absl::StrCat("the worker's expert-parallel ranks are out of step after a failed step (",
                     logits.status().message(), "); restart it"));
  }
  if (!logits.ok()) {
    for (size_t s = 0; s < batch; ++s) {
      if (slots[s] != nullptr) end(s, logits.status());
    }
    return;
  }
  const auto now = Clock::now();
  for (size_t s = 0; s < batch; ++s) {
    Item* item = slots[s].get();
    if (item == nullptr) continue;
    item->prefilled = true;
    bool cancelled = false;
    std::vector<int64_t> final_tokens;
    try {
      final_tokens = item->sampler->Step(rows[static_cast<int64_t>(s)]);
    } catch (const std::exception& e) {
      // Sampling failed for this sequence alone; the others go on.
      end(s, LibtorchError("sampling the next token", e));
      continue;
    }
    for (int64_t t : final_tokens) {
      if (!item->time_to_first_token.has_value()) {
        item->time_to_first_token = std::chrono::duration<double>(now - item->start).count();
      }
      if (item->request.on_token && !item->request.on_token(t)) {
        cancelled = true;
        break;
      }
    }
    const auto& stop = item->request.options.stop_requested;
    if (!cancelled && !item->sampler->finished() && stop && stop(0)) {
      for (int64_t t : item->sampler->Stop(model::GenerationResult::FinishReason::kStopSequence)) {
        if (item->request.on_token && !item->request.on_token(t)) cancelled = true;
      }
    }
    if (cancelled) {
      end(s, absl::CancelledError("the request was cancelled"));
    } else if (item->sampler->finished()) {
      end(s, absl::OkStatus());
    } else if (item->Expired(now)) {
      end(s, absl::DeadlineExceededError("the deadline passed while generating"));
    }
  }
}

WorkerStatus Worker::Status() const {
  WorkerStatus s;
  for (const auto& rank : impl_->ranks) {
    const CacheStats c = rank->cache->Stats();
    s.cache.budget_bytes += c.budget_bytes;
    s.cache.resident_experts += c.resident_experts;
    s.cache.resident_bytes += c.resident_bytes;
    s.cache.pinned_experts += c.pinned_experts;
    s.cache.loads += c.loads;
    s.cache.loaded_bytes += c.loaded_bytes;
    s.cache.evictions += c.evictions;
    s.cache.load_seconds += c.load_seconds;
    for (auto& [layer, experts] : rank->cache->ResidentSet().layers) {
      std::vector<int64_t>& all = s.resident.layers[layer];
      all.insert(all.end(), experts.begin(), experts.end());
      std::sort(all.begin(), all.end());
    }
    s.base_bytes += rank->engine->weight_bytes();
  }
  int64_t all = 0;
  for (const auto& [layer, kept] : impl_->full->layers) all += static_cast<int64_t>(kept.size());
  s.all_experts_bytes = all * impl_->engine->expert_bytes();
  s.expert_bytes = impl_->engine->expert_bytes();
  std::vector<std::pair<PatternStatus, std::shared_ptr<const model::KeptExperts>>> patterns;
  {
    absl::MutexLock lock(&impl_->mu);
    s.queued = static_cast<int64_t>(impl_->queue.size()) + impl_->admitting;
    s.running = impl_->running;
    s.cancelled = impl_->cancelled;
    for (const auto& [task, p] : impl_->patterns) patterns.emplace_back(p.status, p.keep);
  }
  for (auto& [status, keep] : patterns) {
    status.resident = true;
    for (const auto& rank : impl_->ranks) {
      status.resident = status.resident && rank->cache->Resident(impl_->Share(*keep, rank->index));
    }
    s.patterns.push_back(status);
  }
  return s;
}

}  // namespace premoe::worker
