// The worker on the committed testbed model: its expert cache, mixed-pattern
// continuous batching, and its refusals.
#include "premoe/worker/worker.h"

#include <ATen/Context.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "premoe/checkpoint/expert_pack.h"
#include "premoe/model/fingerprint.h"
#include "premoe/model/repack.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/pattern.h"
#include "premoe/profiler/selection.h"
#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"
#include "premoe/worker/client.h"
#include "premoe/worker/expert_cache.h"
#include "premoe/worker/server.h"
#include "tests/testutil/testutil.h"

namespace premoe::worker {
namespace {

using ::premoe::testing::StatusIs;

std::string ModelDir() { return premoe::testing::SourceDir() + "/testbed/model"; }

std::vector<int64_t> Encode(const tokenizer::Tokenizer& tok, const std::string& text) {
  auto ids = tok.Encode(text, /*add_special_tokens=*/true);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? std::vector<int64_t>(ids->begin(), ids->end()) : std::vector<int64_t>{};
}

// Patterns of a few testbed tasks, profiled once on the resident fp32 model,
// which is also the reference the worker's tokens are checked against.
class WorkerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto engine = model::Engine::Open(ModelDir(), {.dtype = "fp32"});
    ASSERT_TRUE(engine.ok()) << engine.status();
    reference_ = engine->release();
    auto tok = tokenizer::Tokenizer::FromFile(ModelDir() + "/tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    auto fingerprint = model::ModelFingerprint(*reference_);
    ASSERT_TRUE(fingerprint.ok());
    patterns_ = new std::map<std::string, store::Pattern>();
    for (const std::string task : {"add", "reverse", "caesar", "sort", "brackets"}) {
      auto t = testbed::FindTask(task);
      ASSERT_TRUE(t.ok());
      std::vector<profiler::CalibrationSample> samples;
      for (int64_t i = 0; i < 16; ++i) {
        auto s = (*t)->Get(testbed::Split::kCalibration, i);
        ASSERT_TRUE(s.ok());
        samples.push_back({s->prompt, s->completion});
      }
      auto profile = profiler::ProfileTask(*reference_, *tokenizer_, samples, {});
      ASSERT_TRUE(profile.ok()) << profile.status();
      auto p = profiler::MakePattern(*reference_, samples, {}, *profile,
                                     {.task_name = task, .model_fingerprint = *fingerprint});
      ASSERT_TRUE(p.ok()) << p.status();
      (*patterns_)[task] = *std::move(p);
    }
  }
  static void TearDownTestSuite() {
    delete patterns_;
    delete tokenizer_;
    delete reference_;
  }

  // The experts `task`'s pattern keeps under `budget`, as the worker selects them.
  static model::KeptExperts Keep(const std::string& task, const std::string& budget) {
    auto scores = profiler::PatternScores(patterns_->at(task));
    EXPECT_TRUE(scores.ok()) << scores.status();
    if (!scores.ok()) return {};
    auto b = profiler::Budget::Parse(budget);
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) return {};
    auto sel = profiler::Select(*scores, *b, reference_->expert_bytes(), reference_->top_k());
    EXPECT_TRUE(sel.ok()) << sel.status();
    return sel.ok() ? sel->keep : model::KeptExperts{};
  }

  static std::vector<std::string> EvalPrompts(const std::string& task, int n) {
    auto t = testbed::FindTask(task);
    EXPECT_TRUE(t.ok()) << t.status();
    std::vector<std::string> out;
    for (int64_t i = 0; t.ok() && i < n; ++i) {
      auto sample = (*t)->Get(testbed::Split::kEval, i);
      EXPECT_TRUE(sample.ok()) << sample.status();
      if (sample.ok()) out.push_back(sample->prompt);
    }
    return out;
  }

  static WorkerOptions Options() {
    WorkerOptions o;
    o.model_dir = ModelDir();
    o.dtype = "fp32";
    o.max_batch = 4;
    return o;
  }

