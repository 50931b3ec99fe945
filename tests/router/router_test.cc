// The router on the committed testbed model: matching (TAER) against the
// profiler's own embeddings, the replica of a remote store, scheduling over
// two real workers on loopback, and the premoe.v1.Inference edge. Answers
// are checked token for token against the resident engine run with the
// pattern's mask.
#include "premoe/router/router.h"

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/grpcpp.h"
#include "premoe/common/status.h"
#include "premoe/model/engine.h"
#include "premoe/model/fingerprint.h"
#include "premoe/profiler/calibration.h"
#include "premoe/profiler/pattern.h"
#include "premoe/profiler/selection.h"
#include "premoe/router/client.h"
#include "premoe/router/matcher.h"
#include "premoe/router/replica.h"
#include "premoe/router/server.h"
#include "premoe/router/worker_pool.h"
#include "premoe/store/embedded_store.h"
#include "premoe/store/grpc_client.h"
#include "premoe/store/server.h"
#include "premoe/testbed/tasks.h"
#include "premoe/tokenizer/tokenizer.h"
#include "premoe/v1/inference.grpc.pb.h"
#include "premoe/worker/server.h"
#include "premoe/worker/worker.h"
#include "tests/testutil/testutil.h"

namespace premoe::router {
namespace {

using ::premoe::testing::StatusIs;
using ::premoe::testing::TempDir;

std::string ModelDir() { return premoe::testing::SourceDir() + "/testbed/model"; }

std::string Prompt(const std::string& task, testbed::Split split, int64_t i) {
  auto t = testbed::FindTask(task);
  if (!t.ok()) {
    ADD_FAILURE() << t.status();
    return "";
  }
  auto s = (*t)->Get(split, i);
  if (!s.ok()) {
    ADD_FAILURE() << s.status();
    return "";
  }
  return s->prompt;
}

// Patterns of four testbed tasks, profiled once (peu, 16 calibration
// prompts each) on the resident fp32 engine, the reference for answers.
class RouterTest : public ::testing::Test {
 protected:
  static constexpr const char* kTasks[] = {"add", "reverse", "caesar", "sort"};