  static model::Engine* reference_;
  static tokenizer::Tokenizer* tokenizer_;
  static std::map<std::string, store::Pattern>* patterns_;
};
model::Engine* WorkerTest::reference_ = nullptr;
tokenizer::Tokenizer* WorkerTest::tokenizer_ = nullptr;
std::map<std::string, store::Pattern>* WorkerTest::patterns_ = nullptr;

TEST_F(WorkerTest, MixedPatternsInOneBatchGiveEachRequestItsTokensAlone) {
  ASSERT_OK_AND_ASSIGN(auto worker, Worker::Open(Options()));
  const std::vector<std::string> tasks = {"add", "reverse", "caesar"};
  for (const auto& task : tasks) {
    ASSERT_OK_AND_ASSIGN(PreparedPattern p, worker->Prepare(patterns_->at(task), "50%"));
    EXPECT_EQ(p.kept_experts, 32);  // 8 of 16 in each of 4 layers
    EXPECT_DOUBLE_EQ(p.kept_fraction, 0.5);
  }
  {
    // Status names the resident experts: the union of the prepared keeps.
    std::map<int64_t, std::set<int64_t>> want;
    for (const auto& task : tasks) {
      for (const auto& [layer, experts] : Keep(task, "50%").layers) {
        want[layer].insert(experts.begin(), experts.end());
      }
    }
    const WorkerStatus s = worker->Status();
    ASSERT_EQ(s.resident.layers.size(), want.size());
    for (const auto& [layer, experts] : want) {
      EXPECT_EQ(s.resident.layers.at(layer), std::vector<int64_t>(experts.begin(), experts.end()))
          << "layer " << layer;
    }
    EXPECT_EQ(s.expert_bytes, worker->engine().expert_bytes());
  }
  model::GenerationOptions go;
  go.max_new_tokens = 12;
  // Requests of three patterns, plus the full model, all at once: with 4
  // slots they queue, join running batches mid-flight and mix patterns.
  struct Case {
    std::string task;
    std::vector<int64_t> prompt;
    std::vector<int64_t> want;
  };
  std::vector<Case> cases;
  for (const auto& task : tasks) {
    const model::KeptExperts keep = Keep(task, "50%");
    for (const auto& prompt : EvalPrompts(task, 3)) {
      Case c{task, Encode(*tokenizer_, prompt), {}};
      ASSERT_OK_AND_ASSIGN(auto alone, reference_->Generate({{c.prompt, &keep}}, go));
      c.want = alone[0].tokens;
      cases.push_back(c);
    }
  }
  {
    Case c{"", Encode(*tokenizer_, EvalPrompts("sort", 1)[0]), {}};
    ASSERT_OK_AND_ASSIGN(auto alone, reference_->Generate({{c.prompt, nullptr}}, go));
    c.want = alone[0].tokens;
    cases.push_back(c);
  }
  std::vector<std::thread> threads;
  std::vector<absl::StatusOr<WorkResult>> results(cases.size(), absl::UnknownError("not run"));
  std::vector<std::vector<int64_t>> streamed(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    threads.emplace_back([&, i] {
      WorkRequest r;
      r.prompt = cases[i].prompt;
      r.task = cases[i].task;
      r.options = go;
      r.on_token = [&, i](int64_t t) {
        streamed[i].push_back(t);
        return true;
      };
      results[i] = worker->Generate(std::move(r));
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i, " task \"", cases[i].task, "\""));
    ASSERT_OK(results[i].status());
    EXPECT_EQ(results[i]->generation.tokens, cases[i].want);
    EXPECT_EQ(streamed[i], cases[i].want);
    EXPECT_GT(results[i]->time_to_first_token, 0);
  }
  const WorkerStatus s = worker->Status();
  EXPECT_EQ(s.patterns.size(), 3u);
  EXPECT_EQ(s.queued, 0);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.cache.pinned_experts, 0);
  EXPECT_EQ(s.cache.resident_experts, 64);  // the full-model request loaded the rest
  EXPECT_EQ(s.all_experts_bytes, 64 * worker->engine().expert_bytes());
}

// Two expert-parallel ranks in one worker, each caching only the experts it
// owns, give the tokens of the whole model on one rank.
TEST_F(WorkerTest, TwoRanksGiveTheTokensOfOne) {
  WorkerOptions o = Options();
  o.world_size = 2;
  ASSERT_OK_AND_ASSIGN(auto worker, Worker::Open(o));
  for (const std::string task : {"add", "caesar"}) {
    ASSERT_OK_AND_ASSIGN(PreparedPattern p, worker->Prepare(patterns_->at(task), "50%"));
    EXPECT_EQ(p.kept_experts, 32);
  }
  // 2 of 4 kept at top-2: a rank's share of a layer can hold fewer experts
  // than the routing top-k, even none.
  ASSERT_OK(worker->Prepare(patterns_->at("sort"), "2/4").status());
  model::GenerationOptions go;
  go.max_new_tokens = 10;
  std::vector<std::thread> threads;
  struct Case {
    std::string task;
    std::vector<int64_t> prompt, want;
    absl::StatusOr<WorkResult> got = absl::UnknownError("not run");
  };
  std::vector<Case> cases;
  for (const std::string task : {"add", "caesar", "sort", ""}) {
    const model::KeptExperts keep =
        task.empty() ? model::KeptExperts() : Keep(task, task == "sort" ? "2/4" : "50%");
    for (const auto& prompt : EvalPrompts(task.empty() ? "brackets" : task, 2)) {
      Case c{task, Encode(*tokenizer_, prompt), {}};
      ASSERT_OK_AND_ASSIGN(auto alone,
                           reference_->Generate({{c.prompt, task.empty() ? nullptr : &keep}}, go));
      c.want = alone[0].tokens;
      cases.push_back(std::move(c));
    }
  }
  for (auto& c : cases) {
    threads.emplace_back([&] {
      WorkRequest r;
      r.prompt = c.prompt;
      r.task = c.task;
      r.options = go;
      c.got = worker->Generate(std::move(r));
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& c : cases) {
    SCOPED_TRACE("task \"" + c.task + "\"");
    ASSERT_OK(c.got.status());
    EXPECT_EQ(c.got->generation.tokens, c.want);
  }
  // The two ranks together hold every expert once (the full-model requests
  // loaded the rest), each only its own.
  const WorkerStatus s = worker->Status();
  EXPECT_EQ(s.cache.resident_experts, 64);
  EXPECT_EQ(s.base_bytes, 2 * worker->engine().weight_bytes());
  for (const auto& p : s.patterns) EXPECT_TRUE(p.resident) << p.task;
  // GPU ranks take cuda:0, cuda:1, ... (here there are none to take).
  o.device = "cuda:1";
  EXPECT_THAT(Worker::Open(o),
              StatusIs(absl::StatusCode::kInvalidArgument, "rank r runs on cuda:r"));
  if (!at::hasCUDA()) {
    o.device = "cuda";
    EXPECT_THAT(Worker::Open(o),
                StatusIs(absl::StatusCode::kFailedPrecondition, "no CUDA device is available"));
  }
}

// A lease pins its experts: whatever other patterns are prepared meanwhile,
// none of them is evicted until the lease ends.
TEST_F(WorkerTest, EvictionNeverTouchesPinnedExperts) {
  ASSERT_OK_AND_ASSIGN(
      auto engine, model::Engine::Open(ModelDir(), {.dtype = "fp32", .experts_on_demand = true}));
  std::mutex mu;
  std::set<std::pair<int64_t, int64_t>> pinned;
  std::vector<std::pair<int64_t, int64_t>> violations;
  std::atomic<int64_t> evictions{0};
  ExpertCacheOptions o;
  o.budget_bytes = 32 * engine->expert_bytes();  // two 25% patterns
  o.on_evict = [&](int64_t l, int64_t e) {
    ++evictions;
    std::lock_guard lock(mu);
    if (pinned.contains({l, e})) violations.emplace_back(l, e);
  };
  ASSERT_OK_AND_ASSIGN(auto source, EngineExpertSource(engine.get()));
  ASSERT_OK_AND_ASSIGN(auto cache, ExpertCache::Create(source.get(), o));
  const std::vector<std::string> others = {"reverse", "caesar", "sort", "brackets"};
  std::atomic<bool> stop{false};
  std::atomic<int> prepared{0};
  std::thread preparer([&] {
    for (int i = 0; !stop; ++i, ++prepared) {
      auto r = cache->Prepare(Keep(others[i % others.size()], "25%"));
      EXPECT_TRUE(r.ok()) << r.status();  // 16 pinned + 16 new always fit in 32
    }
  });
  const model::KeptExperts keep = Keep("add", "25%");
  // However the threads are scheduled, the preparer gets to run while pinned.
  for (int round = 0; round < 20 || prepared < 8; ++round) {
    // Not ASSERT: the preparer must be stopped and joined whatever happens.
    auto acquired = cache->Acquire(keep);
    if (!acquired.ok()) {
      ADD_FAILURE() << acquired.status();
      break;
    }
    std::unique_ptr<Lease> lease = *std::move(acquired);
    {
      std::lock_guard lock(mu);
      for (const auto& [key, w] : lease->experts().experts) pinned.insert(key);
    }
    // Hold the pins until the preparer has finished a Prepare meanwhile.
    for (const int seen = prepared; prepared == seen && !stop;) std::this_thread::yield();
    {
      std::lock_guard lock(mu);
      pinned.clear();
    }
  }
  stop = true;
  preparer.join();
  EXPECT_TRUE(violations.empty()) << violations.size() << " pinned experts were evicted";
  EXPECT_GT(evictions.load(), 0);
  const CacheStats s = cache->Stats();
  EXPECT_LE(s.resident_bytes, o.budget_bytes);
  EXPECT_EQ(s.pinned_experts, 0);
  // A pattern that cannot fit beside pinned experts: Prepare is refused, an
  // Acquire waits for the pins to go (here, past its deadline); neither
  // evicts anything. One that exceeds the budget alone is refused at once.
  auto lease = std::make_unique<std::unique_ptr<Lease>>();
  ASSERT_OK_AND_ASSIGN(*lease, cache->Acquire(Keep("add", "50%")));
  const int64_t before = cache->Stats().evictions;
  EXPECT_THAT(cache->Prepare(Keep("reverse", "50%")).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, "cannot hold this pattern now"));
  EXPECT_THAT(cache
                  ->Acquire(Keep("reverse", "50%"),
                            std::chrono::steady_clock::now() + std::chrono::milliseconds(20))
                  .status(),
              StatusIs(absl::StatusCode::kDeadlineExceeded, "waiting for room"));
  model::KeptExperts all;  // every expert of every layer: 64 > 32
  EXPECT_THAT(cache->Acquire(all).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, "holds 32"));
  EXPECT_EQ(cache->Stats().evictions, before);
  // Once the lease ends, the waiting Acquire goes through.
  auto waiting =
      std::async(std::launch::async, [&] { return cache->Acquire(Keep("reverse", "50%")); });
  lease->reset();
  ASSERT_OK_AND_ASSIGN(auto waited, waiting.get());
  EXPECT_GT(cache->Stats().evictions, before);
}