  static void SetUpTestSuite() {
    auto engine = model::Engine::Open(ModelDir(), {.dtype = "fp32"});
    ASSERT_TRUE(engine.ok()) << engine.status();
    reference_ = engine->release();
    auto tok = tokenizer::Tokenizer::FromFile(ModelDir() + "/tokenizer.json");
    ASSERT_TRUE(tok.ok());
    tokenizer_ = tok->release();
    auto fingerprint = model::ModelFingerprint(*reference_);
    ASSERT_TRUE(fingerprint.ok());
    patterns_ = new std::map<std::string, store::Pattern>();
    for (const std::string task : kTasks) {
      std::vector<profiler::CalibrationSample> samples;
      for (int64_t i = 0; i < 16; ++i) {
        auto t = testbed::FindTask(task);
        auto s = (*t)->Get(testbed::Split::kCalibration, i);
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

  void SetUp() override {
    store::EmbeddedPatternStore::Options o;
    o.path = dir_.Join("store");
    o.sync = false;
    ASSERT_OK_AND_ASSIGN(store_, store::EmbeddedPatternStore::Open(o));
    for (const auto& [task, p] : *patterns_) ASSERT_OK(store_->Put(p).status());
  }

  // The completion the resident engine gives `prompt` under `task`'s
  // pattern at `budget` (greedy).
  static std::string Reference(const std::string& task, const std::string& budget,
                               const std::string& prompt, int64_t max_new_tokens) {
    auto text = [&]() -> absl::StatusOr<std::string> {
      ASSIGN_OR_RETURN(auto scores, profiler::PatternScores(patterns_->at(task)));
      ASSIGN_OR_RETURN(auto parsed, profiler::Budget::Parse(budget));
      ASSIGN_OR_RETURN(auto sel, profiler::Select(scores, parsed, reference_->expert_bytes(),
                                                  reference_->top_k()));
      ASSIGN_OR_RETURN(auto ids, tokenizer_->Encode(prompt, true));
      model::GenerationOptions go;
      go.max_new_tokens = max_new_tokens;
      ASSIGN_OR_RETURN(
          auto out,
          reference_->Generate({{std::vector<int64_t>(ids.begin(), ids.end()), &sel.keep}}, go));
      std::vector<int32_t> tokens(out.at(0).tokens.begin(), out.at(0).tokens.end());
      return tokenizer_->Decode(tokens, /*skip_special_tokens=*/true);
    }();
    if (!text.ok()) {
      ADD_FAILURE() << "reference for " << task << ": " << text.status();
      return "";
    }
    return *text;
  }

  // Two workers (fp32, `cache_bytes` each) serving on loopback.
  struct Workers {
    std::vector<std::unique_ptr<worker::Worker>> workers;
    std::vector<std::unique_ptr<worker::WorkerServer>> servers;
    std::vector<std::string> addresses;
  };
  static Workers StartWorkers(int n, int64_t cache_bytes) {
    Workers w;
    for (int i = 0; i < n; ++i) {
      worker::WorkerOptions o;
      o.model_dir = ModelDir();
      o.dtype = "fp32";
      o.cache_bytes = cache_bytes;
      auto wk = worker::Worker::Open(o);
      if (!wk.ok()) {
        ADD_FAILURE() << wk.status();
        return w;
      }
      auto server = worker::WorkerServer::Start({}, wk->get(), tokenizer_);
      if (!server.ok()) {
        ADD_FAILURE() << server.status();
        return w;
      }
      w.addresses.push_back((*server)->address());
      w.workers.push_back(std::move(*wk));
      w.servers.push_back(std::move(*server));
    }
    return w;
  }

  RouterOptions Options(const Workers& w) const {
    RouterOptions o;
    o.matcher.model_dir = ModelDir();
    o.workers.addresses = w.addresses;
    o.workers.poll_interval = std::chrono::milliseconds(100);
    return o;
  }

  static model::Engine* reference_;
  static tokenizer::Tokenizer* tokenizer_;
  static std::map<std::string, store::Pattern>* patterns_;
  TempDir dir_;
  std::unique_ptr<store::EmbeddedPatternStore> store_;
};
model::Engine* RouterTest::reference_ = nullptr;
tokenizer::Tokenizer* RouterTest::tokenizer_ = nullptr;
std::map<std::string, store::Pattern>* RouterTest::patterns_ = nullptr;

TEST_F(RouterTest, OwnCalibrationPromptsMatchTheirTaskExactly) {
  ASSERT_OK_AND_ASSIGN(auto matcher, Matcher::Open({.model_dir = ModelDir()}, store_.get()));
  EXPECT_LT(matcher->probe_bytes(), reference_->weight_bytes() / 4);
  EXPECT_EQ(matcher->fingerprint(), patterns_->at("add").model_fingerprint);
  for (const std::string task : kTasks) {
    // The probe embeds as the profiler did: its own prompt is at cosine 1.
    ASSERT_OK_AND_ASSIGN(MatchResult m,
                         matcher->Match(Prompt(task, testbed::Split::kCalibration, 3), 4));
    EXPECT_EQ(m.task, task);
    EXPECT_EQ(m.decision, "match");
    EXPECT_NEAR(m.similarity, 1.0, 1e-5);
    ASSERT_EQ(m.candidates.size(), 4u);
    EXPECT_GE(m.candidates[0].similarity, m.candidates[1].similarity);
  }
}

TEST_F(RouterTest, BelowTheThresholdTheFallbackApplies) {
  const std::string odd = "~~ zq ^^ ?? xx";
  MatcherOptions o{.model_dir = ModelDir()};
  ASSERT_OK_AND_ASSIGN(auto plain, Matcher::Open(o, store_.get()));
  ASSERT_OK_AND_ASSIGN(MatchResult baseline, plain->Match(odd, 1));
  // A threshold just above the best candidate.
  o.min_similarity = baseline.similarity + 1e-3;
  ASSERT_OK_AND_ASSIGN(auto full, Matcher::Open(o, store_.get()));
  ASSERT_OK_AND_ASSIGN(MatchResult m, full->Match(odd, 1));
  EXPECT_EQ(m.decision, "fallback");
  EXPECT_EQ(m.task, "");
  EXPECT_FLOAT_EQ(m.similarity, baseline.similarity);
  o.fallback = "task:sort";
  ASSERT_OK_AND_ASSIGN(auto generalist, Matcher::Open(o, store_.get()));
  ASSERT_OK_AND_ASSIGN(m, generalist->Match(odd, 1));
  EXPECT_EQ(m.task, "sort");
  EXPECT_EQ(m.decision, "fallback");
  o.fallback = "refuse";
  ASSERT_OK_AND_ASSIGN(auto refuse, Matcher::Open(o, store_.get()));
  EXPECT_THAT(refuse->Match(odd, 1),
              StatusIs(absl::StatusCode::kNotFound, "no pattern is within similarity"));
  o.fallback = "sometimes";
  EXPECT_THAT(Matcher::Open(o, store_.get()),
              StatusIs(absl::StatusCode::kInvalidArgument, "fallback"));
}

TEST_F(RouterTest, AMatchTooCloseToTheRunnerUpFallsBack) {
  const std::string prompt = Prompt("add", testbed::Split::kEval, 0);
  MatcherOptions o{.model_dir = ModelDir()};
  ASSERT_OK_AND_ASSIGN(auto plain, Matcher::Open(o, store_.get()));
  ASSERT_OK_AND_ASSIGN(MatchResult baseline, plain->Match(prompt, 2));
  ASSERT_EQ(baseline.decision, "match");
  const double margin = baseline.similarity - baseline.candidates[1].similarity;
  ASSERT_GT(margin, 0);
  // Just under the margin the match stands, and one candidate is returned as
  // asked, though two were searched.
  o.min_margin = margin - 1e-4;
  ASSERT_OK_AND_ASSIGN(auto loose, Matcher::Open(o, store_.get()));
  ASSERT_OK_AND_ASSIGN(MatchResult m, loose->Match(prompt, 1));
  EXPECT_EQ(m.decision, "match");
  EXPECT_EQ(m.task, baseline.task);
  EXPECT_EQ(m.candidates.size(), 1u);
  // Just over it the query is ambiguous and falls back.
  o.min_margin = margin + 1e-4;
  ASSERT_OK_AND_ASSIGN(auto strict, Matcher::Open(o, store_.get()));
  ASSERT_OK_AND_ASSIGN(m, strict->Match(prompt, 1));
  EXPECT_EQ(m.decision, "fallback");
  EXPECT_EQ(m.task, "");
  EXPECT_EQ(m.candidates.size(), 1u);
  o.fallback = "refuse";
  ASSERT_OK_AND_ASSIGN(auto refuse, Matcher::Open(o, store_.get()));
  EXPECT_THAT(refuse->Match(prompt, 1), StatusIs(absl::StatusCode::kNotFound, "ambiguous"));
  o.min_margin = 3;
  EXPECT_THAT(Matcher::Open(o, store_.get()),
              StatusIs(absl::StatusCode::kInvalidArgument, "min_margin"));
}

TEST_F(RouterTest, PatternsEmbeddedOverTwoLayersAreMatchedWithATwoLayerProbe) {
  store::EmbeddedPatternStore::Options so;
  so.path = dir_.Join("two");
  ASSERT_OK_AND_ASSIGN(auto two, store::EmbeddedPatternStore::Open(so));
  for (const std::string task : kTasks) {
    std::vector<profiler::CalibrationSample> samples;
    for (int64_t i = 0; i < 8; ++i) {
      auto s = (*testbed::FindTask(task))->Get(testbed::Split::kCalibration, i);
      samples.push_back({s->prompt, s->completion});
    }
    profiler::ProfileOptions po;
    po.embedding_layers = 2;
    ASSERT_OK_AND_ASSIGN(profiler::TaskProfile profile,
                         profiler::ProfileTask(*reference_, *tokenizer_, samples, po));
    ASSERT_OK_AND_ASSIGN(
        store::Pattern p,
        profiler::MakePattern(
            *reference_, samples, po, profile,
            {.task_name = task, .model_fingerprint = patterns_->at(task).model_fingerprint}));
    ASSERT_OK(two->Put(p).status());
  }
  ASSERT_OK_AND_ASSIGN(auto matcher, Matcher::Open({.model_dir = ModelDir()}, two.get()));
  ASSERT_OK_AND_ASSIGN(auto one_layer, Matcher::Open({.model_dir = ModelDir()}, store_.get()));
  EXPECT_GT(matcher->probe_bytes(), one_layer->probe_bytes());  // it holds layer 0's experts
  for (const std::string task : kTasks) {
    ASSERT_OK_AND_ASSIGN(MatchResult m,
                         matcher->Match(Prompt(task, testbed::Split::kCalibration, 2), 1));
    EXPECT_EQ(m.task, task);
    EXPECT_NEAR(m.similarity, 1.0, 1e-5);
  }
}

TEST_F(RouterTest, AStoreOfAnotherModelIsRefused) {
  store::EmbeddedPatternStore::Options so;
  so.path = dir_.Join("other");
  ASSERT_OK_AND_ASSIGN(auto other, store::EmbeddedPatternStore::Open(so));
  store::Pattern p = patterns_->at("add");
  p.model_fingerprint = "0123456789abcdef";
  ASSERT_OK(other->Put(p).status());
  EXPECT_THAT(Matcher::Open({.model_dir = ModelDir()}, other.get()),
              StatusIs(absl::StatusCode::kFailedPrecondition, "another model"));
}

TEST_F(RouterTest, ReplicaFollowsARemoteStore) {
  ASSERT_OK_AND_ASSIGN(auto server, store::PatternStoreServer::Start({}, store_.get()));
  ASSERT_OK_AND_ASSIGN(auto remote,
                       store::GrpcPatternStoreClient::Open({.address = server->address()}));
  ASSERT_OK_AND_ASSIGN(auto replica, Replica::Start(remote.get(), {}));
  ASSERT_OK(replica->WaitSynced(std::chrono::seconds(20)));
  auto tasks = [&] {
    std::vector<std::string> out;
    auto page = replica->store()->List({});
    if (!page.ok()) {
      ADD_FAILURE() << page.status();
      return out;
    }
    for (const auto& s : page->patterns) out.push_back(s.task_name);
    std::sort(out.begin(), out.end());
    return out;
  };
  EXPECT_EQ(tasks(), (std::vector<std::string>{"add", "caesar", "reverse", "sort"}));
  // Live changes: a delete, a new task, a replaced pattern.
  ASSERT_OK_AND_ASSIGN(store::Pattern add, store_->GetByTask("add"));
  ASSERT_OK(store_->Delete(add.id).status());
  store::Pattern extra = patterns_->at("sort");
  extra.task_name = "sort2";
  ASSERT_OK(store_->Put(extra).status());
  store::Pattern changed = patterns_->at("caesar");
  changed.embeddings.resize(3);
  ASSERT_OK_AND_ASSIGN(store::PutResult last, store_->Put(changed));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (replica->version() < last.version && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(replica->version(), last.version);
  EXPECT_EQ(tasks(), (std::vector<std::string>{"caesar", "reverse", "sort", "sort2"}));
  ASSERT_OK_AND_ASSIGN(store::Pattern copy, replica->store()->GetByTask("caesar"));
  EXPECT_EQ(copy.embeddings.size(), 3u);
  // The copy answers searches as the source does.
  ASSERT_OK_AND_ASSIGN(auto matcher, Matcher::Open({.model_dir = ModelDir()}, replica->store()));
  ASSERT_OK_AND_ASSIGN(MatchResult m,
                       matcher->Match(Prompt("reverse", testbed::Split::kEval, 0), 1));
  EXPECT_EQ(m.task, "reverse");
}

// A router whose store is down at start stays not ready, and refuses
// requests naming the cause, until its replica has synced (it once reported
// SERVING with no patterns, and every query failed with an unrelated error).
TEST_F(RouterTest, ARouterOnAnUnsyncedReplicaIsNotReadyAndSaysWhy) {
  Workers w = StartWorkers(1, 0);
  ASSERT_OK_AND_ASSIGN(
      auto remote, store::GrpcPatternStoreClient::Open(
                       {.address = "127.0.0.1:1", .rpc_timeout = std::chrono::milliseconds(500)}));
  ASSERT_OK_AND_ASSIGN(auto replica, Replica::Start(remote.get(), {}));
  RouterOptions o = Options(w);
  o.patterns_ready = [&] { return replica->Synced(); };
  ASSERT_OK_AND_ASSIGN(auto router, Router::Open(o, replica->store()));
  EXPECT_THAT(router->Readiness(),
              StatusIs(absl::StatusCode::kUnavailable, "replica has not synced yet"));
  InferenceRequest r;
  r.prompt = "What is 1 + 2?";
  EXPECT_THAT(router->Generate(r),
              StatusIs(absl::StatusCode::kUnavailable, "replica has not synced yet"));
  EXPECT_THAT(router->Match(r.prompt, {}),
              StatusIs(absl::StatusCode::kUnavailable, "replica has not synced yet"));
}

TEST_F(RouterTest, QueriesGetTheirPatternsAnswersThroughGrpc) {
  Workers w = StartWorkers(2, 0);
  ASSERT_OK_AND_ASSIGN(auto router, Router::Open(Options(w), store_.get()));
  ASSERT_OK_AND_ASSIGN(auto server, InferenceServer::Start({}, router.get()));
  ASSERT_OK_AND_ASSIGN(auto client, InferenceClient::Open({.address = server->address()}));
  for (const std::string task : {"add", "reverse", "caesar"}) {
    for (int64_t i = 0; i < 2; ++i) {
      const std::string prompt = Prompt(task, testbed::Split::kEval, i);
      SCOPED_TRACE(task + ": " + prompt);
      InferenceRequest r;
      r.prompt = prompt;
      r.options.max_new_tokens = 12;
      std::string streamed;
      ASSERT_OK_AND_ASSIGN(InferenceResult res,
                           client->Generate(r, [&](const std::string& d) { streamed += d; }));
      EXPECT_EQ(res.route.task, task);
      EXPECT_EQ(res.route.decision, "match");
      EXPECT_GT(res.route.similarity, 0.5);
      EXPECT_EQ(res.text.text, Reference(task, "50%", prompt, 12));
      EXPECT_EQ(streamed, res.text.text);
      EXPECT_DOUBLE_EQ(res.route.kept_fraction, 0.5);
      EXPECT_EQ(res.route.kept_experts, 32);
      EXPECT_EQ(res.route.all_experts_bytes, 64 * reference_->expert_bytes());
      EXPECT_GT(res.route.base_bytes, 0);
      EXPECT_TRUE(res.route.worker == w.addresses[0] || res.route.worker == w.addresses[1]);
      EXPECT_GT(res.text.prompt_tokens, 0);
      EXPECT_GT(res.time_to_first_token, 0);
    }
  }
  // A named task and budget skip matching; full_model uses every expert.
  InferenceRequest r;
  r.prompt = Prompt("add", testbed::Split::kEval, 0);
  r.options.max_new_tokens = 8;
  r.task = "sort";
  r.budget = "2/6";
  ASSERT_OK_AND_ASSIGN(InferenceResult named, client->Generate(r));
  EXPECT_EQ(named.route.decision, "task");
  EXPECT_EQ(named.text.text, Reference("sort", "2/6", r.prompt, 8));
  r.task.clear();
  r.budget.clear();
  r.full_model = true;
  ASSERT_OK_AND_ASSIGN(InferenceResult full, client->Generate(r));
  EXPECT_EQ(full.route.decision, "full_model");
  EXPECT_DOUBLE_EQ(full.route.kept_fraction, 1.0);
  ASSERT_OK_AND_ASSIGN(MatchResult m, client->Match(Prompt("caesar", testbed::Split::kEval, 1)));
  EXPECT_EQ(m.task, "caesar");
  EXPECT_EQ(m.candidates.size(), 3u);
}

TEST_F(RouterTest, BadRequestsAreRefusedNamingTheProblem) {
  Workers w = StartWorkers(1, 0);
  RouterOptions o = Options(w);
  o.max_prompt_bytes = 100;
  o.max_new_tokens = 50;
  ASSERT_OK_AND_ASSIGN(auto router, Router::Open(o, store_.get()));
  ASSERT_OK_AND_ASSIGN(auto server,
                       InferenceServer::Start({.max_request_bytes = 4096}, router.get()));
  ASSERT_OK_AND_ASSIGN(auto client, InferenceClient::Open({.address = server->address()}));
  InferenceRequest r;
  r.prompt = std::string(101, 'a');
  EXPECT_THAT(client->Generate(r),
              StatusIs(absl::StatusCode::kInvalidArgument, "the limit is 100"));
  r.prompt = std::string(5000, 'a');
  EXPECT_THAT(client->Generate(r),
              StatusIs(absl::StatusCode::kInvalidArgument, "the limit is 4096"));
  r.prompt = "What is 1 + 2?";
  r.options.max_new_tokens = 51;
  EXPECT_THAT(client->Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, "over the limit"));
  r.options.max_new_tokens = 8;
  r.task = "juggling";
  EXPECT_THAT(client->Generate(r), StatusIs(absl::StatusCode::kNotFound, "juggling"));
  r.task.clear();
  r.budget = "lots";
  EXPECT_THAT(client->Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, "lots"));
  r.budget.clear();
  r.messages = {{"user", "hi"}};
  EXPECT_THAT(client->Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, "not both"));
  r.prompt.clear();
  // Roles are the chat template's business: the testbed's takes one user
  // message and refuses the rest with its own words.
  r.messages = {{"wizard", "hi"}};
  EXPECT_THAT(client->Generate(r),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       "the model's chat template refused the messages: the premoe testbed model "
                       "answers a single user message"));
  r.options.temperature = -1;
  r.messages = {{"user", "What is 1 + 2?"}};
  EXPECT_THAT(client->Generate(r), StatusIs(absl::StatusCode::kInvalidArgument, ""));
  r.options.temperature = 0;
  // Text that is not UTF-8 gets through the wire (bytes fields) to a refusal
  // naming the field and the byte, not a parse failure.
  r.messages = {{"user", "a\xed\xa0\x80"}};  // a surrogate
  EXPECT_THAT(client->Generate(r), StatusIs(absl::StatusCode::kInvalidArgument,
                                            "messages[0].content is not valid UTF-8 at byte 1"));
  r.messages.clear();
  r.prompt = "What is \xff 1?";
  EXPECT_THAT(client->Generate(r),
              StatusIs(absl::StatusCode::kInvalidArgument, "prompt is not valid UTF-8 at byte 8"));
  r.prompt = "What is 1 + 2?";
  r.stop = {"\n", "\xc3"};
  EXPECT_THAT(client->Generate(r), StatusIs(absl::StatusCode::kInvalidArgument,
                                            "sampling.stop[1] is not valid UTF-8 at byte 0"));
  r.stop.clear();
  // An error that would echo a long field is cut (one of 10 KB was turned into
  // RESOURCE_EXHAUSTED by gRPC's metadata limit).
  r.task = std::string(3000, 'x');
  EXPECT_THAT(client->Generate(r), StatusIs(absl::StatusCode::kNotFound, "bytes in all)"));
  r.task.clear();
  r.prompt.clear();
  r.messages = {{"user", "What is 1 + 2?"}};
  // The testbed's template renders one user message as <|bos|> + its text,
  // encoded without the tokenizer's own BOS: what the model saw in training.
  ASSERT_OK_AND_ASSIGN(InferenceResult chat, client->Generate(r));
  EXPECT_EQ(chat.route.task, "add");
  r.messages.clear();
  r.prompt = "What is 1 + 2?";
  ASSERT_OK_AND_ASSIGN(InferenceResult plain, client->Generate(r));
  EXPECT_EQ(chat.text.text, plain.text.text);
  EXPECT_EQ(chat.text.prompt_tokens, plain.text.prompt_tokens);
  EXPECT_DOUBLE_EQ(chat.route.similarity, plain.route.similarity);
}

TEST_F(RouterTest, AnOperatorsChatTemplateReplacesTheModels) {
  Workers w = StartWorkers(1, 0);
  RouterOptions o = Options(w);
  o.chat_template_file = dir_.Join("chat.jinja");
  // Serves the last user message, whatever came before.
  testing::WriteStringToFile(
      o.chat_template_file,
      "{{ bos_token }}{{ (messages | selectattr('role', 'eq', 'user') | list)[-1].content }}");
  ASSERT_OK_AND_ASSIGN(auto router, Router::Open(o, store_.get()));
  InferenceRequest r;
  r.options.max_new_tokens = 8;
  r.messages = {
      {"system", "Be brief."}, {"user", "hello"}, {"assistant", "hi"}, {"user", "What is 1 + 2?"}};
  ASSERT_OK_AND_ASSIGN(std::string text, router->RenderPrompt("", r.messages));
  EXPECT_EQ(text, "<|bos|>What is 1 + 2?");
  ASSERT_OK_AND_ASSIGN(InferenceResult chat, router->Generate(r));
  EXPECT_EQ(chat.route.task, "add");
  // A template outside the subset stops the router at start, naming the line.
  testing::WriteStringToFile(o.chat_template_file, "ok\n{% macro m() %}{% endmacro %}");
  EXPECT_THAT(Router::Open(o, store_.get()),
              StatusIs(absl::StatusCode::kInvalidArgument, "chat.jinja line 2: the {% macro %}"));
}

TEST_F(RouterTest, AWorkerThatDiesIsRetriedElsewhere) {
  Workers w = StartWorkers(2, 0);
  RouterOptions o = Options(w);
  // No poll in between may notice the dead worker first: the request must.
  o.workers.poll_interval = std::chrono::seconds(60);
  ASSERT_OK_AND_ASSIGN(auto router, Router::Open(o, store_.get()));
  const std::string prompt = Prompt("add", testbed::Split::kEval, 0);
  const std::string want = Reference("add", "50%", prompt, 8);
  InferenceRequest r;
  r.prompt = prompt;
  r.options.max_new_tokens = 8;
  ASSERT_OK_AND_ASSIGN(InferenceResult first, router->Generate(r));
  EXPECT_EQ(first.text.text, want);
  // Stop the worker that served it; the pool has not noticed yet.
  const int dead = first.route.worker == w.addresses[0] ? 0 : 1;
  w.servers[dead]->Shutdown();
  ASSERT_OK_AND_ASSIGN(InferenceResult again, router->Generate(r));
  EXPECT_EQ(again.attempts, 2);
  EXPECT_EQ(again.route.worker, w.addresses[1 - dead]);
  EXPECT_EQ(again.text.text, want);
  // Later requests go straight to the live one.
  ASSERT_OK_AND_ASSIGN(InferenceResult third, router->Generate(r));
  EXPECT_EQ(third.attempts, 1);
  // With no worker left, the error says which were tried and why.
  w.servers[1 - dead]->Shutdown();
  router->pool().PollNow();
  EXPECT_THAT(router->Generate(r), StatusIs(absl::StatusCode::kUnavailable, "no worker"));
}

TEST_F(RouterTest, TwoPatternsSpreadOverTwoWorkersInsteadOfThrashing) {
  // Each worker's cache holds one 50% pattern (32 of 64 experts), not two.
  Workers w = StartWorkers(2, 32 * reference_->expert_bytes());
  WorkerPoolOptions o;
  o.addresses = w.addresses;
  o.top_k = reference_->top_k();
  o.poll_interval = std::chrono::seconds(60);  // polled by hand below
  ASSERT_OK_AND_ASSIGN(auto pool, WorkerPool::Open(o));
  const store::Pattern& add = patterns_->at("add");
  const store::Pattern& rev = patterns_->at("reverse");
  ASSERT_OK_AND_ASSIGN(Assignment a1, pool->Assign(&add, "50%"));
  EXPECT_TRUE(a1.loaded);
  EXPECT_EQ(a1.prepared_name, "add@50%");
  pool->Release(a1);
  ASSERT_OK_AND_ASSIGN(Assignment a2, pool->Assign(&add, "50%"));
  EXPECT_EQ(a2.address, a1.address);
  EXPECT_FALSE(a2.loaded);  // resident: not prepared again
  pool->Release(a2);
  // The other pattern would evict the hot one there: it goes to the other worker.
  ASSERT_OK_AND_ASSIGN(Assignment r1, pool->Assign(&rev, "50%"));
  EXPECT_NE(r1.address, a1.address);
  pool->Release(r1);
  for (int round = 0; round < 3; ++round) {
    pool->PollNow();
    ASSERT_OK_AND_ASSIGN(Assignment a, pool->Assign(&add, "50%"));
    ASSERT_OK_AND_ASSIGN(Assignment r, pool->Assign(&rev, "50%"));
    EXPECT_EQ(a.address, a1.address);
    EXPECT_EQ(r.address, r1.address);
    EXPECT_FALSE(a.loaded);
    EXPECT_FALSE(r.loaded);
    pool->Release(a);
    pool->Release(r);
  }
  for (const auto& wk : w.workers) EXPECT_EQ(wk->Status().cache.evictions, 0);
  // A bad budget is the caller's error, not the workers'.
  EXPECT_THAT(pool->Assign(&add, "most"), StatusIs(absl::StatusCode::kInvalidArgument, "most"));
}

// Until `worker` has no request queued or running.
void WaitIdle(const worker::Worker& worker) {
  while (true) {
    const worker::WorkerStatus s = worker.Status();
    if (s.queued == 0 && s.running == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

TEST_F(RouterTest, ACallerThatHangsUpCancelsTheWorkersRequest) {
  Workers w = StartWorkers(1, 0);
  ASSERT_OK_AND_ASSIGN(auto router, Router::Open(Options(w), store_.get()));
  ASSERT_OK_AND_ASSIGN(auto server, InferenceServer::Start({}, router.get()));
  auto stub = v1::Inference::NewStub(
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  v1::InferenceRequest request;
  request.set_prompt(Prompt("add", testbed::Split::kEval, 0));
  request.mutable_sampling()->set_max_new_tokens(200);
  request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(2));
  std::unique_ptr<grpc::ClientReader<v1::InferenceResponse>> reader = stub->Generate(&ctx, request);
  v1::InferenceResponse first;
  ASSERT_TRUE(reader->Read(&first));
  EXPECT_FALSE(first.done());
  // Hang up 199 tokens before the end.
  ctx.TryCancel();
  while (reader->Read(&first)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The router cancelled its worker call, and the worker its request.
  WaitIdle(*w.workers[0]);
  EXPECT_EQ(w.workers[0]->Status().cancelled, 1);

  // GenerateAsync, cancelled through its canceller, ends the same way.
  worker::CallCanceller canceller;
  InferenceRequest r;
  r.prompt = request.prompt();
  r.options.max_new_tokens = 200;
  r.options.stop_at_eos = false;
  r.canceller = &canceller;
  absl::Notification done;
  absl::StatusOr<InferenceResult> result;
  router->GenerateAsync(
      r, [&](const std::string&) { canceller.Cancel(); },
      [&](absl::StatusOr<InferenceResult> res) {
        result = std::move(res);
        done.Notify();
      });
  done.WaitForNotification();
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kCancelled, ""));
  WaitIdle(*w.workers[0]);
  EXPECT_EQ(w.workers[0]->Status().cancelled, 2);
}

// Reads one Generate stream to its end and counts it down.
class CountedStream final : public grpc::ClientReadReactor<v1::InferenceResponse> {
 public:
  struct Count {
    absl::Mutex mu;
    int left ABSL_GUARDED_BY(mu) = 0;
    int done ABSL_GUARDED_BY(mu) = 0;  // ended OK with a last message
  };
  CountedStream(v1::Inference::Stub* stub, const v1::InferenceRequest& request,
                std::shared_ptr<Count> count)
      : request_(request), count_(std::move(count)) {
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(5));
    stub->async()->Generate(&ctx_, &request_, this);
    StartRead(&message_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    got_last_ = got_last_ || message_.done();
    StartRead(&message_);
  }
  void OnDone(const grpc::Status& status) override {
    EXPECT_TRUE(status.ok()) << status.error_message();
    {
      absl::MutexLock lock(&count_->mu);
      --count_->left;
      count_->done += status.ok() && got_last_ ? 1 : 0;
    }
    delete this;
  }

 private:
  grpc::ClientContext ctx_;
  v1::InferenceRequest request_;
  v1::InferenceResponse message_;
  bool got_last_ = false;
  std::shared_ptr<Count> count_;
};

TEST_F(RouterTest, ManyConcurrentStreamsDoNotGrowTheServersThreads) {
  // One worker whose queue takes every stream at once.
  worker::WorkerOptions wo;
  wo.model_dir = ModelDir();
  wo.dtype = "fp32";
  wo.max_queue = 512;
  ASSERT_OK_AND_ASSIGN(auto wk, worker::Worker::Open(wo));
  ASSERT_OK_AND_ASSIGN(auto worker_server, worker::WorkerServer::Start({}, wk.get(), tokenizer_));
  RouterOptions o;
  o.matcher.model_dir = ModelDir();
  o.workers.addresses = {worker_server->address()};
  ASSERT_OK_AND_ASSIGN(auto router, Router::Open(o, store_.get()));
  ASSERT_OK_AND_ASSIGN(auto server, InferenceServer::Start({}, router.get()));
  auto stub = v1::Inference::NewStub(
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  // Opens `n` streams at once (callback client: no thread per call) and
  // returns the most threads the process had while any was in flight.
  auto run = [&](int n) {
    auto count = std::make_shared<CountedStream::Count>();
    {
      absl::MutexLock lock(&count->mu);
      count->left = n;
    }
    for (int i = 0; i < n; ++i) {
      v1::InferenceRequest request;
      request.set_prompt(Prompt(kTasks[i % 4], testbed::Split::kEval, i / 4));
      request.mutable_sampling()->set_max_new_tokens(3);
      request.mutable_sampling()->set_ignore_eos(true);
      new CountedStream(stub.get(), request, count);
    }
    int peak = 0;
    while (true) {
      peak = std::max(peak, premoe::testing::ProcessThreads());
      absl::MutexLock lock(&count->mu);
      if (count->left == 0) break;
      count->mu.AwaitWithTimeout(absl::Condition(
                                     +[](int* left) { return *left == 0; }, &count->left),
                                 absl::Milliseconds(1));
    }
    absl::MutexLock lock(&count->mu);
    EXPECT_EQ(count->done, n);
    return peak;
  };
  // gRPC starts its pools' threads on demand: let it, then compare.
  run(256);
  const int few = run(8);
  const int many = run(256);
  // The synchronous servers held a thread per stream in the router and
  // another in the worker: 496 more.
  EXPECT_LE(many, few + 8) << "8 streams: " << few << " threads; 256 streams: " << many;
}

}  // namespace
}  // namespace premoe::router