// Prepare races Generate under a tight budget: every request still gets its
// own tokens, reloading evicted experts as it needs them.
TEST_F(WorkerTest, PrepareRacingGenerateKeepsEveryAnswerExact) {
  WorkerOptions o = Options();
  o.cache_bytes = 32 * reference_->expert_bytes();
  ASSERT_OK_AND_ASSIGN(auto worker, Worker::Open(o));
  ASSERT_OK(worker->Prepare(patterns_->at("add"), "25%").status());
  model::GenerationOptions go;
  go.max_new_tokens = 8;
  const model::KeptExperts keep = Keep("add", "25%");
  std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> want;
  for (const auto& prompt : EvalPrompts("add", 4)) {
    const std::vector<int64_t> ids = Encode(*tokenizer_, prompt);
    ASSERT_OK_AND_ASSIGN(auto alone, reference_->Generate({{ids, &keep}}, go));
    want.emplace_back(ids, alone[0].tokens);
  }
  std::atomic<bool> stop{false};
  std::atomic<int> prepared{0};
  std::thread preparer([&] {
    const std::vector<std::string> others = {"reverse", "caesar", "sort", "brackets"};
    for (int i = 0; !stop; ++i, ++prepared) {
      auto r = worker->Prepare(patterns_->at(others[i % others.size()]), "25%");
      EXPECT_TRUE(r.ok()) << r.status();
    }
  });
  for (int round = 0; round < 6 || prepared < 4; ++round) {
    const auto& [ids, tokens] = want[round % want.size()];
    WorkRequest r;
    r.prompt = ids;
    r.task = "add";
    r.options = go;
    // Not ASSERT: the preparer must be stopped and joined whatever happens.
    absl::StatusOr<WorkResult> res = worker->Generate(std::move(r));
    if (!res.ok()) {
      ADD_FAILURE() << res.status();
      break;
    }
    EXPECT_EQ(res->generation.tokens, tokens) << "round " << round;
  }
  stop = true;
  preparer.join();
  EXPECT_GT(worker->Status().cache.evictions, 0);
}

// Experts read from an expert pack (premoe repack) into the cache's reused
// slots: switching patterns through a cache too small for them all evicts
// and reloads, and every answer stays the one the request gets alone.
TEST_F(WorkerTest, AnExpertPackServesTheSameTokens) {
  premoe::testing::TempDir tmp;
  model::ExpertPackWriteOptions wo;
  wo.dtype = "fp32";
  ASSERT_OK(model::WriteExpertPack(ModelDir(), tmp.Join("experts.pack"), wo));
  WorkerOptions o = Options();
  o.expert_pack = tmp.Join("experts.pack");
  o.cache_bytes = 20 * reference_->expert_bytes();
  ASSERT_OK_AND_ASSIGN(auto worker, Worker::Open(o));
  model::GenerationOptions go;
  go.max_new_tokens = 8;
  for (int round = 0; round < 2; ++round) {
    for (const std::string task : {"add", "reverse", "sort"}) {
      ASSERT_OK(worker->Prepare(patterns_->at(task), "25%").status());
      const model::KeptExperts keep = Keep(task, "25%");
      for (const auto& prompt : EvalPrompts(task, 2)) {
        const std::vector<int64_t> ids = Encode(*tokenizer_, prompt);
        ASSERT_OK_AND_ASSIGN(auto alone, reference_->Generate({{ids, &keep}}, go));
        WorkRequest r;
        r.prompt = ids;
        r.task = task;
        r.options = go;
        ASSERT_OK_AND_ASSIGN(WorkResult res, worker->Generate(std::move(r)));
        EXPECT_EQ(res.generation.tokens, alone[0].tokens) << task << " round " << round;
      }
    }
  }
  const WorkerStatus s = worker->Status();
  EXPECT_GT(s.cache.evictions, 0);
  EXPECT_GT(s.cache.loads, 20);
}

// Quantized experts: a worker holding int4 experts (read from an int4 pack)
// serves the tokens of a resident engine holding the same format, and its
// cache counts the bytes as held, scales included. A pack of another format
// is refused, naming both.
TEST_F(WorkerTest, QuantizedExpertsServeAndTheCacheCountsTheirBytes) {
  premoe::testing::TempDir tmp;
  model::ExpertPackWriteOptions wo;
  wo.dtype = "fp32";
  wo.quant = "int4:g32";
  ASSERT_OK(model::WriteExpertPack(ModelDir(), tmp.Join("int4.pack"), wo));
  ASSERT_OK_AND_ASSIGN(
      auto resident,
      model::Engine::Open(ModelDir(), {.dtype = "fp32", .expert_quant = "int4:g32"}));
  // hidden 128, expert width 128: gate_up [256, 128] and down [128, 128] as
  // 4-bit codes plus a bf16 scale and minimum per 32 inputs.
  const int64_t gate_up = 256 * 128 / 2 + 256 * (128 / 32) * 2 * 2;
  const int64_t down = 128 * 128 / 2 + 128 * (128 / 32) * 2 * 2;
  EXPECT_EQ(resident->expert_bytes(), ((gate_up + 63) / 64 * 64 + down + 63) / 64 * 64);
  EXPECT_LT(resident->expert_bytes() * 3, reference_->expert_bytes());

  WorkerOptions o = Options();
  o.expert_pack = tmp.Join("int4.pack");
  o.quant = "int4:g32";
  o.cache_bytes = 20 * resident->expert_bytes();
  ASSERT_OK_AND_ASSIGN(auto worker, Worker::Open(o));
  EXPECT_EQ(worker->engine().expert_bytes(), resident->expert_bytes());
  model::GenerationOptions go;
  go.max_new_tokens = 8;
  for (const std::string task : {"add", "reverse", "sort"}) {
    ASSERT_OK(worker->Prepare(patterns_->at(task), "25%").status());
    const model::KeptExperts keep = Keep(task, "25%");
    for (const auto& prompt : EvalPrompts(task, 2)) {
      const std::vector<int64_t> ids = Encode(*tokenizer_, prompt);
      ASSERT_OK_AND_ASSIGN(auto alone, resident->Generate({{ids, &keep}}, go));
      WorkRequest r;
      r.prompt = ids;
      r.task = task;
      r.options = go;
      ASSERT_OK_AND_ASSIGN(WorkResult res, worker->Generate(std::move(r)));
      EXPECT_EQ(res.generation.tokens, alone[0].tokens) << task;
    }
  }
  const WorkerStatus s = worker->Status();
  EXPECT_EQ(s.expert_bytes, resident->expert_bytes());
  EXPECT_EQ(s.cache.resident_bytes, s.cache.resident_experts * resident->expert_bytes());
  EXPECT_LE(s.cache.resident_bytes, o.cache_bytes);
  EXPECT_GT(s.cache.evictions, 0);

  o.quant = "int8";
  EXPECT_THAT(Worker::Open(o),
              StatusIs(absl::StatusCode::kFailedPrecondition, "holds experts as int4:g32"));
}

TEST_F(WorkerTest, RefusalsNameTheProblem) {
  WorkerOptions o = Options();
  o.max_batch = 1;
  o.max_queue = 1;
  o.cache_bytes = 20 * reference_->expert_bytes();
  ASSERT_OK_AND_ASSIGN(auto worker, Worker::Open(o));
  const std::vector<int64_t> prompt = Encode(*tokenizer_, EvalPrompts("add", 1)[0]);
  WorkRequest r;
  r.prompt = prompt;
  r.task = "nope";
  EXPECT_THAT(worker->Generate(r).status(), StatusIs(absl::StatusCode::kNotFound, "\"nope\""));
  r.task = "";  // the full model: 64 experts in a 20-expert budget
  EXPECT_THAT(worker->Generate(r).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, "cannot hold"));
  store::Pattern other = patterns_->at("add");
  other.model_fingerprint = "0123";
  EXPECT_THAT(worker->Prepare(other, "25%").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "made for model 0123"));
  EXPECT_THAT(worker->Prepare(patterns_->at("add"), "1/4").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, "top-1"));
  EXPECT_THAT(worker->Prepare(patterns_->at("add"), "50%").status(),
              StatusIs(absl::StatusCode::kResourceExhausted, "cannot hold"));
  ASSERT_OK(worker->Prepare(patterns_->at("add"), "25%").status());
  r.task = "add";
  r.prompt = {1, 999};
  EXPECT_THAT(worker->Generate(r).status(), StatusIs(absl::StatusCode::kInvalidArgument, "999"));
  r.prompt = prompt;
  for (int64_t n : {int64_t{100000}, std::numeric_limits<int64_t>::max() - 1}) {
    r.options.max_new_tokens = n;  // the second overflowed the sum with the prompt
    EXPECT_THAT(worker->Generate(r).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, "exceeds the context"));
  }
  r.options.max_new_tokens = 8;
  r.deadline = std::chrono::steady_clock::now();
  EXPECT_THAT(worker->Generate(r).status(),
              StatusIs(absl::StatusCode::kDeadlineExceeded, "deadline"));
  r.deadline.reset();
  r.on_token = [](int64_t) { return false; };
  // eos is not streamed, and under this pattern it may be the first token.
  r.options.stop_at_eos = false;
  EXPECT_THAT(worker->Generate(r).status(), StatusIs(absl::StatusCode::kCancelled, "cancelled"));
  r.options.stop_at_eos = true;

  // A full queue: one request holds the only slot (its callback waits), one
  // waits in the queue, the third is refused.
  std::mutex mu;
  std::condition_variable cv;
  bool release = false, started = false;
  WorkRequest slow = r;
  slow.options.max_new_tokens = 2;
  slow.options.stop_at_eos = false;
  slow.on_token = [&](int64_t) {
    std::unique_lock lock(mu);
    started = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
    return true;
  };
  std::thread first([&] { EXPECT_OK(worker->Generate(slow).status()); });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return started; });
  }
  WorkRequest queued = r;
  queued.on_token = nullptr;
  std::thread second([&] { EXPECT_OK(worker->Generate(queued).status()); });
  while (worker->Status().queued < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_THAT(worker->Generate(queued).status(),
              StatusIs(absl::StatusCode::kResourceExhausted, "queue is full"));
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  first.join();
  second.join();
}

// Distinct Prepares are bounded: past max_prepared_patterns the least
// recently prepared or served one is forgotten (it once kept every one of
// 2000 Prepares).
TEST_F(WorkerTest, PreparedPatternsAreBoundedLeastRecentlyUsedFirst) {
  WorkerOptions o = Options();
  o.max_prepared_patterns = 2;
  ASSERT_OK_AND_ASSIGN(auto worker, Worker::Open(o));
  auto prepared = [&] {
    std::set<std::string> out;
    for (const PatternStatus& p : worker->Status().patterns) out.insert(p.task);
    return out;
  };
  ASSERT_OK(worker->Prepare(patterns_->at("add"), "25%").status());
  ASSERT_OK(worker->Prepare(patterns_->at("reverse"), "25%").status());
  WorkRequest r;
  r.prompt = Encode(*tokenizer_, EvalPrompts("add", 1)[0]);
  r.options.max_new_tokens = 2;
  r.task = "add";
  ASSERT_OK(worker->Generate(r).status());  // "add" is now the most recent
  ASSERT_OK(worker->Prepare(patterns_->at("sort"), "25%").status());
  EXPECT_EQ(prepared(), (std::set<std::string>{"add", "sort"}));
  r.task = "reverse";
  EXPECT_THAT(worker->Generate(r).status(),
              StatusIs(absl::StatusCode::kNotFound, "no pattern of task \"reverse\" is prepared"));
  o.max_prepared_patterns = 0;
  EXPECT_THAT(Worker::Open(o).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "max_prepared_patterns >= 1"));
}

// Until the worker has no request queued or running.
void WaitIdle(const Worker& worker) {
  while (true) {
    const WorkerStatus s = worker.Status();
    if (s.queued == 0 && s.running == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

TEST_F(WorkerTest, AStreamTheClientCancelsEndsCancelledOnTheWorker) {
  ASSERT_OK_AND_ASSIGN(auto worker, Worker::Open(Options()));
  ASSERT_OK_AND_ASSIGN(auto server, WorkerServer::Start({}, worker.get(), tokenizer_));
  ASSERT_OK_AND_ASSIGN(auto client, WorkerClient::Open({.address = server->address()}));
  TextRequest r;
  r.prompt = EvalPrompts("add", 1)[0];
  r.options.max_new_tokens = 200;
  r.options.stop_at_eos = false;
  CallCanceller canceller;
  r.canceller = &canceller;
  absl::Notification done;
  absl::StatusOr<TextResult> result;
  // Cancels as soon as the first text arrives, 199 tokens before the end.
  client->StartGenerate(
      r, [&](const std::string&, const std::vector<int64_t>&) { canceller.Cancel(); },
      [&](absl::StatusOr<TextResult> res) {
        result = std::move(res);
        done.Notify();
      });
  done.WaitForNotification();
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled, ""));
  // The worker's request ends CANCELLED (its on_token refused a token), not
  // after its 200 tokens.
  WaitIdle(*worker);
  EXPECT_EQ(worker->Status().cancelled, 1);
  // A cancelled canceller ends a later call at once, before it is sent.
  absl::Notification again;
  client->StartGenerate(r, nullptr, [&](absl::StatusOr<TextResult> res) {
    EXPECT_THAT(res, StatusIs(absl::StatusCode::kCancelled, "cancelled by the caller"));
    again.Notify();
  });
  again.WaitForNotification();
  // And the server still serves.
  r.canceller = nullptr;
  r.options.max_new_tokens = 4;
  ASSERT_OK_AND_ASSIGN(TextResult ok, client->Generate(r));
  EXPECT_EQ(ok.completion_tokens, 4);
}

TEST_F(WorkerTest, ManyConcurrentStreamsDoNotGrowTheServersThreads) {
  WorkerOptions o = Options();
  o.max_queue = 512;
  ASSERT_OK_AND_ASSIGN(auto worker, Worker::Open(o));
  ASSERT_OK_AND_ASSIGN(auto server, WorkerServer::Start({}, worker.get(), tokenizer_));
  ASSERT_OK_AND_ASSIGN(auto client, WorkerClient::Open({.address = server->address()}));
  const std::vector<std::string> prompts = EvalPrompts("reverse", 8);
  // Opens `n` streams at once through the callback client (which holds no
  // thread per call either) and returns the most threads the process had
  // while any was in flight.
  auto run = [&](int n) {
    // Held by the callbacks too, so that none outlives it.
    struct Left {
      absl::Mutex mu;
      int streams ABSL_GUARDED_BY(mu) = 0;
      int ok ABSL_GUARDED_BY(mu) = 0;
    };
    auto left = std::make_shared<Left>();
    {
      absl::MutexLock lock(&left->mu);
      left->streams = n;
    }
    for (int i = 0; i < n; ++i) {
      TextRequest r;
      r.prompt = prompts[i % prompts.size()];
      r.options.max_new_tokens = 3;
      r.options.stop_at_eos = false;
      client->StartGenerate(r, nullptr, [left](absl::StatusOr<TextResult> res) {
        EXPECT_TRUE(res.ok()) << res.status();
        absl::MutexLock lock(&left->mu);
        --left->streams;
        left->ok += res.ok() ? 1 : 0;
      });
    }
    int peak = 0;
    while (true) {
      peak = std::max(peak, premoe::testing::ProcessThreads());
      absl::MutexLock lock(&left->mu);
      if (left->streams == 0) break;
      left->mu.AwaitWithTimeout(absl::Condition(
                                    +[](int* streams) { return *streams == 0; }, &left->streams),
                                absl::Milliseconds(1));
    }
    absl::MutexLock lock(&left->mu);
    EXPECT_EQ(left->ok, n);
    return peak;
  };
  // gRPC starts its pools' threads on demand: let it, then compare.
  run(256);
  const int few = run(8);
  const int many = run(256);
  // The synchronous server held a thread per stream: 248 more.
  EXPECT_LE(many, few + 8) << "8 streams: " << few << " threads; 256 streams: " << many;
  EXPECT_EQ(worker->Status().cancelled, 0);
}

}  // namespace
}  // namespace premoe::worker
